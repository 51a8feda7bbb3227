"""The control core's behaviour, period by period, against a recorded trace (issue 11).

Cutting ``ControlCore.update``'s CPU must not change what it does. One scripted
session drives the core on the ``virtual`` arm on simulated time (arm, engage,
circles, fast and rotating master motion, workspace and step clamps, a scale
change, round-trip scaling, a clutch and its re-anchor, a sweep through the
wrist singularity and to the edge of reach, a setpoint jump, a NaN command, a
command timeout, operator absence, the e-stop, a cut cable, joint-space
following) and every period's output is compared with the trace the core
produced before the optimisation (``tests/golden/control_trace.json.gz``):
frames, supervisor state and reason, transitions with their details, trips,
replies, setpoint and scale. Floats within 1e-9, everything else exactly. The
loop is closed (the arm model follows the frames), so the first period that
differs is reported and nothing after it is compared.

Regenerate the trace only for a deliberate change of behaviour:
``CONTROL_TRACE_WRITE=1 pytest tests/unit/test_control_equivalence.py``.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from robot_side.config import ControlConfig, RobotConfig
from robot_side.control import CommandSample, ControlCore, LinkView, PendingRequest
from robot_side.control_io import ControlInputs, ControlOutput, EstopEvent
from robot_side.firmware_model import default_params
from robot_side.kinematics import Kinematics
from robot_side.manipulator.base import Hold, Release, Targets
from robot_side.manipulator.virtual import VirtualManipulator
from robot_side.period import run_period
from safety.config import SafetyConfig, WatchdogLimits
from telesurgery.quat import Quat, Vec3, quat_from_rotvec, quat_mul
from transport.linkstats import LinkSnapshot
from transport.schema import Command, ControlRequest

TRACE = Path(__file__).parents[1] / "golden" / "control_trace.json.gz"
PERIOD_NS = 1_000_000
TOL = 1e-9
SCALE = 9
"""Where a period's record (``_record``) keeps the motion scale."""


def _link(now_ns: int, rtt_ms: float = 2.0, loss: float = 0.0) -> LinkView:
    snap = LinkSnapshot(latency_us=1000, latency_p99_us=1500, jitter_us=100, loss=loss,
                        received=1000, lost=0, duplicates=0, reordered=0, last_recv_ns=now_ns)
    return LinkView(snap, int(rtt_ms * 1e6), True)


class Session:
    """A surgeon's session, scripted: ``run(n, **what)`` runs n periods."""

    def __init__(self, kin: Kinematics) -> None:
        self.kin = kin
        self.clock = [1_000_000_000]
        params = default_params(kin.n, kin.lower.tolist(), kin.upper.tolist(),
                                kin.velocity.tolist())
        self.arm = VirtualManipulator(params, initial=kin.home.tolist(),
                                      clock=lambda: self.clock[0], write_budget_ns=PERIOD_NS)
        self.arm.open()
        cfg = RobotConfig(control=ControlConfig(rate_hz=1000.0, realtime=False, scale=1.0),
                          safety=SafetyConfig(watchdog=WatchdogLimits(settle_ms=100.0)))
        self.core = ControlCore(cfg, kin)
        pos, quat = kin.pose(kin.home)
        self.pos: Vec3 = pos
        self.quat: Quat = quat
        self.joints: tuple[float, ...] | None = None
        self.seq = 0
        self.req_id = 0
        self.present = True
        self.clutch = False
        self.sample: CommandSample | None = None
        self.trace: list[list[Any]] = []

    def move(self, dx: float = 0.0, dy: float = 0.0, dz: float = 0.0) -> None:
        p = self.pos
        self.pos = (p[0] + dx, p[1] + dy, p[2] + dz)

    def turn(self, rotvec: Vec3) -> None:
        self.quat = quat_mul(quat_from_rotvec(rotvec), self.quat)

    def period(self, *, fresh: bool = True, ops: tuple[str, ...] = (), value: float | None = None,
               estop: tuple[EstopEvent, ...] = (), rtt_ms: float = 2.0, loss: float = 0.0,
               position: Vec3 | None = None) -> ControlOutput:
        self.clock[0] += PERIOD_NS
        now = self.clock[0]
        if fresh:
            self.seq += 1
            cmd = Command(seq=self.seq, t_send_ns=now, position=position or self.pos,
                          orientation=self.quat, grip=0.5, clutch=self.clutch,
                          operator_present=self.present, video_age_us=30_000,
                          joints=self.joints)
            self.sample = CommandSample(cmd, now)
        reqs = []
        for op in ops:
            self.req_id += 1
            reqs.append(PendingRequest(b"surgeon", ControlRequest(
                req_id=self.req_id, op=op, value=value if op == "set_scale" else None), now))
        out = run_period(self.arm, self.core, now, ControlInputs(
            self.sample, _link(now, rtt_ms, loss), tuple(reqs), estop)).output
        self.trace.append(_record(out))
        return out

    def run(self, n: int, step: Vec3 = (0.0, 0.0, 0.0), rotvec: Vec3 = (0.0, 0.0, 0.0),
            **kw: Any) -> None:
        for _ in range(n):
            self.move(*step)
            if rotvec != (0.0, 0.0, 0.0):
                self.turn(rotvec)
            self.period(**kw)

    def realign(self) -> None:
        """The surgeon turns the hand to the instrument's orientation (engage needs it)."""
        assert self.arm.model is not None
        self.quat = self.kin.pose(list(self.arm.model.positions))[1]

    def engage(self) -> None:
        self.realign()
        self.period(ops=("arm",))
        self.run(110)
        self.period(ops=("engage",))
        self.run(20)


def _frame(f: Targets | Hold | Release) -> list[Any]:
    if isinstance(f, Targets):
        return ["T", *f.q, f.grip]
    if isinstance(f, Hold):
        return ["H", f.brake]
    return ["R"]


def _record(out: ControlOutput) -> list[Any]:
    r = out.report
    return [
        [_frame(f) for f in out.frames], str(r.state), str(r.reason),
        [[t.t_ns, str(t.state_from), str(t.state_to), str(t.reason), t.detail]
         for t in out.transitions],
        None if out.trip is None else [out.trip.reason, out.trip.detected_ns,
                                       out.trip.last_command_ns],
        [[rep.ok, rep.state, rep.reason, rep.detail] for _, rep in out.replies],
        [[a.op, a.ok, a.result, a.state] for a in out.audit],
        [list(e) for e in out.estop_replies],
        [*r.setpoint_cp[0], *r.setpoint_cp[1]],
        r.scale, r.tracking_error_m, r.firmware_flags, r.health.ok,
        None if r.health.trip is None else str(r.health.trip),
    ]


def play(kin: Kinematics) -> list[list[Any]]:
    s = Session(kin)
    s.run(20, fresh=False)                       # no command yet: disabled, held
    s.run(20)
    s.period(ops=("engage",))                    # refused: not armed
    s.engage()
    s.run(300, step=(0.0, 0.00005, 0.0))         # slow motion
    s.run(40, step=(0.0004, 0.0, 0.0))           # 0.4 m/s: the step clamp
    s.run(60, rotvec=(0.0, 0.0, 0.005))          # 5 rad/s: the rotation step clamp
    s.run(40)                                    # the hand stops: the arm catches up
    s.run(60, rotvec=(0.0, 0.0, -0.002))
    s.period(ops=("set_scale",), value=0.5)      # a scale change re-anchors
    s.run(100, step=(0.0, -0.0001, 0.0))
    s.period(ops=("set_scale",), value=99.0)     # refused: out of range
    s.run(100, step=(0.0, 0.0001, 0.00005), rtt_ms=150.0)  # round trip scales motion down
    s.clutch = True
    s.run(50, step=(0.0002, 0.0, 0.0))           # clutched: the master moves alone
    s.clutch = False
    s.run(80, step=(-0.0001, 0.0, 0.0))          # released: re-anchored, no jump
    s.period(ops=("set_scale",), value=1.0)
    s.run(250, step=(0.0, 0.0, -0.0002))         # down to the workspace floor and below
    s.run(250, step=(0.0, 0.0, 0.0002))
    s.run(5)
    s.period(position=(s.pos[0] + 0.05, s.pos[1], s.pos[2]))  # a 5 cm leap: setpoint_jump
    s.run(10)
    s.period(ops=("engage",))                    # refused: latched fault
    s.period(ops=("clear_fault",))
    s.run(110)
    s.realign()
    s.period(ops=("engage",))
    s.run(30)
    s.run(600, step=(0.00025, 0.0, 0.0))         # out towards the edge of reach, and back:
    s.run(600, step=(-0.00025, 0.0, 0.0))        # the arm lags at the turn (tracking error)
    s.period(ops=("clear_fault",))
    s.run(110)
    s.realign()
    s.period(ops=("engage",))
    s.run(30)
    s.run(700, rotvec=(0.0, -0.001, 0.0))        # tilt the tool towards the wrist singularity
    s.period(ops=("clear_fault",))
    s.run(110)
    s.realign()
    s.period(ops=("engage",))
    s.run(30)
    s.period(position=(math.nan, s.pos[1], s.pos[2]))  # non-finite: fault
    s.period(ops=("clear_fault",))
    s.run(110)
    s.realign()
    s.period(ops=("engage",))
    s.run(30)
    s.run(70, fresh=False)                       # the stream stops: command timeout, hold
    s.run(110)
    s.realign()
    s.period(ops=("engage",))
    s.run(30, step=(0.0, 0.0001, 0.0))
    s.run(60, loss=0.3)                          # loss burst: hold, then it clears
    s.run(110)
    s.realign()
    s.period(ops=("engage",))
    s.present = False
    s.run(20)                                    # operator absent: hold
    s.present = True
    s.run(110)
    s.realign()
    s.period(ops=("engage",))
    s.run(30, step=(0.0, -0.0001, 0.0))
    s.period(estop=(EstopEvent("press", token=1),))
    s.run(20)
    s.period(ops=("clear_fault",))               # refused: an e-stop is cleared locally
    s.period(estop=(EstopEvent("status", token=2),))
    s.period(estop=(EstopEvent("clear", token=3),))
    s.engage()
    s.run(30, step=(0.0, 0.0001, 0.0))
    s.arm.unplugged = True                       # the cable is cut
    s.run(10)
    s.arm.unplugged = False
    s.arm.reconnect()
    s.run(10)
    s.period(ops=("clear_fault",))
    s.run(110)
    s.realign()
    s.period(ops=("engage",))
    s.run(30)
    s.period(ops=("disengage",))
    s.run(10)
    s.joints = tuple(s.core.follower.q_set.tolist())  # joint-space following
    s.period(ops=("engage",))
    for i in range(150):
        q = list(s.joints)
        q[0] += 0.0005
        q[4] += 0.0003 * math.sin(i / 20.0)
        s.joints = tuple(q)
        s.period()
    s.joints = None
    s.run(5)                                     # a Cartesian command in joint mode: fault
    s.period(ops=("disarm",))
    s.period(ops=("clear_fault",))
    s.period(ops=("disarm",))
    s.run(10)
    s.arm.close()
    return s.trace


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 12) if math.isfinite(value) else value
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def _first_difference(want: Any, got: Any, where: str) -> str | None:
    if isinstance(want, float) or isinstance(got, float):
        if isinstance(want, (int, float)) and isinstance(got, (int, float)) and (
                (math.isnan(want) and math.isnan(got)) or abs(want - got) <= TOL):
            return None
        return f"{where}: {want!r} != {got!r}"
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return f"{where}: length {len(want)} != {len(got)}: {want!r} != {got!r}"
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            found = _first_difference(w, g, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    return None if want == got else f"{where}: {want!r} != {got!r}"


@pytest.fixture(scope="module")
def trace(kin: Kinematics) -> list[list[Any]]:
    # Tuples as lists, floats to 12 decimals (well inside TOL; the file compresses better).
    recorded: list[list[Any]] = json.loads(json.dumps(_rounded(play(kin))))
    return recorded


def test_the_core_does_what_it_did_before(trace: list[list[Any]]) -> None:
    got = trace
    if os.environ.get("CONTROL_TRACE_WRITE") == "1":
        TRACE.write_bytes(gzip.compress(json.dumps(got).encode(), mtime=0))
    want = json.loads(gzip.decompress(TRACE.read_bytes()))
    for period, (w, g) in enumerate(zip(want, got, strict=False)):
        found = _first_difference(w, g, f"period {period}")
        assert found is None, found
    assert len(got) == len(want)


def test_the_session_covers_every_path(trace: list[list[Any]]) -> None:
    """The script still reaches what it is meant to exercise (else the trace proves less)."""
    reasons = {t[3] for p in trace for t in p[3]}
    assert {"engaged", "clutch", "clutch_released", "setpoint_jump", "nonfinite_setpoint",
            "tracking_error", "ik_failed",
            "command_timeout", "loss_burst", "operator_absent", "estop_local",
            "estop_cleared", "serial_fault", "fault_cleared", "joint_command",
            "disengaged", "disarmed"} <= reasons, reasons
    following = [p for p in trace if p[1] == "following"]
    assert len(following) > 1500
    assert any(0.0 < p[SCALE] < 1.0 for p in following), "no round-trip scaling"
    refused = {r[2] for p in trace for r in p[5] if not r[0]}
    assert {"not_armed", "latched", "scale_out_of_range"} <= refused, refused
