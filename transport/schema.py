"""The wire schema: every message that crosses the link, one module.

Encoding is a msgpack map ``{"v": VERSION, "t": <type>, <field>: <value>, ...}``.
Maps rather than positional arrays so that an unknown or missing key is a
precise, nameable error and golden files stay readable; at 1 kHz the extra
bytes cost nothing measurable.

``decode()`` either returns a fully valid, immutable message or raises
``SchemaError`` naming the field. It never raises anything else: every input
path (size, msgpack structure, trailing bytes, types, ranges, NaN/inf,
quaternion norm) is checked before a message object exists.

Timestamps are integers in nanoseconds of the *sender's* monotonic clock;
the receiver maps them with the clock-sync offset.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import msgpack

from telesurgery.errors import SchemaError

VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024
"""Largest encoded message (video payloads travel in their own frame)."""
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

# ---------------------------------------------------------------- validators
Validator = Callable[[str, Any], Any]


def _fail(field: str, reason: str) -> SchemaError:
    return SchemaError(field, reason)


def _int(lo: int, hi: int) -> Validator:
    def v(field: str, x: Any) -> int:
        if not isinstance(x, int) or isinstance(x, bool):
            raise _fail(field, f"expected integer, got {type(x).__name__}")
        if not lo <= x <= hi:
            raise _fail(field, f"{x} out of range [{lo}, {hi}]")
        return x

    return v


def _float(lo: float, hi: float) -> Validator:
    def v(field: str, x: Any) -> float:
        if not isinstance(x, int | float) or isinstance(x, bool):
            raise _fail(field, f"expected number, got {type(x).__name__}")
        f = float(x)
        if not math.isfinite(f):
            raise _fail(field, f"non-finite value {f}")
        if not lo <= f <= hi:
            raise _fail(field, f"{f} out of range [{lo}, {hi}]")
        return f

    return v


def _bool(field: str, x: Any) -> bool:
    if not isinstance(x, bool):
        raise _fail(field, f"expected bool, got {type(x).__name__}")
    return x


def _text(max_len: int = MAX_TEXT) -> Validator:
    def v(field: str, x: Any) -> str:
        if not isinstance(x, str):
            raise _fail(field, f"expected string, got {type(x).__name__}")
        if len(x) > max_len:
            raise _fail(field, f"string longer than {max_len}")
        return x

    return v


def _choice(choices: frozenset[str]) -> Validator:
    def v(field: str, x: Any) -> str:
        if not isinstance(x, str) or x not in choices:
            raise _fail(field, f"{x!r} not one of {sorted(choices)}")
        return x

    return v


def _optional(inner: Validator) -> Validator:
    def v(field: str, x: Any) -> Any:
        return None if x is None else inner(field, x)

    return v


def _floats(n_min: int, n_max: int, lo: float, hi: float) -> Validator:
    item = _float(lo, hi)

    def v(field: str, x: Any) -> tuple[float, ...]:
        if not isinstance(x, list | tuple):
            raise _fail(field, f"expected array, got {type(x).__name__}")
        if not n_min <= len(x) <= n_max:
            raise _fail(field, f"expected {n_min}..{n_max} items, got {len(x)}")
        return tuple(item(f"{field}[{i}]", e) for i, e in enumerate(x))

    return v


_vec3 = _floats(3, 3, -MAX_POSITION_M, MAX_POSITION_M)


def _quat(field: str, x: Any) -> Quat:
    q = _floats(4, 4, -1.0 - QUAT_NORM_TOL, 1.0 + QUAT_NORM_TOL)(field, x)
    norm = math.sqrt(sum(c * c for c in q))
    if abs(norm - 1.0) > QUAT_NORM_TOL:
        raise _fail(field, f"quaternion norm {norm:.6f} is not 1")
    return (q[0], q[1], q[2], q[3])


def _vec3_checked(field: str, x: Any) -> Vec3:
    p = _vec3(field, x)
    return (p[0], p[1], p[2])


_seq = _int(0, U64)
_session = _optional(_int(1, U64))
_time_ns = _int(I64_MIN, I64_MAX)
_joints = _floats(0, MAX_JOINTS, -1e6, 1e6)

# ---------------------------------------------------------------- messages
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


def _nested(cls: type[Message]) -> Validator:
    def v(field: str, x: Any) -> Message:
        if not isinstance(x, dict):
            raise _fail(field, f"expected map, got {type(x).__name__}")
        return _build(cls, x, prefix=f"{field}.")

    return v


def _nested_list(cls: type[Message], n_max: int) -> Validator:
    item = _nested(cls)

    def v(field: str, x: Any) -> tuple[Message, ...]:
        if not isinstance(x, list | tuple):
            raise _fail(field, f"expected array, got {type(x).__name__}")
        if len(x) > n_max:
            raise _fail(field, f"expected at most {n_max} items, got {len(x)}")
        return tuple(item(f"{field}[{i}]", e) for i, e in enumerate(x))

    return v


Pose._SPEC = {"position": _vec3_checked, "orientation": _quat}
LinkReport._SPEC = {
    "rtt_us": _optional(_int(0, U32)),
    "latency_us": _optional(_int(-(2**31), U32)),
    "jitter_us": _optional(_int(0, U32)),
    "loss": _float(0.0, 1.0),
    "video_age_us": _optional(_int(0, U64)),
}
Command._SPEC = {
    "seq": _seq,
    "t_send_ns": _time_ns,
    "position": _vec3_checked,
    "orientation": _quat,
    "grip": _float(0.0, 1.0),
    "clutch": _bool,
    "operator_present": _bool,
    "video_age_us": _optional(_int(0, U64)),
    "t_sample_ns": _optional(_time_ns),
    "session": _session,
    "joints": _optional(_floats(1, MAX_JOINTS, -MAX_JOINT_VALUE, MAX_JOINT_VALUE)),
}
ControlRequest._SPEC = {
    "req_id": _int(0, U64),
    "op": _choice(CONTROL_OPS),
    "value": _optional(_float(-1e6, 1e6)),
    "session": _session,
    "handoff": _session,
}
ControlReply._SPEC = {
    "req_id": _int(0, U64),
    "ok": _bool,
    "state": _choice(SUPERVISOR_STATES),
    "reason": _text(64),
    "detail": _text(),
    "session": _session,
}
Ping._SPEC = {"seq": _seq, "t1_ns": _time_ns, "session": _session}
Pong._SPEC = {"seq": _seq, "t1_ns": _time_ns, "t2_ns": _time_ns, "t3_ns": _time_ns,
              "session": _session}
Telemetry._SPEC = {
    "seq": _seq,
    "t_ns": _time_ns,
    "state": _choice(SUPERVISOR_STATES),
    "reason": _text(64),
    "measured_js": _joints,
    "setpoint_js": _joints,
    "measured_cp": _nested(Pose),
    "setpoint_cp": _nested(Pose),
    "link": _nested(LinkReport),
    "scale": _float(0.0, 10.0),
    "estop": _bool,
    "firmware_flags": _int(0, U32),
    "loop_jitter_us": _int(0, U32),
    "tracking_error_m": _float(0.0, 1e3),
    "measured_jv": _joints,
    "measured_jf": _joints,
    "audit_head": _optional(_text(48)),
    "observers": _optional(_int(0, U32)),
    "commander": _optional(_text(32)),
    "handoff_from": _optional(_text(32)),
    "handoff_id": _session,
    "recording": _optional(_text(128)),
}
SafetyEvent._SPEC = {
    "seq": _seq,
    "t_ns": _time_ns,
    "code": _text(64),
    "state_from": _choice(SUPERVISOR_STATES),
    "state_to": _choice(SUPERVISOR_STATES),
    "detail": _text(),
}
VideoFrameHeader._SPEC = {
    "frame_id": _seq,
    "capture_ns": _time_ns,
    "send_ns": _time_ns,
    "keyframe": _bool,
    "width": _int(1, 8192),
    "height": _int(1, 8192),
    "payload_len": _int(0, 64 * 1024 * 1024),
}
KeyframeRequest._SPEC = {
    "seq": _seq,
    "last_frame_id": _optional(_seq),
    "reason": _text(64),
}
MAX_OPUS_PACKET = 1275
"""RFC 6716: the largest Opus packet."""


def _opus(field: str, x: Any) -> bytes:
    if not isinstance(x, bytes):
        raise _fail(field, f"expected bytes, got {type(x).__name__}")
    if not 1 <= len(x) <= MAX_OPUS_PACKET:
        raise _fail(field, f"expected 1..{MAX_OPUS_PACKET} bytes, got {len(x)}")
    return x


AudioPacket._SPEC = {
    "seq": _seq,
    "t_ns": _time_ns,
    "payload": _opus,
    "speaker": _optional(_text(48)),
}
MAX_STROKE_POINTS = 256
_unit_floats = _floats(4, 2 * MAX_STROKE_POINTS, 0.0, 1.0)


def _stroke_points(field: str, x: Any) -> tuple[float, ...]:
    pts: tuple[float, ...] = _unit_floats(field, x)
    if len(pts) % 2:
        raise _fail(field, "odd number of coordinates: expected x, y pairs")
    return pts


Stroke._SPEC = {
    "seq": _seq,
    "frame_id": _seq,
    "points": _stroke_points,
    "colour": _int(0, 0xFFFFFF),
    "ttl_ms": _int(100, 10_000),
    "t_ns": _time_ns,
    "author": _optional(_text(48)),
}

VitalValue._SPEC = {
    "name": _choice(VITAL_NAMES),
    "value": _float(-1e4, 1e4),
    "unit": _text(16),
    "age_ms": _int(0, U32),
    "expected_ms": _int(1, U32),
    "status": _choice(VITAL_STATUS),
}
VitalAlarm._SPEC = {
    "code": _text(32),
    "priority": _choice(ALARM_PRIORITIES),
    "text": _text(128),
    "age_ms": _int(0, U32),
}
Vitals._SPEC = {
    "seq": _seq,
    "t_ns": _time_ns,
    "source": _text(32),
    "monitor": _choice(MONITOR_STATES),
    "values": _nested_list(VitalValue, MAX_VITALS),
    "alarms": _nested_list(VitalAlarm, MAX_ALARMS),
    "detail": _text(),
}

PathReport._SPEC = {
    "name": _text(8),
    "live": _bool,
    "rtt_us": _optional(_int(0, U32)),
    "latency_us": _optional(_int(-(2**31), U32)),
    "jitter_us": _optional(_int(0, U32)),
    "loss": _float(0.0, 1.0),
}
MAX_PATHS = 8


Telemetry._SPEC = {**Telemetry._SPEC, "paths": _optional(_nested_list(PathReport, MAX_PATHS))}


ReceivedCommand._SPEC = {"recv_ns": _time_ns, "cmd": _nested(Command)}
CommandBatch._SPEC = {
    "seq": _seq,
    "commands": _nested_list(ReceivedCommand, COMMAND_BATCH_MAX),
    "lost": _int(0, U64),
}

MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (Command, ControlRequest, ControlReply, Ping, Pong, Telemetry, SafetyEvent,
                VideoFrameHeader, KeyframeRequest, Stroke, AudioPacket, Vitals, CommandBatch)
}


# ---------------------------------------------------------------- codec
OMITTED_WHEN_NONE = frozenset({"session", "observers", "author", "speaker", "joints",
                               "handoff", "commander", "handoff_from", "handoff_id",
                               "paths", "recording"})
"""Fields added after version 1 shipped: left out while unset, so a message without
them has the bytes it always had (the golden files) and decodes the same.

``session`` is the surgeon session token (``transport.session_guard``): a random
64-bit id the robot grants in the reply to ``arm``, after which it accepts
commands, control requests and pongs only when they carry it. ``joints`` (a
``Command``) is the joint-space master: absent in every Cartesian command.
``handoff``, ``commander``, ``handoff_from`` and ``handoff_id`` belong to the
handoff between surgeon consoles (transport.handoff). ``paths`` is the per-path
health in telemetry, with two or more network paths (``transport.paths``).
``recording`` (Telemetry) is the session recorder's health (``robot_side.recording``)."""
_FIELD_NAMES: dict[type[Message], tuple[str, ...]] = {}
_REQUIRED: dict[type[Message], frozenset[str]] = {}
_cls: type[Message]
for _cls in (*MESSAGE_TYPES.values(), Pose, LinkReport, VitalValue, VitalAlarm, PathReport,
             ReceivedCommand):
    _fields = dataclasses.fields(_cls)
    _FIELD_NAMES[_cls] = tuple(f.name for f in _fields)
    _REQUIRED[_cls] = frozenset(
        f.name for f in _fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if set(_FIELD_NAMES[_cls]) != set(_cls._SPEC):
        raise RuntimeError(f"schema spec of {_cls.__name__} does not match its fields")


def _build(cls: type[Message], data: dict[Any, Any], prefix: str = "") -> Message:
    spec = cls._SPEC
    for key in data:
        if key not in spec:
            raise _fail(f"{prefix}{key}", "unknown key")
    for name in _REQUIRED[cls]:
        if name not in data:
            raise _fail(f"{prefix}{name}", "missing")
    return cls(**{name: spec[name](f"{prefix}{name}", x) for name, x in data.items()})


_COMMAND_REQUIRED = ("seq", "t_send_ns", "position", "orientation", "grip", "clutch",
                     "operator_present")
_COMMAND_OPTIONAL = ("video_age_us", "t_sample_ns", "session")


def _num_in(x: Any, lo: float, hi: float) -> float | None:
    """``x`` as float when it is an int or float within [lo, hi] (NaN and inf are not)."""
    if type(x) is float or type(x) is int:  # exact types: bool is not a number here
        f = float(x)
        if lo <= f <= hi:
            return f
    return None


def _fast_command(body: dict[Any, Any]) -> Command | None:
    """A Cartesian ``Command`` whose every field passes ``Command._SPEC``, or None.

    The command arrives up to 1 kHz in the control thread; the generic ``_build`` (one
    validator closure per field and element, with field names formatted for errors)
    costs ~3x this (issue 11). It applies the same checks; anything it does not accept
    (an error, joint mode, an unknown key) goes to ``_build``, which names the fault.
    ``tests/unit/test_schema_fastpath.py`` holds both to the same answers.
    """
    if len(body) > len(_COMMAND_REQUIRED) + len(_COMMAND_OPTIONAL):
        return None
    try:
        seq, t_send, pos, quat, grip, clutch, present = (body[k] for k in _COMMAND_REQUIRED)
    except KeyError:
        return None
    extra = len(body) - len(_COMMAND_REQUIRED)
    if extra and sum(k in body for k in _COMMAND_OPTIONAL) != extra:
        return None  # joints or an unknown key
    age, t_sample, session = (body.get(k) for k in _COMMAND_OPTIONAL)
    if not (type(seq) is int and 0 <= seq <= U64 and type(t_send) is int
            and I64_MIN <= t_send <= I64_MAX and type(clutch) is bool
            and type(present) is bool
            and (age is None or (type(age) is int and 0 <= age <= U64))
            and (t_sample is None or (type(t_sample) is int and I64_MIN <= t_sample <= I64_MAX))
            and (session is None or (type(session) is int and 1 <= session <= U64))
            and type(pos) is list and len(pos) == 3 and type(quat) is list and len(quat) == 4):
        return None
    m = MAX_POSITION_M
    x, y, z = (_num_in(v, -m, m) for v in pos)
    q_lim = 1.0 + QUAT_NORM_TOL
    w, qx, qy, qz = (_num_in(v, -q_lim, q_lim) for v in quat)
    g = _num_in(grip, 0.0, 1.0)
    if x is None or y is None or z is None or g is None:
        return None
    if w is None or qx is None or qy is None or qz is None:
        return None
    if abs(math.sqrt(w * w + qx * qx + qy * qy + qz * qz) - 1.0) > QUAT_NORM_TOL:
        return None
    return Command(seq=seq, t_send_ns=t_send, position=(x, y, z), orientation=(w, qx, qy, qz),
                   grip=g, clutch=clutch, operator_present=present, video_age_us=age,
                   t_sample_ns=t_sample, session=session)


def _plain(value: Any) -> Any:
    if isinstance(value, Message):
        return {n: _plain(getattr(value, n)) for n in _FIELD_NAMES[type(value)]}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def encode(msg: Message) -> bytes:
    """Encode a message; the result always decodes back to an equal message."""
    body: dict[str, Any] = {"v": VERSION, "t": msg.TYPE}
    for name in _FIELD_NAMES[type(msg)]:
        value = getattr(msg, name)
        if value is None and name in OMITTED_WHEN_NONE:
            continue
        body[name] = _plain(value)
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Decode and validate one message, or raise ``SchemaError``."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SchemaError("message", f"{len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_MESSAGE_BYTES,
            max_bin_len=MAX_MESSAGE_BYTES,
            max_array_len=4096,
            max_map_len=64,
            max_ext_len=0,
        )
    except msgpack.ExtraData as err:
        raise SchemaError("message", "trailing bytes after the message") from err
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as err:
        raise SchemaError("message", f"not valid msgpack: {type(err).__name__}") from err
    if not isinstance(body, dict):
        raise SchemaError("message", f"expected map, got {type(body).__name__}")
    version = body.pop("v", None)
    if version != VERSION:
        raise SchemaError("v", f"unsupported protocol version {version!r}")
    mtype = body.pop("t", None)
    cls = MESSAGE_TYPES.get(mtype) if isinstance(mtype, str) else None
    if cls is None:
        raise SchemaError("t", f"unknown message type {mtype!r}")
    if cls is Command and (cmd := _fast_command(body)) is not None:
        return cmd
    return _build(cls, body, prefix=f"{cls.TYPE}.")


def decode_as(data: bytes | bytearray | memoryview, cls: type[Message]) -> Any:
    """Decode and require a specific message type (e.g. Command on the command socket)."""
    msg = decode(data)
    if not isinstance(msg, cls):
        raise SchemaError("t", f"expected {cls.TYPE!r}, got {msg.TYPE!r}")
    return msg
