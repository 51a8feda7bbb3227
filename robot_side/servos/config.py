"""The ``[servos]`` config section and the per-arm calibration file.

The calibration (homing offsets, directions, ranges) is a JSON file written by
``telesurgery calibrate`` and named by ``servos.calibration``. A joint's angle
is ``direction * (raw - zero_tick) * rad_per_tick``; a goal is clamped to
``range_min..range_max`` ticks before it goes on the bus, whatever the control
core asked for (the servos' own limit registers are a second line, not the first).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from robot_side.servos.tables import ServoFamily
from telesurgery.config import check, finite_positive
from telesurgery.errors import ConfigError


def default_servo_link() -> Path:
    """Where ``telesurgery servo-sim`` publishes its pty when no link is given."""
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / "telesurgery" / "ttySERVO0"


@dataclass(frozen=True)
class ServosConfig:
    port: str = "auto"
    """A tty such as /dev/ttyACM0, or "auto": the emulator's link (``default_servo_link``)."""
    baudrate: int = 1_000_000
    ids: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    """Servo IDs on the bus, joints in kinematic order, then the gripper if any."""
    gripper_id: int | None = 6
    """The servo among ``ids`` that drives the gripper (grip 0..1); None: no gripper."""
    calibration: Path | None = None
    """The arm's calibration file; None runs uncalibrated (centre = 0 rad), with a warning."""
    latency_ms: float = 10.0
    """Slack beyond the wire time before a status packet is given up (USB latency timer)."""
    max_rate_hz: float = 500.0
    """Bus cycles (write + read) per second at most; the bus may sustain fewer."""
    bus_watchdog_ms: float = 100.0
    """Dynamixel Bus Watchdog (20 ms units): a silent bus stops the servos. Feetech: none."""
    command_watchdog_ms: float = 100.0
    """No write from the control loop for this long while following: hold, flag WATCHDOG."""
    missed_reads: int = 3
    """Consecutive unanswered reads after which a servo counts as gone (fault, others hold)."""
    brake: Literal["hold", "torque_off"] = "hold"
    """Hold(brake): hold position with torque (a brakeless arm would fall) or cut torque."""
    torque_off_on_close: bool = True

    def __post_init__(self) -> None:
        check(bool(self.port), "servos.port", self.port, "must not be empty")
        check(self.baudrate > 0, "servos.baudrate", self.baudrate, "must be > 0")
        check(len(self.ids) >= 1 and len(set(self.ids)) == len(self.ids), "servos.ids",
              self.ids, "must be distinct")
        check(all(0 <= i <= 252 for i in self.ids), "servos.ids", self.ids, "must be 0..252")
        check(self.gripper_id is None or self.gripper_id in self.ids, "servos.gripper_id",
              self.gripper_id, "must be one of servos.ids")
        check(len(self.joint_ids) >= 1, "servos.ids", self.ids, "need at least one joint")
        for name in ("latency_ms", "max_rate_hz", "command_watchdog_ms"):
            finite_positive(f"servos.{name}", getattr(self, name))
        check(math.isfinite(self.bus_watchdog_ms) and 20.0 <= self.bus_watchdog_ms <= 2540.0,
              "servos.bus_watchdog_ms", self.bus_watchdog_ms, "must be in 20..2540")
        check(self.missed_reads >= 1, "servos.missed_reads", self.missed_reads, "must be >= 1")

    @property
    def joint_ids(self) -> tuple[int, ...]:
        return tuple(i for i in self.ids if i != self.gripper_id)

    def resolved_port(self) -> str:
        return str(default_servo_link()) if self.port == "auto" else self.port


@dataclass(frozen=True)
class JointCalibration:
    servo_id: int
    name: str = ""
    zero_tick: int = 2048
    direction: int = 1
    range_min: int = 0
    range_max: int = 4095

    def __post_init__(self) -> None:
        key = f"joint {self.servo_id}"
        check(self.direction in (1, -1), f"{key}.direction", self.direction, "must be 1 or -1")
        check(0 <= self.range_min < self.range_max <= 4095, f"{key}.range", (
            self.range_min, self.range_max), "must satisfy 0 <= min < max <= 4095")
        check(self.range_min <= self.zero_tick <= self.range_max, f"{key}.zero_tick",
              self.zero_tick, "must lie inside the range")

    def to_rad(self, raw: int, family: ServoFamily) -> float:
        return self.direction * (raw - self.zero_tick) * family.rad_per_tick

    def to_tick(self, rad: float, family: ServoFamily) -> int:
        tick = self.zero_tick + self.direction * rad / family.rad_per_tick
        return int(min(max(round(tick), self.range_min), self.range_max))

    def limits_rad(self, family: ServoFamily) -> tuple[float, float]:
        a, b = self.to_rad(self.range_min, family), self.to_rad(self.range_max, family)
        return min(a, b), max(a, b)


@dataclass(frozen=True)
class GripperCalibration:
    servo_id: int
    closed_tick: int = 2048
    open_tick: int = 3072

    def __post_init__(self) -> None:
        check(self.closed_tick != self.open_tick, f"gripper {self.servo_id}",
              (self.closed_tick, self.open_tick), "closed and open must differ")

    def to_tick(self, grip: float) -> int:
        g = min(max(grip, 0.0), 1.0)
        return round(self.closed_tick + g * (self.open_tick - self.closed_tick))

    def to_grip(self, raw: int) -> float:
        g = (raw - self.closed_tick) / (self.open_tick - self.closed_tick)
        return min(max(g, 0.0), 1.0)


@dataclass(frozen=True)
class ArmCalibration:
    family: str
    joints: tuple[JointCalibration, ...]
    gripper: GripperCalibration | None = None
    arm: str = ""
    notes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def default(cls, family: str, cfg: ServosConfig) -> ArmCalibration:
        joints = tuple(JointCalibration(i) for i in cfg.joint_ids)
        grip = GripperCalibration(cfg.gripper_id) if cfg.gripper_id is not None else None
        return cls(family, joints, grip, notes={"uncalibrated": "centre tick is 0 rad"})

    @classmethod
    def load(cls, path: Path) -> ArmCalibration:
        try:
            raw = json.loads(path.read_text())
            joints = tuple(JointCalibration(**j) for j in raw["joints"])
            grip = raw.get("gripper")
            return cls(raw["family"], joints,
                       GripperCalibration(**grip) if grip is not None else None,
                       raw.get("arm", ""), dict(raw.get("notes", {})))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"calibration {path}: {err}") from err

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    def check_against(self, family: ServoFamily, cfg: ServosConfig) -> None:
        """The file must describe the configured bus: same family, same IDs."""
        if self.family != family.name:
            raise ConfigError(f"calibration is for {self.family!r}, the bus is {family.name!r}")
        ids = tuple(j.servo_id for j in self.joints)
        if ids != cfg.joint_ids:
            raise ConfigError(f"calibration joints {ids} differ from servos.ids {cfg.joint_ids}")
        gid = self.gripper.servo_id if self.gripper is not None else None
        if gid != cfg.gripper_id:
            raise ConfigError(f"calibration gripper {gid} differs from servos.gripper_id "
                              f"{cfg.gripper_id}")
