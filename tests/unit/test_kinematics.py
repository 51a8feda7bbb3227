"""Kinematics of the shipped arm6 URDF through pinocchio: FK, Jacobian, IK and its limits."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pinocchio as pin
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_side.kinematics import DEFAULT_URDF, HOME_Q, Kinematics, KinematicsError, bench_ik
from safety.config import MotionLimits
from telesurgery.errors import ConfigError

DOWN = (0.0, 0.0, 1.0, 0.0)
"""Tool z along -z: a half turn about y, (w, x, y, z)."""


def rotation(quat: tuple[float, float, float, float]) -> np.ndarray:
    w, x, y, z = quat
    return np.array(pin.Quaternion(w, x, y, z).toRotationMatrix())


def test_shipped_urdf_loads_with_realistic_limits(kin: Kinematics) -> None:
    assert kin.joint_names == tuple(f"joint_{i}" for i in range(1, 7))
    assert kin.n == 6
    assert np.all(kin.lower < kin.upper)
    assert np.all((kin.velocity >= 2.0) & (kin.velocity <= 3.0))
    assert np.all(kin.effort > 0)
    np.testing.assert_array_equal(kin.home, HOME_Q)


def test_shipped_urdf_by_explicit_path_has_the_same_home(tmp_path: Path) -> None:
    """``[kinematics] urdf = <the shipped file>`` once gave the zero pose as home."""
    link = tmp_path / "arm6.urdf"
    link.symlink_to(DEFAULT_URDF)
    for path in (DEFAULT_URDF, Path(str(DEFAULT_URDF.parent / ".." / "description" /
                                        "arm6.urdf")), link):
        np.testing.assert_array_equal(Kinematics.from_urdf(path).home, HOME_Q)


def test_home_is_near_workspace_centre_pointing_down(kin: Kinematics) -> None:
    position, quat = kin.fk(kin.home)
    np.testing.assert_allclose(position, (0.35, 0.0, 0.25), atol=1e-3)
    assert rotation(quat)[:, 2] @ np.array([0.0, 0.0, -1.0]) > 0.9999
    assert math.isclose(float(np.linalg.norm(quat)), 1.0, abs_tol=1e-9)


def test_home_is_inside_limits_and_away_from_singularities(kin: Kinematics) -> None:
    assert np.all(kin.home - kin.lower > 0.5)
    assert np.all(kin.upper - kin.home > 0.5)
    sigma = np.linalg.svd(kin.jacobian(kin.home), compute_uv=False)
    assert sigma.min() > 0.1


def test_jacobian_matches_finite_differences_of_fk(kin: Kinematics) -> None:
    rng = np.random.default_rng(1)
    h = 1e-6
    for _ in range(5):
        q = kin.home + rng.uniform(-0.5, 0.5, kin.n)
        jac = kin.jacobian(q)
        numeric = np.empty((6, kin.n))
        for i in range(kin.n):
            dq = np.zeros(kin.n)
            dq[i] = h
            p_plus, r_plus = kin.fk(q + dq)
            p_minus, r_minus = kin.fk(q - dq)
            numeric[:3, i] = (p_plus - p_minus) / (2 * h)
            # World-frame angular velocity: log of the rotation between the two, over 2h.
            numeric[3:, i] = pin.log3(rotation(r_plus) @ rotation(r_minus).T) / (2 * h)
        np.testing.assert_allclose(jac, numeric, atol=1e-6)


def test_ik_round_trips_random_reachable_poses_in_the_workspace(kin: Kinematics) -> None:
    limits = MotionLimits()
    rng = np.random.default_rng(2)
    checked = 0
    while checked < 40:
        q_true = np.clip(kin.home + rng.uniform(-0.6, 0.6, kin.n), kin.lower, kin.upper)
        if abs(q_true[4]) < 0.1:
            # At the wrist singularity damped least squares deliberately trades accuracy
            # for bounded joint motion (see the damping test); round trips are checked away
            # from it.
            continue
        position, quat = kin.fk(q_true)
        if not all(lo <= v <= hi for lo, v, hi in zip(limits.workspace_min, position,
                                                      limits.workspace_max, strict=True)):
            continue
        result = kin.ik(position, quat, kin.home, max_iter=200)
        assert result.converged, result
        assert result.err_m <= 1e-5 and result.err_rad <= 1e-4
        got_p, got_q = kin.fk(result.q)
        np.testing.assert_allclose(got_p, position, atol=1e-5)
        angle = np.linalg.norm(pin.log3(rotation(got_q).T @ rotation(quat)))
        assert angle < 1e-4
        checked += 1


def test_every_corner_of_the_default_workspace_is_reachable_pointing_down(
        kin: Kinematics) -> None:
    limits = MotionLimits()
    corners = itertools.product(*zip(limits.workspace_min, limits.workspace_max, strict=True))
    for corner in corners:
        result = kin.ik(np.array(corner), DOWN, kin.home, max_iter=300)
        assert result.converged, (corner, result)


def test_warm_started_ik_converges_in_few_iterations_and_prints_cost() -> None:
    stats = bench_ik(1000)
    print(f"\nwarm-started IK, 0.25 mm steps: p50 {stats['p50_us']:.1f} us, "
          f"p99 {stats['p99_us']:.1f} us, max {stats['max_us']:.1f} us, "
          f"mean {stats['mean_iterations']:.2f} iterations")
    assert stats["converged_fraction"] == 1.0
    assert stats["max_iterations"] <= 3


def test_damping_bounds_the_joint_step_near_a_singularity(
        kin: Kinematics, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = kin.home.copy()
    seed[4] = 0.005  # wrist axes 4 and 6 almost aligned
    u, _, _ = np.linalg.svd(kin.jacobian(seed))
    error = 1e-3 * u[:, -1]  # 1 mm/mrad along the direction the arm can barely move in
    position, quat = kin.fk(seed)
    target_r = pin.exp3(error[3:]) @ rotation(quat)
    x, y, z, w = pin.Quaternion(target_r).coeffs()
    target = (position + error[:3], (w, x, y, z))

    damped = kin.ik(*target, seed, max_iter=1)
    assert np.abs(damped.q - seed).max() < 0.05
    # The same step without the adaptive damping: a near-singular Jacobian explodes it.
    monkeypatch.setattr("robot_side.kinematics.MANIPULABILITY_THRESHOLD", 0.0)
    undamped = kin.ik(*target, seed, max_iter=1)
    assert np.abs(undamped.q - seed).max() > 0.2


@settings(max_examples=60, deadline=None)
@given(
    target=st.tuples(*[st.floats(-2.0, 2.0)] * 3),
    axis_angle=st.tuples(*[st.floats(-3.0, 3.0)] * 3),
    seed=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6),
)
def test_ik_never_leaves_the_joint_limits(target, axis_angle, seed) -> None:
    kin = Kinematics.from_urdf()
    quat_xyzw = pin.Quaternion(pin.exp3(np.array(axis_angle))).coeffs()
    quat = (quat_xyzw[3], quat_xyzw[0], quat_xyzw[1], quat_xyzw[2])
    q_seed = kin.lower + np.array(seed) * (kin.upper - kin.lower)
    result = kin.ik(np.array(target), quat, q_seed, max_iter=30)
    assert np.all(result.q >= kin.lower) and np.all(result.q <= kin.upper)


def test_unreachable_target_is_not_converged_and_stays_inside_limits(kin: Kinematics) -> None:
    result = kin.ik(np.array([1.5, 0.0, 0.3]), DOWN, kin.home)
    assert not result.converged
    assert result.err_m > 0.5
    assert np.all(result.q >= kin.lower) and np.all(result.q <= kin.upper)
    # Folded right back on the base: the elbow limit is what forbids it.
    result = kin.ik(np.array([0.0, 0.0, 0.2]), DOWN, kin.home, max_iter=100)
    assert not result.converged
    assert np.all(result.q >= kin.lower) and np.all(result.q <= kin.upper)


def test_ik_keeps_the_requested_margin_inside_the_limits(kin: Kinematics) -> None:
    margin = 0.2
    result = kin.ik(np.array([1.5, 0.0, 0.3]), DOWN, kin.home, margin_rad=margin)
    assert np.all(result.q >= kin.lower + margin - 1e-12)
    assert np.all(result.q <= kin.upper - margin + 1e-12)


@pytest.mark.parametrize(
    ("position", "quat", "seed", "what"),
    [
        ((math.nan, 0.0, 0.2), DOWN, HOME_Q, "position"),
        ((0.3, 0.0), DOWN, HOME_Q, "position"),
        ((0.3, 0.0, 0.2), (0.0, 0.0, 2.0, 0.0), HOME_Q, "quat"),
        ((0.3, 0.0, 0.2), (0.0, math.inf, 1.0, 0.0), HOME_Q, "quat"),
        ((0.3, 0.0, 0.2), DOWN, HOME_Q[:5], "q_seed"),
    ],
)
def test_bad_ik_input_is_refused_by_name_and_counted(kin: Kinematics, position, quat, seed,
                                                     what) -> None:
    before = kin.rejected
    with pytest.raises(KinematicsError, match=what):
        kin.ik(position, quat, seed)
    assert kin.rejected == before + 1
    assert kin.ik(kin.fk(kin.home)[0], kin.fk(kin.home)[1], kin.home).converged


def test_fk_refuses_non_finite_joints(kin: Kinematics) -> None:
    with pytest.raises(KinematicsError, match="q: non-finite"):
        kin.fk([0.0, math.nan, 0.0, 0.0, 0.0, 0.0])


def test_bad_urdf_or_tip_frame_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="URDF not found"):
        Kinematics.from_urdf(tmp_path / "missing.urdf")
    with pytest.raises(ConfigError, match="no frame named 'gripper'"):
        Kinematics.from_urdf(None, tip_frame="gripper")
    broken = tmp_path / "broken.urdf"
    broken.write_text("<robot name='x'><link name='a'>")
    with pytest.raises(ConfigError, match=r"broken\.urdf"):
        Kinematics.from_urdf(broken)
