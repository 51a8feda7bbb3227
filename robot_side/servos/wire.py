"""The two smart-servo wire formats, written from their public specifications.

Dynamixel Protocol 2.0 (ROBOTIS e-manual, "Protocol 2.0")::

    FF FF FD 00 | ID | LEN_L LEN_H | INST | PARAMS... | CRC_L CRC_H

``LEN`` counts INST + PARAMS + CRC. The CRC is CRC-16 with polynomial 0x8005,
initial value 0, no reflection, no final xor (the e-manual's table), over every
byte from the first FF up to the CRC. Inside INST..PARAMS every ``FF FF FD`` is
followed by a stuffed ``FD`` so the header cannot appear in the payload; LEN
counts the stuffed bytes. A status packet has INST 0x55 and an ERROR byte first.

Feetech STS/SCS (the SCServo protocol, Dynamixel 1.0 shaped)::

    FF FF | ID | LEN | INST/ERROR | PARAMS... | CHECKSUM

``LEN`` counts INST + PARAMS + CHECKSUM; CHECKSUM = ~(ID + LEN + INST + PARAMS) & 0xFF.

These codecs serve the emulator (``robot_side.servos.emulator``); the backends
use the vendors' SDKs, so the two ends of every test are written independently.
Decoders are streaming, resynchronise after garbage and count every bad byte.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import crcmod

DXL_HEADER = b"\xff\xff\xfd\x00"
STS_HEADER = b"\xff\xff"
BROADCAST_ID = 0xFE
MAX_PACKET = 1024
"""Largest packet either decoder accepts; longer lengths are garbage."""

INST_PING = 0x01
INST_READ = 0x02
INST_WRITE = 0x03
INST_REG_WRITE = 0x04
INST_ACTION = 0x05
INST_REBOOT = 0x08
INST_STATUS = 0x55
INST_SYNC_READ = 0x82
INST_SYNC_WRITE = 0x83
INST_BULK_READ = 0x92
INST_BULK_WRITE = 0x93

# Protocol 2.0 status ERROR byte: a number in bits 0-6, the Alert flag in bit 7.
DXL_ERR_RESULT_FAIL = 0x01
DXL_ERR_INSTRUCTION = 0x02
DXL_ERR_CRC = 0x03
DXL_ERR_DATA_RANGE = 0x04
DXL_ERR_DATA_LENGTH = 0x05
DXL_ERR_DATA_LIMIT = 0x06
DXL_ERR_ACCESS = 0x07
DXL_ERR_ALERT = 0x80

crc16 = crcmod.mkCrcFun(0x18005, initCrc=0, rev=False, xorOut=0)
"""CRC-16/BUYPASS: the polynomial 0x8005 table of the Protocol 2.0 e-manual."""


@dataclass(frozen=True)
class Packet:
    """One decoded packet: an instruction (to servos) or a status (from them)."""

    servo_id: int
    instruction: int
    """For a Feetech status packet this is the ERROR byte, as on the wire."""
    params: bytes
    size: int = 0
    """Bytes the packet took on the wire (for the emulator's baud-rate timing)."""


@dataclass
class DecoderCounts:
    packets: int = 0
    bad_checksum: int = 0
    garbage_bytes: int = 0
    oversize: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"packets": self.packets, "bad_checksum": self.bad_checksum,
                "garbage_bytes": self.garbage_bytes, "oversize": self.oversize}


# ---------------------------------------------------------------- Dynamixel 2.0
def dxl_stuff(body: bytes) -> bytes:
    """Insert FD after every FF FF FD inside INST..PARAMS."""
    out = bytearray()
    for byte in body:
        out.append(byte)
        if byte == 0xFD and len(out) >= 3 and out[-3] == 0xFF and out[-2] == 0xFF:
            out.append(0xFD)
    return bytes(out)


def dxl_unstuff(body: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(body):
        out.append(body[i])
        if (body[i] == 0xFD and i + 1 < len(body) and body[i + 1] == 0xFD
                and len(out) >= 3 and out[-3] == 0xFF and out[-2] == 0xFF):
            i += 1  # skip the stuffed FD
        i += 1
    return bytes(out)


def dxl_encode(servo_id: int, instruction: int, params: bytes = b"") -> bytes:
    body = dxl_stuff(bytes([instruction]) + params)
    length = len(body) + 2
    head = DXL_HEADER + bytes([servo_id, length & 0xFF, length >> 8])
    crc = crc16(head + body)
    return head + body + bytes([crc & 0xFF, crc >> 8])


def dxl_status(servo_id: int, error: int, params: bytes = b"") -> bytes:
    return dxl_encode(servo_id, INST_STATUS, bytes([error]) + params)


class DxlDecoder:
    """Bytes in, whole Protocol 2.0 packets out; a bad CRC drops one packet, counted."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.counts = DecoderCounts()
        self.crc_failed_ids: list[int] = []
        """IDs of packets dropped for a bad CRC since the caller last cleared this."""

    def feed(self, data: bytes) -> list[Packet]:
        self._buf += data
        out: list[Packet] = []
        buf = self._buf
        while True:
            start = buf.find(DXL_HEADER)
            if start < 0:
                keep = _partial_header_len(buf, DXL_HEADER)
                self.counts.garbage_bytes += len(buf) - keep
                del buf[:len(buf) - keep]
                return out
            if start:
                self.counts.garbage_bytes += start
                del buf[:start]
            if len(buf) < 7:
                return out
            length = buf[5] | buf[6] << 8
            if length < 3 or length > MAX_PACKET:
                self.counts.oversize += 1
                del buf[:1]  # not a header after all: resynchronise from the next byte
                continue
            if len(buf) < 7 + length:
                return out
            raw = bytes(buf[:7 + length])
            crc = raw[-2] | raw[-1] << 8
            if crc16(raw[:-2]) != crc:
                self.counts.bad_checksum += 1
                self.crc_failed_ids.append(raw[4])
                del buf[:1]
                continue
            del buf[:7 + length]
            body = dxl_unstuff(raw[7:-2])
            self.counts.packets += 1
            out.append(Packet(raw[4], body[0], body[1:], len(raw)))


def _partial_header_len(buf: bytearray, header: bytes) -> int:
    """How many trailing bytes of ``buf`` could start ``header`` (kept for the next feed)."""
    for n in range(min(len(header) - 1, len(buf)), 0, -1):
        if buf.endswith(header[:n]):
            return n
    return 0


# ---------------------------------------------------------------- Feetech STS/SCS
def sts_checksum(body: Iterable[int]) -> int:
    return ~sum(body) & 0xFF


def sts_encode(servo_id: int, instruction: int, params: bytes = b"") -> bytes:
    body = bytes([servo_id, len(params) + 2, instruction]) + params
    return STS_HEADER + body + bytes([sts_checksum(body)])


def sts_status(servo_id: int, error: int, params: bytes = b"") -> bytes:
    return sts_encode(servo_id, error, params)


class StsDecoder:
    """Bytes in, whole STS packets out; a bad checksum drops one packet, counted."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.counts = DecoderCounts()

    def feed(self, data: bytes) -> list[Packet]:
        self._buf += data
        out: list[Packet] = []
        buf = self._buf
        while True:
            start = buf.find(STS_HEADER)
            if start < 0:
                keep = 1 if buf.endswith(b"\xff") else 0
                self.counts.garbage_bytes += len(buf) - keep
                del buf[:len(buf) - keep]
                return out
            if start:
                self.counts.garbage_bytes += start
                del buf[:start]
            if len(buf) >= 3 and buf[2] == 0xFF:  # FF FF FF: the first FF was noise
                self.counts.garbage_bytes += 1
                del buf[:1]
                continue
            if len(buf) < 4:
                return out
            length = buf[3]
            if length < 2:
                self.counts.oversize += 1
                del buf[:1]
                continue
            if len(buf) < 4 + length:
                return out
            raw = bytes(buf[:4 + length])
            if sts_checksum(raw[2:-1]) != raw[-1]:
                self.counts.bad_checksum += 1
                del buf[:1]
                continue
            del buf[:4 + length]
            self.counts.packets += 1
            out.append(Packet(raw[2], raw[4], raw[5:-1], len(raw)))
