"""The control period's fast paths give the checked paths' answers (issue 11: 1 kHz).

``Kinematics.ik_trusted`` skips ``ik``'s input checks, ``Kinematics.pose`` is ``fk`` as
plain floats, IK returns the pose of its answer (the follower's setpoint FK), the
damped solve factors once in the open workspace, and ``JointLimiter.limit`` compares
instead of calling min/max. Each is checked here against the slow form it replaces.
"""

from __future__ import annotations

import math

import numpy as np
import pinocchio as pin
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_side import kinematics
from robot_side.kinematics import Kinematics
from safety.config import MotionLimits
from safety.limits import JointLimiter
from telesurgery.quat import quat_angle, unit_or_none


def _quat(axis_angle: tuple[float, float, float]) -> tuple[float, float, float, float]:
    x, y, z, w = pin.Quaternion(pin.exp3(np.array(axis_angle))).coeffs().tolist()
    return (w, x, y, z)


@settings(max_examples=60, deadline=None)
@given(
    offset=st.tuples(*[st.floats(-0.05, 0.05)] * 3),
    axis_angle=st.tuples(*[st.floats(-0.3, 0.3)] * 3),
    seed=st.lists(st.floats(-0.2, 0.2), min_size=6, max_size=6),
    max_iter=st.integers(0, 8),
)
def test_trusted_ik_is_the_checked_ik(offset, axis_angle, seed, max_iter) -> None:
    kin = Kinematics.from_urdf()
    home_p, home_q = kin.pose(kin.home)
    target = (home_p[0] + offset[0], home_p[1] + offset[1], home_p[2] + offset[2])
    r = pin.Quaternion(*_quat(axis_angle)).toRotationMatrix() @ \
        pin.Quaternion(*home_q).toRotationMatrix()
    x, y, z, w = pin.Quaternion(r).coeffs().tolist()
    quat = (w, x, y, z)
    q_seed = kin.home + np.array(seed)
    checked = kin.ik(np.array(target), quat, q_seed.tolist(), max_iter=max_iter)
    # As the Cartesian limiter hands it over: normalised (unit_or_none), as ik does.
    unit = unit_or_none(quat)
    assert unit is not None
    trusted = kin.ik_trusted(target, unit, q_seed, max_iter=max_iter)
    np.testing.assert_array_equal(trusted.q, checked.q)
    assert (trusted.converged, trusted.err_m, trusted.err_rad, trusted.iterations) == (
        checked.converged, checked.err_m, checked.err_rad, checked.iterations)
    assert trusted.pose == checked.pose


def test_ik_pose_is_the_fk_of_its_answer(kin: Kinematics) -> None:
    rng = np.random.default_rng(11)
    for _ in range(20):
        q = kin.home + rng.uniform(-0.4, 0.4, kin.n)
        position, quat = kin.pose(q)
        target = (position[0] + 0.01, position[1] - 0.005, position[2])
        for max_iter in (0, 1, 8):
            result = kin.ik_trusted(target, quat, q, max_iter=max_iter)
            assert result.pose is not None
            fk_p, fk_q = kin.fk(result.q)
            np.testing.assert_allclose(result.pose[0], fk_p, rtol=0, atol=1e-12)
            assert quat_angle(result.pose[1], fk_q) < 1e-9


def test_pose_is_fk_in_plain_floats(kin: Kinematics) -> None:
    rng = np.random.default_rng(12)
    for _ in range(20):
        q = kin.home + rng.uniform(-1.0, 1.0, kin.n)
        position, quat = kin.pose(q)
        fk_p, fk_q = kin.fk(q)
        assert all(type(c) is float for c in (*position, *quat))
        assert position == tuple(fk_p.tolist()) and quat == fk_q


def _reference_step(jac: np.ndarray, err: np.ndarray) -> np.ndarray:
    """The damped solve as it was: exact det(J J^T) for the damping, then LU."""
    jjt = jac @ jac.T
    jjt[np.diag_indices(6)] += kinematics._damping(jjt)
    return np.asarray(np.linalg.solve(jjt, err))


def test_damped_solve_matches_the_reference_in_the_workspace_and_at_a_singularity(
        kin: Kinematics) -> None:
    rng = np.random.default_rng(13)
    seeds = [kin.home + rng.uniform(-0.6, 0.6, kin.n) for _ in range(30)]
    for wrist in (0.0, 1e-4, 0.005, 0.02, 0.05):  # wrist axes 4 and 6 (almost) aligned
        seed = kin.home.copy()
        seed[4] = wrist
        seeds.append(seed)
    near_singular = 0
    for q in seeds:
        jac = kin.jacobian(q)
        err = rng.normal(0.0, 1e-3, 6)
        jjt = jac @ jac.T
        if math.sqrt(max(np.linalg.det(jjt), 0.0)) < kinematics.MANIPULABILITY_THRESHOLD:
            near_singular += 1
        np.testing.assert_allclose(kinematics._damped_solve(jac, err),
                                   _reference_step(jac, err), rtol=1e-6, atol=1e-9)
    assert near_singular >= 2  # the ramped-damping branch was exercised too


def _reference_joint_limit(lim: JointLimiter, target: list[float], prev: list[float]
                           ) -> tuple[tuple[float, ...], bool, object]:
    """JointLimiter.limit as it was written with min()/max()."""
    out = []
    at_limit = too_fast = False
    for i in range(len(target)):
        lo, hi, p = lim._lo[i], lim._hi[i], prev[i]
        t = min(max(target[i], lo), hi)
        at_limit = at_limit or t != target[i]
        if abs(t - min(max(p, lo), hi)) > lim._jump[i]:
            return tuple(prev), False, "jump"
        s = lim._step[i]
        if abs(t - p) > s:
            t = p + s if t > p else p - s
            too_fast = True
        out.append(t)
    return tuple(out), at_limit or too_fast, None


@settings(max_examples=200, deadline=None)
@given(
    target=st.lists(st.floats(-3.5, 3.5), min_size=6, max_size=6),
    delta=st.lists(st.floats(-0.6, 0.6), min_size=6, max_size=6),
)
def test_joint_limiter_fast_loop_is_the_min_max_loop(target, delta) -> None:
    kin = Kinematics.from_urdf()
    lim = JointLimiter(kin.lower.tolist(), kin.upper.tolist(), kin.velocity.tolist(),
                       MotionLimits(), 0.001)
    prev = [t + d for t, d in zip(target, delta, strict=True)]
    for want in (target, [p + d / 1000 for p, d in zip(prev, delta, strict=True)]):
        got = lim.limit(want, prev)
        q, clamped, fault = _reference_joint_limit(lim, want, prev)
        assert got.q == q
        assert (got.fault is None) == (fault is None)
        if fault is None:
            assert got.clamped == clamped


def test_quat_of_is_eigens_quaternion_of_the_matrix() -> None:
    """Plain floats, Eigen's algorithm: every branch (trace > 0, and each largest
    diagonal) against ``pin.Quaternion(R)``, same sign convention (w >= 0)."""
    rng = np.random.default_rng(11)
    branches = set()
    for i in range(4000):
        v = rng.normal(size=4)
        if i % 2:
            v[0] *= 0.01  # near-half-turns: the trace is negative
        v /= np.linalg.norm(v)
        rotation = pin.Quaternion(*v).toRotationMatrix()
        x, y, z, w = pin.Quaternion(rotation).coeffs().tolist()
        want = (w, x, y, z) if w >= 0.0 else (-w, -x, -y, -z)
        got = kinematics._quat_of(rotation)
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-15
        diag = np.diag(rotation)
        branches.add(-1 if np.trace(rotation) > 0 else int(np.argmax(diag)))
    assert branches == {-1, 0, 1, 2}


def test_follower_reuses_ik_only_for_the_same_target_from_the_same_joints(
        kin: Kinematics) -> None:
    """The IK memo: a repeated (target, joints) is the last answer; the same target from
    other joints (the joint limiter clamped the last step) is solved again."""
    from robot_side.config import RobotConfig
    from robot_side.follow import Follower

    fol = Follower(RobotConfig(), kin)
    position, quat = kin.pose(kin.home)
    target = (position[0] + 0.002, position[1], position[2])
    first, first_q = fol._solve_ik(target, quat, fol.q_set.tolist())
    again, _ = fol._solve_ik(target, quat, fol.q_set.tolist())
    assert again is first  # reused, not solved again
    fol.q_set = fol.q_set + 0.001  # the arm is elsewhere: same target, other seed
    moved, moved_q = fol._solve_ik(target, quat, fol.q_set.tolist())
    fresh = kin.ik_trusted(target, quat, fol.q_set, max_iter=fol._ik_max_iter)
    assert moved is not first
    assert moved_q == fresh.q.tolist() != first_q
