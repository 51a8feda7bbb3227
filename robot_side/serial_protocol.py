"""The binary serial protocol between the robot node and the manipulator firmware.

One module owns every frame; docs/serial-protocol.md is its specification.

On the wire a frame is ``COBS(payload) + 0x00``. The payload is a 6-byte
header (protocol version u8, message type u8, sequence u32), a fixed-layout
body, and a CRC-32C (u32) over header and body. Everything is little-endian;
joint values are float32. COBS removes every zero from the payload, so a zero
always ends a frame and a receiver that lost sync (garbage, a cut cable, a
reset) recovers at the next delimiter: damage never spreads past one frame.

``decode_payload()`` either returns a fully valid, immutable message or raises
``SchemaError`` whose ``field`` names the kind of damage (cobs, length, crc,
version, type or the offending field); ``FrameDecoder`` turns those into
counters and never raises.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from pathlib import Path
from typing import ClassVar, Self, TypeAlias

from cobs import cobs as _cobs

from telesurgery.crc import crc32c
from telesurgery.errors import SchemaError
from telesurgery.seqnum import u32_forward, u32_reached

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_JOINTS = 16
MAX_TEXT_BYTES = 64
MAX_ABS_VALUE = 1.0e6
"""Sanity bound on any float on the wire; joint limits are the firmware's job."""
U32 = 2**32
_HEADER = struct.Struct("<BBI")
_CRC = struct.Struct("<I")
MIN_PAYLOAD = _HEADER.size + _CRC.size
MAX_PAYLOAD = 256
MAX_ENCODED = MAX_PAYLOAD + MAX_PAYLOAD // 254 + 1
"""Longest COBS-encoded frame without its delimiter; a longer run is garbage."""


def default_link_path() -> Path:
    """Where the firmware emulator publishes the stable symlink to its current pty."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"telesurgery-{os.getuid()}" / "ttyTS0"


# ---------------------------------------------------------------- COBS
# The ``cobs`` package's C extension: the frame is (de)stuffed in one call instead of
# a Python loop per zero-free block (a 6-joint state report: ~20 of them). Its output
# equals the Python encoder/decoder this module held before, byte for byte and error for
# error (tests/unit/test_serial_protocol.py compares them on random and edge inputs).


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result contains no zero byte."""
    out: bytes = _cobs.encode(data)
    return out


def cobs_decode(data: bytes) -> bytes:
    """Inverse of ``cobs_encode``; raises ``SchemaError('cobs', ...)`` on a malformed run."""
    if not data:
        raise SchemaError("cobs", "empty frame")
    try:
        out: bytes = _cobs.decode(data)
    except _cobs.DecodeError as err:
        raise SchemaError("cobs", str(err)) from err
    return out


# ---------------------------------------------------------------- flags and codes
class FwFlags(IntFlag):
    """Firmware status bits in every ``StateReport``."""

    BRAKED = 1 << 0
    HOLDING = 1 << 1
    WATCHDOG_TRIPPED = 1 << 2
    ESTOP_PRESSED = 1 << 3
    FAULT = 1 << 4
    JOINT_LIMIT = 1 << 5
    STUCK_JOINT = 1 << 6
    EFFORT_LIMIT = 1 << 7
    FOLLOWING = 1 << 8
    RX_ERRORS = 1 << 9
    """The firmware discarded at least one damaged frame since the previous report."""


class FaultCode(IntEnum):
    WATCHDOG = 1
    ESTOP = 2
    STUCK_JOINT = 3
    BAD_TARGET = 4
    NOT_RELEASED = 5
    VERSION_MISMATCH = 6
    JOINT_LIMIT = 7


class MsgType(IntEnum):
    HELLO = 0x01
    JOINT_TARGETS = 0x10
    HOLD = 0x11
    RELEASE = 0x12
    HEARTBEAT = 0x13
    STATE_REPORT = 0x20
    FAULT_REPORT = 0x21


_JOINT_TARGETS = int(MsgType.JOINT_TARGETS)


# ---------------------------------------------------------------- validators
def _floats(name: str, values: tuple[float, ...]) -> None:
    if not 1 <= len(values) <= MAX_JOINTS:
        raise SchemaError(name, f"expected 1..{MAX_JOINTS} values, got {len(values)}")
    # One comparison per value (NaN and inf fail it); the per-value check, which names
    # the value, only when one fails: building "positions[3]" for every value of every
    # state report (18 a report, ~1 kHz) was most of the serial reader's decode.
    for v in values:
        if not -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE:
            break
    else:
        return
    for i, v in enumerate(values):
        _float(f"{name}[{i}]", v)


def _float(name: str, v: float) -> None:
    if not math.isfinite(v) or abs(v) > MAX_ABS_VALUE:
        raise SchemaError(name, f"{v} is not finite or beyond {MAX_ABS_VALUE:g}")


def _u(name: str, v: int, bits: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**bits:
        raise SchemaError(name, f"{v!r} is not a u{bits}")


def _text(name: str, text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > MAX_TEXT_BYTES:
        raise SchemaError(name, f"longer than {MAX_TEXT_BYTES} bytes in UTF-8")
    return bytes([len(raw)]) + raw


def _read_text(name: str, body: bytes, at: int) -> str:
    if len(body) <= at or at + 1 + body[at] != len(body):
        raise SchemaError("length", f"{name}: body of {len(body)} bytes does not hold the text")
    try:
        return body[at + 1 :].decode("utf-8")
    except UnicodeDecodeError as err:
        raise SchemaError(name, f"not UTF-8: {err}") from err


def _expect_len(body: bytes, n: int, what: str) -> None:
    if len(body) != n:
        raise SchemaError("length", f"{what} body is {len(body)} bytes, expected {n}")


@functools.cache
def _f32s(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}f")  # compiled once per count: 4 of them a frame, 1.5 kHz


# ---------------------------------------------------------------- messages
@dataclass(frozen=True)
class _Frame:
    """What every message has: the sender's sequence number. Bodyless unless overridden."""

    TYPE: ClassVar[MsgType]
    seq: int

    def __post_init__(self) -> None:
        _u("seq", self.seq, 32)

    def body(self) -> bytes:
        return b""

    @classmethod
    def parse(cls, seq: int, version: int, body: bytes) -> Self:
        _expect_len(body, 0, cls.__name__)
        return cls(seq)


@dataclass(frozen=True)
class Hello(_Frame):
    """Version handshake; the host sends it, the firmware answers with its own."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    protocol_version: int
    n_joints: int
    firmware_version: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        _u("protocol_version", self.protocol_version, 8)
        if not 1 <= self.n_joints <= MAX_JOINTS:
            raise SchemaError("n_joints", f"{self.n_joints} not in 1..{MAX_JOINTS}")

    def body(self) -> bytes:
        return bytes([self.n_joints]) + _text("firmware_version", self.firmware_version)

    @classmethod
    def parse(cls, seq: int, version: int, body: bytes) -> Self:
        n_joints = body[0] if body else 0
        return cls(seq, version, n_joints, _read_text("firmware_version", body, 1))


@dataclass(frozen=True)
class JointTargets(_Frame):
    TYPE: ClassVar[MsgType] = MsgType.JOINT_TARGETS
    positions: tuple[float, ...]
    grip: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _floats("positions", self.positions)
        _float("grip", self.grip)

    def body(self) -> bytes:
        n = len(self.positions)
        return bytes([n]) + _f32s(n + 1).pack(*self.positions, self.grip)

    @classmethod
    def parse(cls, seq: int, version: int, body: bytes) -> Self:
        n = body[0] if body else 0
        _expect_len(body, 1 + 4 * (n + 1), cls.__name__)
        values = _f32s(n + 1).unpack_from(body, 1)
        return cls(seq, tuple(values[:n]), values[n])


@dataclass(frozen=True)
class Hold(_Frame):
    """Stop following: brake=True engages the brake, False holds position actively."""

    TYPE: ClassVar[MsgType] = MsgType.HOLD
    brake: bool = False

    def body(self) -> bytes:
        return bytes([1 if self.brake else 0])

    @classmethod
    def parse(cls, seq: int, version: int, body: bytes) -> Self:
        _expect_len(body, 1, cls.__name__)
        if body[0] > 1:
            raise SchemaError("brake", f"{body[0]} is not 0 or 1")
        return cls(seq, body[0] == 1)


@dataclass(frozen=True)
class Release(_Frame):
    """The only way out of a brake, hold, e-stop or watchdog trip (see the doc)."""

    TYPE: ClassVar[MsgType] = MsgType.RELEASE


@dataclass(frozen=True)
class Heartbeat(_Frame):
    """Feeds the firmware watchdog; moves nothing."""

    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT


_STATE_HEAD = struct.Struct("<QB")
_STATE_TAIL = struct.Struct("<fII")


@dataclass(frozen=True)
class StateReport(_Frame):
    TYPE: ClassVar[MsgType] = MsgType.STATE_REPORT
    fw_time_us: int
    positions: tuple[float, ...]
    velocities: tuple[float, ...]
    efforts: tuple[float, ...]
    grip: float
    flags: int
    last_rx_seq: int
    """Sequence number of the last valid frame the firmware received."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _u("last_rx_seq", self.last_rx_seq, 32)
        _u("fw_time_us", self.fw_time_us, 64)
        _u("flags", self.flags, 32)
        _floats("positions", self.positions)
        for name in ("velocities", "efforts"):
            values = getattr(self, name)
            if len(values) != len(self.positions):
                raise SchemaError(name, f"{len(values)} values for {len(self.positions)} joints")
            _floats(name, values)
        _float("grip", self.grip)

    @property
    def fw_flags(self) -> FwFlags:
        return FwFlags(self.flags)

    def body(self) -> bytes:
        n = len(self.positions)
        return (_STATE_HEAD.pack(self.fw_time_us, n)
                + _f32s(3 * n).pack(*self.positions, *self.velocities, *self.efforts)
                + _STATE_TAIL.pack(self.grip, self.flags, self.last_rx_seq))

    @classmethod
    def parse(cls, seq: int, version: int, body: bytes) -> Self:
        n = body[_STATE_HEAD.size - 1] if len(body) >= _STATE_HEAD.size else 0
        _expect_len(body, _STATE_HEAD.size + 12 * n + _STATE_TAIL.size, cls.__name__)
        fw_time_us, _ = _STATE_HEAD.unpack_from(body)
        v = _f32s(3 * n).unpack_from(body, _STATE_HEAD.size)
        grip, flags, last_rx = _STATE_TAIL.unpack_from(body, _STATE_HEAD.size + 12 * n)
        return cls(seq, fw_time_us, tuple(v[:n]), tuple(v[n : 2 * n]), tuple(v[2 * n :]),
                   grip, flags, last_rx)


@dataclass(frozen=True)
class FaultReport(_Frame):
    TYPE: ClassVar[MsgType] = MsgType.FAULT_REPORT
    code: int
    detail: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        _u("code", self.code, 16)

    def body(self) -> bytes:
        return struct.pack("<H", self.code) + _text("detail", self.detail)

    @classmethod
    def parse(cls, seq: int, version: int, body: bytes) -> Self:
        code = struct.unpack_from("<H", body)[0] if len(body) >= 2 else 0
        return cls(seq, code, _read_text("detail", body, 2))


Message: TypeAlias = Hello | JointTargets | Hold | Release | Heartbeat | StateReport | FaultReport
MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, JointTargets, Hold, Release, Heartbeat, StateReport, FaultReport)
}


# ---------------------------------------------------------------- frames
def encode_payload(msg: Message) -> bytes:
    """Header + body + CRC, before COBS. Hello carries its own protocol version."""
    version = msg.protocol_version if isinstance(msg, Hello) else PROTOCOL_VERSION
    data = _HEADER.pack(version, msg.TYPE, msg.seq) + msg.body()
    if len(data) + _CRC.size > MAX_PAYLOAD:
        raise SchemaError("length", f"payload of {len(data) + _CRC.size} bytes > {MAX_PAYLOAD}")
    return data + _CRC.pack(crc32c(data))


def encode_frame(msg: Message) -> bytes:
    """The bytes to write: COBS-encoded payload followed by the 0x00 delimiter."""
    return cobs_encode(encode_payload(msg)) + b"\0"


_TARGETS_HEAD: dict[int, struct.Struct] = {}
"""Per joint count: header, joint count and the n + 1 floats of a JointTargets, packed once."""


def encode_targets_frame(seq: int, positions: Sequence[float], grip: float) -> bytes:
    """``encode_frame(JointTargets(seq, positions, grip))``, byte for byte, with the same
    checks, without building the message.

    It is the frame written every period: the frozen dataclass, its per-joint validators
    (an f-string field name per joint), a ``struct.Struct`` compiled per call and the
    general COBS took ~40 us of a 1 ms period in Python (timeit, 6 joints); this packs
    with one precompiled ``Struct`` (docs/architecture.md, "Where the node's CPU goes").
    Anything it does not accept goes through ``JointTargets``, which names the fault.
    """
    packer = _TARGETS_HEAD.get(len(positions))
    ok = packer is not None and type(seq) is int and 0 <= seq < U32
    if ok:
        for v in positions:  # NaN fails both comparisons
            if not -MAX_ABS_VALUE <= v <= MAX_ABS_VALUE:
                ok = False
                break
        ok = ok and -MAX_ABS_VALUE <= grip <= MAX_ABS_VALUE
    if not ok or packer is None:
        if 1 <= len(positions) <= MAX_JOINTS:
            _TARGETS_HEAD.setdefault(len(positions), struct.Struct(
                f"<BBIB{len(positions) + 1}f"))
        return encode_frame(JointTargets(seq, tuple(positions), grip))  # raises if bad
    data = packer.pack(PROTOCOL_VERSION, _JOINT_TARGETS, seq, len(positions), *positions,
                       grip)
    return cobs_encode(data + _CRC.pack(crc32c(data))) + b"\0"


def decode_payload(payload: bytes) -> Message:
    """Validate one COBS-decoded payload; ``SchemaError.field`` names the damage."""
    if not MIN_PAYLOAD <= len(payload) <= MAX_PAYLOAD:
        raise SchemaError("length", f"payload of {len(payload)} bytes outside "
                                    f"{MIN_PAYLOAD}..{MAX_PAYLOAD}")
    data, (crc,) = payload[:-_CRC.size], _CRC.unpack_from(payload, len(payload) - _CRC.size)
    actual = crc32c(data)
    if crc != actual:
        raise SchemaError("crc", f"frame says {crc:#010x}, computed {actual:#010x}")
    version, type_, seq = _HEADER.unpack_from(data)
    cls = MESSAGE_TYPES.get(type_)
    if cls is None:
        raise SchemaError("type", f"unknown message type {type_:#04x}")
    # Hello's layout is frozen across versions so a mismatch can be named, not just dropped.
    if version != PROTOCOL_VERSION and cls is not Hello:
        raise SchemaError("version", f"protocol version {version}, expected {PROTOCOL_VERSION}")
    return cls.parse(seq, version, data[_HEADER.size :])


_COUNTER_FOR_FIELD = {"cobs": "cobs_errors", "length": "length_errors", "crc": "crc_errors",
                      "version": "version_errors", "type": "type_errors"}
COUNTERS = ("frames_ok", "crc_errors", "cobs_errors", "length_errors", "version_errors",
            "type_errors", "value_errors", "garbage_bytes", "seq_gaps", "frames_lost")


class FrameDecoder:
    """Stream bytes in, validated messages out; damage is counted, never raised.

    The partial frame is bounded by ``MAX_ENCODED``: a run of garbage without a
    delimiter is discarded as it arrives, so a flood cannot grow memory.
    """

    def __init__(self, name: str = "serial") -> None:
        self.name = name
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.last_error = ""
        self._partial = bytearray()
        self._discarding = False
        self._expected_seq: int | None = None

    def reset(self) -> None:
        """Forget the partial frame and the sequence: the peer was reconnected."""
        self._partial.clear()
        self._discarding = False
        self._expected_seq = None

    @property
    def pending_bytes(self) -> int:
        """Bytes of the unfinished frame held; never more than ``MAX_ENCODED``."""
        return len(self._partial)

    @property
    def bad_frames(self) -> int:
        return sum(self.counts[k] for k in COUNTERS[1:7])

    def feed(self, data: bytes) -> list[Message]:
        out: list[Message] = []
        parts = bytes(data).split(b"\0")
        for part in parts[:-1]:
            if self._discarding:
                self.counts["garbage_bytes"] += len(part) + 1
                self._discarding = False
            else:
                frame = bytes(self._partial) + part
                self._partial.clear()
                if frame:
                    msg = self._decode(frame)
                    if msg is not None:
                        out.append(msg)
        self._append(parts[-1])
        return out

    def _append(self, tail: bytes) -> None:
        if self._discarding:
            self.counts["garbage_bytes"] += len(tail)
        elif len(self._partial) + len(tail) > MAX_ENCODED:
            self.counts["garbage_bytes"] += len(self._partial) + len(tail)
            self._reject(SchemaError("length", f"no delimiter within {MAX_ENCODED} bytes"))
            self._partial.clear()
            self._discarding = True
        else:
            self._partial += tail

    def _decode(self, frame: bytes) -> Message | None:
        try:
            msg = decode_payload(cobs_decode(frame))
        except SchemaError as err:
            self.counts["garbage_bytes"] += len(frame) + 1
            self._reject(err)
            return None
        self.counts["frames_ok"] += 1
        self._track_seq(msg)
        return msg

    def _reject(self, err: SchemaError) -> None:
        key = _COUNTER_FOR_FIELD.get(err.field, "value_errors")
        self.counts[key] += 1
        self.last_error = str(err)
        n = self.counts[key]
        # Warn on the 1st, 2nd, 4th, 8th... of each kind: visible, yet no log flood at 1 kHz.
        level = logging.WARNING if n & (n - 1) == 0 else logging.DEBUG
        log.log(level, "%s: dropped damaged frame (%s #%d): %s", self.name, key, n, err)

    def _track_seq(self, msg: Message) -> None:
        expected = self._expected_seq
        # A Hello restarts the peer's numbering, so it is never a gap.
        if expected is not None and msg.seq != expected and not isinstance(msg, Hello):
            self.counts["seq_gaps"] += 1
            missing = u32_forward(expected, msg.seq)
            if u32_reached(msg.seq, expected):  # ahead, not a late or repeated frame
                self.counts["frames_lost"] += missing
            log.debug("%s: sequence gap, expected %d got %d", self.name, expected, msg.seq)
        self._expected_seq = (msg.seq + 1) % U32
