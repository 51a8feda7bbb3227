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
CONTROL_OPS = frozenset({"arm", "disarm", "engage", "disengage", "clear_fault", "set_scale"})


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


@dataclass(frozen=True, slots=True)
class ControlRequest(Message):
    """Console -> robot: arm, engage, disengage, clear fault, set scale."""

    TYPE: ClassVar[str] = "ctl"
    req_id: int
    op: str
    value: float | None = None
    session: int | None = None
    """The session this request belongs to; None only before the console holds one."""


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
}
ControlRequest._SPEC = {
    "req_id": _int(0, U64),
    "op": _choice(CONTROL_OPS),
    "value": _optional(_float(-1e6, 1e6)),
    "session": _session,
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


def _nested_list(cls: type[Message], n_max: int) -> Validator:
    item = _nested(cls)

    def v(field: str, x: Any) -> tuple[Message, ...]:
        if not isinstance(x, list | tuple):
            raise _fail(field, f"expected array, got {type(x).__name__}")
        if len(x) > n_max:
            raise _fail(field, f"more than {n_max} items ({len(x)})")
        return tuple(item(f"{field}[{i}]", e) for i, e in enumerate(x))

    return v


ReceivedCommand._SPEC = {"recv_ns": _time_ns, "cmd": _nested(Command)}
CommandBatch._SPEC = {
    "seq": _seq,
    "commands": _nested_list(ReceivedCommand, COMMAND_BATCH_MAX),
    "lost": _int(0, U64),
}

MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (Command, ControlRequest, ControlReply, Ping, Pong, Telemetry, SafetyEvent,
                VideoFrameHeader, KeyframeRequest, CommandBatch)
}


# ---------------------------------------------------------------- codec
OMITTED_WHEN_NONE = frozenset({"session", "recording"})
"""Fields added after version 1 shipped: left out while unset, so a message without
them has the bytes it always had (the golden files) and decodes the same.

``session`` is the surgeon session token (``transport.session_guard``): a random
64-bit id the robot grants in the reply to ``arm``, after which it accepts
commands, control requests and pongs only when they carry it.

``recording`` (Telemetry) is the session recorder's health (``robot_side.recording``)."""
_FIELD_NAMES: dict[type[Message], tuple[str, ...]] = {}
_REQUIRED: dict[type[Message], frozenset[str]] = {}
_cls: type[Message]
for _cls in (*MESSAGE_TYPES.values(), Pose, LinkReport, ReceivedCommand):
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
    return _build(cls, body, prefix=f"{cls.TYPE}.")


def decode_as(data: bytes | bytearray | memoryview, cls: type[Message]) -> Any:
    """Decode and require a specific message type (e.g. Command on the command socket)."""
    msg = decode(data)
    if not isinstance(msg, cls):
        raise SchemaError("t", f"expected {cls.TYPE!r}, got {msg.TYPE!r}")
    return msg
