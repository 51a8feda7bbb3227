"""Gamepad / joystick master over the Linux joystick API (``/dev/input/js*``).

Velocity mode: stick deflection is a velocity that ``PoseIntegrator`` turns into
a pose. The device file yields 8-byte ``struct js_event`` records only on change,
so the axis state is kept here and integrated on every read.

Default layout (Xbox-style pads under the ``xpad`` driver):

* left stick X/Y -> x/y, right stick Y -> z, right stick X -> yaw, d-pad -> roll/pitch
* button 4 (LB), held: operator present (dead-man: let go and motion stops)
* button 0 (A), held: clutch
* button 5 (RB), held: grip closed
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import struct

from operator_console.devices.base import DeviceConfig, InputDevice, MasterSample, PoseIntegrator
from telesurgery.errors import DeviceError

log = logging.getLogger(__name__)

JS_EVENT = struct.Struct("<IhBB")
"""struct js_event { __u32 time; __s16 value; __u8 type; __u8 number; }"""
JS_EVENT_BUTTON = 0x01
JS_EVENT_AXIS = 0x02
JS_EVENT_INIT = 0x80
AXIS_MAX = 32767.0
DEADZONE = 0.08
"""Fraction of full deflection ignored, so a pad at rest does not drift."""
SEARCH_GLOB = "/dev/input/js*"

# axis number -> (pose component 0..5 = x y z roll pitch yaw, sign)
AXIS_MAP: dict[int, tuple[int, float]] = {
    0: (0, 1.0), 1: (1, -1.0), 4: (2, -1.0), 3: (5, -1.0), 6: (3, 1.0), 7: (4, -1.0),
}
BUTTON_CLUTCH = 0
BUTTON_PRESENT = 4
BUTTON_GRIP = 5
READ_CHUNK = JS_EVENT.size * 64


def _deadzone(v: float) -> float:
    if abs(v) <= DEADZONE:
        return 0.0
    return (abs(v) - DEADZONE) / (1.0 - DEADZONE) * (1.0 if v > 0 else -1.0)


class GamepadDevice(InputDevice):
    name = "gamepad"

    def __init__(self, cfg: DeviceConfig) -> None:
        super().__init__(cfg)
        self.path: str | None = None
        self._fd: int | None = None
        self._buf = b""
        self._axes: dict[int, float] = {}
        self._buttons: dict[int, bool] = {}
        self._pose = PoseIntegrator()
        self.events = 0

    def _open(self) -> None:
        tried = [self.cfg.device] if self.cfg.device else sorted(glob.glob(SEARCH_GLOB))
        if not tried:
            raise DeviceError(f"gamepad: no joystick found: nothing matches {SEARCH_GLOB} "
                              "(is the pad plugged in and the joydev module loaded?)")
        errors = []
        for path in tried:
            try:
                self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as err:
                errors.append(f"{path}: {err.strerror}")
                continue
            self.path = path
            log.info("gamepad: reading %s", path)
            return
        raise DeviceError(f"gamepad: cannot open a joystick; tried {'; '.join(errors)}")

    def _drain(self) -> None:
        """Read every pending event; EOF or an I/O error means the pad is gone."""
        if self._fd is None:
            raise DeviceError("gamepad: not open")
        while True:
            try:
                chunk = os.read(self._fd, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError as err:
                # ENODEV on an unplugged pad, EIO on a pty whose other end closed.
                raise DeviceError(f"gamepad: {self.path} disconnected: "
                                  f"{errno.errorcode.get(err.errno or 0, err)}") from err
            if not chunk:
                raise DeviceError(f"gamepad: {self.path} disconnected (end of file)")
            self._buf += chunk
            usable = len(self._buf) - len(self._buf) % JS_EVENT.size
            for offset in range(0, usable, JS_EVENT.size):
                self._event(*JS_EVENT.unpack_from(self._buf, offset))
            self._buf = self._buf[usable:]

    def _event(self, _time_ms: int, value: int, etype: int, number: int) -> None:
        self.events += 1
        kind = etype & ~JS_EVENT_INIT
        if kind == JS_EVENT_AXIS:
            self._axes[number] = max(-1.0, min(1.0, value / AXIS_MAX))
        elif kind == JS_EVENT_BUTTON:
            self._buttons[number] = value != 0

    def _read(self, now_ns: int) -> MasterSample:
        self._drain()
        rates = [0.0] * 6
        for number, (component, sign) in AXIS_MAP.items():
            rates[component] += sign * _deadzone(self._axes.get(number, 0.0))
        v, w = self.cfg.speed_m_s, self.cfg.angular_speed_rad_s
        self._pose.step(now_ns, (rates[0] * v, rates[1] * v, rates[2] * v),
                        (rates[3] * w, rates[4] * w, rates[5] * w))
        return MasterSample(
            t_ns=now_ns, position=self._pose.position, quat=self._pose.quat,
            grip=1.0 if self._buttons.get(BUTTON_GRIP, False) else 0.0,
            clutch=self._buttons.get(BUTTON_CLUTCH, False),
            operator_present=self._buttons.get(BUTTON_PRESENT, False),
        )

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
