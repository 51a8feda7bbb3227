"""The field rules of every wire message (``Message._SPEC``) and the generic check that
builds a message from a decoded map (``_build``): part of ``transport.schema``.

A validator either returns the field's value as the message stores it or raises
``SchemaError`` naming the field; every spec is checked against its class's fields
at import, so a field without a rule cannot ship.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from telesurgery.errors import SchemaError
from transport.messages import (
    ALARM_PRIORITIES,
    COMMAND_BATCH_MAX,
    CONTROL_OPS,
    I64_MAX,
    I64_MIN,
    MAX_ALARMS,
    MAX_JOINT_VALUE,
    MAX_JOINTS,
    MAX_OPUS_PACKET,
    MAX_PATHS,
    MAX_POSITION_M,
    MAX_STROKE_POINTS,
    MAX_TEXT,
    MAX_VITALS,
    MESSAGE_TYPES,
    MONITOR_STATES,
    NESTED_TYPES,
    QUAT_NORM_TOL,
    SUPERVISOR_STATES,
    U32,
    U64,
    VITAL_NAMES,
    VITAL_STATUS,
    AudioPacket,
    Command,
    CommandBatch,
    ControlReply,
    ControlRequest,
    KeyframeRequest,
    LinkReport,
    Message,
    PathReport,
    Ping,
    Pong,
    Pose,
    Quat,
    ReceivedCommand,
    SafetyEvent,
    Stroke,
    Telemetry,
    Validator,
    Vec3,
    VideoFrameHeader,
    VitalAlarm,
    Vitals,
    VitalValue,
)


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
    "paths": _optional(_nested_list(PathReport, MAX_PATHS)),
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

ReceivedCommand._SPEC = {"recv_ns": _time_ns, "cmd": _nested(Command)}
CommandBatch._SPEC = {
    "seq": _seq,
    "commands": _nested_list(ReceivedCommand, COMMAND_BATCH_MAX),
    "lost": _int(0, U64),
}

_FIELD_NAMES: dict[type[Message], tuple[str, ...]] = {}
_REQUIRED: dict[type[Message], frozenset[str]] = {}
_cls: type[Message]
for _cls in (*MESSAGE_TYPES.values(), *NESTED_TYPES):
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
