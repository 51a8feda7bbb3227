"""The one topic table every ROS 2 backend uses: names, types, QoS.

CRTK names under the namespace (``/<ns>/measured_js`` ...) and the ROS
convention ``/diagnostics``. Every topic uses the ROS 2 default QoS (reliable,
keep last 10, volatile), so a default ``create_subscription(..., 10)`` receives
it (docs/ros2.md lists them with their rates and clocks).
"""

from __future__ import annotations

from dataclasses import dataclass

from cyclonedds.idl import IdlStruct

from robot_side.ros import msgs

DEFAULT_DEPTH = 10
"""ROS 2's default QoS profile (rmw_qos_profile_default): reliable, keep last 10, volatile."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    msg_type: type[IdlStruct]
    reliable: bool = True
    global_name: bool = False
    """True: the topic is not under the namespace (``/diagnostics``)."""
    depth: int = DEFAULT_DEPTH
    keep: int = 1
    """Subscriptions on a backend with an inbox (rclpy): how many received messages it
    keeps until taken. The dds backend's readers keep ``depth``."""
    command: bool = False
    """Subscriptions: only when the command side is enabled."""

    def ros_name(self, namespace: str) -> str:
        return f"/{self.name}" if self.global_name else f"/{namespace}/{self.name}"

    def dds_name(self, namespace: str) -> str:
        """The DDS topic name ROS 2 uses: ``rt`` + the ROS name."""
        return "rt" + self.ros_name(namespace)


TOPICS: dict[str, TopicSpec] = {
    "measured_js": TopicSpec("measured_js", msgs.JointState),
    "setpoint_js": TopicSpec("setpoint_js", msgs.JointState),
    "measured_cp": TopicSpec("measured_cp", msgs.PoseStamped),
    "setpoint_cp": TopicSpec("setpoint_cp", msgs.PoseStamped),
    "measured_cv": TopicSpec("measured_cv", msgs.TwistStamped),
    "measured_cf": TopicSpec("measured_cf", msgs.WrenchStamped),
    "jacobian": TopicSpec("spatial/jacobian", msgs.Float64MultiArray),
    "operating_state": TopicSpec("operating_state", msgs.OperatingState),
    "diagnostics": TopicSpec("diagnostics", msgs.DiagnosticArray, global_name=True),
}
"""Published topics, by the key ``_write`` receives. The same table for every backend."""

ESTOP_TOPIC = TopicSpec("estop", msgs.Bool)
"""std_msgs/Bool: true sets the e-stop (forwarded to the robot's local e-stop socket)."""
SUBSCRIPTIONS: dict[str, TopicSpec] = {
    "estop": ESTOP_TOPIC,
    "state_command": TopicSpec("state_command", msgs.StringStamped, keep=8, command=True),
    "servo_cp": TopicSpec("servo_cp", msgs.PoseStamped, keep=DEFAULT_DEPTH, command=True),
    "move_cp": TopicSpec("move_cp", msgs.PoseStamped, keep=DEFAULT_DEPTH, command=True),
    "servo_jp": TopicSpec("servo_jp", msgs.JointState, keep=DEFAULT_DEPTH, command=True),
    "move_jp": TopicSpec("move_jp", msgs.JointState, keep=DEFAULT_DEPTH, command=True),
}
"""Subscribed topics; the command ones exist only when ``ros.command`` is on."""


def subscriptions(command: bool) -> dict[str, TopicSpec]:
    return {k: s for k, s in SUBSCRIPTIONS.items() if command or not s.command}
