"""The LeRobot SO-101 leader arm as the surgeon's master: its joints give the pose.

The leader is the follower's twin with its torque off: six Feetech STS3215 on one
bus that a hand moves. The Feetech backend (``robot_side.servos.feetech``) reads it
at the highest rate the bus sustains and is never released, so no servo is ever
torqued; its calibration file (``telesurgery calibrate --arm so101``) turns ticks
into joint angles, and the SO-101 URDF's forward kinematics turns those into the
pose the console sends. The gripper servo is the grip channel (its trigger closed
= 1). A leader arm has no buttons: presence and clutch are keys on a terminal
(``device.switches``; a USB foot pedal that types them works), ``p`` toggling
presence and space the clutch, as on the keyboard master.

Joint space (``device.joint_space``, the default): the leader's calibrated joints go
out as they are (``Command.joints``, CRTK ``servo_jp``), in the SO-101 URDF's joint
order and directions, which the calibration file of each arm maps its ticks to; so a
leader and a follower calibrated with ``telesurgery calibrate --arm so101`` agree joint
for joint, whatever way each servo is mounted. The robot engages only when the leader
is within ``[joint_teleop] engage_tolerance_rad`` of the follower on every joint: put
the leader where the follower is first (the HUD names the refusal, ``not_aligned``).
The pose is sent alongside for the HUD and the records; the robot follows the joints.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from operator_console.devices.base import DeviceConfig, InputDevice, MasterSample
from operator_console.devices.keyboard import KeyboardDevice
from robot_side.serial_protocol import FwFlags
from telesurgery.errors import ConfigError, DeviceError, TelesurgeryError

log = logging.getLogger(__name__)

URDF = Path(__file__).resolve().parents[2] / "robot_side" / "description" / "so101.urdf"
IDS = (1, 2, 3, 4, 5, 6)
GRIPPER_ID = 6
STALE_NS = 100_000_000
"""A joint reading older than this is no pose: the leader's bus went quiet."""


class LeaderArmDevice(InputDevice):
    name = "so101_leader"

    def __init__(self, cfg: DeviceConfig) -> None:
        super().__init__(cfg)
        self._arm: Any = None
        self._kin: Any = None
        self._faults: list[str] = []
        self._switches = KeyboardDevice(DeviceConfig(kind="keyboard", device=cfg.switches))

    def _open(self) -> None:
        from robot_side.kinematics import Kinematics
        from robot_side.servos.config import ArmCalibration, ServosConfig
        from robot_side.servos.feetech import FeetechArm

        if not self.cfg.device:
            raise DeviceError("so101_leader: set device.device to the leader's bus, "
                              "e.g. /dev/ttyACM1")
        try:
            servos = ServosConfig(port=self.cfg.device, ids=IDS, gripper_id=GRIPPER_ID,
                                  latency_ms=20.0, torque_off_on_close=False,
                                  command_watchdog_ms=1e6)
            cal = (ArmCalibration.load(self.cfg.calibration)
                   if self.cfg.calibration is not None else None)
            self._kin = Kinematics.from_urdf(URDF)
            self._arm = FeetechArm(servos, cal)
            self._arm.open()  # never released: the torque stays off
        except (TelesurgeryError, ConfigError) as err:
            self._arm = None
            raise DeviceError(f"so101_leader on {self.cfg.device}: {err}") from err
        try:
            self._switches.open()
        except DeviceError:
            self._arm.close()
            self._arm = None
            raise
        log.info("so101_leader on %s: p = presence, space = clutch (terminal %s)",
                 self.cfg.device, self.cfg.switches or "stdin")

    def _read(self, now_ns: int) -> MasterSample:
        if self._arm is None:
            raise DeviceError("so101_leader: not open")
        keys = self._switches.read(now_ns)
        reading = self._arm.read()
        for note in reading.faults:
            if note.detail not in self._faults:
                self._faults.append(note.detail)
        sample = reading.sample
        if sample is not None and FwFlags.FAULT in sample.flags:
            # A servo's last value would be a frozen pose. Latched until the device is
            # reopened: the leader is never released.
            raise DeviceError(f"so101_leader: {'; '.join(self._faults) or 'servo fault'}")
        if not reading.connected or sample is None or \
                time.monotonic_ns() - sample.received_ns > STALE_NS:
            raise DeviceError("so101_leader: no fresh joint reading from the leader's bus")
        position, quat = self._kin.fk(sample.positions)
        return MasterSample(t_ns=now_ns, position=(float(position[0]), float(position[1]),
                                                   float(position[2])),
                            quat=quat, grip=1.0 - sample.grip, clutch=keys.clutch,
                            operator_present=keys.operator_present,
                            joints=(tuple(float(q) for q in sample.positions)
                                    if self.cfg.joint_space else None))

    def _close(self) -> None:
        self._switches.close()
        if self._arm is not None:
            self._arm.close()
            self._arm = None
