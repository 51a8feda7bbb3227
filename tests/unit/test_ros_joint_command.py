"""servo_jp / move_jp input from DDS: untrusted JointState -> the arm's joint vector."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from robot_side.ros.joint_command import JointTrajectory, ros_joints

NAMES = ("a", "b", "c")


def msg(position: list[float], name: list[str] | None = None) -> SimpleNamespace:
    return SimpleNamespace(position=position, name=name or [])


def test_positions_in_order_or_reordered_by_name() -> None:
    assert ros_joints(msg([0.1, 0.2, 0.3]), NAMES) == (0.1, 0.2, 0.3)
    assert ros_joints(msg([0.3, 0.1, 0.2], ["c", "a", "b"]), NAMES) == (0.1, 0.2, 0.3)


@pytest.mark.parametrize("bad", [
    msg([0.1, 0.2]), msg([0.1, 0.2, 0.3, 0.4]), msg([math.nan, 0.0, 0.0]),
    msg([math.inf, 0.0, 0.0]), msg([100.0, 0.0, 0.0]), msg([0.1, 0.2, 0.3], ["a", "b", "x"]),
    msg([0.1, 0.2, 0.3], ["a", "a", "b"]), SimpleNamespace(position=None, name=[]),
    SimpleNamespace(name=[])])
def test_unusable_joint_states_are_refused(bad: SimpleNamespace) -> None:
    assert ros_joints(bad, NAMES) is None


def test_move_jp_arrives_together_at_the_speed_of_the_fastest_joint() -> None:
    traj = JointTrajectory((0.0, 0.0), (0.5, -0.1), 0.5, 0)
    assert traj.duration_ns == 1_000_000_000
    assert traj.at(500_000_000) == pytest.approx((0.25, -0.05))
    assert traj.at(2_000_000_000) == (0.5, -0.1)
