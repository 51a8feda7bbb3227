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
from cyclonedds.idl.types import float64, int32, uint8, uint32

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
    level: uint8 = 0
    """ROS ``byte``: OK=0, WARN=1, ERROR=2, STALE=3."""
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


OPERATING_STATE_MSG = """\
std_msgs/Header header
string state
bool is_homed
bool is_busy
"""
