"""Keyboard master for someone without hardware: keys on a terminal in cbreak mode.

W/S move forward/back, A/D left/right, E/Q up/down; the arrows pitch and yaw;
space toggles the clutch, P operator presence, G the grip. A terminal reports
key presses, not key releases, so each press moves a goal by one step and the
pose glides to the goal at ``speed_m_s`` / ``angular_speed_rad_s``: auto-repeat
gives continuous motion and the output never jumps.

Cbreak rather than full raw mode keeps Ctrl-C working as an interrupt.
"""

from __future__ import annotations

import logging
import math
import os
import select
import sys
import termios
from typing import Any

from operator_console.devices.base import DeviceConfig, InputDevice, MasterSample
from telesurgery.errors import DeviceError
from telesurgery.quat import Quat, Vec3, quat_angle, quat_from_rotvec, quat_mul, quat_normalize

log = logging.getLogger(__name__)

STEP_M = 0.005
STEP_RAD = math.radians(5.0)
MAX_DT_S = 0.05
TRANSLATE: dict[bytes, Vec3] = {
    b"w": (0.0, 1.0, 0.0), b"s": (0.0, -1.0, 0.0), b"d": (1.0, 0.0, 0.0),
    b"a": (-1.0, 0.0, 0.0), b"e": (0.0, 0.0, 1.0), b"q": (0.0, 0.0, -1.0),
}
ROTATE: dict[bytes, Vec3] = {
    b"\x1b[A": (1.0, 0.0, 0.0), b"\x1b[B": (-1.0, 0.0, 0.0),   # up/down: pitch
    b"\x1b[D": (0.0, 0.0, 1.0), b"\x1b[C": (0.0, 0.0, -1.0),   # left/right: yaw
}
HELP = "WASD/QE move, arrows rotate, space clutch, p present, g grip"


class KeyboardDevice(InputDevice):
    name = "keyboard"

    def __init__(self, cfg: DeviceConfig) -> None:
        super().__init__(cfg)
        self._fd: int | None = None
        self._owns_fd = False
        self._saved: list[Any] | None = None
        self._buf = b""
        self._pos: Vec3 = (0.0, 0.0, 0.0)
        self._goal_pos: Vec3 = (0.0, 0.0, 0.0)
        self._quat: Quat = (1.0, 0.0, 0.0, 0.0)
        self._goal_quat: Quat = (1.0, 0.0, 0.0, 0.0)
        self._last_ns: int | None = None
        self.clutch = False
        self.present = False
        self.grip = 0.0

    def _open(self) -> None:
        where = self.cfg.device or "stdin"
        if self.cfg.device:
            try:
                fd = os.open(self.cfg.device, os.O_RDONLY | os.O_NOCTTY)
            except OSError as err:
                raise DeviceError(f"keyboard: cannot open {where}: {err.strerror}") from err
            self._owns_fd = True
        else:
            fd = sys.stdin.fileno()
        if not os.isatty(fd):
            if self._owns_fd:
                os.close(fd)
            raise DeviceError(f"keyboard: {where} is not a terminal (TTY); run the console in "
                              "a terminal or choose another device")
        self._fd = fd
        self._saved = termios.tcgetattr(fd)
        mode = termios.tcgetattr(fd)
        mode[3] &= ~(termios.ICANON | termios.ECHO)  # lflag: keys one at a time, unechoed
        mode[6][termios.VMIN], mode[6][termios.VTIME] = 0, 0
        termios.tcsetattr(fd, termios.TCSANOW, mode)
        log.info("keyboard on %s: %s", where, HELP)

    def _key(self, key: bytes) -> None:
        if key in TRANSLATE:
            d = TRANSLATE[key]
            self._goal_pos = (self._goal_pos[0] + d[0] * STEP_M, self._goal_pos[1] + d[1] * STEP_M,
                              self._goal_pos[2] + d[2] * STEP_M)
        elif key in ROTATE:
            r = ROTATE[key]
            turn = quat_from_rotvec((r[0] * STEP_RAD, r[1] * STEP_RAD, r[2] * STEP_RAD))
            self._goal_quat = quat_normalize(quat_mul(turn, self._goal_quat))
        elif key == b" ":
            self.clutch = not self.clutch
        elif key == b"p":
            self.present = not self.present
        elif key == b"g":
            self.grip = 0.0 if self.grip else 1.0

    def _parse(self) -> None:
        while self._buf:
            if self._buf.startswith(b"\x1b["):
                if len(self._buf) < 3:
                    return  # the rest of the arrow key is still on its way
                key, self._buf = self._buf[:3], self._buf[3:]
            elif self._buf == b"\x1b":
                return
            else:
                key, self._buf = self._buf[:1].lower(), self._buf[1:]
            self._key(key)

    def _glide(self, now_ns: int) -> None:
        dt = 0.0 if self._last_ns is None else (now_ns - self._last_ns) / 1e9
        self._last_ns = now_ns
        dt = min(max(dt, 0.0), MAX_DT_S)
        gap = [g - p for g, p in zip(self._goal_pos, self._pos, strict=True)]
        dist = math.sqrt(sum(d * d for d in gap))
        k = 1.0 if dist <= self.cfg.speed_m_s * dt else self.cfg.speed_m_s * dt / dist
        self._pos = (self._pos[0] + gap[0] * k, self._pos[1] + gap[1] * k,
                     self._pos[2] + gap[2] * k)
        angle = quat_angle(self._quat, self._goal_quat)
        if angle > 0.0:
            f = min(1.0, self.cfg.angular_speed_rad_s * dt / angle)
            goal = self._goal_quat
            if sum(a * b for a, b in zip(self._quat, goal, strict=True)) < 0:
                goal = (-goal[0], -goal[1], -goal[2], -goal[3])
            mixed = tuple(a + (b - a) * f for a, b in zip(self._quat, goal, strict=True))
            self._quat = quat_normalize((mixed[0], mixed[1], mixed[2], mixed[3]))

    def _read(self, now_ns: int) -> MasterSample:
        if self._fd is None:
            raise DeviceError("keyboard: not open")
        while True:
            try:
                if not select.select([self._fd], [], [], 0.0)[0]:
                    break
                data = os.read(self._fd, 64)
            except OSError as err:  # EIO once the terminal hangs up
                raise DeviceError(f"keyboard: terminal gone: {err}") from err
            if not data:
                raise DeviceError("keyboard: terminal closed (end of file)")
            self._buf += data
        self._parse()
        self._glide(now_ns)
        return MasterSample(t_ns=now_ns, position=self._pos, quat=self._quat, grip=self.grip,
                            clutch=self.clutch, operator_present=self.present)

    def _close(self) -> None:
        if self._fd is None:
            return
        try:
            if self._saved is not None:
                termios.tcsetattr(self._fd, termios.TCSANOW, self._saved)
        except termios.error as err:
            log.warning("keyboard: could not restore the terminal mode: %s", err)
        finally:
            if self._owns_fd:
                os.close(self._fd)
            self._fd = None
