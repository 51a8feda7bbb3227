"""The wire messages: every message class that crosses the link, and the bounds of
their content (one half of ``transport.schema``; the rules each field is checked by are
in ``transport.validators``, the encoding in ``transport.codec``).

Timestamps are integers in nanoseconds of the *sender's* monotonic clock;
the receiver maps them with the clock-sync offset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

MAX_POSITION_M = 10.0
"""Sanity bound in the schema; the workspace bound is the safety layer's job."""
QUAT_NORM_TOL = 1e-3
MAX_JOINTS = 16
MAX_JOINT_VALUE = 4 * math.pi
"""Sanity bound of a commanded joint (rad, or m for a prismatic one); the URDF limits
are the safety layer's job."""
MAX_TEXT = 256
U32 = 2**32 - 1
U64 = 2**64 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1

Vec3: TypeAlias = tuple[float, float, float]
Quat: TypeAlias = tuple[float, float, float, float]
"""Unit quaternion, scalar first: (w, x, y, z)."""

Validator = Callable[[str, Any], Any]
"""Checks one field's value (``field`` names it in the error) and returns it as stored."""

SUPERVISOR_STATES = frozenset({"disabled", "ready", "following", "hold", "fault", "estop"})
HANDOFF_OPS = frozenset({"request_command", "grant", "deny", "takeover"})
"""Changing the commander (``transport.session_guard``): a surgeon not in command asks,
the one in command grants or denies naming the request (``handoff``), a mentor takes over."""
CONTROL_OPS = frozenset({"arm", "disarm", "engage", "disengage", "clear_fault", "set_scale"}
                        | HANDOFF_OPS)


@dataclass(frozen=True, slots=True)
class Message:
    """Base of all wire messages. Subclasses set TYPE and _SPEC."""

    TYPE: ClassVar[str] = ""
    _SPEC: ClassVar[Mapping[str, Validator]] = {}


@dataclass(frozen=True, slots=True)
class Pose(Message):
    """Position in metres and unit quaternion (w, x, y, z); a nested value."""

    position: Vec3 = (0.0, 0.0, 0.0)
    orientation: Quat = (1.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Command(Message):
    """Console -> robot Cartesian setpoint, up to 1 kHz."""

    TYPE: ClassVar[str] = "cmd"
    seq: int
    t_send_ns: int
    position: Vec3
    orientation: Quat
    grip: float
    clutch: bool
    operator_present: bool
    video_age_us: int | None = None
    """Age of the frame the surgeon sees now; None when no video is shown."""
    t_sample_ns: int | None = None
    """When the master device was sampled for this command (console clock); the robot
    measures console sample -> serial frame written from it. For measurement only."""
    session: int | None = None
    """The surgeon session the robot granted in its ``arm`` reply; see ``OMITTED_WHEN_NONE``."""
    joints: tuple[float, ...] | None = None
    """Joint-space teleop (CRTK ``servo_jp``): the master's joint positions (rad or m) in
    the follower's joint order; None = the Cartesian pose above is the master. Mode is
    fixed per engagement (``robot_side.follow_joint``); see ``OMITTED_WHEN_NONE``."""


@dataclass(frozen=True, slots=True)
class ControlRequest(Message):
    """Console -> robot: arm, engage, disengage, clear fault, set scale."""

    TYPE: ClassVar[str] = "ctl"
    req_id: int
    op: str
    value: float | None = None
    session: int | None = None
    """The session this request belongs to; None only before the console holds one."""
    handoff: int | None = None
    """``grant``/``deny``: the id of the pending command request (telemetry's
    ``handoff_id``); a grant naming any other request is refused."""


@dataclass(frozen=True, slots=True)
class ControlReply(Message):
    """Robot -> console acknowledgement of one ControlRequest."""

    TYPE: ClassVar[str] = "ctl_ack"
    req_id: int
    ok: bool
    state: str
    reason: str
    detail: str = ""
    session: int | None = None
    """Set in the reply to a granted ``arm``: the console's session token from now on."""


@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Clock probe; t1 is the sender's monotonic send time."""

    TYPE: ClassVar[str] = "ping"
    seq: int
    t1_ns: int
    session: int | None = None
    """The console's session token: a console that reconnected is found by it."""


@dataclass(frozen=True, slots=True)
class Pong(Message):
    """Clock probe answer: t2 receive and t3 send, on the answerer's clock."""

    TYPE: ClassVar[str] = "pong"
    seq: int
    t1_ns: int
    t2_ns: int
    t3_ns: int
    session: int | None = None


@dataclass(frozen=True, slots=True)
class LinkReport(Message):
    """Link statistics as one side sees them; a nested value."""

    rtt_us: int | None = None
    latency_us: int | None = None
    jitter_us: int | None = None
    loss: float = 0.0
    """Fraction of commands lost over the window, 0..1."""
    video_age_us: int | None = None


@dataclass(frozen=True, slots=True)
class Telemetry(Message):
    """Robot -> console (and observers) state snapshot."""

    TYPE: ClassVar[str] = "tlm"
    seq: int
    t_ns: int
    state: str
    reason: str
    measured_js: tuple[float, ...]
    setpoint_js: tuple[float, ...]
    measured_cp: Pose
    setpoint_cp: Pose
    link: LinkReport
    scale: float
    estop: bool
    firmware_flags: int = 0
    loop_jitter_us: int = 0
    tracking_error_m: float = 0.0
    measured_jv: tuple[float, ...] = ()
    """Joint velocities (rad/s or m/s) as the firmware reports them; empty if it does not."""
    measured_jf: tuple[float, ...] = ()
    """Joint efforts (N m or N) as the firmware reports them; empty if it does not."""
    audit_head: str | None = None
    """The robot's audit chain head, ``"<index>:<16 hex>"``: a witness for
    ``telesurgery audit verify --witness`` (safety.audit_verify)."""
    observers: int | None = None
    """Observers watching through the Zenoh fan-out (robot_side.fanout), stamped by the
    fan-out process on the copy it publishes; None where nobody counted."""
    commander: str | None = None
    """The name of the surgeon key in command (``transport.keys.Identity``); None: nobody."""
    handoff_from: str | None = None
    """A pending command request: who asks (its surgeon name) ..."""
    handoff_id: int | None = None
    """... and its id, which the commander's ``grant`` must name."""
    paths: tuple[PathReport, ...] | None = None
    """With two or more network paths: each path's health as the robot measures it
    (``transport.paths``); see ``OMITTED_WHEN_NONE``."""
    recording: str | None = None
    """The session recorder's health as the robot node last read it: ``"ok"``, or why it
    is not recording (``"stopped: disk nearly full ..."``); None where recording is off.
    See ``OMITTED_WHEN_NONE``."""


@dataclass(frozen=True, slots=True)
class SafetyEvent(Message):
    """A supervisor transition or alarm, already in the audit log when sent."""

    TYPE: ClassVar[str] = "evt"
    seq: int
    t_ns: int
    code: str
    state_from: str
    state_to: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class VideoFrameHeader(Message):
    """First ZeroMQ frame of a video message; the access unit follows as frame 2."""

    TYPE: ClassVar[str] = "vid"
    frame_id: int
    capture_ns: int
    send_ns: int
    keyframe: bool
    width: int
    height: int
    payload_len: int


@dataclass(frozen=True, slots=True)
class KeyframeRequest(Message):
    """Console -> robot: the decoder needs an IDR (gap or decode error)."""

    TYPE: ClassVar[str] = "kfr"
    seq: int
    last_frame_id: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Stroke(Message):
    """A telestration stroke: a polyline drawn on one video frame (normalised 0..1
    image coordinates, x then y per point), shown for ``ttl_ms`` then faded out."""

    TYPE: ClassVar[str] = "stk"
    seq: int
    frame_id: int
    """The frame the stroke was drawn on: a HUD shows it on that picture and later."""
    points: tuple[float, ...]
    colour: int
    """0xRRGGBB."""
    ttl_ms: int
    t_ns: int
    """The drawer's monotonic clock at the draw: for its own latency figures only."""
    author: str | None = None
    """Set by the robot from the authenticated session (a claimed one is replaced)."""


MAX_STROKE_POINTS = 256


@dataclass(frozen=True, slots=True)
class AudioPacket(Message):
    """One Opus packet of the intercom (20 ms of 48 kHz mono speech)."""

    TYPE: ClassVar[str] = "aud"
    seq: int
    t_ns: int
    """The talker's monotonic clock when the frame was complete: its own latency figures only."""
    payload: bytes
    speaker: str | None = None
    """Set by the robot from the authenticated session (a claimed one is replaced)."""


MAX_OPUS_PACKET = 1275
"""RFC 6716: the largest Opus packet."""


VITAL_NAMES = frozenset({"hr", "spo2", "nibp_sys", "nibp_dia", "nibp_mean", "abp_sys",
                         "abp_dia", "abp_mean", "rr", "etco2", "temp"})
"""The vital signs a ``Vitals`` message may carry (robot_side.vitals.model has their units
and physiological ranges)."""
VITAL_STATUS = frozenset({"ok", "stale", "invalid"})
ALARM_PRIORITIES = frozenset({"low", "medium", "high"})
MAX_VITALS = 16
MAX_ALARMS = 8
MONITOR_STATES = frozenset({"ok", "gone", "none"})
"""``ok``: the monitor is heard from; ``gone``: it was, and is silent or disconnected;
``none``: no monitor was ever heard from."""


@dataclass(frozen=True, slots=True)
class VitalValue(Message):
    """One vital sign; a nested value. Ages are measured by the robot's vitals process
    (its own monotonic clock), never taken from the monitor's claimed timestamps."""

    name: str
    value: float
    unit: str
    age_ms: int
    """Since the vitals process received this value."""
    expected_ms: int
    """How often the monitor should update it: older than this, it is stale."""
    status: str = "ok"


@dataclass(frozen=True, slots=True)
class VitalAlarm(Message):
    """One alarm of the patient monitor, passed through; a nested value."""

    code: str
    priority: str
    text: str
    age_ms: int
    """Since the vitals process first saw this alarm active."""


@dataclass(frozen=True, slots=True)
class Vitals(Message):
    """Robot -> consoles and observers: the patient monitor's vitals and active alarms.

    Informational only: vitals never move or stop the arm (docs/hazards.md)."""

    TYPE: ClassVar[str] = "vit"
    seq: int
    t_ns: int
    source: str
    monitor: str
    values: tuple[VitalValue, ...] = ()
    alarms: tuple[VitalAlarm, ...] = ()
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PathReport(Message):
    """One network path's health as the robot sees it; a nested value (dual path)."""

    name: str
    live: bool
    rtt_us: int | None = None
    latency_us: int | None = None
    jitter_us: int | None = None
    loss: float = 0.0


MAX_PATHS = 8


@dataclass(frozen=True, slots=True)
class ReceivedCommand(Message):
    """A command the robot's gate accepted, with the robot's own receive time; nested."""

    recv_ns: int
    """Robot CLOCK_MONOTONIC when the control thread took it off the socket."""
    cmd: Command


COMMAND_BATCH_MAX = 48
"""Commands per CommandBatch: well under MAX_MESSAGE_BYTES at the largest encoding."""


@dataclass(frozen=True, slots=True)
class CommandBatch(Message):
    """Robot -> local observers (the recorder): commands as received, in arrival order.

    Never on the link: the network thread batches what the control thread appended
    to a ring, so the control loop encodes nothing per command. ``lost`` counts the
    commands the ring overwrote before they could be published (since the start).
    """

    TYPE: ClassVar[str] = "cmds"
    seq: int
    commands: tuple[ReceivedCommand, ...]
    lost: int = 0


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (Command, ControlRequest, ControlReply, Ping, Pong, Telemetry, SafetyEvent,
                VideoFrameHeader, KeyframeRequest, Stroke, AudioPacket, Vitals, CommandBatch)
}
"""The top-level messages by their wire ``t``; the others are nested values."""
NESTED_TYPES: tuple[type[Message], ...] = (Pose, LinkReport, VitalValue, VitalAlarm, PathReport,
                                           ReceivedCommand)
