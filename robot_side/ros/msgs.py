"""The ROS 2 message types the bridge uses, as cyclonedds IDL structs.

These mirror the ``.msg`` definitions field for field and in order, with the
type names ROS 2 puts on the DDS wire (``pkg::msg::dds_::Type_``), so a plain
DDS participant publishing them is indistinguishable from an rclpy node on
rmw_cyclonedds. They are also the backend-neutral form of a message: the rclpy
backend copies them field by field into rclpy's own classes.

``crtk_msgs/OperatingState`` is from the CRTK convention
(github.com/collaborative-robotics/crtk_msgs); ``OPERATING_STATE_MSG`` is its
``.msg`` text for serializers that need it (the wire-compatibility test).

No ``from __future__ import annotations`` here: cyclonedds reads the field
annotations as real types, and postponed (string) annotations of generics such
as ``sequence[str]`` do not resolve.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import byte, float64, int32, uint32

if TYPE_CHECKING:
    # For mypy a CDR sequence is the list it holds at run time; cyclonedds' own
    # ``sequence`` is a runtime annotation object that type checkers can not read.
    from builtins import list as sequence
else:
    from cyclonedds.idl.types import sequence


@dataclass
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32 = 0
    nanosec: uint32 = 0


@dataclass
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


@dataclass
class Bool(IdlStruct, typename="std_msgs::msg::dds_::Bool_"):
    data: bool = False


@dataclass
class JointState(IdlStruct, typename="sensor_msgs::msg::dds_::JointState_"):
    header: Header = field(default_factory=Header)
    name: sequence[str] = field(default_factory=list)
    position: sequence[float64] = field(default_factory=list)
    velocity: sequence[float64] = field(default_factory=list)
    effort: sequence[float64] = field(default_factory=list)


@dataclass
class Point(IdlStruct, typename="geometry_msgs::msg::dds_::Point_"):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0


@dataclass
class Quaternion(IdlStruct, typename="geometry_msgs::msg::dds_::Quaternion_"):
    """Scalar last, as in ROS (the rest of this project is scalar first)."""

    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0
    w: float64 = 1.0


@dataclass
class Vector3(IdlStruct, typename="geometry_msgs::msg::dds_::Vector3_"):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0


@dataclass
class Twist(IdlStruct, typename="geometry_msgs::msg::dds_::Twist_"):
    linear: Vector3 = field(default_factory=Vector3)
    angular: Vector3 = field(default_factory=Vector3)


@dataclass
class TwistStamped(IdlStruct, typename="geometry_msgs::msg::dds_::TwistStamped_"):
    header: Header = field(default_factory=Header)
    twist: Twist = field(default_factory=Twist)


@dataclass
class Wrench(IdlStruct, typename="geometry_msgs::msg::dds_::Wrench_"):
    force: Vector3 = field(default_factory=Vector3)
    torque: Vector3 = field(default_factory=Vector3)


@dataclass
class WrenchStamped(IdlStruct, typename="geometry_msgs::msg::dds_::WrenchStamped_"):
    header: Header = field(default_factory=Header)
    wrench: Wrench = field(default_factory=Wrench)


@dataclass
class MultiArrayDimension(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayDimension_"):
    label: str = ""
    size: uint32 = 0
    stride: uint32 = 0


@dataclass
class MultiArrayLayout(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayLayout_"):
    dim: sequence[MultiArrayDimension] = field(default_factory=list)
    data_offset: uint32 = 0


@dataclass
class Float64MultiArray(IdlStruct, typename="std_msgs::msg::dds_::Float64MultiArray_"):
    layout: MultiArrayLayout = field(default_factory=MultiArrayLayout)
    data: sequence[float64] = field(default_factory=list)


@dataclass
class Pose(IdlStruct, typename="geometry_msgs::msg::dds_::Pose_"):
    position: Point = field(default_factory=Point)
    orientation: Quaternion = field(default_factory=Quaternion)


@dataclass
class PoseStamped(IdlStruct, typename="geometry_msgs::msg::dds_::PoseStamped_"):
    header: Header = field(default_factory=Header)
    pose: Pose = field(default_factory=Pose)


@dataclass
class KeyValue(IdlStruct, typename="diagnostic_msgs::msg::dds_::KeyValue_"):
    key: str = ""
    value: str = ""


@dataclass
class DiagnosticStatus(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticStatus_"):
    level: byte = 0
    """ROS ``byte``, IDL ``octet`` (not ``uint8``: a type-checking peer refuses that match).
    OK=0, WARN=1, ERROR=2, STALE=3."""
    name: str = ""
    message: str = ""
    hardware_id: str = ""
    values: sequence[KeyValue] = field(default_factory=list)


@dataclass
class DiagnosticArray(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticArray_"):
    header: Header = field(default_factory=Header)
    status: sequence[DiagnosticStatus] = field(default_factory=list)


@dataclass
class OperatingState(IdlStruct, typename="crtk_msgs::msg::dds_::OperatingState_"):
    header: Header = field(default_factory=Header)
    state: str = ""
    is_homed: bool = False
    is_busy: bool = False


@dataclass
class StringStamped(IdlStruct, typename="crtk_msgs::msg::dds_::StringStamped_"):
    """CRTK ``state_command``: enable, disable, home, unhome, pause, resume."""

    header: Header = field(default_factory=Header)
    string: str = ""


OPERATING_STATE_MSG = """\
std_msgs/Header header
string state
bool is_homed
bool is_busy
"""
STRING_STAMPED_MSG = """\
std_msgs/Header header
string string
"""
CRTK_MSGS = {
    "crtk_msgs/msg/OperatingState": OPERATING_STATE_MSG,
    "crtk_msgs/msg/StringStamped": STRING_STAMPED_MSG,
}
"""The crtk_msgs definitions (not in the ROS 2 core type stores) by ROS type name."""

ALL_STRUCTS: tuple[type[IdlStruct], ...] = (
    Time, Header, Bool, JointState, Point, Quaternion, Vector3, Twist, TwistStamped, Wrench,
    WrenchStamped, MultiArrayDimension, MultiArrayLayout, Float64MultiArray, Pose,
    PoseStamped, KeyValue, DiagnosticStatus, DiagnosticArray, OperatingState, StringStamped,
)
"""Every struct here, for the test that compares them with ROS 2's own definitions."""
