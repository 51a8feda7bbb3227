"""Re-anchoring: no jump on engage, after clutch or on a scale change; alignment check."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safety.anchor import Anchor
from safety.limits import quat_angle
from telesurgery.errors import SchemaError, TelesurgeryError
from telesurgery.quat import quat_mul

IDENT = (1.0, 0.0, 0.0, 0.0)


def rot(axis: tuple[float, float, float], angle: float) -> tuple[float, float, float, float]:
    n = math.sqrt(sum(c * c for c in axis))
    s = math.sin(angle / 2) / n
    return (math.cos(angle / 2), axis[0] * s, axis[1] * s, axis[2] * s)


finite = st.floats(-1.0, 1.0, allow_nan=False)
vec3 = st.tuples(finite, finite, finite)
quats = st.builds(rot, st.tuples(finite, finite, finite).filter(
    lambda v: sum(c * c for c in v) > 1e-3), st.floats(-math.pi, math.pi))


@given(vec3, quats, vec3, quats, st.floats(0.05, 2.0))
def test_no_jump_at_the_anchor(m_pos, m_quat, f_pos, f_quat, scale) -> None:
    a = Anchor()
    a.anchor(m_pos, m_quat, f_pos, f_quat)
    pos, quat = a.follower_target(m_pos, m_quat, scale)
    assert pos == tuple(f_pos)
    assert quat_angle(quat, f_quat) == pytest.approx(0.0, abs=1e-7)


def test_translation_is_scaled_from_the_anchor() -> None:
    a = Anchor()
    a.anchor((1.0, 2.0, 3.0), IDENT, (0.3, 0.0, 0.2), IDENT)
    pos, quat = a.follower_target((1.1, 1.8, 3.0), IDENT, 0.5)
    assert pos == pytest.approx((0.35, -0.1, 0.2))
    assert quat == IDENT


def test_master_rotation_is_applied_to_the_follower_orientation() -> None:
    a = Anchor()
    f_quat = rot((0, 1, 0), 0.3)
    m0 = rot((1, 0, 0), 0.5)
    a.anchor((0, 0, 0), m0, (0.3, 0, 0.2), f_quat)
    turn = rot((0, 0, 1), 0.2)  # the surgeon turns 0.2 rad about z
    _, quat = a.follower_target((0, 0, 0), quat_mul(turn, m0), 0.2)
    assert quat_angle(quat, quat_mul(turn, f_quat)) == pytest.approx(0.0, abs=1e-9)
    assert quat_angle(quat, f_quat) == pytest.approx(0.2)  # rotation is not scaled


def test_scale_change_reanchors_without_a_jump() -> None:
    a = Anchor()
    a.anchor((0.0, 0.0, 0.0), IDENT, (0.3, 0.0, 0.2), IDENT)
    before, _ = a.follower_target((0.1, 0.0, 0.0), IDENT, 0.5)
    assert before == pytest.approx((0.35, 0.0, 0.2))
    after, _ = a.follower_target((0.1, 0.0, 0.0), IDENT, 0.1)  # same master, new scale
    assert after == pytest.approx(before, abs=1e-15)
    moved, _ = a.follower_target((0.2, 0.0, 0.0), IDENT, 0.1)
    assert moved == pytest.approx((0.36, 0.0, 0.2))


def test_reanchor_after_clutch_absorbs_the_master_repositioning() -> None:
    a = Anchor()
    a.anchor((0.0, 0.0, 0.0), IDENT, (0.3, 0.0, 0.2), IDENT)
    follower, _ = a.follower_target((0.1, 0.0, 0.0), IDENT, 1.0)
    # Clutch: the surgeon moves the master back 0.4 m while the follower holds.
    a.anchor((-0.3, 0.0, 0.0), IDENT, follower, IDENT)
    assert a.follower_target((-0.3, 0.0, 0.0), IDENT, 1.0)[0] == follower


def test_nonfinite_master_passes_through_for_the_limiter_and_never_reanchors() -> None:
    a = Anchor()
    a.anchor((0.0, 0.0, 0.0), IDENT, (0.3, 0.0, 0.2), IDENT)
    a.follower_target((0.0, 0.0, 0.0), IDENT, 0.5)
    pos, _ = a.follower_target((math.nan, 0.0, 0.0), IDENT, 0.2)  # NaN with a scale change
    assert math.isnan(pos[0])
    pos, quat = a.follower_target((0.0, 0.0, 0.0), IDENT, 0.5)
    assert pos == (0.3, 0.0, 0.2) and quat == IDENT
    _, quat = a.follower_target((0.0, 0.0, 0.0), (math.inf, 0.0, 0.0, 0.0), 0.5)
    assert not all(math.isfinite(c) for c in quat)


@pytest.mark.parametrize(("m_pos", "m_quat", "f_pos", "f_quat", "field"), [
    ((math.nan, 0, 0), IDENT, (0, 0, 0), IDENT, "anchor.master_pos"),
    ((0, 0, 0), (1.0, 0.1, 0.0, 0.0), (0, 0, 0), IDENT, "anchor.master_quat"),
    ((0, 0, 0), IDENT, (0, math.inf, 0), IDENT, "anchor.follower_pos"),
    ((0, 0, 0), IDENT, (0, 0, 0), (math.nan, 0, 0, 0), "anchor.follower_quat"),
])
def test_bad_anchor_poses_are_refused(m_pos, m_quat, f_pos, f_quat, field: str) -> None:
    a = Anchor()
    with pytest.raises(SchemaError) as err:
        a.anchor(m_pos, m_quat, f_pos, f_quat)
    assert err.value.field == field
    assert not a.anchored


def test_target_before_anchor_is_an_error() -> None:
    with pytest.raises(TelesurgeryError, match="before anchor"):
        Anchor().follower_target((0, 0, 0), IDENT, 1.0)


def test_alignment_tolerance() -> None:
    tol = 0.1
    assert Anchor.aligned(IDENT, rot((0, 0, 1), 0.099), tol)
    assert not Anchor.aligned(IDENT, rot((0, 0, 1), 0.101), tol)
    q = rot((1, 1, 0), 0.7)
    assert Anchor.aligned(q, tuple(-c for c in q), tol)  # q and -q are one orientation
    assert not Anchor.aligned((math.nan, 0, 0, 0), IDENT, math.pi)


# ------------------------------------------------------------------ the rotation gain (robot)
F_QUAT = rot((0.0, 1.0, 0.2), 0.4)


def test_rotation_gain_scales_the_master_rotation_since_the_anchor() -> None:
    half = Anchor(rotation_scale=0.5)
    half.anchor((0.0, 0.0, 0.0), IDENT, (0.35, 0.0, 0.25), F_QUAT)
    _, quat = half.follower_target((0.0, 0.0, 0.0), rot((0.0, 0.0, 1.0), 0.8), 1.0)
    assert quat_angle(quat, quat_mul(rot((0.0, 0.0, 1.0), 0.4), F_QUAT)) < 1e-12
    with pytest.raises(ValueError, match="rotation_scale"):
        Anchor(rotation_scale=1.5)


def test_scaled_rotation_stays_continuous_through_a_full_turn() -> None:
    # Scaling a relative rotation takes the short way round: without re-basing, the
    # target would flip by rotation_scale x 2 pi when the master passes pi.
    a = Anchor(rotation_scale=0.3)
    a.anchor((0.0, 0.0, 0.0), IDENT, (0.35, 0.0, 0.25), F_QUAT)
    steps = 400
    outs = [a.follower_target((0.0, 0.0, 0.0), rot((0.0, 0.0, 1.0), 2 * math.pi * i / steps),
                              0.2)[1] for i in range(steps + 1)]
    worst = max(quat_angle(p, q) for p, q in itertools.pairwise(outs))
    assert worst <= 1.5 * 0.3 * 2 * math.pi / steps, f"target jumped {worst:.3f} rad"
    # And the turns add up: a full master turn is 0.3 of a turn of the follower.
    assert quat_angle(F_QUAT, outs[-1]) == pytest.approx(0.3 * 2 * math.pi, abs=1e-3)
