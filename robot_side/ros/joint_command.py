"""CRTK ``servo_jp`` / ``move_jp`` for the ROS commander: joint targets from DDS.

``sensor_msgs/JointState`` from an untrusted peer becomes the follower's joint vector
(``Command.joints``), or nothing: positions must be finite, within the wire schema's
sanity bound, and one per joint of the arm; names, when given, must be exactly the
arm's joint names (in any order: they are reordered to the arm's), as the dVRK reads
them. The robot then judges the joints like a leader arm's (robot_side.follow_joint).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from transport.schema import MAX_JOINT_VALUE


def ros_joints(msg: Any, names: Sequence[str]) -> tuple[float, ...] | None:
    """The positions of a JointState in the arm's joint order; None when not usable."""
    try:
        position = [float(v) for v in msg.position]
        given = [str(n) for n in msg.name]
    except (AttributeError, TypeError, ValueError):
        return None
    if len(position) != len(names):
        return None
    if not all(math.isfinite(v) and abs(v) <= MAX_JOINT_VALUE for v in position):
        return None
    if not given:
        return tuple(position)
    if len(given) != len(names) or set(given) != set(names):
        return None
    by_name = dict(zip(given, position, strict=True))
    return tuple(by_name[n] for n in names)


class JointTrajectory:
    """move_jp: every joint on a straight line in joint space, all arriving together,
    the fastest at ``speed_rad_s``."""

    def __init__(self, start: Sequence[float], goal: Sequence[float], speed_rad_s: float,
                 t0_ns: int) -> None:
        self.start, self.goal = tuple(start), tuple(goal)
        span = max((abs(g - s) for s, g in zip(self.start, self.goal, strict=True)),
                   default=0.0)
        self.t0_ns = t0_ns
        self.duration_ns = max(1, int(span / speed_rad_s * 1e9))

    def at(self, now_ns: int) -> tuple[float, ...]:
        s = min(1.0, max(0.0, (now_ns - self.t0_ns) / self.duration_ns))
        if s >= 1.0:
            return self.goal
        return tuple(a + s * (b - a) for a, b in zip(self.start, self.goal, strict=True))
