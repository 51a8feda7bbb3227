"""6-DOF 3D mouse (3Dconnexion SpaceMouse class) over Linux hidraw.

The device is found by scanning ``/sys/class/hidraw/*/device/uevent`` for a
3Dconnexion USB vendor id (0x256f, or 0x046d with a 3Dconnexion product id, from
the years they shipped under Logitech's id). Each ``read()`` of a hidraw node
returns one input report:

* id 1, 6 bytes: translation x, y, z (int16 LE); id 2, 6 bytes: rotation rx, ry, rz
* id 1, 12 bytes: translation and rotation in one report (newer models)
* id 3: button bitmask (little endian)

Deflection is a velocity (about +-350 counts at full push) integrated into a pose.
Buttons: left (bit 0) held = clutch, right (bit 1) held = operator present
(dead-man), bit 2 held = grip closed on models that have a third button.
"""

from __future__ import annotations

import glob
import logging
import os
import struct
from pathlib import Path

from operator_console.devices.base import DeviceConfig, InputDevice, MasterSample, PoseIntegrator
from telesurgery.errors import DeviceError

log = logging.getLogger(__name__)

VENDOR_3DCONNEXION = 0x256F
VENDOR_LOGITECH = 0x046D
LOGITECH_3DX_PRODUCTS = frozenset({0xC603, 0xC605, 0xC606, 0xC621, 0xC623, 0xC625, 0xC626,
                                   0xC627, 0xC628, 0xC629, 0xC62B, 0xC640})
SYSFS_GLOB = "/sys/class/hidraw/*/device/uevent"
FULL_SCALE = 350.0
AXES3 = struct.Struct("<hhh")
AXES6 = struct.Struct("<hhhhhh")
REPORT_SIZE = 64
BIT_CLUTCH, BIT_PRESENT, BIT_GRIP = 0x01, 0x02, 0x04
# Console frame is x right, y away from the surgeon, z up; the puck reports
# y toward the user and z down.
SIGNS = (1.0, -1.0, -1.0)


def is_3dconnexion(vendor: int, product: int) -> bool:
    return vendor == VENDOR_3DCONNEXION or (
        vendor == VENDOR_LOGITECH and product in LOGITECH_3DX_PRODUCTS)


def find_spacemouse(sysfs_glob: str = SYSFS_GLOB) -> str | None:
    """The /dev/hidrawN of the first 3Dconnexion device, or None."""
    for uevent in sorted(glob.glob(sysfs_glob)):
        try:
            text = Path(uevent).read_text(encoding="ascii", errors="replace")
        except OSError as err:
            log.debug("spacemouse: cannot read %s: %s", uevent, err)
            continue
        for line in text.splitlines():
            if not line.startswith("HID_ID="):
                continue
            try:
                _bus, vendor, product = (int(part, 16) for part in line[7:].split(":"))
            except ValueError:
                continue
            if is_3dconnexion(vendor, product):
                node = Path(uevent).parent.parent.name  # .../hidrawN/device/uevent
                return f"/dev/{node}"
    return None


class SpaceMouseDevice(InputDevice):
    name = "spacemouse"

    def __init__(self, cfg: DeviceConfig) -> None:
        super().__init__(cfg)
        self.path: str | None = None
        self._fd: int | None = None
        self._translation = (0.0, 0.0, 0.0)
        self._rotation = (0.0, 0.0, 0.0)
        self._buttons = 0
        self._pose = PoseIntegrator()
        self.reports = 0
        self.bad_reports = 0

    def _open(self) -> None:
        path = self.cfg.device or find_spacemouse()
        if path is None:
            raise DeviceError(
                "spacemouse: no 3Dconnexion device found: looked for USB vendor "
                f"0x{VENDOR_3DCONNEXION:04x} (or 0x{VENDOR_LOGITECH:04x} with a 3Dconnexion "
                f"product id) in {SYSFS_GLOB}")
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as err:
            raise DeviceError(f"spacemouse: cannot open {path}: {err.strerror} "
                              "(a udev rule may be needed for hidraw access)") from err
        self.path = path
        log.info("spacemouse: reading %s", path)

    def _report(self, data: bytes) -> None:
        rid, body = data[0], data[1:]
        if rid == 1 and len(body) >= AXES6.size:
            axes = AXES6.unpack_from(body)
            self._translation, self._rotation = axes[:3], axes[3:]
        elif rid == 1 and len(body) >= AXES3.size:
            self._translation = AXES3.unpack_from(body)
        elif rid == 2 and len(body) >= AXES3.size:
            self._rotation = AXES3.unpack_from(body)
        elif rid == 3 and body:
            self._buttons = int.from_bytes(body, "little")
        else:
            self.bad_reports += 1
            log.debug("spacemouse: ignored report id %d of %d bytes", rid, len(body))
            return
        self.reports += 1

    def _read(self, now_ns: int) -> MasterSample:
        if self._fd is None:
            raise DeviceError("spacemouse: not open")
        while True:
            try:
                data = os.read(self._fd, REPORT_SIZE)
            except BlockingIOError:
                break
            except OSError as err:
                raise DeviceError(f"spacemouse: {self.path} disconnected: {err}") from err
            if not data:
                raise DeviceError(f"spacemouse: {self.path} disconnected (end of file)")
            self._report(data)
        v = self.cfg.speed_m_s / FULL_SCALE
        w = self.cfg.angular_speed_rad_s / FULL_SCALE
        t, r = (tuple(max(-FULL_SCALE, min(FULL_SCALE, float(c))) for c in axes)
                for axes in (self._translation, self._rotation))
        self._pose.step(now_ns, (SIGNS[0] * t[0] * v, SIGNS[1] * t[1] * v, SIGNS[2] * t[2] * v),
                        (SIGNS[0] * r[0] * w, SIGNS[1] * r[1] * w, SIGNS[2] * r[2] * w))
        return MasterSample(
            t_ns=now_ns, position=self._pose.position, quat=self._pose.quat,
            grip=1.0 if self._buttons & BIT_GRIP else 0.0,
            clutch=bool(self._buttons & BIT_CLUTCH),
            operator_present=bool(self._buttons & BIT_PRESENT),
        )

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
