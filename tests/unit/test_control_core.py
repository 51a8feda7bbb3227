"""``ControlCore`` on the virtual manipulator: read -> update -> write on simulated time.

The control core is the robot's whole per-period safety path; here each period
is the robot node's own ``run_period`` (one read, one pure ``update``, one
write) against the ``virtual`` backend: the firmware model in process, with its
dynamics, watchdog, e-stop button and faults. Time is simulated (the core reads
no clock; the virtual arm's clock is the test's), so nothing here depends on how
busy the machine is. Every test watches the arm itself (joint positions, mode,
targets), not only the supervisor's word.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import pytest

from robot_side.config import ControlConfig, RobotConfig
from robot_side.control import CommandSample, ControlCore, LinkView, PendingRequest, StepReport
from robot_side.control_io import (
    ControlInputs,
    ControlOutput,
    EstopEvent,
    ExternalTrip,
    TripRecord,
)
from robot_side.firmware_model import Mode, default_params
from robot_side.kinematics import Kinematics
from robot_side.manipulator.base import Hold
from robot_side.manipulator.virtual import VirtualManipulator
from robot_side.period import run_period
from safety.config import MotionLimits, SafetyConfig, WatchdogLimits
from safety.states import Reason, State
from telesurgery.quat import Quat, Vec3, quat_from_rotvec, quat_mul
from transport.linkstats import LinkSnapshot
from transport.schema import Command, ControlReply, ControlRequest

RATE_HZ = 1000.0
PERIOD_NS = int(1e9 / RATE_HZ)
PERIOD_S = PERIOD_NS / 1e9
RADIUS_M = 0.01
"""Master circle radius; scale 1.0, so the tool draws the same circle."""
STILL_RAD = 1e-4
"""Joint motion below this over a window counts as standing still."""


def healthy_link(now_ns: int, **changes: object) -> LinkView:
    snap = LinkSnapshot(latency_us=1000, latency_p99_us=1500, jitter_us=100, loss=0.0,
                        received=1000, lost=0, duplicates=0, reordered=0, last_recv_ns=now_ns)
    return LinkView(replace(snap, **changes), 2_000_000, True)  # type: ignore[arg-type]


@dataclass
class Master:
    """The synthetic surgeon: a circle in master space, and the flags of the hand."""

    centre: Vec3
    quat: Quat
    offset: Vec3 = (0.0, 0.0, 0.0)
    operator_present: bool = True
    clutch: bool = False
    video_age_us: int | None = 30_000

    def position(self, t: float) -> Vec3:
        c, o = self.centre, self.offset
        return (c[0] + o[0] + RADIUS_M * (math.cos(math.pi * t) - 1.0),
                c[1] + o[1] + RADIUS_M * math.sin(math.pi * t), c[2] + o[2])


class Harness:
    """Runs periods on simulated time, a fresh command each period unless told otherwise."""

    def __init__(self, core: ControlCore, arm: VirtualManipulator, kin: Kinematics,
                 clock: list[int]) -> None:
        self.core, self.arm, self.kin, self._clock = core, arm, kin, clock
        pos, quat = kin.fk(kin.home)
        self.master = Master((float(pos[0]), float(pos[1]), float(pos[2])), quat)
        self.t0 = self.now
        self.seq = 0
        self.req_id = 0
        self.sample: CommandSample | None = None
        self.trips: list[TripRecord] = []
        self.last: ControlOutput | None = None

    @property
    def now(self) -> int:
        return self._clock[0]

    def advance(self, seconds: float) -> None:
        """Time passes without a control period (the host is silent)."""
        self._clock[0] += int(seconds * 1e9)

    def command(self, now_ns: int, position: Vec3 | None = None) -> Command:
        m = self.master
        self.seq += 1
        return Command(seq=self.seq, t_send_ns=now_ns,
                       position=position or m.position((now_ns - self.t0) / 1e9),
                       orientation=m.quat, grip=0.5, clutch=m.clutch,
                       operator_present=m.operator_present, video_age_us=m.video_age_us)

    def step(self, *, fresh: bool = True, command: Command | None = None,
             link: Callable[[int], LinkView] = healthy_link,
             requests: tuple[str, ...] = (), estop: tuple[EstopEvent, ...] = (),
             not_ready: str | None = None) -> StepReport:
        """One period: a new command arrives now (``fresh``) or the last one stays."""
        self._clock[0] += PERIOD_NS
        now = self.now
        if fresh:
            self.sample = CommandSample(command or self.command(now), now)
        reqs = []
        for op in requests:
            self.req_id += 1
            reqs.append(PendingRequest(b"test", ControlRequest(req_id=self.req_id, op=op), now))
        result = run_period(self.arm, self.core, now, ControlInputs(
            self.sample, link(now), tuple(reqs), estop, not_ready=not_ready))
        self.last = result.output
        if result.trip is not None:
            self.trips.append(result.trip)
        return result.output.report

    def run(self, seconds: float, **kw: object) -> list[StepReport]:
        return [self.step(**kw) for _ in range(max(1, round(seconds / PERIOD_S)))]  # type: ignore[arg-type]

    def request(self, op: str, not_ready: str | None = None) -> ControlReply:
        self.step(requests=(op,), not_ready=not_ready)
        assert self.last is not None
        ((_, reply),) = self.last.replies
        return reply

    def clear_estop_local(self) -> bool:
        self.step(estop=(EstopEvent("clear", token=7),))
        assert self.last is not None
        ((token, answer),) = self.last.estop_replies
        return token == 7 and answer.startswith("ok")

    def engage(self) -> None:
        """Arm, let the link settle, engage; the arm follows from the same period."""
        assert self.request("arm").ok
        self.run(0.12)
        reply = self.request("engage")
        assert reply.ok, reply
        self.run(0.1)
        assert self.core.supervisor.state is State.FOLLOWING

    @property
    def model(self):  # type: ignore[no-untyped-def]
        assert self.arm.model is not None
        return self.arm.model

    def joints(self) -> np.ndarray:
        return np.array(self.model.positions)

    def still_while(self, seconds: float, **kw: object) -> float:
        """Keep stepping (the master keeps moving); how far the arm moved meanwhile."""
        self.run(0.1, **kw)  # the hold decelerates the joints first
        before = self.joints()
        self.run(seconds, **kw)
        return float(np.abs(self.joints() - before).max())


def make_cfg(**motion: object) -> RobotConfig:
    return RobotConfig(
        control=ControlConfig(rate_hz=RATE_HZ, realtime=False, scale=1.0),
        safety=SafetyConfig(watchdog=WatchdogLimits(settle_ms=100.0),
                            motion=MotionLimits(**motion)),  # type: ignore[arg-type]
    )


def make_arm(kin: Kinematics, clock: list[int]) -> VirtualManipulator:
    params = default_params(kin.n, kin.lower.tolist(), kin.upper.tolist(),
                            kin.velocity.tolist())
    return VirtualManipulator(params, initial=kin.home.tolist(), clock=lambda: clock[0],
                              write_budget_ns=PERIOD_NS)


@pytest.fixture
def rig(kin: Kinematics, request: pytest.FixtureRequest) -> Iterator[Harness]:
    motion = getattr(request, "param", {})
    clock = [1_000_000_000]
    with make_arm(kin, clock) as arm:
        yield Harness(ControlCore(make_cfg(**motion), kin), arm, kin, clock)


# ------------------------------------------------------------------ following
def test_arm_follows_command_stream(rig: Harness) -> None:
    start = rig.joints()
    rig.engage()
    reports = rig.run(1.2)
    assert all(r.state is State.FOLLOWING for r in reports)
    assert float(np.abs(rig.joints() - start).max()) > 0.01, "the arm did not move"
    assert rig.core.following_periods >= len(reports)
    assert rig.core.max_tracking_error_m < 0.005
    # The tool is where the master says, give or take the servo lag.
    tip, _ = rig.kin.fk(rig.joints())
    wanted = reports[-1].setpoint_cp[0]
    assert math.dist(tip, wanted) < 0.005
    assert rig.model.mode is Mode.FOLLOWING
    assert rig.trips == []


def test_no_motion_until_engaged(rig: Harness) -> None:
    assert rig.request("arm").ok
    moved = rig.still_while(0.8)
    assert moved < STILL_RAD
    assert rig.core.supervisor.state is State.READY
    assert rig.core.following_periods == 0
    assert rig.model.mode is not Mode.FOLLOWING


# ------------------------------------------------------------------ each condition alone
def _operator_absent(h: Harness) -> dict[str, object]:
    h.master.operator_present = False
    return {}


def _no_command(h: Harness) -> dict[str, object]:
    h.sample = None
    return {"fresh": False}


def _stale_command(h: Harness) -> dict[str, object]:
    return {"fresh": False}  # the stream stops; the last sample stays in the mailbox


def _loss(h: Harness) -> dict[str, object]:
    return {"link": lambda now: healthy_link(now, loss=0.2)}


def _rtt_unknown(h: Harness) -> dict[str, object]:
    return {"link": lambda now: healthy_link(now)._replace(rtt_ns=None)}


def _video_old(h: Harness) -> dict[str, object]:
    h.master.video_age_us = 300_000
    return {}


def _video_none(h: Harness) -> dict[str, object]:
    h.master.video_age_us = None
    return {}


CONDITIONS = {
    "operator_absent": (_operator_absent, Reason.OPERATOR_ABSENT),
    "no_command": (_no_command, Reason.COMMAND_TIMEOUT),
    "stale_command": (_stale_command, Reason.COMMAND_TIMEOUT),
    "loss_above_limit": (_loss, Reason.LOSS_BURST),
    "rtt_unknown": (_rtt_unknown, Reason.RTT_UNKNOWN),
    "video_older_than_250ms": (_video_old, Reason.VIDEO_STALE),
    "no_video": (_video_none, Reason.VIDEO_STALE),
}


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_each_condition_alone_stops_motion(rig: Harness, name: str) -> None:
    apply, reason = CONDITIONS[name]
    rig.engage()
    last_fresh = rig.sample
    kw = apply(rig)
    # Past the command timeout: the stale case must stop only then.
    n = round(rig.core.cfg.safety.watchdog.command_timeout_ms / 1e3 / PERIOD_S) + 10
    reports = [rig.step(**kw) for _ in range(n)]  # type: ignore[arg-type]
    stopped = [r for r in reports if r.state is not State.FOLLOWING]
    assert stopped, f"{name}: still following"
    if name == "stale_command":
        # Exactly the periods within the age limit still moved; the first beyond it held.
        assert last_fresh is not None
        limit = rig.core.cfg.safety.watchdog.command_timeout_ms * 1e6
        for r in reports:
            assert (r.state is State.FOLLOWING) == (r.t_ns - last_fresh.recv_ns <= limit)
    else:
        assert reports[0].state is State.HOLD, "not stopped in the same period"
    assert stopped[0].reason is reason
    trip = rig.trips[-1]
    assert trip.reason == str(reason)
    assert 0 <= trip.hold_sent_ns - trip.detected_ns < rig.core.period_ns
    assert rig.still_while(0.3, **kw) < STILL_RAD
    assert rig.core.supervisor.state is not State.FOLLOWING
    assert rig.model.mode is not Mode.FOLLOWING


def test_trip_sends_hold_in_the_same_step(rig: Harness) -> None:
    rig.engage()
    rig.master.operator_present = False
    report = rig.step()
    assert report.state is State.HOLD
    # No further step runs: only the frame sent by the tripping step can stop the firmware.
    assert rig.model.mode is Mode.HOLDING
    (trip,) = rig.trips
    assert trip.reason == "operator_absent"
    assert trip.detected_ns == report.t_ns
    assert 0 <= trip.hold_sent_ns - trip.detected_ns < rig.core.period_ns


# ------------------------------------------------------------------ latching
def test_hold_latches_until_explicit_engage(rig: Harness) -> None:
    rig.engage()
    rig.master.operator_present = False
    rig.run(0.1)
    rig.master.operator_present = True  # the cause goes away ...
    assert rig.still_while(0.6) < STILL_RAD  # ... and nothing moves by itself
    assert rig.core.supervisor.state is State.HOLD
    assert rig.core.supervisor.reason is Reason.OPERATOR_ABSENT
    assert rig.request("engage").ok
    before = rig.joints()
    rig.run(0.8)
    assert float(np.abs(rig.joints() - before).max()) > 0.005


def test_fault_latches_until_clear_fault_and_engage(rig: Harness) -> None:
    rig.engage()
    jump = rig.master.position((rig.now - rig.t0) / 1e9)
    report = rig.step(command=rig.command(rig.now,
                                          (jump[0], jump[1] + 0.2, jump[2])))
    assert report.state is State.FAULT and report.reason is Reason.SETPOINT_JUMP
    assert rig.still_while(0.4) < STILL_RAD  # the master is back to normal: still latched
    refused = rig.request("engage")
    assert not refused.ok and refused.reason == "latched"
    assert rig.request("clear_fault").ok
    assert rig.core.supervisor.state is State.READY
    assert rig.still_while(0.3) < STILL_RAD
    rig.run(0.15)
    assert rig.request("engage").ok
    before = rig.joints()
    rig.run(0.8)
    assert float(np.abs(rig.joints() - before).max()) > 0.005


# ------------------------------------------------------------------ start-up
def test_engage_refused_while_the_robot_is_starting_then_accepted(rig: Harness) -> None:
    """Issue 11: the node's readiness input (children still starting) refuses engage
    with not_ready and says why in the reply; nothing moves, nothing trips; the same
    engage is accepted once the input clears."""
    assert rig.request("arm").ok
    rig.run(0.12)
    waiting = "robot starting: waiting for the ROS 2 bridge"
    refused = rig.request("engage", not_ready=waiting)
    assert (refused.ok, refused.reason, refused.detail) == (False, "not_ready", waiting)
    assert rig.still_while(0.2) < STILL_RAD
    assert rig.core.supervisor.state is State.READY and not rig.trips
    assert rig.request("engage").ok
    rig.run(0.1)
    assert rig.core.supervisor.state is State.FOLLOWING


def test_engage_waits_for_steady_arm_reports_after_a_reconnect(rig: Harness) -> None:
    """An arm whose state reports just came back is not yet one to follow on: engage is
    refused (not_ready) until they have been steady for startup.arm_steady_ms."""
    steady_s = rig.core.cfg.startup.arm_steady_ms / 1e3
    assert rig.request("arm").ok
    rig.run(0.12)
    rig.arm.unplugged = True
    rig.run(0.1)
    rig.arm.unplugged = False
    assert rig.arm.reconnect()
    assert rig.request("clear_fault").ok  # the lost link tripped (manipulator link lost)
    refused = rig.request("engage")
    assert (refused.ok, refused.reason) == (False, "not_ready")
    assert refused.detail.startswith("arm not steady yet")
    rig.run(steady_s)
    assert rig.request("engage").ok


# ------------------------------------------------------------------ serial port
def test_vanished_port_faults_and_needs_clear_and_engage(rig: Harness) -> None:
    rig.engage()
    rig.arm.unplugged = True
    reports = rig.run(0.3)
    assert rig.core.supervisor.state is State.FAULT
    assert rig.core.supervisor.reason is Reason.SERIAL_FAULT
    assert reports[-1].state is State.FAULT
    assert rig.trips[-1].reason == "serial_fault"
    rig.arm.unplugged = False
    # What the node's SerialReconnector does, off the control loop.
    assert rig.arm.reconnect()
    assert rig.still_while(0.5) < STILL_RAD
    assert rig.core.supervisor.state is State.FAULT
    assert rig.model.mode is not Mode.FOLLOWING
    assert rig.request("clear_fault").ok
    rig.run(0.15)
    assert rig.request("engage").ok
    before = rig.joints()
    reports = rig.run(0.8)
    assert all(r.state is State.FOLLOWING for r in reports), [r.reason for r in reports]
    assert float(np.abs(rig.joints() - before).max()) > 0.005


def test_engage_after_a_firmware_watchdog_brake_is_no_false_trip(rig: Harness) -> None:
    """State reports sent before the firmware saw the Release still say WATCHDOG_TRIPPED."""
    assert rig.request("arm").ok
    rig.advance(0.2)  # the host falls silent: the firmware brakes
    rig.arm.report_delay_ns = 50_000_000  # its reports now reach the host 50 ms late
    rig.run(0.01)
    assert rig.model.watchdog_tripped
    rig.run(0.2)
    assert rig.request("engage").ok
    reports = rig.run(0.5)
    assert all(r.state is State.FOLLOWING for r in reports), [str(r.reason) for r in reports]
    assert not rig.model.watchdog_tripped
    assert rig.trips == []


# ------------------------------------------------------------------ e-stop button
def test_firmware_estop_button(rig: Harness) -> None:
    rig.engage()
    rig.arm.press_estop()
    rig.run(0.2)
    sup = rig.core.supervisor
    assert sup.state is State.ESTOP and sup.reason is Reason.ESTOP_BUTTON
    assert rig.model.mode is Mode.BRAKED
    refused = rig.request("clear_fault")
    assert not refused.ok and refused.state == "estop"
    # The staff clear locally while the button is still pressed: refused, still ESTOP.
    assert not rig.clear_estop_local()
    reports = rig.run(0.2)
    assert all(r.state is State.ESTOP and r.estop for r in reports)
    assert not rig.request("arm").ok
    assert rig.still_while(0.3) < STILL_RAD
    rig.arm.release_estop()
    rig.run(0.1)
    assert rig.step().state is State.ESTOP, "releasing the button alone must not clear it"
    assert rig.clear_estop_local()
    assert rig.step().state is State.DISABLED
    rig.engage()
    before = rig.joints()
    rig.run(0.8)
    assert float(np.abs(rig.joints() - before).max()) > 0.005


# ------------------------------------------------------------------ bounded setpoints
def _nan(p: Vec3) -> Vec3:
    return (math.nan, p[1], p[2])


def _jump(p: Vec3) -> Vec3:
    return (p[0], p[1], p[2] + 0.3)


def _inf(p: Vec3) -> Vec3:
    return (p[0], math.inf, p[2])


@pytest.mark.parametrize(("make", "reason"), [(_nan, Reason.NONFINITE_SETPOINT),
                                              (_inf, Reason.NONFINITE_SETPOINT),
                                              (_jump, Reason.SETPOINT_JUMP)])
def test_bad_command_never_reaches_the_port(rig: Harness, make: Callable[[Vec3], Vec3],
                                            reason: Reason) -> None:
    rig.engage()
    targets = list(rig.model.targets)
    bad = make(rig.master.position((rig.now - rig.t0) / 1e9))
    report = rig.step(command=rig.command(rig.now + PERIOD_NS, bad))
    assert report.state is State.FAULT and report.reason is reason
    rig.run(0.2, command=rig.command(rig.now, bad))
    snap = rig.model
    assert all(math.isfinite(t) for t in snap.targets)
    # Nothing after the last good target: the firmware holds at or before it.
    assert max(abs(a - b) for a, b in zip(snap.targets, targets, strict=True)) < 0.05
    assert snap.mode is Mode.BRAKED


BOX = {"workspace_min": (0.30, -0.03, 0.20), "workspace_max": (0.40, 0.03, 0.30)}


@pytest.mark.parametrize("rig", [BOX], indirect=True)
def test_out_of_workspace_is_clamped_at_the_boundary(rig: Harness) -> None:
    rig.engage()
    # The master drifts +y at 5 cm/s, twice as far as the box allows.
    t_start = rig.now
    centre = rig.master.position((rig.now - rig.t0) / 1e9)  # where the master is now
    peak = -1.0
    for _ in range(round(1.6 / PERIOD_S)):
        now = rig.now + PERIOD_NS
        y = centre[1] + 0.05 * (now - t_start) / 1e9
        r = rig.step(command=rig.command(now, (centre[0], y, centre[2])))
        assert r.state is State.FOLLOWING, r.reason
        peak = max(peak, r.setpoint_cp[0][1])
        tip, _ = rig.kin.fk(np.array(rig.model.targets))
        assert tip[1] <= BOX["workspace_max"][1] + 1e-3
    assert peak == pytest.approx(BOX["workspace_max"][1], abs=1e-3)


# ------------------------------------------------------------------ clutch
def test_clutch_holds_and_resumes_without_a_jump(rig: Harness) -> None:
    rig.engage()
    rig.run(0.3)
    rig.master.clutch = True
    report = rig.step()
    assert report.state is State.HOLD and report.reason is Reason.CLUTCH
    # The hand travels 4 cm while clutched; the tool stays.
    held = rig.joints()
    for i in range(15):
        rig.master.offset = (0.0, 0.04 * (i + 1) / 15, 0.0)
        rig.step()
    assert rig.still_while(0.1) < STILL_RAD
    tip_held, _ = rig.kin.fk(rig.joints())
    rig.master.clutch = False
    reports = rig.run(0.5)
    assert reports[0].state is State.FOLLOWING and reports[0].reason is Reason.CLUTCH_RELEASED
    step_m = rig.core.cfg.safety.motion.step_m(PERIOD_S)
    assert math.dist(reports[0].setpoint_cp[0], tip_held) <= step_m + 1e-4
    for a, b in itertools.pairwise(reports):
        assert math.dist(a.setpoint_cp[0], b.setpoint_cp[0]) <= step_m + 1e-4
    tip_now, _ = rig.kin.fk(rig.joints())
    assert math.dist(tip_now, tip_held) < 0.02, "the clutch offset became a jump"
    assert float(np.abs(rig.joints() - held).max()) > 1e-3, "motion did not resume"
    assert rig.trips == []


# ------------------------------------------------------------------ forged and hooked-up
def test_forged_send_times_do_not_stretch_the_jump_bound(rig: Harness) -> None:
    """Issue 12.4: back-date one command and forward-date the next by 45 ms (both inside
    the 100 ms age limit); the jump bound is the robot's receive span, so a 50 mm step
    (200 periods' worth at 1 kHz) faults instead of passing as 90 ms of motion."""
    rig.engage()
    here = rig.master.position((rig.now - rig.t0) / 1e9)
    back = rig.command(rig.now + PERIOD_NS - 45_000_000, here)
    rig.step(command=back)
    assert rig.core.supervisor.state is State.FOLLOWING
    leap = (here[0], here[1] + 0.05, here[2])
    report = rig.step(command=rig.command(rig.now + PERIOD_NS + 45_000_000, leap))
    assert report.state is State.FAULT and report.reason is Reason.SETPOINT_JUMP
    assert rig.last is not None and rig.last.frames == (Hold(brake=True),)


def test_the_loop_acts_on_a_tracking_error(rig: Harness) -> None:
    """Issue 12.10(d): not only the monitor: the period holds and faults on its verdict."""
    rig.engage()
    reading = rig.arm.read()
    assert reading.sample is not None
    q = list(reading.sample.positions)
    q[0] += 0.1  # the arm is ~3 cm from where it was told to be
    off = replace(reading, sample=replace(reading.sample, positions=tuple(q)))
    now = rig.now + PERIOD_NS
    assert rig.sample is not None
    sample = CommandSample(rig.command(now), now)
    out = rig.core.update(now, off, ControlInputs(sample, healthy_link(now)))
    assert out.report.state is State.FAULT and out.report.reason is Reason.TRACKING_ERROR
    assert out.frames == (Hold(brake=True),), "no targets may follow a tracking error"
    assert out.trip is not None and out.trip.reason == "tracking_error"
    assert out.report.tracking_error_m > rig.core.cfg.safety.motion.tracking_error_m


def test_every_control_operation_is_an_audit_record(rig: Harness) -> None:
    """Issue 12.5: accepted or refused, each request leaves one audit record."""
    rig.step(requests=("engage", "arm", "set_scale", "clear_fault"))
    assert rig.last is not None
    records = rig.last.audit
    assert [(a.op, a.ok, a.result) for a in records] == [
        ("engage", False, "not_armed"), ("arm", True, "armed"),
        ("set_scale", False, "scale_out_of_range"), ("clear_fault", True, "armed")]
    assert all(a.peer == b"test" and a.t_ns == rig.now for a in records)
    assert [a.req_id for a in records] == [r.req_id for _, r in rig.last.replies]


def test_report_carries_joint_velocities_and_efforts(rig: Harness) -> None:
    rig.engage()
    report = rig.run(0.2)[-1]
    assert len(report.measured_v) == len(report.measured_effort) == rig.kin.n
    assert any(abs(v) > 1e-4 for v in report.measured_v), "the arm moves: velocities too"


def test_engage_needs_the_hand_aligned_with_the_instrument(rig: Harness) -> None:
    """The surgeon's hand (registered master orientation) against the instrument's, on by
    default: a hand turned 40 degrees away is refused, the aligned hand engages."""
    tol = rig.core.cfg.safety.motion.align_tolerance_rad
    assert tol is not None and tol < math.radians(40)
    instrument = rig.master.quat
    rig.master.quat = quat_mul(quat_from_rotvec((0.0, 0.0, math.radians(40))), instrument)
    assert rig.request("arm").ok
    rig.run(0.12)
    refused = rig.request("engage")
    assert not refused.ok and refused.reason == "not_aligned"
    rig.run(0.1)
    assert rig.core.following_periods == 0 and rig.model.mode is not Mode.FOLLOWING
    rig.master.quat = quat_mul(quat_from_rotvec((0.0, 0.0, math.radians(10))), instrument)
    assert rig.request("engage").ok
    rig.run(0.1)
    assert rig.core.supervisor.state is State.FOLLOWING


def test_an_external_trip_holds_in_the_same_period(rig: Harness) -> None:
    """A trip decided outside the loop (a revoked key's session): latched fault, hold now."""
    rig.engage()
    now = rig.now + PERIOD_NS
    rig._clock[0] = now
    out = rig.core.update(now, rig.arm.read(), ControlInputs(
        CommandSample(rig.command(now), now), healthy_link(now),
        trip=ExternalTrip(Reason.SERIAL_FAULT, "test: revoked")))
    assert out.report.state is State.FAULT and out.frames == (Hold(brake=True),)
    assert out.trip is not None and out.trip.detected_ns == now
