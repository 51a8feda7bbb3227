"""The robot process's one config: every section, validated at load."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from robot_side.driver import SerialConfig
from robot_side.fanout.config import FanoutConfig
from robot_side.intercom import IntercomConfig
from robot_side.localsock import default_runtime_dir
from robot_side.recording.config import RecordConfig
from robot_side.servos.config import ServosConfig
from robot_side.supervision.config import PageConfig
from robot_side.telestration import TelestrationConfig
from robot_side.video.config import VideoConfig
from robot_side.vitals.config import VitalsConfig
from safety.config import SafetyConfig
from telesurgery.config import check, finite_positive, load
from transport.config import LinkConfig

__all__ = ["RobotConfig", "default_runtime_dir", "load_robot_config"]


@dataclass(frozen=True)
class ControlConfig:
    rate_hz: float = 1000.0
    """1 kHz, as the dVRK and haptic teleoperation run."""
    realtime: bool = True
    """Try SCHED_FIFO for the control thread; falls back with a log line."""
    telemetry_hz: float = 50.0
    ros_hz: float = 100.0
    scale: float = 0.2
    """Surgeon's motion scale at start (da Vinci Research Kit default)."""
    min_scale: float = 0.02
    max_scale: float = 1.0
    rotation_scale: float = 1.0
    """Master rotation -> instrument rotation (1.0: the instrument turns with the hand).
    The teleop mapping lives on the robot (safety.anchor); the console sends the registered,
    tremor-filtered master pose unscaled."""
    ik_max_iter: int = 8
    spin_us: int = 0
    """A SCHED_FIFO control thread spins this long before each deadline instead of
    sleeping (``telesurgery.pacer.SPIN_LEAD_NS`` is 80). 0: sleep to the deadline with
    a 1 us timer slack, which met the p99 <= 100 us goal here and leaves the spin's ~8 %
    of a core to the encoder (docs/architecture.md, "Where the node's CPU goes")."""

    def __post_init__(self) -> None:
        finite_positive("control.rate_hz", self.rate_hz)
        check(50.0 <= self.rate_hz <= 2000.0, "control.rate_hz", self.rate_hz,
              "must be within 50..2000 Hz")
        finite_positive("control.telemetry_hz", self.telemetry_hz)
        finite_positive("control.ros_hz", self.ros_hz)
        check(0 < self.min_scale <= self.scale <= self.max_scale <= 1.0, "control.scale",
              self.scale, "must satisfy 0 < min_scale <= scale <= max_scale <= 1")
        check(math.isfinite(self.rotation_scale) and 0.0 <= self.rotation_scale <= 1.0,
              "control.rotation_scale", self.rotation_scale, "must be in [0, 1]")
        check(self.ik_max_iter >= 1, "control.ik_max_iter", self.ik_max_iter, "must be >= 1")
        check(0 <= self.spin_us * 1000 < self.period_ns, "control.spin_us", self.spin_us,
              "must be >= 0 and shorter than the period")

    @property
    def period_ns(self) -> int:
        return int(1e9 / self.rate_hz)


@dataclass(frozen=True)
class RosConfig:
    """The ROS 2 bridge process (robot_side.ros; docs/ros2.md)."""

    backend: Literal["auto", "dds", "rclpy", "none"] = "auto"
    namespace: str = "arm"
    domain_id: int = 0
    interfaces: tuple[str, ...] = ()
    """Network interfaces (names or addresses) DDS binds to; () = cyclonedds' default,
    loopback only when the command side is on and no peers are given."""
    peers: tuple[str, ...] = ()
    """Unicast discovery peers; when given, multicast discovery is off."""
    security_xml: Path | None = None
    """A cyclonedds <Security> element (DDS Security); refused if this build lacks it."""
    command: bool = False
    """Opt-in command side: servo_cp, move_cp, state_command through the robot's link."""
    command_key: str = "ros"
    """The commander's key pair: <keys_dir>/<command_key>/ (``telesurgery keys add-ros``)."""
    move_speed_m_s: float = 0.02
    """move_cp: straight-line speed of the generated trajectory."""
    command_hz: float = 500.0
    """move_cp: rate of the generated stream (servo_cp is forwarded as it arrives)."""
    move_joint_speed_rad_s: float = 0.3
    """move_jp: speed of the fastest joint of the generated joint-space trajectory."""

    def __post_init__(self) -> None:
        check(0 <= self.domain_id <= 232, "ros.domain_id", self.domain_id, "must be 0..232")
        check(self.namespace.isidentifier(), "ros.namespace", self.namespace,
              "must be a plain ROS name")
        check(all(isinstance(i, str) and i for i in self.interfaces), "ros.interfaces",
              self.interfaces, "must be interface names or addresses")
        check(all(isinstance(p, str) and p for p in self.peers), "ros.peers", self.peers,
              "must be host names or addresses")
        finite_positive("ros.move_speed_m_s", self.move_speed_m_s)
        check(self.move_speed_m_s <= 0.25, "ros.move_speed_m_s", self.move_speed_m_s,
              "must be <= 0.25 m/s")
        finite_positive("ros.command_hz", self.command_hz)
        check(self.command_hz <= 1000.0, "ros.command_hz", self.command_hz, "must be <= 1000")
        finite_positive("ros.move_joint_speed_rad_s", self.move_joint_speed_rad_s)
        check(self.move_joint_speed_rad_s <= 2.0, "ros.move_joint_speed_rad_s",
              self.move_joint_speed_rad_s, "must be <= 2 rad/s")


@dataclass(frozen=True)
class KinematicsConfig:
    urdf: Path | None = None
    """None: the shipped 6-DOF arm (robot_side/description/arm6.urdf)."""
    tip_frame: str = "tool_tip"


@dataclass(frozen=True)
class EstopConfig:
    socket: Path = field(default_factory=lambda: default_runtime_dir() / "estop.sock")
    """Local-only Unix socket of ``telesurgery estop``; never reachable over the network.
    Its folder must be the robot's uid's and 0700 (0750 with ``group``): see
    robot_side.localsock. Default: /run/telesurgery (root), $XDG_RUNTIME_DIR/telesurgery."""
    group: str | None = None
    """Staff group whose members may use the socket (panel, estop) besides the robot's
    own account and root; the socket is then 0660 and its folder 0750, group-owned."""
    robot_user: str | None = None
    """The account the robot node runs as, for the local tools: they trust only a server
    of this uid (or root). Default: the tool's own uid."""

    def __post_init__(self) -> None:
        for key, name in (("estop.group", self.group), ("estop.robot_user", self.robot_user)):
            check(name is None or (0 < len(name) <= 32 and name.replace("-", "_")
                                   .replace(".", "_").isidentifier()),
                  key, name, "must be a plain account or group name")


@dataclass(frozen=True)
class ObserveConfig:
    socket: Path = field(default_factory=lambda: default_runtime_dir() / "observe.sock")
    """Local feed (robot_side.observe) for the ROS 2 bridge, the page and the recorder."""
    hz: float = 100.0
    """Telemetry rate on the feed; safety events are published as they are audited."""
    video_socket: Path | None = None
    """Local copy of the surgeon's H.264 access units (page, recorder); an XPUB: each
    subscription asks the encoder for a keyframe, at most once per second. None:
    ``video.sock`` beside ``socket``."""

    @property
    def video_path(self) -> Path:
        return self.video_socket or self.socket.parent / "video.sock"

    def __post_init__(self) -> None:
        finite_positive("observe.hz", self.hz)
        check(self.hz <= 1000.0, "observe.hz", self.hz, "must be <= 1000")


@dataclass(frozen=True)
class StartupConfig:
    """When the robot is ready to follow (robot_side.readiness): until then engage is
    refused with ``not_ready`` and a plain-words detail (issue 11: no trip a second
    after an engage made while the node's children were still starting)."""

    arm_steady_ms: float = 100.0
    """The arm's state reports steady (none older than the state timeout) this long."""
    children_timeout_s: float = 60.0
    """A child (video, ROS 2 bridge) not up by then: the refusal says so, the failure
    is logged and audited; engage stays refused until it is up (an error or an exit: until
    the node is restarted)."""

    def __post_init__(self) -> None:
        check(math.isfinite(self.arm_steady_ms) and self.arm_steady_ms >= 0.0,
              "startup.arm_steady_ms", self.arm_steady_ms, "must be finite and >= 0")
        finite_positive("startup.children_timeout_s", self.children_timeout_s)


@dataclass(frozen=True)
class JointTeleopConfig:
    """Joint-space teleop (``Command.joints``, CRTK ``servo_jp``; robot_side.follow_joint)."""

    engage_tolerance_rad: float = 0.15
    """Engage in joint mode only when every master joint is within this of the follower's
    (rad; m for a prismatic joint): the leader arm is put where the follower is first,
    so leader and follower poses agree and no offset hides a joint limit."""

    def __post_init__(self) -> None:
        finite_positive("joint_teleop.engage_tolerance_rad", self.engage_tolerance_rad)
        check(self.engage_tolerance_rad <= 0.5, "joint_teleop.engage_tolerance_rad",
              self.engage_tolerance_rad, "must be <= 0.5 rad (about 30 degrees)")


@dataclass(frozen=True)
class ManipulatorConfig:
    backend: str = "serial"
    """A row of ``robot_side.manipulator.BACKENDS``: "serial" (firmware protocol on a tty,
    section ``[serial]``) or "virtual" (the firmware model in process, no hardware)."""

    def __post_init__(self) -> None:
        check(bool(self.backend) and self.backend.isidentifier(), "manipulator.backend",
              self.backend, "must be a backend name such as 'serial' or 'virtual'")


@dataclass(frozen=True)
class RobotConfig:
    link: LinkConfig = field(default_factory=LinkConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    serial: SerialConfig = field(default_factory=SerialConfig)
    manipulator: ManipulatorConfig = field(default_factory=ManipulatorConfig)
    servos: ServosConfig = field(default_factory=ServosConfig)
    """The smart-servo bus of the "dynamixel" and "feetech" manipulator backends."""
    control: ControlConfig = field(default_factory=ControlConfig)
    ros: RosConfig = field(default_factory=RosConfig)
    kinematics: KinematicsConfig = field(default_factory=KinematicsConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    estop: EstopConfig = field(default_factory=EstopConfig)
    observe: ObserveConfig = field(default_factory=ObserveConfig)
    page: PageConfig = field(default_factory=PageConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    fanout: FanoutConfig = field(default_factory=FanoutConfig)
    """Observers at scale through Zenoh (robot_side.fanout); off by default."""
    telestration: TelestrationConfig = field(default_factory=TelestrationConfig)
    """Strokes from consoles with the draw right, relayed to all (robot_side.telestration)."""
    intercom: IntercomConfig = field(default_factory=IntercomConfig)
    """Push-to-talk Opus between the consoles and the on-site staff (robot_side.intercom)."""
    vitals: VitalsConfig = field(default_factory=VitalsConfig)
    """The patient monitor (robot_side.vitals): off unless configured."""
    joint_teleop: JointTeleopConfig = field(default_factory=JointTeleopConfig)
    startup: StartupConfig = field(default_factory=StartupConfig)
    """When engage is first accepted: children up, arm steady (robot_side.readiness)."""


def load_robot_config(path: Path | str | None) -> RobotConfig:
    return load(RobotConfig, path)
