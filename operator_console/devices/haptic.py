"""Haptic masters with force feedback, behind a small backend protocol for vendor SDKs.

``HapticDevice`` owns what every haptic master needs (validation, the force
clamp, zero force on close); a backend only reads pose and buttons and writes a
force. Backends are chosen by name (``DeviceConfig.backend``):

* ``forcedimension``: Force Dimension / Novint devices through the DHD C API
  (``libdhd``), bound with ctypes.
* ``virtual``: a simulated stylus that stays where it is put and records the
  force it was sent; for demos and tests of the feedback path.

Adding OpenHaptics (``libHD``, Touch / Phantom devices) is one more class with
the same four methods and one row in ``BACKENDS``; its calls must run inside the
HD servo scheduler, so it needs a callback-based binding rather than direct calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from operator_console.devices.base import DeviceConfig, InputDevice, MasterSample
from telesurgery.errors import DeviceError
from telesurgery.quat import Quat, Vec3, quat_normalize

log = logging.getLogger(__name__)

BUTTON_CLUTCH, BUTTON_PRESENT, BUTTON_GRIP = 0x01, 0x02, 0x04


@dataclass(frozen=True, slots=True)
class HapticState:
    position: Vec3
    """Metres, device frame."""
    quat: Quat
    buttons: int
    """Bit 0 clutch, bit 1 operator present (stylus switch or presence sensor), bit 2 grip."""
    grip: float | None = None
    """Analogue gripper closure 0..1 when the device has one; otherwise bit 2 decides."""


class HapticBackend(Protocol):
    sdk: str

    def open(self) -> None: ...

    def read(self) -> HapticState: ...

    def write_force(self, force: Vec3) -> None: ...

    def close(self) -> None: ...


def matrix_to_quat(m: list[list[float]]) -> Quat:
    """Rotation matrix (row-major 3x3) to (w, x, y, z)."""
    tr = m[0][0] + m[1][1] + m[2][2]
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = (0.25 * s, (m[2][1] - m[1][2]) / s, (m[0][2] - m[2][0]) / s, (m[1][0] - m[0][1]) / s)
    elif m[0][0] > m[1][1] and m[0][0] > m[2][2]:
        s = math.sqrt(1.0 + m[0][0] - m[1][1] - m[2][2]) * 2
        q = ((m[2][1] - m[1][2]) / s, 0.25 * s, (m[0][1] + m[1][0]) / s, (m[0][2] + m[2][0]) / s)
    elif m[1][1] > m[2][2]:
        s = math.sqrt(1.0 + m[1][1] - m[0][0] - m[2][2]) * 2
        q = ((m[0][2] - m[2][0]) / s, (m[0][1] + m[1][0]) / s, 0.25 * s, (m[1][2] + m[2][1]) / s)
    else:
        s = math.sqrt(1.0 + m[2][2] - m[0][0] - m[1][1]) * 2
        q = ((m[1][0] - m[0][1]) / s, (m[0][2] + m[2][0]) / s, (m[1][2] + m[2][1]) / s, 0.25 * s)
    return quat_normalize(q)


class ForceDimensionBackend:
    """Force Dimension SDK (DHD API): omega.x, delta.x, sigma.x, Novint Falcon."""

    sdk = "Force Dimension SDK (libdhd)"
    LIBRARY_NAMES = ("dhd", "libdhd.so", "libdhd.so.3")
    _ALL = ctypes.c_byte(-1)  # "the default device" for every call

    def __init__(self) -> None:
        self._lib: ctypes.CDLL | None = None

    def _load(self) -> ctypes.CDLL:
        for name in self.LIBRARY_NAMES:
            path = ctypes.util.find_library(name) if "." not in name else name
            if path is None:
                continue
            try:
                return ctypes.CDLL(path)
            except OSError as err:
                log.debug("haptic: %s did not load: %s", path, err)
        raise DeviceError(f"haptic: {self.sdk} not installed: looked for "
                          f"{', '.join(self.LIBRARY_NAMES)} on the library path")

    def _error(self, what: str) -> DeviceError:
        lib = self._lib
        detail = "unknown error"
        if lib is not None:
            lib.dhdErrorGetLastStr.restype = ctypes.c_char_p
            detail = (lib.dhdErrorGetLastStr() or b"").decode(errors="replace")
        return DeviceError(f"haptic: {what}: {detail}")

    def open(self) -> None:
        self._lib = self._load()
        if self._lib.dhdOpen() < 0:
            raise self._error("no Force Dimension device (dhdOpen)")
        self._lib.dhdEnableForce(ctypes.c_ubyte(1), self._ALL)

    def read(self) -> HapticState:
        lib = self._lib
        if lib is None:
            raise DeviceError("haptic: backend not open")
        x, y, z = ctypes.c_double(), ctypes.c_double(), ctypes.c_double()
        if lib.dhdGetPosition(ctypes.byref(x), ctypes.byref(y), ctypes.byref(z), self._ALL) < 0:
            raise self._error("read position (dhdGetPosition)")
        frame = ((ctypes.c_double * 3) * 3)()
        if lib.dhdGetOrientationFrame(frame, self._ALL) < 0:
            raise self._error("read orientation (dhdGetOrientationFrame)")
        gripper = ctypes.c_double()
        has_gripper = lib.dhdGetGripperGap(ctypes.byref(gripper), self._ALL) >= 0
        lib.dhdGetButtonMask.restype = ctypes.c_uint
        buttons = int(lib.dhdGetButtonMask(self._ALL))
        quat = matrix_to_quat([[frame[r][c] for c in range(3)] for r in range(3)])
        # Gripper gap is roughly 0..0.03 m open; closure is the complement.
        grip = min(1.0, max(0.0, 1.0 - gripper.value / 0.03)) if has_gripper else None
        return HapticState((x.value, y.value, z.value), quat, buttons, grip)

    def write_force(self, force: Vec3) -> None:
        if self._lib is None:
            raise DeviceError("haptic: backend not open")
        fx, fy, fz = (ctypes.c_double(f) for f in force)
        if self._lib.dhdSetForce(fx, fy, fz, self._ALL) < 0:
            raise self._error("write force (dhdSetForce)")

    def close(self) -> None:
        if self._lib is not None:
            self._lib.dhdClose(self._ALL)
            self._lib = None


class VirtualHapticBackend:
    """A simulated stylus: it stays where ``state`` puts it and records the forces sent."""

    sdk = "virtual"

    def __init__(self) -> None:
        self.state = HapticState((0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0), BUTTON_PRESENT)
        self.forces: deque[Vec3] = deque(maxlen=1000)
        self.is_open = False

    def open(self) -> None:
        self.is_open = True

    def read(self) -> HapticState:
        if not self.is_open:
            raise DeviceError("haptic: virtual stylus disconnected")
        return self.state

    def write_force(self, force: Vec3) -> None:
        self.forces.append(force)

    def close(self) -> None:
        self.is_open = False


BACKENDS: dict[str, type[HapticBackend]] = {
    "forcedimension": ForceDimensionBackend,
    "virtual": VirtualHapticBackend,
}


class HapticDevice(InputDevice):
    """A haptic master: pose and buttons in, clamped force feedback out."""

    name = "haptic"

    def __init__(self, cfg: DeviceConfig, backend: HapticBackend | None = None) -> None:
        super().__init__(cfg)
        if backend is None:
            if cfg.backend not in BACKENDS:
                raise DeviceError(f"haptic: unknown backend {cfg.backend!r}; "
                                  f"known: {sorted(BACKENDS)}")
            backend = BACKENDS[cfg.backend]()
        self.backend = backend
        self.rejected_forces = 0

    def _open(self) -> None:
        self.backend.open()
        log.info("haptic: %s open, force clamp %.1f N", self.backend.sdk, self.cfg.max_force_n)

    def _read(self, now_ns: int) -> MasterSample:
        s = self.backend.read()
        grip = s.grip if s.grip is not None else (1.0 if s.buttons & BUTTON_GRIP else 0.0)
        return MasterSample(t_ns=now_ns, position=s.position, quat=s.quat, grip=grip,
                            clutch=bool(s.buttons & BUTTON_CLUTCH),
                            operator_present=bool(s.buttons & BUTTON_PRESENT))

    def set_force(self, force: Vec3) -> None:
        """Send ``force`` (N), clamped to ``max_force_n``; a non-finite force sends zero."""
        if not self.is_open:
            raise DeviceError("haptic: set_force before open()")
        if not all(math.isfinite(f) for f in force):
            self.rejected_forces += 1
            log.warning("haptic: non-finite force %s replaced by zero (#%d)", force,
                        self.rejected_forces)
            force = (0.0, 0.0, 0.0)
        magnitude = math.sqrt(sum(f * f for f in force))
        limit = self.cfg.max_force_n
        if magnitude > limit:
            k = limit / magnitude
            force = (force[0] * k, force[1] * k, force[2] * k)
        self.backend.write_force(force)

    def _close(self) -> None:
        try:
            # Never leave the motors pushing on the surgeon's hand.
            self.backend.write_force((0.0, 0.0, 0.0))
        finally:
            self.backend.close()
