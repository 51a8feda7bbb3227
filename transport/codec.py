"""The wire encoding: ``encode``/``decode`` and the Command fast path (part of
``transport.schema``).

Encoding is a msgpack map ``{"v": VERSION, "t": <type>, <field>: <value>, ...}``.
Maps rather than positional arrays so that an unknown or missing key is a
precise, nameable error and golden files stay readable; at 1 kHz the extra
bytes cost nothing measurable.

``decode()`` either returns a fully valid, immutable message or raises
``SchemaError`` naming the field. It never raises anything else: every input
path (size, msgpack structure, trailing bytes, types, ranges, NaN/inf,
quaternion norm) is checked before a message object exists.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from telesurgery.errors import SchemaError
from transport.messages import (
    I64_MAX,
    I64_MIN,
    MAX_POSITION_M,
    MESSAGE_TYPES,
    QUAT_NORM_TOL,
    U64,
    Command,
    Message,
)
from transport.validators import _FIELD_NAMES, _build

VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024
"""Largest encoded message (video payloads travel in their own frame)."""

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


_COMMAND_REQUIRED = ("seq", "t_send_ns", "position", "orientation", "grip", "clutch",
                     "operator_present")
_COMMAND_OPTIONAL = ("video_age_us", "t_sample_ns", "session")
_COMMAND_MAX_KEYS = len(_COMMAND_REQUIRED) + len(_COMMAND_OPTIONAL)
_COMMAND_FIELDS = (*_COMMAND_REQUIRED, *_COMMAND_OPTIONAL, "joints")
if _FIELD_NAMES[Command] != _COMMAND_FIELDS:  # the fast path below sets exactly these
    raise RuntimeError(f"Command fields changed: {_FIELD_NAMES[Command]}: update _fast_command")
# The slot setters of a Command's fields, in that order. The fast path fills a new
# Command through them: the same object its ``__init__`` makes, without the frozen
# dataclass's ``object.__setattr__`` per field (0.8 us against 2.2, issue 11).
(_set_seq, _set_t_send, _set_position, _set_orientation, _set_grip, _set_clutch,
 _set_present, _set_age, _set_t_sample, _set_session, _set_joints) = (
    getattr(Command, name).__set__ for name in _COMMAND_FIELDS)
_new_object = object.__new__


def _fast_command(body: dict[Any, Any]) -> Command | None:
    """A Cartesian ``Command`` whose every field passes ``Command._SPEC``, or None.

    The command arrives up to 1 kHz in the control thread; the generic ``_build`` (one
    validator closure per field and element, with field names formatted for errors)
    costs ~3x this (issue 11). It applies the same checks; anything it does not accept
    (an error, joint mode, an unknown key) goes to ``_build``, which names the fault.
    ``tests/unit/test_schema_fastpath.py`` holds both to the same answers. Written
    straight through, without generators or a call per number: it runs after the
    control thread's sleep, where every bytecode is a cold one (~2x faster than before).
    """
    n = len(body)
    if n > _COMMAND_MAX_KEYS:
        return None
    get = body.get
    seq = get("seq")
    t_send = get("t_send_ns")
    pos = get("position")
    quat = get("orientation")
    grip: Any = get("grip")
    clutch = get("clutch")
    present = get("operator_present")
    age = get("video_age_us")
    t_sample = get("t_sample_ns")
    session = get("session")
    # Every key present is one of ours (None is never a valid required value, and an
    # optional one given as None counts as present, as in ``_build``).
    known = 7 + ("video_age_us" in body) + ("t_sample_ns" in body) + ("session" in body)
    if known != n:
        return None  # joints, an unknown or a missing key
    if not (type(seq) is int and 0 <= seq <= U64 and type(t_send) is int
            and I64_MIN <= t_send <= I64_MAX and type(clutch) is bool
            and type(present) is bool
            and (age is None or (type(age) is int and 0 <= age <= U64))
            and (t_sample is None or (type(t_sample) is int and I64_MIN <= t_sample <= I64_MAX))
            and (session is None or (type(session) is int and 1 <= session <= U64))
            and type(pos) is list and len(pos) == 3 and type(quat) is list and len(quat) == 4):
        return None
    x, y, z = pos
    w, qx, qy, qz = quat
    # Exact types (bool is not a number here); a comparison with NaN is False, with
    # inf outside the bound: both refused.
    tx, ty, tz, tg = type(x), type(y), type(z), type(grip)
    if not ((tx is float or tx is int) and (ty is float or ty is int)
            and (tz is float or tz is int) and (tg is float or tg is int)):
        return None
    tw, t1, t2, t3 = type(w), type(qx), type(qy), type(qz)
    if not ((tw is float or tw is int) and (t1 is float or t1 is int)
            and (t2 is float or t2 is int) and (t3 is float or t3 is int)):
        return None
    x, y, z, g = float(x), float(y), float(z), float(grip)
    w, qx, qy, qz = float(w), float(qx), float(qy), float(qz)
    m = MAX_POSITION_M
    q_lim = 1.0 + QUAT_NORM_TOL
    if not (-m <= x <= m and -m <= y <= m and -m <= z <= m and 0.0 <= g <= 1.0
            and -q_lim <= w <= q_lim and -q_lim <= qx <= q_lim and -q_lim <= qy <= q_lim
            and -q_lim <= qz <= q_lim):
        return None
    if abs(math.sqrt(w * w + qx * qx + qy * qy + qz * qz) - 1.0) > QUAT_NORM_TOL:
        return None
    cmd: Command = _new_object(Command)
    _set_seq(cmd, seq)
    _set_t_send(cmd, t_send)
    _set_position(cmd, (x, y, z))
    _set_orientation(cmd, (w, qx, qy, qz))
    _set_grip(cmd, g)
    _set_clutch(cmd, clutch)
    _set_present(cmd, present)
    _set_age(cmd, age)
    _set_t_sample(cmd, t_sample)
    _set_session(cmd, session)
    _set_joints(cmd, None)
    return cmd


def _nested_map(value: Any) -> dict[str, Any]:
    """msgpack's ``default``: a nested message (a ``Pose``, a ``PathReport`` in a tuple)
    as the map of all its fields; anything else msgpack cannot pack stays an error."""
    if isinstance(value, Message):
        return {n: getattr(value, n) for n in _FIELD_NAMES[type(value)]}
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode(msg: Message) -> bytes:
    """Encode a message; the result always decodes back to an equal message.

    Field values go to msgpack as they are: it packs a tuple as the array a list
    would give, and calls ``_nested_map`` for a nested message, so the bytes are
    those of a fully converted body (golden files) without walking every value in
    Python first (issue 11: the telemetry, ~2x faster)."""
    body: dict[str, Any] = {"v": VERSION, "t": msg.TYPE}
    for name in _FIELD_NAMES[type(msg)]:
        value = getattr(msg, name)
        if value is None and name in OMITTED_WHEN_NONE:
            continue
        body[name] = value
    data: bytes = msgpack.packb(body, use_bin_type=True, default=_nested_map)
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
