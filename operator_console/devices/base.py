"""The input-device interface: one sample type, one abstract class, one config section.

The base class owns validation (template method, as python-can's ``BusABC``): a
driver implements ``_open``/``_read``/``_close`` and ``read`` checks every sample
before anyone sees it, so a device that yields NaN or a broken quaternion raises
``DeviceError`` instead of reaching the teleop mapper.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from telesurgery.config import check, finite_positive
from telesurgery.errors import DeviceError
from telesurgery.quat import UNIT_TOL, Quat, Vec3, quat_from_rotvec, quat_mul, quat_normalize

log = logging.getLogger(__name__)


QUAT_NORM_TOL = UNIT_TOL


@dataclass(frozen=True, slots=True)
class MasterSample:
    """The master device's pose in the console frame at ``t_ns`` (console monotonic clock).

    ``grip`` is jaw closure, 0 = open, 1 = closed.
    """

    t_ns: int
    position: Vec3
    quat: Quat
    grip: float
    clutch: bool
    operator_present: bool
    joints: tuple[float, ...] | None = None
    """A joint-space master (a leader arm): its joints in the follower's order (rad);
    the console then sends joint commands (``Command.joints``). None: Cartesian master."""


def sample_problem(s: MasterSample) -> str | None:
    """Why ``s`` cannot be used, or None when it is valid."""
    # map() with the C isfinite, not a generator: this runs twice per command at 1 kHz.
    if not all(map(math.isfinite, s.position)):
        return f"non-finite position {s.position}"
    if not all(map(math.isfinite, s.quat)):
        return f"non-finite orientation {s.quat}"
    norm = math.sqrt(sum([c * c for c in s.quat]))
    if abs(norm - 1.0) > QUAT_NORM_TOL:
        return f"orientation quaternion norm {norm:.6f} is not 1"
    if not (math.isfinite(s.grip) and 0.0 <= s.grip <= 1.0):
        return f"grip {s.grip} outside 0..1"
    if s.joints is not None and not all(map(math.isfinite, s.joints)):
        return f"non-finite joints {s.joints}"
    return None


@dataclass(frozen=True)
class DeviceConfig:
    """Which input device to open and how; the ``[device]`` section of the console config."""

    kind: str = "scripted"
    """A key of ``operator_console.devices.DEVICES``."""
    path: Path | None = None
    """Motion file for the scripted device (CSV or JSON); None = the shipped suturing file."""
    device: str | None = None
    """Device node, e.g. /dev/input/js0, /dev/hidraw0, a tty; None = search the usual places."""
    speed_m_s: float = 0.05
    """Full-deflection speed of velocity-mode devices (gamepad, 3D mouse, keyboard)."""
    angular_speed_rad_s: float = 1.0
    """Full-deflection angular speed of velocity-mode devices."""
    loop: bool = True
    """Scripted device: start over at the end of the file instead of letting go."""
    backend: str = "forcedimension"
    """Haptic device: vendor SDK backend name (``haptic.BACKENDS``)."""
    max_force_n: float = 3.0
    """Haptic device: force feedback is clamped to this magnitude."""
    calibration: Path | None = None
    """SO-101 leader arm: its calibration file (``telesurgery calibrate --arm so101``)."""
    switches: str | None = None
    """SO-101 leader arm: the terminal whose keys give presence (p) and clutch (space), e.g.
    a USB foot pedal that types them; None = the console's own terminal."""
    joint_space: bool = True
    """SO-101 leader arm: drive the follower joint to joint (CRTK servo_jp; the follower
    must be an SO-101 calibrated the same way); False: send the leader's pose (Cartesian)."""
    wait_while_held: bool = False
    """Scripted device: the scripted surgeon's hand waits while the console is not engaged
    (the motion's timeline pauses), as a surgeon's hand does when the robot stops. A rig
    that stops and re-engages many times in one session sets it: otherwise each stop
    lands at another point of the wrist's roll and the follower's orientation walks
    until a wrist joint reaches its limit (ik_failed)."""

    def __post_init__(self) -> None:
        from operator_console.devices import DEVICES

        check(self.kind in DEVICES, "device.kind", self.kind, f"must be one of {sorted(DEVICES)}")
        finite_positive("device.speed_m_s", self.speed_m_s)
        finite_positive("device.angular_speed_rad_s", self.angular_speed_rad_s)
        finite_positive("device.max_force_n", self.max_force_n)


class PoseIntegrator:
    """Velocity-mode devices: integrate linear and angular velocity into a pose.

    A long gap between reads (a stalled loop) is clamped so it cannot become a jump.
    """

    MAX_DT_S = 0.05

    def __init__(self) -> None:
        self.position: Vec3 = (0.0, 0.0, 0.0)
        self.quat: Quat = (1.0, 0.0, 0.0, 0.0)
        self._last_ns: int | None = None

    def step(self, now_ns: int, velocity: Vec3, angular_velocity: Vec3) -> None:
        """Advance to ``now_ns``; velocities in the console frame (m/s, rad/s)."""
        dt = 0.0 if self._last_ns is None else (now_ns - self._last_ns) / 1e9
        self._last_ns = now_ns
        dt = min(max(dt, 0.0), self.MAX_DT_S)
        self.position = (self.position[0] + velocity[0] * dt,
                         self.position[1] + velocity[1] * dt,
                         self.position[2] + velocity[2] * dt)
        turn = quat_from_rotvec((angular_velocity[0] * dt, angular_velocity[1] * dt,
                                 angular_velocity[2] * dt))
        self.quat = quat_normalize(quat_mul(turn, self.quat))


class InputDevice(ABC):
    """A master input device. Use as a context manager or call open()/close()."""

    name: str = "device"

    def __init__(self, cfg: DeviceConfig) -> None:
        self.cfg = cfg
        self.is_open = False
        self.invalid_samples = 0
        self.errors = 0

    def open(self) -> None:
        """Open the device; raises ``DeviceError`` naming what was looked for."""
        if not self.is_open:
            self._open()
            self.is_open = True
            log.info("input device %s opened", self.name)

    def read(self, now_ns: int) -> MasterSample:
        """The device state at ``now_ns``; raises ``DeviceError`` on disconnect or bad data."""
        if not self.is_open:
            raise DeviceError(f"{self.name}: read before open()")
        try:
            sample = self._read(now_ns)
        except DeviceError as err:
            self.errors += 1
            log.warning("%s: read failed (#%d): %s", self.name, self.errors, err)
            raise
        why = sample_problem(sample)
        if why is not None:
            self.invalid_samples += 1
            log.warning("%s: invalid sample #%d: %s", self.name, self.invalid_samples, why)
            raise DeviceError(f"{self.name}: invalid sample: {why}")
        return sample

    def align_to(self, quat: Quat) -> bool:
        """Turn the hand to ``quat`` (console frame) before engaging, as a motorized master
        does; False: this device cannot, the surgeon aligns by hand."""
        return False

    def engaged(self, engaged: bool, now_ns: int) -> None:
        """Whether the console is engaged now (the command thread tells every period);
        a live device has nothing to do with it, a scripted hand may wait."""
        del engaged, now_ns  # a hand on a real master moves as it likes

    def close(self) -> None:
        if self.is_open:
            self.is_open = False
            self._close()
            log.info("input device %s closed", self.name)

    def set_force(self, force: Vec3) -> None:
        """Force feedback in newtons, console frame; devices without actuators ignore it."""
        del force

    def __enter__(self) -> InputDevice:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _read(self, now_ns: int) -> MasterSample: ...

    @abstractmethod
    def _close(self) -> None: ...
