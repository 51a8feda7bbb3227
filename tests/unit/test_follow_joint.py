"""Joint-space teleop (``Command.joints``) through the control core on the virtual arm.

The same harness as ``test_control_core`` (the robot's own ``run_period`` on the
``virtual`` backend, simulated time), with a master that sends joint positions.
Every safety check of joint mode has a test here that watches the arm itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest
from test_control_core import (
    PERIOD_NS,
    PERIOD_S,
    STILL_RAD,
    Harness,
    healthy_link,
    make_arm,
    make_cfg,
)

from robot_side.control import ControlCore
from robot_side.control_io import CommandSample, ControlInputs
from robot_side.firmware_model import Mode
from robot_side.kinematics import Kinematics
from robot_side.manipulator.base import Hold
from safety.states import Reason, State
from transport.schema import Command, SchemaError, decode, encode

AMPLITUDE_RAD = 0.2
"""The joint master swings every joint this far, at 0.5 Hz."""


@dataclass
class JointMaster:
    start: np.ndarray
    offset: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def joints(self, t: float) -> tuple[float, ...]:
        q = self.start + AMPLITUDE_RAD * math.sin(math.pi * t)
        if self.offset.size:
            q = q + self.offset
        return tuple(float(v) for v in q)


class JointHarness(Harness):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.jm = JointMaster(self.kin.home.copy())
        self.override: tuple[float, ...] | None = None

    def command(self, now_ns: int, position: Any = None) -> Command:
        cmd = super().command(now_ns, position)
        joints = self.override if self.override is not None else \
            self.jm.joints((now_ns - self.t0) / 1e9)
        return replace(cmd, joints=joints)


WIDE = {"workspace_min": (-1.0, -1.0, -1.0), "workspace_max": (1.0, 1.0, 1.5)}


@pytest.fixture
def jrig(kin: Kinematics, request: pytest.FixtureRequest) -> Any:
    motion = getattr(request, "param", {})
    clock = [1_000_000_000]
    with make_arm(kin, clock) as arm:
        h = JointHarness(ControlCore(make_cfg(**motion), kin), arm, kin, clock)
        yield h


def test_the_arm_follows_the_master_joints(jrig: JointHarness) -> None:
    jrig.jm.start = jrig.joints()
    jrig.t0 = jrig.now + 200 * PERIOD_NS  # still until engaged
    jrig.override = tuple(float(v) for v in jrig.joints())
    jrig.engage()
    jrig.override = None
    reports = jrig.run(0.8)
    assert all(r.state is State.FOLLOWING for r in reports), reports[-1].reason
    wanted = np.array(jrig.jm.joints((jrig.now - jrig.t0) / 1e9))
    assert float(np.abs(jrig.joints() - jrig.jm.start).max()) > 0.1, "the arm did not move"
    # Within the servo lag of the master (0.2 rad x pi x 0.5 Hz ~ 0.3 rad/s).
    assert float(np.abs(jrig.joints() - wanted).max()) < 0.03
    assert np.allclose(reports[-1].setpoint_q, jrig.model.targets, atol=1e-9)
    assert jrig.trips == []


def test_engage_is_refused_until_the_master_is_at_the_follower(jrig: JointHarness) -> None:
    """Mismatch at engage: the leader 0.3 rad away from the follower on one joint is
    refused (not_aligned) and nothing moves; within the tolerance it engages and the
    residual offset is held, so the first targets are where the arm is (no jump)."""
    q = jrig.joints()
    tol = jrig.core.cfg.joint_teleop.engage_tolerance_rad
    far = q.copy()
    far[1] += tol + 0.15
    jrig.override = tuple(float(v) for v in far)
    assert jrig.request("arm").ok
    jrig.run(0.12)
    refused = jrig.request("engage")
    assert not refused.ok and refused.reason == "not_aligned"
    jrig.run(0.1)
    assert jrig.core.following_periods == 0 and jrig.model.mode is not Mode.FOLLOWING
    near = q.copy()
    near[1] += tol * 0.8
    jrig.override = tuple(float(v) for v in near)
    assert jrig.request("engage").ok
    jrig.run(0.2)
    assert jrig.core.supervisor.state is State.FOLLOWING
    assert float(np.abs(jrig.joints() - q).max()) < 1e-3, "the engage offset became a jump"


@pytest.mark.parametrize("jrig", [WIDE], indirect=True)
def test_joint_limits_and_velocity_bound_the_targets(jrig: JointHarness) -> None:
    jrig.override = tuple(float(v) for v in jrig.joints())
    jrig.engage()
    upper = float(jrig.kin.upper[0]) - jrig.core.cfg.safety.motion.joint_margin_rad
    speed = jrig.core.cfg.safety.motion.max_joint_speed_rad_s
    target = list(jrig.override)
    prev = float(jrig.core.follower.q_set[0])
    # The master runs joint 0 at 4 rad/s (twice the bound, inside the jump bound) past
    # its upper limit.
    for _ in range(round(5.0 / PERIOD_S)):
        target[0] += 4.0 * PERIOD_S
        jrig.override = tuple(target)
        r = jrig.step()
        assert r.state is State.FOLLOWING, r.reason
        assert r.setpoint_q[0] - prev <= speed * PERIOD_S + 1e-9
        assert r.setpoint_q[0] <= upper + 1e-9
        prev = r.setpoint_q[0]
    assert prev == pytest.approx(upper, abs=1e-6)
    assert jrig.model.targets[0] <= upper + 1e-9


def test_the_workspace_stops_a_joint_master(jrig: JointHarness) -> None:
    """Joint 0 (base yaw) swings the tool sideways out of the default box: the tool
    stops at the box's side, and the tool's step stays within the Cartesian bound."""
    jrig.override = tuple(float(v) for v in jrig.joints())
    jrig.engage()
    motion = jrig.core.cfg.safety.motion
    target = list(jrig.override)
    prev = jrig.core.follower.setpoint_cp[0]
    for _ in range(round(1.5 / PERIOD_S)):
        target[0] += 1.5 * PERIOD_S
        jrig.override = tuple(target)
        r = jrig.step()
        assert r.state is State.FOLLOWING, r.reason
        assert math.dist(r.setpoint_cp[0], prev) <= motion.step_m(PERIOD_S) + 1e-9
        prev = r.setpoint_cp[0]
        tip, _ = jrig.kin.fk(np.array(jrig.model.targets))
        assert tip[1] <= motion.workspace_max[1] + 1e-3
    assert jrig.core.joint_follower.workspace_stops > 0


def _nan(q: list[float]) -> tuple[float, ...]:
    return (math.nan, *q[1:])


def _jump(q: list[float]) -> tuple[float, ...]:
    return (q[0], q[1] + 0.3, *q[2:])


def _short(q: list[float]) -> tuple[float, ...]:
    return tuple(q[:-1])


def _cartesian(q: list[float]) -> None:
    return None


@pytest.mark.parametrize(("make", "reason"), [
    (_nan, Reason.NONFINITE_SETPOINT), (_jump, Reason.SETPOINT_JUMP),
    (_short, Reason.JOINT_COMMAND), (_cartesian, Reason.JOINT_COMMAND)])
def test_a_bad_joint_command_never_reaches_the_port(jrig: JointHarness, make: Any,
                                                    reason: Reason) -> None:
    jrig.override = tuple(float(v) for v in jrig.joints())
    jrig.engage()
    jrig.run(0.1)
    targets = list(jrig.model.targets)
    now = jrig.now + PERIOD_NS
    bad = replace(jrig.command(now), joints=make(list(jrig.override)))
    report = jrig.step(command=bad)
    assert report.state is State.FAULT and report.reason is reason
    assert jrig.last is not None and jrig.last.frames == (Hold(brake=True),)
    jrig.run(0.2)
    snap = jrig.model
    assert all(math.isfinite(t) for t in snap.targets)
    assert max(abs(a - b) for a, b in zip(snap.targets, targets, strict=True)) < 1e-9
    assert snap.mode is Mode.BRAKED


def test_a_joint_command_while_following_cartesian_faults(jrig: JointHarness) -> None:
    jrig.override = None
    base = jrig.command

    def cartesian(now_ns: int, position: Any = None) -> Command:
        return replace(base(now_ns, position), joints=None)

    jrig.command = cartesian  # type: ignore[method-assign]
    jrig.engage()
    assert not jrig.core.joint_follower.joint_mode
    now = jrig.now + PERIOD_NS
    report = jrig.step(command=replace(cartesian(now), joints=tuple(jrig.joints().tolist())))
    assert report.state is State.FAULT and report.reason is Reason.JOINT_COMMAND


def test_a_wrong_joint_count_cannot_engage(jrig: JointHarness) -> None:
    jrig.override = tuple(float(v) for v in jrig.joints())[:-1]
    assert jrig.request("arm").ok
    jrig.run(0.12)
    reply = jrig.request("engage")
    assert not reply.ok and reply.reason == "not_aligned"
    assert jrig.core.following_periods == 0


def test_commands_that_stop_hold_the_arm(jrig: JointHarness) -> None:
    """The joint stream stops: the command timeout holds the arm (the watchdog is the
    Cartesian one: a joint command is a ``Command``)."""
    jrig.jm.start = jrig.joints()
    jrig.t0 = jrig.now + 200 * PERIOD_NS
    jrig.override = tuple(float(v) for v in jrig.joints())
    jrig.engage()
    jrig.override = None
    jrig.run(0.3)
    reports = jrig.run(0.2, fresh=False)
    assert reports[-1].state is not State.FOLLOWING
    assert reports[-1].reason is Reason.COMMAND_TIMEOUT
    assert jrig.still_while(0.2, fresh=False) < STILL_RAD


def test_the_loop_acts_on_a_tracking_error_in_joint_mode(jrig: JointHarness) -> None:
    jrig.override = tuple(float(v) for v in jrig.joints())
    jrig.engage()
    reading = jrig.arm.read()
    assert reading.sample is not None
    q = list(reading.sample.positions)
    q[0] += 0.1
    off = replace(reading, sample=replace(reading.sample, positions=tuple(q)))
    now = jrig.now + PERIOD_NS
    out = jrig.core.update(now, off, ControlInputs(CommandSample(jrig.command(now), now),
                                                    healthy_link(now)))
    assert out.report.reason is Reason.TRACKING_ERROR
    assert out.frames == (Hold(brake=True),)


def test_forged_send_times_do_not_stretch_the_joint_jump_bound(jrig: JointHarness) -> None:
    """Back-date one command and forward-date the next by 45 ms: the span is the robot's
    receive span, so 0.1 rad in one period (50 x the speed bound) faults instead of
    passing as 10 periods of motion."""
    q = [float(v) for v in jrig.joints()]
    jrig.override = tuple(q)
    jrig.engage()
    for _ in range(20):  # the master moves slowly: its joints change every period
        q[0] += 0.001
        jrig.override = tuple(q)
        jrig.step()
    q[0] += 0.001
    back = replace(jrig.command(jrig.now + PERIOD_NS - 45_000_000), joints=tuple(q))
    jrig.step(command=back)
    assert jrig.core.supervisor.state is State.FOLLOWING
    leap = (q[0] + 0.1, *q[1:])
    cmd = replace(jrig.command(jrig.now + PERIOD_NS + 45_000_000), joints=leap)
    report = jrig.step(command=cmd)
    assert report.state is State.FAULT and report.reason is Reason.SETPOINT_JUMP


# ------------------------------------------------------------------ wire
def test_joints_on_the_wire_round_trip_and_are_bounded() -> None:
    cmd = Command(seq=1, t_send_ns=5, position=(0.3, 0.0, 0.2), orientation=(1.0, 0, 0, 0),
                  grip=0.0, clutch=False, operator_present=True)
    assert b"joints" not in encode(cmd), "old bytes must stay the same"
    with_joints = replace(cmd, joints=(0.1, -0.2, 0.3))
    assert decode(encode(with_joints)) == with_joints
    for bad in ((math.nan,), tuple(0.0 for _ in range(17)), (), (100.0,)):
        with pytest.raises(SchemaError):
            decode(encode(replace(cmd, joints=bad)))


def test_a_clutch_in_joint_space_holds_and_resumes_with_the_offset(jrig: JointHarness) -> None:
    """The leader travels 0.3 rad while clutched (past the jump bound and the engage
    tolerance): the follower stays, and on release follows from where it is."""
    q = [float(v) for v in jrig.joints()]
    jrig.override = tuple(q)
    jrig.engage()
    jrig.master.clutch = True
    assert jrig.step().reason is Reason.CLUTCH
    for i in range(30):
        jrig.override = (q[0], q[1] + 0.01 * (i + 1), *q[2:])
        jrig.step()
    assert jrig.still_while(0.1) < STILL_RAD
    held = jrig.joints()
    jrig.master.clutch = False
    jrig.step()
    for i in range(100):  # then the hand moves joint 1 back by 0.05 rad
        jrig.override = (q[0], q[1] + 0.3 - 0.0005 * (i + 1), *q[2:])
        r = jrig.step()
        assert r.state is State.FOLLOWING, r.reason
    jrig.run(0.3)
    moved = jrig.joints() - held
    assert moved[1] == pytest.approx(-0.05, abs=0.005)
    assert float(np.abs(np.delete(moved, 1)).max()) < 1e-3
    assert jrig.trips == []
