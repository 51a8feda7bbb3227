"""ROS 2 launch file: the robot node with the opt-in ROS 2 COMMAND side on.

    ros2 launch launch/robot_side_command.launch.py [params_file:=<yaml>] [profile:=<toml>]

Same as robot_side.launch.py with params_command.yaml: profile
launch/profiles/ros_command.toml and ``command: true``, so CRTK ``servo_cp``,
``move_cp`` and ``state_command`` drive the arm through the robot's own link
(one surgeon-role client with the key from ``telesurgery keys add-ros``).
Needs a ROS 2 install (imports ``launch``); a test only compiles it.
"""

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("robot_side_launch", HERE / "robot_side.launch.py")
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def generate_launch_description():
    return _base.generate_launch_description("params_command.yaml")
