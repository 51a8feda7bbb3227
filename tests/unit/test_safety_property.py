"""Property test: supervisor + watchdog + anchor + limiter under arbitrary interleavings.

A small simulated robot node runs one control step per period the way the real one will:

    health   = watchdog.evaluate(now, linkstats.snapshot(now), clocksync.rtt, fresh)
    decision = supervisor.step(now, StepInputs(present, clutch, health))
    if decision.motion_allowed:
        if decision.reanchor: anchor.anchor(master, follower); limiter.reset(follower)
        result = limiter.limit(*anchor.follower_target(master, scale * decision.scale))
        if result.fault: supervisor.trip(...)   # and hold
        else: follower = result
    else: hold where the follower is

Hypothesis drives it with commands (small moves, NaN, huge jumps, far outside the
workspace, big rotations), link faults (silence, round-trip spikes, lost pongs, lost
commands, late commands, jitter, stale video), clutch, operator presence, scale changes, arm,
engage, disengage, clear_fault, e-stop and clear attempts from both sides. After every
step the follower must be inside the limits, must not have moved unless FOLLOWING with
every condition of invariant 1 true, must not have moved after a trip without an explicit
engage in between, and an e-stop must still be in force unless cleared locally.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from safety.anchor import Anchor
from safety.config import MotionLimits, WatchdogLimits
from safety.limits import CartesianLimiter, quat_angle
from safety.states import Reason, State
from safety.supervisor import Decision, StepInputs, Supervisor
from safety.watchdog import LinkWatchdog
from telesurgery.errors import SchemaError
from telesurgery.quat import quat_mul
from transport.clocksync import ClockSync
from transport.linkstats import LinkStats

MS = 1_000_000
PERIOD = 10 * MS  # a coarse period keeps the timeouts a few steps long
# Shorter settling and escalation than the defaults so that short action lists reach
# every state; the properties do not depend on the values.
WD = WatchdogLimits(settle_ms=30.0, hold_to_fault_ms=200.0)
MOTION = MotionLimits(align_tolerance_rad=0.6)
STEP_M = MOTION.step_m(PERIOD / 1e9)
STEP_RAD = MOTION.step_rad(PERIOD / 1e9)
HOME = ((0.35, 0.0, 0.25), (1.0, 0.0, 0.0, 0.0))
TRIPS_TO = {State.HOLD, State.FAULT, State.ESTOP}


def rot(axis: tuple[float, float, float], angle: float) -> tuple[float, float, float, float]:
    n = math.sqrt(sum(c * c for c in axis)) or 1.0
    s = math.sin(angle / 2) / n
    return (math.cos(angle / 2), axis[0] * s, axis[1] * s, axis[2] * s)


class Sim:
    def __init__(self) -> None:
        self.now = 0
        self.sup = Supervisor(WD, PERIOD)
        self.wd = LinkWatchdog(WD)
        self.cs = ClockSync()
        self.ls = LinkStats(window_ns=int(WD.loss_window_ms * MS))
        self.anchor = Anchor()
        self.limiter = CartesianLimiter(MOTION, PERIOD / 1e9)
        self.follower = HOME
        self.master = ((0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0))
        self.one_shot_master: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self.velocity = (0.001, 0.0, 0.0)  # the surgeon's hand drifts every period
        self.scale = 0.5
        # link and console conditions
        self.sending = True
        self.pongs = True
        self.rtt_ns = 2 * MS
        self.latency_ns = MS
        self.jitter_extra_ns = 0  # added to every other command's latency
        self.skip_seqs = 0
        self.clutch = False
        self.present = True
        self.video_age_us: int | None = 20_000
        self.seq = 0
        self.last_send_ns: int | None = None
        self.received_master = self.master
        # The sim's own account of the link, independent of LinkStats and LinkWatchdog.
        self.last_fresh_recv_ns: int | None = None
        self.last_pong_ns: int | None = None
        self.last_rtt_ns = 0
        self.last_latency_ns: int | None = None
        self.jitter_ns = 0.0
        self.arrivals: deque[tuple[int, int, int]] = deque()  # (recv, expected, lost)
        self.video_report: tuple[int, int | None] | None = None  # (recv, age_us)
        self.healthy_since_ns: int | None = None
        # oracles
        self.tripped = False
        self.estopped = False
        self.moves = 0

    # ---------------------------------------------------------------- one control period
    def step(self) -> None:
        now = self.now = self.now + PERIOD
        if self.pongs:
            ping = self.cs.make_ping(now - self.rtt_ns)
            half = now - self.rtt_ns // 2
            self.cs.on_pong(ClockSync.answer(ping, half, half), now)
            self.last_pong_ns, self.last_rtt_ns = now, self.rtt_ns
        (m_pos, m_quat), v = self.master, self.velocity
        self.master = ((m_pos[0] + v[0], m_pos[1] + v[1], m_pos[2] + v[2]), m_quat)
        if self.sending:
            self._deliver(now)
        master = self.received_master
        if self.one_shot_master is not None and self.sending:
            master, self.one_shot_master = self.one_shot_master, None  # type: ignore[assignment]
        # The sim's own account of the command timeout, by the robot's receive times
        # (the gap between fresh commands); each command's age is bounded at delivery.
        fresh = (self.last_fresh_recv_ns is not None
                 and now - self.last_fresh_recv_ns <= WD.command_timeout_ms * MS)
        health = self.wd.evaluate(now, self.ls.snapshot(now), self.cs.rtt_ns, self.cs.fresh(now))
        inputs = StepInputs(self.present, self.clutch, health)
        d = self.sup.step(now, inputs)
        self._track_health(now)
        before = self.follower
        if d.motion_allowed:
            self._move(now, d, master)
        self._drain()
        self._check(before, d, inputs, fresh)

    def _deliver(self, now: int) -> None:
        self.received_master = self.master
        skipped, self.skip_seqs = self.skip_seqs, 0
        self.seq += 1 + skipped
        latency = self.latency_ns + (self.jitter_extra_ns if self.seq % 2 else 0)
        sent = now - latency
        self.ls.on_message(self.seq, sent, now, self.cs.offset_ns)
        if latency <= WD.command_timeout_ms * MS:
            self.wd.on_fresh_command(now)
            self.last_fresh_recv_ns, self.last_send_ns = now, sent
        self.wd.on_video_age(now, self.video_age_us)
        if self.last_latency_ns is not None:  # RFC 3550: D = change of transit time
            self.jitter_ns += (abs(latency - self.last_latency_ns) - self.jitter_ns) / 16
        self.last_latency_ns = latency
        self.arrivals.append((now, 1 + skipped, skipped))
        self.video_report = (now, self.video_age_us)

    def link_fault(self, now: int) -> str | None:
        """What is wrong with the link by the sim's own account, or None."""
        if self.last_fresh_recv_ns is None or \
                now - self.last_fresh_recv_ns > WD.command_timeout_ms * MS:
            return "command_timeout"
        if self.last_pong_ns is None or now - self.last_pong_ns > self.cs.stale_after_ns:
            return "rtt_unknown"
        if self.last_rtt_ns > WD.rtt_halt_ms * MS:
            return "rtt_high"
        if self.last_latency_ns is None or self.last_latency_ns > WD.latency_halt_ms * MS:
            return "latency_high"
        while self.arrivals and self.arrivals[0][0] <= now - WD.loss_window_ms * MS:
            self.arrivals.popleft()
        expected = sum(e for _, e, _ in self.arrivals)
        if expected and sum(lost for _, _, lost in self.arrivals) / expected > WD.loss_halt:
            return "loss_burst"
        if round(self.jitter_ns / 1000) > WD.jitter_halt_ms * 1000:
            return "jitter_high"
        if self.video_report is None or self.video_report[1] is None:
            return "video_stale"
        recv, age_us = self.video_report
        if age_us * 1000 + now - recv > WD.video_stale_ms * MS:
            return "video_stale"
        return None

    def _track_health(self, now: int) -> None:
        if self.link_fault(now) is not None:
            self.healthy_since_ns = None
        elif self.healthy_since_ns is None:
            self.healthy_since_ns = now

    def _move(self, now: int, d: Decision, master: tuple[tuple[float, ...], ...]) -> None:
        m_pos, m_quat = master
        if d.reanchor:
            try:
                self.anchor.anchor(m_pos, m_quat, *self.follower)  # type: ignore[arg-type]
            except SchemaError as err:
                self.sup.trip(now, Reason.NONFINITE_SETPOINT, str(err))
                return
            self.limiter.reset(*self.follower)
        pos, quat = self.anchor.follower_target(m_pos, m_quat,  # type: ignore[arg-type]
                                                self.scale * d.scale)
        result = self.limiter.limit(pos, quat)
        if result.fault is not None:
            self.sup.trip(now, Reason(result.fault), "limiter")
            return
        self.follower = (result.position, result.quat)

    def _drain(self) -> None:
        for tr in self.sup.drain_transitions():
            assert isinstance(tr.reason, Reason)
            if tr.state_to in TRIPS_TO and tr.reason is not Reason.CLUTCH:
                self.tripped = True

    def _check(self, before: tuple[tuple[float, ...], ...], d: Decision,
               inputs: StepInputs, fresh: bool) -> None:
        pos, quat = self.follower
        assert all(math.isfinite(c) for c in (*pos, *quat))
        lo, hi = MOTION.workspace_min, MOTION.workspace_max
        assert all(a - 1e-12 <= c <= b + 1e-12 for a, c, b in zip(lo, pos, hi, strict=True))
        step = math.dist(pos, before[0])
        assert step <= STEP_M + 1e-12
        assert quat_angle(before[1], quat) <= STEP_RAD + 1e-9  # type: ignore[arg-type]
        if d.motion_allowed:
            assert fresh and inputs.operator_present and not inputs.clutch
            assert inputs.health.ok
            assert self.link_fault(self.now) is None, self.link_fault(self.now)
        if self.follower != before:
            self.moves += 1
            assert d.motion_allowed and self.sup.state is State.FOLLOWING
            assert not self.tripped, "moved after a trip without an explicit engage"
        if self.estopped:
            assert self.sup.state is State.ESTOP

    # ---------------------------------------------------------------- requests
    def engage(self) -> None:
        health = self.wd.evaluate(self.now, self.ls.snapshot(self.now), self.cs.rtt_ns,
                                  self.cs.fresh(self.now))
        aligned = Anchor.aligned(self.master[1], self.follower[1],  # type: ignore[arg-type]
                                 MOTION.align_tolerance_rad or math.pi)
        was_following = self.sup.state is State.FOLLOWING
        ok, _ = self.sup.request_engage(self.now, health, aligned=aligned)
        if ok and not was_following:
            since = self.healthy_since_ns
            assert since is not None and self.now - since >= WD.settle_ms * MS
            assert aligned
            self.tripped = False
        self._drain()


@dataclass(frozen=True)
class Act:
    name: str
    arg: object = None


def _vec(lim: float) -> st.SearchStrategy[tuple[float, float, float]]:
    f = st.floats(-lim, lim, allow_nan=False)
    return st.tuples(f, f, f)


CONTROL = ["arm", "disarm", "engage", "disengage", "clear_fault", "estop", "clear_remote",
           "clear_local"]
# One branch per kind, so that every request (an e-stop, a remote clear) is likely; the
# bad setpoints share one branch, since each one ends following with a fault.
ACTIONS = st.one_of(
    st.builds(Act, st.just("tick"), st.integers(1, 25)),
    st.builds(Act, st.just("move"), _vec(0.004)),  # up to 3 steps' worth per period
    st.builds(Act, st.just("rotate"), st.tuples(_vec(1.0), st.floats(-0.05, 0.05))),
    st.builds(Act, st.just("big_rotate"), st.tuples(_vec(1.0), st.floats(-3.0, 3.0))),
    st.one_of(st.builds(Act, st.just("jump"), _vec(0.6)),
              st.builds(Act, st.just("outside"), _vec(5.0)),
              st.builds(Act, st.sampled_from(["nan", "inf_quat", "limit_fault"]))),
    st.builds(Act, st.just("silence"), st.integers(1, 12)),
    st.builds(Act, st.just("rtt"), st.sampled_from([2, 20, 120, 180, 250, 900])),
    st.builds(Act, st.just("pongs"), st.booleans()),
    st.builds(Act, st.just("latency"), st.sampled_from([1, 10, 60, 150])),
    st.builds(Act, st.just("lose"), st.integers(1, 40)),
    st.builds(Act, st.just("jitter"), st.sampled_from([0, 15, 45])),
    st.builds(Act, st.just("video"), st.sampled_from([None, 20_000, 300_000])),
    st.builds(Act, st.just("clutch"), st.booleans()),
    st.builds(Act, st.just("present"), st.booleans()),
    st.builds(Act, st.just("scale"), st.floats(0.05, 1.0)),
    *(st.just(Act(name)) for name in CONTROL),
)


def apply(sim: Sim, act: Act) -> None:
    (m_pos, m_quat), arg = sim.master, act.arg
    match act.name:
        case "tick":
            for _ in range(int(arg)):  # type: ignore[call-overload]
                sim.step()
            return
        case "move":
            sim.velocity = arg  # type: ignore[assignment]
        case "rotate" | "big_rotate":
            axis, angle = arg  # type: ignore[misc]
            sim.master = (m_pos, quat_mul(rot(axis, angle), m_quat))  # type: ignore[arg-type]
        case "jump":
            sim.master = (tuple(a + b for a, b in zip(m_pos, arg, strict=True)), m_quat)  # type: ignore[call-overload]
        case "outside":
            sim.master = (arg, m_quat)  # type: ignore[assignment]
        case "nan":
            sim.one_shot_master = ((math.nan, m_pos[1], m_pos[2]), m_quat)
        case "inf_quat":
            sim.one_shot_master = (m_pos, (math.inf, 0.0, 0.0, 0.0))
        case "silence":
            sim.sending = False
            for _ in range(int(arg)):  # type: ignore[call-overload]
                sim.step()
            sim.sending = True
        case "rtt":
            sim.rtt_ns = int(arg) * MS  # type: ignore[call-overload]
        case "pongs":
            sim.pongs = bool(arg)
        case "latency":
            sim.latency_ns = int(arg) * MS  # type: ignore[call-overload]
        case "jitter":
            sim.jitter_extra_ns = int(arg) * MS  # type: ignore[call-overload]
        case "lose":
            sim.skip_seqs = int(arg)  # type: ignore[call-overload]
        case "video":
            sim.video_age_us = arg  # type: ignore[assignment]
        case "clutch":
            sim.clutch = bool(arg)
        case "present":
            sim.present = bool(arg)
        case "scale":
            sim.scale = float(arg)  # type: ignore[arg-type]
        case "arm":
            sim.sup.arm(sim.now)
        case "disarm":
            sim.sup.disarm(sim.now)
        case "engage":
            sim.engage()
        case "disengage":
            sim.sup.disengage(sim.now)
        case "clear_fault":
            sim.sup.clear_fault(sim.now)
        case "estop":
            sim.sup.estop(sim.now, Reason.ESTOP_BUTTON)
            sim.estopped = True
        case "clear_remote":
            sim.sup.clear_estop(sim.now, local=False)
        case "clear_local":
            ok, _ = sim.sup.clear_estop(sim.now, local=True)
            if ok:
                sim.estopped = False
        case "limit_fault":
            sim.sup.trip(sim.now, Reason.JOINT_LIMIT, "injected")
        case _:
            raise AssertionError(act.name)
    sim._drain()
    if sim.estopped:
        assert sim.sup.state is State.ESTOP
    sim.step()


START_FOLLOWING = [Act("tick", 4), Act("arm"), Act("tick", 4), Act("engage")]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.lists(ACTIONS, min_size=20, max_size=80))
def test_no_interleaving_breaks_the_safety_invariants(following: bool,
                                                      actions: list[Act]) -> None:
    sim = Sim()
    # Half the runs start out following, so that short lists still exercise motion.
    for act in [*START_FOLLOWING, *actions] if following else [Act("tick", 4), *actions]:
        apply(sim, act)
    event(f"moved: {sim.moves > 0}")
    event(f"final state: {sim.sup.state}")


def test_the_harness_does_move_when_everything_is_right() -> None:
    """Not vacuous: the same harness follows the master when it should."""
    sim = Sim()
    for act in [*START_FOLLOWING, Act("tick", 8)]:
        apply(sim, act)
    assert sim.sup.state is State.FOLLOWING
    assert sim.moves > 0
    assert sim.follower[0][0] > HOME[0][0]
    # A trip, recovery of every input, and still no motion until engage.
    apply(sim, Act("silence", 8))
    moves = sim.moves
    apply(sim, Act("tick", 8))
    assert sim.moves == moves and sim.sup.state is State.HOLD
    apply(sim, Act("engage"))
    apply(sim, Act("tick", 3))
    assert sim.moves > moves
