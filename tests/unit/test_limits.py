"""Motion limits: every rule has a test that fails without it.

Run ``python tests/unit/test_limits.py`` for the per-call cost of each check.
"""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safety.config import MotionLimits
from safety.limits import (
    MAX_SPAN_PERIODS,
    CartesianLimiter,
    JointLimiter,
    TrackingMonitor,
    quat_angle,
)
from safety.states import Reason

PERIOD = 0.001
LIM = MotionLimits()
STEP = LIM.step_m(PERIOD)
STEP_RAD = LIM.step_rad(PERIOD)
IDENTITY = (1.0, 0.0, 0.0, 0.0)
HOME = (0.35, 0.0, 0.25)
SPHERE = MotionLimits(workspace_shape="sphere", workspace_center=(0.35, 0.0, 0.25),
                      workspace_radius_m=0.1)


def rot_z(angle: float) -> tuple[float, float, float, float]:
    return (math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2))


def limiter(limits: MotionLimits = LIM, pos=HOME, quat=IDENTITY) -> CartesianLimiter:
    lim = CartesianLimiter(limits, PERIOD)
    lim.reset(pos, quat)
    return lim


def dist(a, b) -> float:
    return math.dist(a, b)


# --- Cartesian --------------------------------------------------------------------------


@pytest.mark.parametrize("pos, quat", [
    ((math.nan, 0.0, 0.25), IDENTITY),
    ((0.35, math.inf, 0.25), IDENTITY),
    (HOME, (math.nan, 0.0, 0.0, 0.0)),
    (HOME, (1.0, 0.0, 0.0, -math.inf)),
    (HOME, (0.5, 0.0, 0.0, 0.0)),  # finite but not a unit quaternion: corrupt
])
def test_nonfinite_or_nonunit_faults_and_returns_last_allowed(pos, quat):
    lim = limiter()
    moved = lim.limit((HOME[0] + STEP / 2, HOME[1], HOME[2]), IDENTITY)
    result = lim.limit(pos, quat)
    assert result.fault == "nonfinite_setpoint"
    assert (result.position, result.quat) == (moved.position, moved.quat) == lim.last
    assert lim.faults == 1
    # The process keeps running: the next good command is accepted.
    assert lim.limit((HOME[0] + STEP, HOME[1], HOME[2]), IDENTITY).fault is None


def test_ten_x_jump_inside_workspace_faults_and_is_never_executed():
    """Alemzadeh-style: a valid-looking command that leaps 10x one period's bound."""
    lim = limiter()
    for i in range(1, 4):
        assert lim.limit((HOME[0] + i * STEP, HOME[1], HOME[2]), IDENTITY).fault is None
    before = lim.last
    attack = (HOME[0] + 3 * STEP + 11 * STEP, HOME[1], HOME[2])  # well inside the box
    result = lim.limit(attack, IDENTITY)
    assert result.fault == "setpoint_jump"
    assert (result.position, result.quat) == before == lim.last
    # The surgeon's stream continues from where it was, not from the attack.
    assert lim.limit((HOME[0] + 4 * STEP, HOME[1], HOME[2]), IDENTITY).fault is None


def test_rotation_jump_faults():
    lim = limiter()
    result = lim.limit(HOME, rot_z(11 * STEP_RAD))
    assert result.fault == "setpoint_jump"
    assert result.quat == IDENTITY


def test_jump_bound_scales_with_elapsed_time_up_to_its_cap():
    """Issue 12.10(e): the span that stretches the jump bound is capped; a long (or
    claimed-long) gap never lets an arbitrary step through."""
    step_at_cap = LIM.jump_fault_factor * STEP * MAX_SPAN_PERIODS
    lim = limiter()
    # Two commands 5 periods apart may move 5x as far: jitter is not an attack.
    five = (HOME[0] + 40 * STEP, HOME[1], HOME[2])
    assert lim.limit(five, IDENTITY, elapsed_s=5 * PERIOD).fault is None
    # Ten seconds "elapsed" still allows no more than the capped bound.
    far = (five[0] + 1.1 * step_at_cap, HOME[1], HOME[2])
    result = lim.limit(far, IDENTITY, elapsed_s=10.0)
    assert result.fault == Reason.SETPOINT_JUMP
    assert lim.limit((five[0] + 0.9 * step_at_cap, HOME[1], HOME[2]), IDENTITY,
                     elapsed_s=10.0).fault is None


def test_below_jump_factor_is_clamped_not_faulted():
    lim = limiter()
    result = lim.limit((HOME[0] + 9 * STEP, HOME[1], HOME[2]), IDENTITY)
    assert result.fault is None
    assert result.clamped and result.reasons == ("step",)
    assert dist(result.position, HOME) == pytest.approx(STEP, abs=1e-12)


def test_step_clamp_moves_exactly_one_step():
    lim = limiter()
    direction = (1.0, -2.0, 2.0)  # length 3
    target = tuple(h + 2 * STEP * d / 3 for h, d in zip(HOME, direction, strict=True))
    result = lim.limit(target, IDENTITY)
    assert result.reasons == ("step",)
    assert dist(result.position, HOME) == pytest.approx(STEP, rel=1e-9)
    # On the straight line toward the target: exactly half way.
    midpoint = tuple((h + t) / 2 for h, t in zip(HOME, target, strict=True))
    assert dist(result.position, midpoint) < 1e-12
    # Next period, the same target is reached.
    assert lim.limit(target, IDENTITY).position == pytest.approx(target, abs=1e-15)


def test_within_step_passes_unchanged():
    lim = limiter()
    target = (HOME[0] + STEP * 0.9, HOME[1], HOME[2])
    result = lim.limit(target, rot_z(STEP_RAD * 0.9))
    assert not result.clamped and result.reasons == ()
    assert result.position == pytest.approx(target)
    assert quat_angle(result.quat, rot_z(STEP_RAD * 0.9)) < 1e-9


def test_rotation_clamp_slerps_one_step_toward_target():
    lim = limiter()
    result = lim.limit(HOME, rot_z(2 * STEP_RAD))
    assert result.reasons == ("rotation_step",)
    assert quat_angle(result.quat, IDENTITY) == pytest.approx(STEP_RAD, rel=1e-6)
    assert quat_angle(result.quat, rot_z(STEP_RAD)) < 1e-9  # about the target's axis
    assert quat_angle(lim.limit(HOME, rot_z(2 * STEP_RAD)).quat, rot_z(2 * STEP_RAD)) < 1e-9


def test_rotation_takes_the_short_way_for_negated_quaternion():
    lim = limiter(quat=rot_z(0.1))
    neg = tuple(-c for c in rot_z(0.1))
    result = lim.limit(HOME, neg)
    assert result.fault is None and not result.clamped


def test_workspace_box_clamp():
    edge = (LIM.workspace_max[0] - STEP / 2, 0.0, 0.25)
    lim = limiter(pos=edge)
    result = lim.limit((edge[0] + 2 * STEP, 0.0, 0.25), IDENTITY)
    assert "workspace" in result.reasons
    assert result.position[0] == LIM.workspace_max[0]
    for _ in range(20):  # pushing against the wall never faults and never leaves the box
        result = lim.limit((LIM.workspace_max[0] + 0.01, 0.0, 0.25), IDENTITY)
        assert result.fault is None and result.position[0] <= LIM.workspace_max[0]


def test_workspace_sphere_clamp():
    r = SPHERE.workspace_radius_m
    start = (HOME[0] + r - STEP / 2, HOME[1], HOME[2])
    lim = limiter(SPHERE, pos=start)
    result = lim.limit((HOME[0] + r + STEP, HOME[1], HOME[2]), IDENTITY)
    assert "workspace" in result.reasons
    assert dist(result.position, SPHERE.workspace_center) == pytest.approx(r, abs=1e-12)


def test_engaged_outside_workspace_returns_one_step_at_a_time_without_a_jump():
    outside = (LIM.workspace_max[0] + 0.001, 0.0, 0.25)  # 4 steps beyond the wall
    lim = limiter(pos=outside)
    for k in range(1, 5):
        result = lim.limit(outside, IDENTITY)  # the surgeon holds still
        assert result.fault is None and "workspace" in result.reasons
        assert result.position[0] == pytest.approx(outside[0] - k * STEP)
    assert lim.limit(outside, IDENTITY).position[0] == LIM.workspace_max[0]


def test_limit_before_reset_refuses():
    lim = CartesianLimiter(LIM, PERIOD)
    with pytest.raises(RuntimeError, match="reset"):
        lim.limit(HOME, IDENTITY)


def test_reset_rejects_bad_anchor():
    lim = CartesianLimiter(LIM, PERIOD)
    with pytest.raises(ValueError, match="not finite"):
        lim.reset((math.nan, 0.0, 0.0), IDENTITY)


coord = st.floats(-1.0, 1.0)
delta = st.floats(-15 * STEP, 15 * STEP)
angle = st.floats(-15 * STEP_RAD, 15 * STEP_RAD)
moves = st.lists(st.one_of(
    st.tuples(st.just("rel"), st.tuples(delta, delta, delta), angle),
    st.tuples(st.just("abs"), st.tuples(coord, coord, coord), st.floats(-math.pi, math.pi)),
    st.tuples(st.just("nan"), st.just((math.nan, 0.0, 0.0)), st.just(0.0)),
), max_size=60)


@settings(max_examples=150, deadline=None)
@given(moves=moves, shape=st.sampled_from([LIM, SPHERE]))
def test_every_result_in_workspace_and_within_one_step(moves, shape):
    lim = limiter(shape)
    target, yaw = HOME, 0.0
    prev_pos, prev_q = lim.last
    for kind, vec, ang in moves:
        if kind == "rel":
            target = tuple(t + d for t, d in zip(target, vec, strict=True))
            yaw += ang
        else:
            target, yaw = vec, ang
        result = lim.limit(target, rot_z(yaw))
        if shape.workspace_shape == "box":
            for lo, v, hi in zip(shape.workspace_min, result.position, shape.workspace_max,
                                 strict=True):
                assert lo - 1e-12 <= v <= hi + 1e-12
        else:
            assert dist(result.position, shape.workspace_center) <= shape.workspace_radius_m + 1e-12
        assert dist(result.position, prev_pos) <= STEP * (1 + 1e-9)
        assert quat_angle(result.quat, prev_q) <= STEP_RAD * (1 + 1e-6)
        if result.fault is not None:
            assert (result.position, result.quat) == (prev_pos, prev_q)
        prev_pos, prev_q = result.position, result.quat


# --- joints -------------------------------------------------------------------------------

LOWER, UPPER, VEL = (-1.0, -2.0, -3.0), (1.0, 2.0, 3.0), (1.0, 5.0, 5.0)
JSTEP = (1.0 * PERIOD, LIM.max_joint_speed_rad_s * PERIOD, LIM.max_joint_speed_rad_s * PERIOD)


def joints() -> JointLimiter:
    return JointLimiter(LOWER, UPPER, VEL, LIM, PERIOD)


def test_joint_within_limits_passes():
    result = joints().limit((0.0005, 0.001, -0.001), (0.0, 0.0, 0.0))
    assert result == result.__class__((0.0005, 0.001, -0.001), False, None, ())


def test_joint_position_limit_clamps_inside_margin():
    near = UPPER[0] - LIM.joint_margin_rad - 0.0001
    result = joints().limit((UPPER[0] + 0.0005, 0.0, 0.0), (near, 0.0, 0.0))
    assert result.reasons == ("joint_limit",)
    assert result.q[0] == pytest.approx(UPPER[0] - LIM.joint_margin_rad)


def test_joint_velocity_uses_the_smaller_of_urdf_and_config():
    result = joints().limit((0.0015, 0.003, -0.003), (0.0, 0.0, 0.0))
    assert result.reasons == ("joint_velocity",)
    assert result.q == pytest.approx((JSTEP[0], JSTEP[1], -JSTEP[2]))


def test_joint_resting_in_margin_is_pulled_back_without_fault():
    at_limit = (LOWER[0], 0.0, 0.0)
    result = joints().limit(at_limit, at_limit)
    assert result.fault is None and "joint_limit" in result.reasons
    assert result.q[0] == pytest.approx(LOWER[0] + JSTEP[0])


def test_joint_branch_flip_faults_and_holds():
    prev = (0.1, 0.2, 0.3)
    result = joints().limit((0.1, 0.2 + LIM.joint_jump_fault_rad + 0.01, 0.3), prev)
    assert result.fault == "setpoint_jump" and result.q == prev


def test_fast_ik_step_below_a_branch_flip_is_clamped_not_faulted():
    # Near a wrist singularity IK asks for several times the velocity bound: clamp.
    prev = (0.1, 0.2, 0.3)
    result = joints().limit((0.1, 0.2 + 11 * JSTEP[1], 0.3), prev)
    assert result.fault is None and result.reasons == ("joint_velocity",)
    assert result.q[1] == pytest.approx(0.2 + JSTEP[1])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_joint_nonfinite_faults_and_holds(bad):
    lim = joints()
    result = lim.limit((0.0, bad, 0.0), (0.1, 0.2, 0.3))
    assert result.fault == "nonfinite_setpoint" and result.q == (0.1, 0.2, 0.3)
    assert lim.faults == 1


def test_joint_limiter_rejects_bad_config():
    from telesurgery.errors import ConfigError
    with pytest.raises(ConfigError, match="joint_margin_rad"):
        JointLimiter((0.0,), (0.01,), (1.0,), LIM, PERIOD)
    with pytest.raises(ConfigError, match="velocity"):
        JointLimiter((0.0,), (1.0,), (math.nan,), LIM, PERIOD)


# --- tracking -----------------------------------------------------------------------------


def test_tracking_within_tolerance():
    mon = TrackingMonitor(LIM)
    near = (HOME[0] + LIM.tracking_error_m * 0.9, HOME[1], HOME[2])
    assert mon.check(near, rot_z(LIM.tracking_error_rad * 0.9), HOME, IDENTITY) is None


def test_tracking_error_on_distance_angle_and_nan():
    mon = TrackingMonitor(LIM)
    far = (HOME[0] + LIM.tracking_error_m * 1.1, HOME[1], HOME[2])
    assert mon.check(far, IDENTITY, HOME, IDENTITY) == "tracking_error"
    assert mon.check(HOME, rot_z(LIM.tracking_error_rad * 1.1), HOME, IDENTITY) == "tracking_error"
    assert mon.check((math.nan, 0.0, 0.0), IDENTITY, HOME, IDENTITY) == "tracking_error"
    assert mon.faults == 3


# --- benchmark ----------------------------------------------------------------------------


def _bench(n: int = 50_000) -> None:
    lim = limiter()
    targets = [(HOME[0] + 0.5 * STEP * math.sin(i / 50), HOME[1], HOME[2]) for i in range(n)]
    quats = [rot_z(0.5 * STEP_RAD * math.sin(i / 70)) for i in range(n)]
    jl = joints()
    mon = TrackingMonitor(LIM)
    cases = {
        "CartesianLimiter.limit": lambda i: lim.limit(targets[i], quats[i]),
        "JointLimiter.limit (3 joints)": lambda i: jl.limit((0.0005, 0.001, 0.0), (0.0,) * 3),
        "TrackingMonitor.check": lambda i: mon.check(targets[i], quats[i], HOME, IDENTITY),
    }
    for name, fn in cases.items():
        t0 = time.perf_counter_ns()
        for i in range(n):
            fn(i)
        print(f"{name:32s} {(time.perf_counter_ns() - t0) / n / 1e3:6.2f} us/call")


if __name__ == "__main__":
    _bench()
