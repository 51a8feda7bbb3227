"""Feetech STS3215 arms (the SO-100 / SO-101) on Feetech's ``scservo_sdk``.

``[manipulator] backend = "feetech"``; the bus is the ``[servos]`` section.
Every cycle: a sync write of the goal positions (42) and a sync read of
present position .. status (56..65). The status register (65) and the error
byte of each status packet carry the hardware errors. The STS has no bus
watchdog: a silent bus leaves each servo holding its last goal (see
docs/hazards.md for what covers that instead).
"""

from __future__ import annotations

import logging
import termios
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import scservo_sdk as sdk
import serial

from robot_side.manipulator.base import ManipulatorError
from robot_side.servos.arm import ServoArm
from robot_side.servos.busstate import BadPacket, Received, collect_statuses, count_garbage
from robot_side.servos.config import ArmCalibration, ServosConfig
from robot_side.servos.sdkport import StsPort
from robot_side.servos.tables import FEETECH_STS, Field

if TYPE_CHECKING:
    from robot_side.config import RobotConfig

log = logging.getLogger(__name__)

PKT_ID, PKT_ERROR, PKT_DATA = 2, 4, 5
STATUS_OVERHEAD = 6


class FeetechArm(ServoArm):
    family = FEETECH_STS

    def __init__(self, cfg: ServosConfig, calibration: ArmCalibration | None = None, *,
                 write_budget_ns: int = 1_000_000) -> None:
        super().__init__(cfg, calibration, name="feetech", write_budget_ns=write_budget_ns)
        self._port: Any = None
        self._ph: Any = sdk.PacketHandler(0)  # STS: little-endian words

    @classmethod
    def from_config(cls, cfg: RobotConfig) -> FeetechArm:
        path = cfg.servos.calibration
        cal = ArmCalibration.load(path) if path is not None else None
        return cls(cfg.servos, cal, write_budget_ns=cfg.control.period_ns)

    def _bus_open(self) -> None:
        port = StsPort(self.port, self.cfg.latency_ms)
        port.baudrate = self.cfg.baudrate
        try:
            ok = port.setBaudRate(self.cfg.baudrate)
        except (serial.SerialException, OSError, ValueError) as err:
            raise ManipulatorError(f"feetech: cannot open {self.port}: {err}") from err
        if not ok:
            raise ManipulatorError(f"feetech: {self.cfg.baudrate} baud is not a rate "
                                   "the SDK supports")
        self._port = port

    def _bus_close(self) -> None:
        port, self._port = self._port, None
        if port is not None and port.is_open:
            port.closePort()

    def _check(self, result: int, what: str) -> None:
        if result in (sdk.COMM_TX_FAIL, sdk.COMM_TX_ERROR, sdk.COMM_PORT_BUSY):
            raise ManipulatorError(f"feetech {self.port}: {what}: "
                                   f"{self._ph.getTxRxResult(result)}")

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(self._port, *args)
        except (serial.SerialException, OSError, termios.error, TypeError,
                AttributeError) as err:
            if self._port is not None:
                self._port.is_using = False  # the SDK leaves it set when a read raises
            raise ManipulatorError(f"feetech {self.port}: {err}") from err
        except (IndexError, ValueError) as err:
            if self._port is not None:
                self._port.is_using = False
            self.bus_counts["rx_short"] += 1
            raise BadPacket(f"feetech {self.port}: unexpected status: {err}") from err

    def _bus_ping(self, servo_id: int) -> int | None:
        try:
            model, result, _ = self._call(self._ph.ping, servo_id)
        except BadPacket:
            return None
        self._check(result, "ping")
        if result != sdk.COMM_SUCCESS:
            return None
        if model != self.family.model_number:
            log.info("feetech: servo %d is model %d (%s tables assumed)", servo_id, model,
                     self.family.model_name)
        return int(model)

    def _bus_read_block(self) -> dict[int, tuple[dict[int, int], int] | None]:
        start, length = self.family.read_block
        ids = list(self.cfg.ids)
        self._check(self._call(self._ph.syncReadTx, start, length, ids, len(ids)), "sync read")
        fam = self.family
        fields = (fam.present_position, fam.present_velocity, fam.present_load,
                  fam.present_voltage, fam.present_temperature, fam.hardware_error)
        out: dict[int, tuple[dict[int, int], int] | None] = {}
        statuses = collect_statuses(ids, lambda: self._receive(length), self.bus_counts)
        for sid in ids:
            status = statuses[sid]
            if status is None:
                out[sid] = None
                continue
            error, data = status
            values = {f.addr: f.decode(data[f.addr - start:]) for f in fields}
            out[sid] = (values, (error | values[fam.hardware_error.addr]) & 0x7F)
        return out

    def _receive(self, length: int) -> Received:
        """One status packet through the SDK's packet handler, classified."""
        self._port.setPacketTimeout(STATUS_OVERHEAD + length)
        read_before = self._port.rx_bytes
        rx, result = self._call(self._ph.rxPacket)
        count_garbage(self.bus_counts, self._port.rx_bytes - read_before - len(rx))
        if result == sdk.COMM_RX_TIMEOUT:
            return "timeout", -1, 0, b""
        if result != sdk.COMM_SUCCESS:
            # Cut short (the time ran out inside the packet) or a bad CRC/checksum.
            return ("short" if len(rx) < STATUS_OVERHEAD + length else "corrupt"), -1, 0, b""
        if len(rx) != STATUS_OVERHEAD + length:
            return "short", rx[PKT_ID], 0, b""
        return "ok", rx[PKT_ID], rx[PKT_ERROR], bytes(rx[PKT_DATA:PKT_DATA + length])

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
            raise ManipulatorError(f"feetech {self.port}: {err}") from err
        except (IndexError, ValueError) as err:
            if self._port is not None:
                self._port.is_using = False
            self.bus_counts["rx_short"] += 1
            raise BadPacket(f"feetech {self.port}: unexpected status: {err}") from err
        self._check(result, "sync write")

    def _bus_write_goals(self, goals: dict[int, int]) -> None:
        self._sync_write(self.family.goal_position, goals)

    def _bus_torque(self, ids: Sequence[int], on: bool) -> None:
        self._sync_write(self.family.torque_enable, dict.fromkeys(ids, int(on)))

    def _bus_prepare_release(self, ids: Sequence[int]) -> None:
        # An STS clears a latched error when its torque is enabled again after the cause
        # is gone; the Release's torque-on does that, and the next read shows the result.
        for sid in ids:
            self.servos[sid].error_bits = 0
