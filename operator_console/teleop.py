"""The console's half of teleop: the registered, tremor-filtered master pose, nothing more.

    sent position    = R_reg * tremor_filter(device position)
    sent orientation = q_reg * device orientation

The one teleop mapping (anchoring, translation and rotation gains, the
latency-adaptive factor) lives on the robot (``safety.anchor``, the robot's
``[control]`` config), where the latency is measured: the console neither
anchors nor scales. ``R_reg``/``q_reg`` (``frame_rotation``) registers the
console frame to the robot frame, as the surgeon's view is mounted. The tremor
filter restarts at the hand's position whenever the stream of good samples
restarts (after a bad sample or the operator's return), so its state can never
make the pose jump.

Alignment (dVRK style): the robot engages only when the surgeon's hand
(the registered orientation sent here) agrees with the instrument. A device that
can turn itself (a motorized master, the scripted surgeon) is told the
instrument's orientation by ``align_to``; with any other device the surgeon turns
the hand, guided by the HUD.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from operator_console.devices.base import InputDevice, MasterSample, sample_problem
from operator_console.tremor import TremorFilter
from telesurgery.config import check, finite_positive
from telesurgery.quat import IDENTITY, UNIT_TOL, Quat, Vec3, quat_conj, quat_mul, quat_normalize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeleopConfig:
    tremor_filter: bool = True
    tremor_adaptive: bool = True
    """Let the tremor notches track the surgeon's tremor peak (see ``tremor``)."""
    rate_hz: float = 1000.0
    """Rate at which ``update`` is called (the command rate); the filter is designed for it."""
    frame_rotation: Quat = IDENTITY
    """Console frame to robot frame, (w, x, y, z): how the surgeon's view is mounted."""

    def __post_init__(self) -> None:
        finite_positive("teleop.rate_hz", self.rate_hz)
        norm = math.sqrt(sum(c * c for c in self.frame_rotation))
        check(abs(norm - 1.0) < UNIT_TOL, "teleop.frame_rotation", self.frame_rotation,
              "must be a unit quaternion (w, x, y, z)")
        check(self.rate_hz > 26.0, "teleop.rate_hz", self.rate_hz,
              "must exceed twice the tremor band's upper edge (13 Hz)")


@dataclass(frozen=True, slots=True)
class TeleopOutput:
    """The registered master pose. Send it as motion only when ``valid`` is True."""

    position: Vec3
    quat: Quat
    grip: float
    clutch: bool
    operator_present: bool
    valid: bool
    why: str
    """Empty when usable; otherwise why the follower must hold, for the surgeon."""
    joints: tuple[float, ...] | None = None
    """A joint-space master's joints (the last good ones while holding); None: Cartesian."""


def rotate(q: Quat, v: np.ndarray) -> np.ndarray:
    """Rotate vector v by unit quaternion q."""
    w, x, y, z = q
    r = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])
    out: np.ndarray = r @ v
    return out


def rotate_vec3(q: Quat, v: Sequence[float]) -> Vec3:
    """``rotate`` on plain floats (the command thread's 1 kHz path: no 3x3 array)."""
    w, x, y, z = q
    vx, vy, vz = v
    return ((1 - 2 * (y * y + z * z)) * vx + 2 * (x * y - w * z) * vy + 2 * (x * z + w * y) * vz,
            2 * (x * y + w * z) * vx + (1 - 2 * (x * x + z * z)) * vy + 2 * (y * z - w * x) * vz,
            2 * (x * z - w * y) * vx + 2 * (y * z + w * x) * vy + (1 - 2 * (x * x + y * y)) * vz)


class TeleopMapper:
    """Registration, tremor filtering, operator presence; no anchoring, no scaling."""

    def __init__(self, cfg: TeleopConfig) -> None:
        self.cfg = cfg
        self.invalid_samples = 0
        self._filter = (TremorFilter(cfg.rate_hz, adaptive=cfg.tremor_adaptive)
                        if cfg.tremor_filter else None)
        self._position: Vec3 = (0.0, 0.0, 0.0)
        self._quat: Quat = cfg.frame_rotation
        self._grip = 0.0
        self._joints: tuple[float, ...] | None = None
        self._streaming = False
        self._why = "no sample yet"

    @property
    def last_pose(self) -> tuple[Vec3, Quat]:
        """The last good registered pose (what a holding command carries)."""
        return self._position, self._quat

    def update(self, sample: MasterSample) -> TeleopOutput:
        problem = sample_problem(sample)
        if problem is not None:
            self.invalid_samples += 1
            return self._hold(f"master device: {problem}", sample.clutch)
        if not sample.operator_present:
            return self._hold("operator not present", sample.clutch)
        raw = list(map(float, sample.position))  # plain floats: no numpy per command
        if not self._streaming and self._filter is not None:
            self._filter.reset(np.array(raw))  # the filter starts at the hand: no transient
        self._streaming = True
        master = self._filter.apply_list(raw) if self._filter is not None else raw
        self._position = rotate_vec3(self.cfg.frame_rotation, master)
        self._quat = quat_normalize(quat_mul(self.cfg.frame_rotation, sample.quat))
        self._grip = sample.grip
        # Joints pass unfiltered and unregistered: they are the follower's own joints,
        # and the robot bounds them (robot_side.follow_joint).
        self._joints = sample.joints
        why = "clutch" if sample.clutch else ""
        return self._output(True, why, clutch=sample.clutch, present=True)

    def device_fault(self, why: str) -> TeleopOutput:
        """The device failed (``DeviceError``): hold, invalid, with ``why`` for the surgeon."""
        self.invalid_samples += 1
        return self._hold(f"master device: {why}", clutch=False)

    def align(self, device: InputDevice, instrument: Quat) -> bool:
        """Turn a self-aligning device's hand to the instrument's orientation (robot frame);
        False when the device cannot (the surgeon aligns by hand)."""
        target = quat_mul(quat_conj(self.cfg.frame_rotation), instrument)  # console frame
        return device.align_to(target)

    def _hold(self, why: str, clutch: bool) -> TeleopOutput:
        self._streaming = False
        return self._output(False, why, clutch=clutch, present=False)

    def _output(self, valid: bool, why: str, *, clutch: bool, present: bool) -> TeleopOutput:
        if why != self._why:
            log.log(logging.INFO if valid else logging.WARNING, "teleop: %s", why or "following")
            self._why = why
        return TeleopOutput(position=self._position, quat=self._quat, grip=self._grip,
                            clutch=clutch, operator_present=present, valid=valid, why=why,
                            joints=self._joints)
