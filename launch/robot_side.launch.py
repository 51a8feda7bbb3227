"""ROS 2 launch file: the telesurgery robot node with the rclpy bridge.

    ros2 launch launch/robot_side.launch.py [params_file:=<yaml>] [profile:=<toml>]

Runs ``telesurgery robot --config <profile> --ros-backend rclpy`` with the
namespace, domain, publish rate and command side of the parameters file
(default: params.yaml beside this file; params_command.yaml for the opt-in
command side, see robot_side_command.launch.py) as command-line overrides of
the profile. The robot node starts the ROS 2 bridge as its own child process. For robots with a ROS 2 install only: this file imports ``launch`` and
``launch_ros``, which come with ROS 2, so it is not importable (nor linted or
type-checked) in the project's own environment; a test only compiles it.
"""

from pathlib import Path

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NODE = "telesurgery_robot"


def _resolve(path):
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO / p


def _robot_process(context):
    params_file = _resolve(LaunchConfiguration("params_file").perform(context))
    with params_file.open() as fh:
        params = yaml.safe_load(fh)[NODE]["ros__parameters"]
    profile = LaunchConfiguration("profile").perform(context) or params["profile"]
    cmd = [
        "telesurgery", "robot",
        "--config", str(_resolve(profile)),
        "--ros-backend", "rclpy",
        "--ros-namespace", str(params["namespace"]),
        "--ros-domain-id", str(int(params["domain_id"])),
        "--ros-hz", str(float(params["ros_hz"])),
        "--ros-command", "on" if params.get("command", False) else "off",
    ]
    return [
        LogInfo(msg="telesurgery robot: " + " ".join(cmd)),
        ExecuteProcess(
            cmd=cmd,
            name=NODE,
            output="screen",
            # The firmware brakes on its own watchdog if this process dies; no respawn
            # here so that a crash is seen and investigated rather than hidden.
            respawn=False,
        ),
    ]


def generate_launch_description(params="params.yaml"):
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=str(HERE / params),
                              description="ROS 2 parameters file (profile, namespace, rates)"),
        DeclareLaunchArgument("profile", default_value="",
                              description="robot config profile (TOML); overrides params_file"),
        OpaqueFunction(function=_robot_process),
    ])
