"""Dynamixel X-series arms (Protocol 2.0) on the ROBOTIS ``dynamixel_sdk``.

``[manipulator] backend = "dynamixel"``; the bus is the ``[servos]`` section.
Every cycle: a sync write of the goal positions (116) and a sync read of the
block present load .. present temperature (126..146). A status packet's Alert
bit is followed by a read of Hardware Error Status (70), whose bits become a
fault in plain words. The Bus Watchdog (98) is armed on every Release, so a bus
that goes silent (process killed, cable cut) stops the servos by themselves;
one servo's watchdog register is read per cycle, round-robin, to see a trip.
"""

from __future__ import annotations

import logging
import termios
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dynamixel_sdk as sdk
import serial

from robot_side.manipulator.base import ManipulatorError
from robot_side.serial_protocol import FwFlags
from robot_side.servos.arm import ServoArm
from robot_side.servos.busstate import (
    FAULT_BUS_WATCHDOG,
    BadPacket,
    Received,
    collect_statuses,
    count_garbage,
)
from robot_side.servos.config import ArmCalibration, ServosConfig
from robot_side.servos.sdkport import DxlPort
from robot_side.servos.tables import DYNAMIXEL_X, Field

if TYPE_CHECKING:
    from robot_side.config import RobotConfig

log = logging.getLogger(__name__)

PKT_ID, PKT_ERROR, PKT_DATA = 4, 8, 9
STATUS_OVERHEAD = 11
ALERT = 0x80
WATCHDOG_UNIT_MS = 20


class DynamixelArm(ServoArm):
    family = DYNAMIXEL_X

    def __init__(self, cfg: ServosConfig, calibration: ArmCalibration | None = None, *,
                 write_budget_ns: int = 1_000_000) -> None:
        super().__init__(cfg, calibration, name="dynamixel", write_budget_ns=write_budget_ns)
        self._port: Any = None
        self._ph: Any = sdk.PacketHandler(2.0)
        self._watchdog_units = max(1, min(127, round(cfg.bus_watchdog_ms / WATCHDOG_UNIT_MS)))

    @classmethod
    def from_config(cls, cfg: RobotConfig) -> DynamixelArm:
        path = cfg.servos.calibration
        cal = ArmCalibration.load(path) if path is not None else None
        return cls(cfg.servos, cal, write_budget_ns=cfg.control.period_ns)

    # ------------------------------------------------------------ port
    def _bus_open(self) -> None:
        port = DxlPort(self.port, self.cfg.latency_ms)
        port.baudrate = self.cfg.baudrate
        try:
            ok = port.setBaudRate(self.cfg.baudrate)
        except (serial.SerialException, OSError, ValueError) as err:
            raise ManipulatorError(f"dynamixel: cannot open {self.port}: {err}") from err
        if not ok:
            raise ManipulatorError(f"dynamixel: {self.cfg.baudrate} baud is not a rate "
                                   "the SDK supports")
        self._port = port

    def _bus_close(self) -> None:
        port, self._port = self._port, None
        if port is not None and port.is_open:
            port.closePort()

    def _check(self, result: int, what: str) -> None:
        if result in (sdk.COMM_TX_FAIL, sdk.COMM_TX_ERROR, sdk.COMM_PORT_BUSY):
            raise ManipulatorError(f"dynamixel {self.port}: {what}: "
                                   f"{self._ph.getTxRxResult(result)}")

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(self._port, *args)
        except (serial.SerialException, OSError, termios.error, TypeError,
                AttributeError) as err:
            if self._port is not None:
                self._port.is_using = False  # the SDK leaves it set when a read raises
            raise ManipulatorError(f"dynamixel {self.port}: {err}") from err
        except (IndexError, ValueError) as err:
            if self._port is not None:
                self._port.is_using = False
            self.bus_counts["rx_short"] += 1
            raise BadPacket(f"dynamixel {self.port}: unexpected status: {err}") from err

    # ------------------------------------------------------------ bus calls
    def _bus_ping(self, servo_id: int) -> int | None:
        try:
            model, result, _ = self._call(self._ph.ping, servo_id)
        except BadPacket:
            return None
        self._check(result, "ping")
        if result != sdk.COMM_SUCCESS:
            return None
        if model != self.family.model_number:
            log.info("dynamixel: servo %d is model %d (%s tables assumed)", servo_id, model,
                     self.family.model_name)
        return int(model)

    def _bus_read_block(self) -> dict[int, tuple[dict[int, int], int] | None]:
        start, length = self.family.read_block
        ids = list(self.cfg.ids)
        self._check(self._call(self._ph.syncReadTx, start, length, ids, len(ids), False),
                    "sync read")
        out: dict[int, tuple[dict[int, int], int] | None] = {}
        fam = self.family
        fields = (fam.present_load, fam.present_velocity, fam.present_position,
                  fam.present_voltage, fam.present_temperature)
        statuses = collect_statuses(ids, lambda: self._receive(length), self.bus_counts)
        for sid in ids:
            status = statuses[sid]
            if status is None:
                out[sid] = None
                continue
            error, data = status
            values = {f.addr: f.decode(data[f.addr - start:]) for f in fields}
            bits = 0
            if error & ALERT:
                bits = self._read_byte(sid, fam.hardware_error) or 0
            out[sid] = (values, bits)
        return out

    def _receive(self, length: int) -> Received:
        """One status packet through the SDK's packet handler, classified."""
        self._port.setPacketTimeout(STATUS_OVERHEAD + length)
        read_before = self._port.rx_bytes
        rx, result = self._call(self._ph.rxPacket, False)
        count_garbage(self.bus_counts, self._port.rx_bytes - read_before - len(rx))
        if result == sdk.COMM_RX_TIMEOUT:
            return "timeout", -1, 0, b""
        if result != sdk.COMM_SUCCESS:
            # Cut short (the time ran out inside the packet) or a bad CRC/checksum.
            return ("short" if len(rx) < STATUS_OVERHEAD + length else "corrupt"), -1, 0, b""
        if len(rx) != STATUS_OVERHEAD + length or rx[PKT_ERROR] & ~ALERT:
            return "short", rx[PKT_ID], 0, b""
        return "ok", rx[PKT_ID], rx[PKT_ERROR], bytes(rx[PKT_DATA:PKT_DATA + length])

    def _read_byte(self, sid: int, f: Field) -> int | None:
        try:
            value, result, _ = self._call(self._ph.read1ByteTxRx, sid, f.addr)
        except BadPacket:
            return None
        self._check(result, "read")
        return int(value) if result == sdk.COMM_SUCCESS else None

    def _sync_write(self, f: Field, values: dict[int, int]) -> None:
        if not values:
            return
        writer = sdk.GroupSyncWrite(self._port, self._ph, f.addr, f.size)
        for sid, value in values.items():
            writer.addParam(sid, list(f.encode(value)))
        try:
            result = writer.txPacket()
        except (serial.SerialException, OSError, termios.error, TypeError,
                AttributeError) as err:  # termios.error: a port unplugged under tcflush
            if self._port is not None:
                self._port.is_using = False
            raise ManipulatorError(f"dynamixel {self.port}: {err}") from err
        except (IndexError, ValueError) as err:
            if self._port is not None:
                self._port.is_using = False
            self.bus_counts["rx_short"] += 1
            raise BadPacket(f"dynamixel {self.port}: unexpected status: {err}") from err
        self._check(result, "sync write")

    def _bus_write_goals(self, goals: dict[int, int]) -> None:
        self._sync_write(self.family.goal_position, goals)

    def _bus_torque(self, ids: Sequence[int], on: bool) -> None:
        self._sync_write(self.family.torque_enable, dict.fromkeys(ids, int(on)))

    def _bus_prepare_release(self, ids: Sequence[int]) -> None:
        for sid in ids:
            if self.servos[sid].error_bits:
                # Only a REBOOT clears a Dynamixel's hardware error (and only if its cause
                # is gone: the next read shows whether it came back).
                result, _ = self._call(self._ph.reboot, sid)
                self._check(result, "reboot")
                self.servos[sid].error_bits = 0
        wd = self.family.bus_watchdog
        if wd is not None:
            self._sync_write(wd, dict.fromkeys(ids, 0))  # clears a tripped (-1) watchdog
            self._sync_write(wd, dict.fromkeys(ids, self._watchdog_units))

    def _bus_housekeeping(self, cycle: int) -> FwFlags:
        wd = self.family.bus_watchdog
        if wd is None or self._mode == "braked":
            return FwFlags(0)
        sid = self.cfg.ids[cycle % len(self.cfg.ids)]
        if self._read_byte(sid, wd) == 0xFF:
            if self._latched & FwFlags.WATCHDOG_TRIPPED == 0:
                self._fault(FAULT_BUS_WATCHDOG, f"servo {sid} ({self._name_of(sid)}): its bus "
                            "watchdog stopped it (the bus was silent too long)")
            return FwFlags.WATCHDOG_TRIPPED
        return FwFlags(0)
