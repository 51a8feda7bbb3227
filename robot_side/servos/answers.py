"""What emulated servos answer to one instruction packet: Dynamixel 2.0 or Feetech STS.

The per-protocol half of ``robot_side.servos.emulator`` (which owns the pty, the
reader thread, the wire timing and the wire faults): given the servos on the bus
and one decoded instruction packet, each function applies it to the servos'
control tables (``ServoModel``) and returns the status packets due, as
``(servo_id, frame)`` in bus order. Called with the emulator's lock held.
"""

from __future__ import annotations

from robot_side.servos import wire
from robot_side.servos.model import ServoModel
from robot_side.servos.tables import ServoFamily

FIRMWARE_VERSION = 46

Servos = dict[int, ServoModel]
Answers = list[tuple[int, bytes]]


# ------------------------------------------------------------ Dynamixel 2.0
def dxl_status(servos: Servos, sid: int, error: int, params: bytes) -> bytes:
    """A status packet; the Alert bit is set while the servo has a hardware error."""
    if servos[sid].hardware_error:
        error |= wire.DXL_ERR_ALERT
    return wire.dxl_status(sid, error, params)


def dxl_answers(servos: Servos, family: ServoFamily, p: wire.Packet, now: int) -> Answers:
    targets = _dxl_addressed(servos, p, now)
    par = p.params
    if p.instruction == wire.INST_PING:
        ids = sorted(servos) if p.servo_id == wire.BROADCAST_ID else targets
        m = family.model_number
        return [(i, dxl_status(servos, i, 0, bytes([m & 0xFF, m >> 8, FIRMWARE_VERSION])))
                for i in ids]
    if p.instruction == wire.INST_SYNC_READ and len(par) >= 4:
        addr, length = _u16(par, 0), _u16(par, 2)
        return [_dxl_read(servos, i, addr, length, now) for i in par[4:] if i in servos]
    if p.instruction == wire.INST_BULK_READ and len(par) % 5 == 0:
        return [_dxl_read(servos, par[k], _u16(par, k + 1), _u16(par, k + 3), now)
                for k in range(0, len(par), 5) if par[k] in servos]
    if p.instruction == wire.INST_SYNC_WRITE and len(par) >= 4:
        addr, length = _u16(par, 0), _u16(par, 2)
        for k in range(4, len(par) - length + 1, length + 1):
            if par[k] in servos:
                servos[par[k]].write(addr, par[k + 1:k + 1 + length], now)
        return []
    if p.instruction == wire.INST_BULK_WRITE:
        k = 0
        while k + 5 <= len(par):
            sid, addr, length = par[k], _u16(par, k + 1), _u16(par, k + 3)
            if sid in servos:
                servos[sid].write(addr, par[k + 5:k + 5 + length], now)
            k += 5 + length
        return []
    if p.servo_id not in servos:
        return []
    sid = p.servo_id
    if p.instruction == wire.INST_READ and len(par) == 4:
        return [_dxl_read(servos, sid, _u16(par, 0), _u16(par, 2), now)]
    if p.instruction == wire.INST_WRITE and len(par) >= 2:
        result = servos[sid].write(_u16(par, 0), par[2:], now)
        err = (0, wire.DXL_ERR_DATA_RANGE, wire.DXL_ERR_ACCESS)[result]
        return [(sid, dxl_status(servos, sid, err, b""))]
    if p.instruction == wire.INST_REBOOT:
        reply = (sid, dxl_status(servos, sid, 0, b""))
        servos[sid].reboot(now)
        return [reply]
    return [(sid, dxl_status(servos, sid, wire.DXL_ERR_INSTRUCTION, b""))]


def _dxl_read(servos: Servos, sid: int, addr: int, length: int,
              now: int) -> tuple[int, bytes]:
    data = servos[sid].read(addr, length, now)
    if data is None:
        return sid, dxl_status(servos, sid, wire.DXL_ERR_ACCESS, b"")
    return sid, dxl_status(servos, sid, 0, data)


def _dxl_addressed(servos: Servos, p: wire.Packet, now: int) -> list[int]:
    """Feed each addressed servo's Bus Watchdog; the IDs a direct packet names."""
    par = p.params
    if p.servo_id != wire.BROADCAST_ID:
        ids = [p.servo_id] if p.servo_id in servos else []
    elif p.instruction in (wire.INST_SYNC_READ,):
        ids = [i for i in par[4:] if i in servos]
    elif p.instruction == wire.INST_SYNC_WRITE and len(par) >= 4:
        step = _u16(par, 2) + 1
        ids = [par[k] for k in range(4, len(par), step) if par[k] in servos]
    else:
        ids = list(servos)
    for i in ids:
        servos[i].addressed(now)
    return [] if p.servo_id == wire.BROADCAST_ID else ids


# ------------------------------------------------------------ Feetech STS
def sts_answers(servos: Servos, p: wire.Packet, now: int) -> Answers:
    par = p.params
    for servo in servos.values():
        if p.servo_id in (servo.servo_id, wire.BROADCAST_ID):
            servo.addressed(now)
    if p.instruction == wire.INST_SYNC_READ and len(par) >= 2:
        return [_sts_read(servos, i, par[0], par[1], now) for i in par[2:] if i in servos]
    if p.instruction == wire.INST_SYNC_WRITE and len(par) >= 2:
        addr, length = par[0], par[1]
        for k in range(2, len(par) - length + 1, length + 1):
            if par[k] in servos:
                servos[par[k]].write(addr, par[k + 1:k + 1 + length], now)
        return []
    sid = p.servo_id
    if sid not in servos:
        return []
    servo = servos[sid]
    if p.instruction == wire.INST_PING:
        return [(sid, _sts_status(servos, sid, b""))]
    if p.instruction == wire.INST_READ and len(par) == 2:
        return [_sts_read(servos, sid, par[0], par[1], now)]
    if p.instruction == wire.INST_WRITE and len(par) >= 1:
        servo.write(par[0], par[1:], now)
        return [(sid, _sts_status(servos, sid, b""))]
    return []  # the STS ignores what it does not know


def _sts_status(servos: Servos, sid: int, params: bytes) -> bytes:
    return wire.sts_status(sid, servos[sid].hardware_error & 0x7F, params)


def _sts_read(servos: Servos, sid: int, addr: int, length: int,
              now: int) -> tuple[int, bytes]:
    data = servos[sid].read(addr, length, now)
    return sid, _sts_status(servos, sid, data if data is not None else b"")


def _u16(data: bytes, at: int) -> int:
    return data[at] | data[at + 1] << 8
