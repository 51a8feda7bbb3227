"""Unit quaternions, scalar first (w, x, y, z), in plain math.

Plain floats rather than numpy: at 3-4 components per call numpy's overhead
dominates, and these run every control period on both sides of the link.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Vec3 = tuple[float, float, float]
Quat = tuple[float, float, float, float]
Pose = tuple[Vec3, Quat]
"""Position (m) and orientation: the one pose type of the project (the wire has its own
``transport.schema.Pose`` dataclass, built from and into this)."""
IDENTITY: Quat = (1.0, 0.0, 0.0, 0.0)
UNIT_TOL = 1e-3
"""How far from norm 1 a quaternion may be and still count as a rotation (wire, limits,
anchor, devices): float32 rounding stays far inside it, corruption does not."""


def unit_or_none(q: Sequence[float]) -> Quat | None:
    """``q`` normalised, or None when it is not 4 finite numbers of norm 1 +- ``UNIT_TOL``."""
    if len(q) != 4:
        return None
    w, x, y, z = map(float, q)  # map, not a generator: three calls a control period
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    if not math.isfinite(norm) or abs(norm - 1.0) > UNIT_TOL:
        return None
    return (w / norm, x / norm, y / norm, z / norm)


def as_pose(position: Sequence[float] | Any, quat: Sequence[float]) -> Pose:
    """Plain-float pose from any sequences (numpy arrays from kinematics included)."""
    return ((float(position[0]), float(position[1]), float(position[2])),
            (float(quat[0]), float(quat[1]), float(quat[2]), float(quat[3])))


def quat_mul(a: Quat, b: Quat) -> Quat:
    """Hamilton product a * b (apply b, then a)."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return (aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw)


def quat_conj(q: Quat) -> Quat:
    return (q[0], -q[1], -q[2], -q[3])


def quat_normalize(q: Quat) -> Quat:
    """``q`` scaled to unit length; NaN when it has none, for a limiter to reject."""
    n = math.sqrt(sum(c * c for c in q))
    if not n > 0:  # also NaN
        return (math.nan, math.nan, math.nan, math.nan)
    return (q[0] / n, q[1] / n, q[2] / n, q[3] / n)


def quat_from_rotvec(v: Vec3) -> Quat:
    """Rotation of |v| radians about v."""
    angle = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    if angle < 1e-12:
        return IDENTITY
    s = math.sin(angle / 2.0) / angle
    return (math.cos(angle / 2.0), v[0] * s, v[1] * s, v[2] * s)


def quat_relative(a: Quat, b: Quat) -> tuple[float, Vec3]:
    """Angle and unit axis of the shortest rotation taking ``a`` to ``b`` (in a's frame)."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    # quat_mul(quat_conj(a), b) written out, bit for bit (p - (-q) is p + q in IEEE
    # arithmetic): two calls fewer, and this runs three times a control period.
    w = aw * bw + ax * bx + ay * by + az * bz
    x = aw * bx - ax * bw - ay * bz + az * by
    y = aw * by + ax * bz - ay * bw - az * bx
    z = aw * bz - ax * by + ay * bx - az * bw
    if w < 0.0:  # q and -q are the same rotation: take the short way round
        w, x, y, z = -w, -x, -y, -z
    s = math.sqrt(x * x + y * y + z * z)
    # atan2 keeps full precision for the tiny angles of one control period, where acos does not
    angle = 2.0 * math.atan2(s, w)
    if s == 0.0:
        return 0.0, (1.0, 0.0, 0.0)
    return angle, (x / s, y / s, z / s)


def quat_angle(a: Quat, b: Quat) -> float:
    """Angle in radians of the rotation between unit quaternions ``a`` and ``b``."""
    return quat_relative(a, b)[0]


def quat_scale_angle(q: Quat, factor: float) -> Quat:
    """The rotation ``q`` with its angle multiplied by ``factor`` (same axis, short way)."""
    if factor == 1.0:
        return q
    angle, axis = quat_relative(IDENTITY, q)
    a = angle * factor
    return quat_from_rotvec((axis[0] * a, axis[1] * a, axis[2] * a))
