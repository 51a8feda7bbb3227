"""The one teleop mapping (dVRK style, on the robot): master pose -> follower target.

On engage, after a clutch and on a scale change the master pose and the follower pose
are recorded together; from then on the follower target is the follower anchor plus the
scaled master translation since the anchor (surgeon's scale x the latency-adaptive
factor, both decided on the robot), and the master's rotation since the anchor, scaled
by ``rotation_scale`` (1.0: the instrument turns with the hand), applied to the follower
anchor orientation.

Quaternions are (w, x, y, z), unit, in the robot base frame: the console sends the
registered (console-to-robot) and tremor-filtered master pose and nothing else. Plain
floats rather than numpy: at 1 kHz a 4-tuple product is cheaper than building arrays.
"""

from __future__ import annotations

import math

from telesurgery.errors import SchemaError, TelesurgeryError
from telesurgery.quat import (
    UNIT_TOL,
    Quat,
    Vec3,
    quat_angle,
    quat_conj,
    quat_mul,
    quat_normalize,
    quat_scale_angle,
)

REBASE_RAD = math.pi / 2
"""With a rotation scale below 1, the rotation anchor is re-based past this angle: the
scaled rotation takes the short way round, so past pi it would flip by scale x 2 pi."""


def _check_pose(name: str, pos: Vec3, quat: Quat) -> None:
    if len(pos) != 3 or not all(math.isfinite(c) for c in pos):
        raise SchemaError(f"anchor.{name}_pos", f"must be 3 finite numbers, got {pos!r}")
    if len(quat) != 4 or not all(math.isfinite(c) for c in quat):
        raise SchemaError(f"anchor.{name}_quat", f"must be 4 finite numbers, got {quat!r}")
    norm = math.sqrt(sum(c * c for c in quat))
    if abs(norm - 1.0) > UNIT_TOL:
        raise SchemaError(f"anchor.{name}_quat", f"quaternion norm {norm:.6f} is not 1")


class Anchor:
    """The master-to-follower offset; re-anchor on every (re)start of following."""

    def __init__(self, rotation_scale: float = 1.0) -> None:
        if not (math.isfinite(rotation_scale) and 0.0 <= rotation_scale <= 1.0):
            raise ValueError(f"rotation_scale = {rotation_scale!r}: must be in [0, 1]")
        self.rotation_scale = rotation_scale
        self._pair: _Pair | None = None
        self._scale: float | None = None

    @property
    def anchored(self) -> bool:
        return self._pair is not None

    def anchor(self, master_pos: Vec3, master_quat: Quat,
               follower_pos: Vec3, follower_quat: Quat) -> None:
        """Record both poses; the follower target at this master pose is the follower pose.

        Raises ``SchemaError`` naming the pose for non-finite values or a non-unit
        quaternion: a bad anchor would move every later target.
        """
        _check_pose("master", master_pos, master_quat)
        _check_pose("follower", follower_pos, follower_quat)
        self._pair = _Pair(master_pos, master_quat, follower_pos, quat_normalize(follower_quat))
        self._scale = None  # the first follower_target fixes it

    def follower_target(self, master_pos: Vec3, master_quat: Quat,
                        scale: float) -> tuple[Vec3, Quat]:
        """Where the follower should be for this master pose.

        A scale different from the last call re-anchors at the current target first, so
        a scale change never jumps. Non-finite master values give non-finite targets,
        which the motion limiter rejects (nonfinite_setpoint); they never re-anchor.
        """
        pair = self._pair
        if pair is None:
            raise TelesurgeryError("follower_target() before anchor()")
        if self._scale is not None and scale != self._scale:
            if not all(math.isfinite(c) for c in (*master_pos, *master_quat, scale)):
                return pair.target(master_pos, master_quat, self._scale, self.rotation_scale)
            pos, quat = pair.target(master_pos, master_quat, self._scale, self.rotation_scale)
            pair = self._pair = _Pair(master_pos, master_quat, pos, quat)
        self._scale = scale
        pos, quat = pair.target(master_pos, master_quat, scale, self.rotation_scale)
        if self.rotation_scale != 1.0 and quat_angle(pair.m_quat, master_quat) > REBASE_RAD:
            self._pair = _Pair(master_pos, master_quat, pos, quat)
        return pos, quat

    @staticmethod
    def aligned(master_quat: Quat, follower_quat: Quat, tol_rad: float) -> bool:
        """True when the two orientations are within ``tol_rad`` (the engage condition)."""
        if not all(math.isfinite(c) for c in (*master_quat, *follower_quat)):
            return False
        return quat_angle(quat_normalize(master_quat), quat_normalize(follower_quat)) <= tol_rad


class _Pair:
    """A master pose and the follower pose it maps to."""

    __slots__ = ("f_pos", "f_quat", "m_pos", "m_quat")

    def __init__(self, m_pos: Vec3, m_quat: Quat, f_pos: Vec3, f_quat: Quat) -> None:
        self.m_pos, self.m_quat, self.f_pos, self.f_quat = m_pos, m_quat, f_pos, f_quat

    def target(self, master_pos: Vec3, master_quat: Quat, scale: float,
               rotation_scale: float = 1.0) -> tuple[Vec3, Quat]:
        m, f = self.m_pos, self.f_pos
        pos = (f[0] + scale * (master_pos[0] - m[0]),
               f[1] + scale * (master_pos[1] - m[1]),
               f[2] + scale * (master_pos[2] - m[2]))
        if tuple(master_quat) == tuple(self.m_quat):
            return pos, self.f_quat  # exactly the anchor, not the anchor plus rounding
        delta = quat_mul(master_quat, quat_conj(self.m_quat))  # master rotation since anchor
        delta = quat_scale_angle(delta, rotation_scale)
        return pos, quat_normalize(quat_mul(delta, self.f_quat))
