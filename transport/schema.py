"""The wire schema: every message that crosses the link, one import.

Split for reading into ``transport.messages`` (the message classes and the bounds
of their content), ``transport.validators`` (each field's rule and the generic
check) and ``transport.codec`` (``encode``/``decode``, the Command fast path);
this module re-exports every public name of the three, so importers use
``from transport.schema import ...`` as before.

Encoding is a msgpack map ``{"v": VERSION, "t": <type>, <field>: <value>, ...}``.
``decode()`` either returns a fully valid, immutable message or raises
``SchemaError`` naming the field; it never raises anything else. Timestamps are
integers in nanoseconds of the *sender's* monotonic clock; the receiver maps them
with the clock-sync offset.
"""

from __future__ import annotations

from telesurgery.errors import SchemaError
from transport.codec import (
    MAX_MESSAGE_BYTES,
    OMITTED_WHEN_NONE,
    VERSION,
    _fast_command,
    decode,
    decode_as,
    encode,
)
from transport.messages import (
    ALARM_PRIORITIES,
    COMMAND_BATCH_MAX,
    CONTROL_OPS,
    HANDOFF_OPS,
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
from transport.validators import _build

__all__ = [
    "ALARM_PRIORITIES", "COMMAND_BATCH_MAX", "CONTROL_OPS", "HANDOFF_OPS", "I64_MAX",
    "I64_MIN", "MAX_ALARMS", "MAX_JOINTS", "MAX_JOINT_VALUE", "MAX_MESSAGE_BYTES",
    "MAX_OPUS_PACKET", "MAX_PATHS", "MAX_POSITION_M", "MAX_STROKE_POINTS", "MAX_TEXT",
    "MAX_VITALS", "MESSAGE_TYPES", "MONITOR_STATES", "OMITTED_WHEN_NONE", "QUAT_NORM_TOL",
    "SUPERVISOR_STATES", "U32", "U64", "VERSION", "VITAL_NAMES", "VITAL_STATUS", "AudioPacket",
    "Command", "CommandBatch", "ControlReply", "ControlRequest", "KeyframeRequest",
    "LinkReport", "Message", "PathReport", "Ping", "Pong", "Pose", "Quat", "ReceivedCommand",
    "SafetyEvent", "SchemaError", "Stroke", "Telemetry", "Validator", "Vec3", "VideoFrameHeader",
    "VitalAlarm", "VitalValue", "Vitals", "_build", "_fast_command", "decode", "decode_as",
    "encode",
]
