"""CRTK ``servo_cp`` / ``move_cp`` for the ROS commander: poses from DDS.

- ``servo_cp`` (geometry_msgs/PoseStamped): the newest message of a wake-up
  becomes one command, sent as it arrives and never repeated: when the ROS stream
  stops, commands stop and the robot's command timeout holds the arm. A setpoint
  stream supersedes itself (as the robot's gate treats a console's): the older
  messages taken in the same wake-up are counted (``superseded``), never sent, so
  the commander cannot fall behind the stream (``servo_jp``, ``move_*`` alike).
- ``move_cp`` (geometry_msgs/PoseStamped): a straight line at ``move_speed_m_s``
  (orientation interpolated over the same time, ``Trajectory``) streamed at
  ``command_hz``; at the goal the goal keeps being streamed (the commander holds
  it); a ``servo_cp`` or ``pause`` ends it.

A PoseStamped from an untrusted peer becomes a master pose (``ros_pose``) or
nothing: finite, within the wire schema's position bound, with a unit quaternion.
"""

from __future__ import annotations

import math
import time
from typing import Any

from telesurgery.quat import Quat, Vec3, quat_from_rotvec, quat_mul, quat_relative
from transport.schema import MAX_POSITION_M, QUAT_NORM_TOL

MAX_ANGULAR_SPEED = 0.5
"""move_cp: rad/s of the generated orientation interpolation at most."""


def ros_pose(msg: Any) -> tuple[Vec3, Quat] | None:
    """Position and (w, x, y, z) of a PoseStamped; None when it is not a valid pose."""
    try:
        p, o = msg.pose.position, msg.pose.orientation
        pos = (float(p.x), float(p.y), float(p.z))
        quat = (float(o.w), float(o.x), float(o.y), float(o.z))
    except (AttributeError, TypeError, ValueError):
        return None
    if not all(math.isfinite(c) for c in (*pos, *quat)):
        return None
    if any(abs(c) > MAX_POSITION_M for c in pos):
        return None
    norm = math.sqrt(sum(c * c for c in quat))
    if abs(norm - 1.0) > QUAT_NORM_TOL:
        return None
    return pos, (quat[0] / norm, quat[1] / norm, quat[2] / norm, quat[3] / norm)


def sample_time(msg: Any, recv_ns: int) -> int:
    """A servo_cp's publish time on this machine's monotonic clock, for the path figure.

    The publisher's header stamp (wall clock) when it is plausible (not ahead of the
    arrival, at most a second before it), else the arrival at the bridge. For
    measurement only (``Command.t_sample_ns``): no bound of the robot rests on it.
    """
    try:
        stamp = msg.header.stamp
        wall_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    except (AttributeError, TypeError, ValueError):
        return recv_ns
    mono_ns = wall_ns - (time.time_ns() - time.monotonic_ns())  # wall-clock ok: ROS stamp
    return mono_ns if recv_ns - 1_000_000_000 <= mono_ns <= recv_ns else recv_ns


class Trajectory:
    """move_cp: a straight line at a bounded speed, orientation interpolated alongside."""

    def __init__(self, start: tuple[Vec3, Quat], goal: tuple[Vec3, Quat], speed_m_s: float,
                 t0_ns: int) -> None:
        self.start, self.goal = start, goal
        distance = math.dist(start[0], goal[0])
        self._angle, self._axis = quat_relative(start[1], goal[1])
        duration_s = max(distance / speed_m_s, self._angle / MAX_ANGULAR_SPEED)
        self.t0_ns = t0_ns
        self.duration_ns = max(1, int(duration_s * 1e9))

    def at(self, now_ns: int) -> tuple[Vec3, Quat]:
        s = min(1.0, max(0.0, (now_ns - self.t0_ns) / self.duration_ns))
        if s >= 1.0:
            return self.goal
        (x0, y0, z0), (x1, y1, z1) = self.start[0], self.goal[0]
        pos = (x0 + s * (x1 - x0), y0 + s * (y1 - y0), z0 + s * (z1 - z0))
        turn = quat_from_rotvec(tuple(c * s * self._angle for c in self._axis))  # type: ignore[arg-type]
        return pos, quat_mul(self.start[1], turn)

    def done(self, now_ns: int) -> bool:
        return now_ns - self.t0_ns >= self.duration_ns
