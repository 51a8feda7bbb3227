"""Teleop mapping: master samples in, follower-frame Cartesian targets out.

    target = follower_anchor + scale * R_align * (filtered_master - master_anchor)

The mapper re-anchors (takes the current master and the last target as the new
pair of anchors) whenever motion resumes: after engage, clutch release, the
operator's return, a bad sample, and any change of scale. Re-anchoring resets the
tremor filter to the current master position, so neither the offset nor the
filter state can make the target jump. While the clutch is pressed, the operator
is absent or the sample is bad, the target holds at its last value.

Orientation: the master's rotation since its anchor, expressed in the robot frame,
is applied to the follower's anchor orientation (optionally scaled by
``rotation_scale``; not scaled by default, as the wrist maps one to one).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from operator_console.devices.base import MasterSample, sample_problem
from operator_console.tremor import TremorFilter
from telesurgery.config import check, finite_positive
from telesurgery.errors import ConfigError, SchemaError
from telesurgery.quat import Quat, Vec3, quat_conj, quat_from_rotvec, quat_mul, quat_normalize

log = logging.getLogger(__name__)

IDENTITY: Quat = (1.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class TeleopConfig:
    scale: float = 0.2
    """Master-to-follower motion scale (0.2 as on the da Vinci Research Kit)."""
    min_scale: float = 0.02
    max_scale: float = 1.0
    tremor_filter: bool = True
    tremor_adaptive: bool = True
    """Let the tremor notches track the surgeon's tremor peak (see ``tremor``)."""
    rate_hz: float = 500.0
    """Rate at which ``update`` is called; the tremor filter is designed for it."""
    align_rotation: bool = True
    """True: the master's rotation turns the follower. False: translation only."""
    rotation_scale: float = 1.0
    frame_rotation: Quat = IDENTITY
    """Console frame to robot frame, (w, x, y, z): how the surgeon's view is mounted."""

    def __post_init__(self) -> None:
        finite_positive("teleop.min_scale", self.min_scale)
        finite_positive("teleop.rate_hz", self.rate_hz)
        check(self.min_scale <= self.max_scale, "teleop.max_scale", self.max_scale,
              "must be >= min_scale")
        check(self.min_scale <= self.scale <= self.max_scale, "teleop.scale", self.scale,
              f"must be within [{self.min_scale}, {self.max_scale}]")
        check(math.isfinite(self.rotation_scale) and 0.0 <= self.rotation_scale <= 1.0,
              "teleop.rotation_scale", self.rotation_scale, "must be in [0, 1]")
        norm = math.sqrt(sum(c * c for c in self.frame_rotation))
        check(abs(norm - 1.0) < 1e-6, "teleop.frame_rotation", self.frame_rotation,
              "must be a unit quaternion (w, x, y, z)")
        check(self.rate_hz > 26.0, "teleop.rate_hz", self.rate_hz,
              "must exceed twice the tremor band's upper edge (13 Hz)")


@dataclass(frozen=True, slots=True)
class TeleopOutput:
    """One follower-frame target. Send it as valid only when ``valid`` is True."""

    position: Vec3
    quat: Quat
    grip: float
    clutch: bool
    operator_present: bool
    valid: bool
    why: str
    """Empty when following; otherwise the reason the follower holds, for the surgeon."""


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


def scale_rotation(q: Quat, factor: float) -> Quat:
    """The rotation q with its angle multiplied by ``factor`` (same axis)."""
    if factor == 1.0:
        return q
    w = max(-1.0, min(1.0, q[0]))
    if w < 0:  # take the short way round
        q, w = (-q[0], -q[1], -q[2], -q[3]), -w
    angle = 2.0 * math.acos(w)
    s = math.sqrt(max(1.0 - w * w, 0.0))
    if s < 1e-12:
        return IDENTITY
    axis = (q[1] / s, q[2] / s, q[3] / s)
    a = angle * factor
    return quat_from_rotvec((axis[0] * a, axis[1] * a, axis[2] * a))


REBASE_COS = math.cos(math.pi / 4)
"""|w| of a relative rotation of pi/2: the rotation anchor is re-based past it."""


class TeleopMapper:
    """Clutch, scaling, tremor filtering, alignment and operator presence."""

    def __init__(self, cfg: TeleopConfig) -> None:
        self.cfg = cfg
        self.scale = cfg.scale
        self.link_factor = 1.0
        self.anchored = False
        self.invalid_samples = 0
        self.rejected_settings = 0
        self._filter = (TremorFilter(cfg.rate_hz, adaptive=cfg.tremor_adaptive)
                        if cfg.tremor_filter else None)
        self._follower_pos = np.zeros(3)
        self._follower_quat: Quat = IDENTITY
        self._master_pos = np.zeros(3)
        self._master_quat: Quat = IDENTITY
        self._target_pos = np.zeros(3)
        self._target_quat: Quat = IDENTITY
        self._grip = 0.0
        self._last_master: tuple[np.ndarray, Quat] | None = None
        self._following = False
        self._why = "not anchored: engage first"

    # ------------------------------------------------------------ run-time controls
    @property
    def effective_scale(self) -> float:
        return self.scale * self.link_factor

    def set_scale(self, scale: float) -> None:
        """The surgeon's scale; re-anchors so the target does not jump."""
        lo, hi = self.cfg.min_scale, self.cfg.max_scale
        if not (math.isfinite(scale) and lo <= scale <= hi):
            self.rejected_settings += 1
            log.warning("rejected scale %r: outside [%g, %g]", scale, lo, hi)
            raise ConfigError(f"teleop.scale = {scale!r}: must be within [{lo}, {hi}]")
        self._rebase()
        self.scale = scale
        log.info("motion scale %.3f (effective %.3f)", scale, self.effective_scale)

    def set_link_scale(self, factor: float) -> None:
        """The supervisor's degraded-link factor 0..1, multiplying the surgeon's scale."""
        if not (math.isfinite(factor) and 0.0 <= factor <= 1.0):
            self.rejected_settings += 1
            log.warning("rejected link scale %r: outside [0, 1]", factor)
            raise ConfigError(f"teleop.link_scale = {factor!r}: must be within [0, 1]")
        if factor != self.link_factor:
            self._rebase()
            self.link_factor = factor
            log.info("link scale %.3f (effective %.3f)", factor, self.effective_scale)

    def anchor(self, follower_pos: Vec3, follower_quat: Quat) -> None:
        """On engage: the follower's measured pose; the master anchor is the next sample."""
        if not all(math.isfinite(v) and abs(v) < 1e3 for v in follower_pos):
            raise SchemaError("measured_cp.position", f"not a usable position {follower_pos}")
        norm = math.sqrt(sum(c * c for c in follower_quat))
        if not math.isfinite(norm) or abs(norm - 1.0) > 1e-3:
            raise SchemaError("measured_cp.orientation", f"not a unit quaternion {follower_quat}")
        self._target_pos = np.array(follower_pos, dtype=np.float64)
        self._target_quat = quat_normalize(follower_quat)
        self.anchored = True
        self._following = False  # the next good sample becomes the master anchor
        log.info("anchored at follower %s", follower_pos)

    def disengage(self) -> None:
        """Forget the anchor; the next engage must call ``anchor`` again."""
        self.anchored = False
        self._following = False

    # ------------------------------------------------------------ the mapping
    def update(self, sample: MasterSample) -> TeleopOutput:
        problem = sample_problem(sample)
        if problem is not None:
            self.invalid_samples += 1
            return self._hold(f"master device: {problem}", sample.clutch, present=False)
        if not self.anchored:
            return self._hold("not anchored: engage first", sample.clutch,
                              sample.operator_present)
        if not sample.operator_present:
            return self._hold("operator not present", sample.clutch, present=False)
        self._grip = sample.grip
        raw = np.array(sample.position, dtype=np.float64)
        quat = quat_normalize(sample.quat)
        if not self._following:
            self._reanchor(raw, quat)
        master = self._filter.apply(raw) if self._filter is not None else raw
        self._last_master = (master, quat)
        if sample.clutch:
            # The master repositions freely; the follower holds; release re-anchors.
            self._following = False
            return self._output(True, "clutch", clutch=True, present=True)
        self._map(master, quat)
        return self._output(True, "", clutch=False, present=True)

    def device_fault(self, why: str) -> TeleopOutput:
        """The device failed (``DeviceError``): hold, invalid, with ``why`` for the surgeon."""
        self.invalid_samples += 1
        return self._hold(f"master device: {why}", clutch=False, present=False)

    @property
    def follower_target(self) -> tuple[Vec3, Quat]:
        """The last target sent (where the follower should be)."""
        p = self._target_pos
        return (float(p[0]), float(p[1]), float(p[2])), self._target_quat

    # ------------------------------------------------------------ internals
    def _map(self, master: np.ndarray, quat: Quat) -> None:
        align = self.cfg.frame_rotation
        delta = rotate(align, master - self._master_pos)
        self._target_pos = self._follower_pos + self.effective_scale * delta
        if self.cfg.align_rotation:
            rel = quat_mul(quat, quat_conj(self._master_quat))  # console frame
            rebase = self.cfg.rotation_scale != 1.0 and abs(rel[0]) < REBASE_COS
            rel = quat_mul(quat_mul(align, rel), quat_conj(align))  # robot frame
            rel = scale_rotation(rel, self.cfg.rotation_scale)
            self._target_quat = quat_normalize(quat_mul(rel, self._follower_quat))
            if rebase:
                # Scaling takes the short way round, so past pi the scaled target would
                # flip by rotation_scale x 2 pi: re-base the rotation anchor at pi/2
                # (on the target just computed) and keep every relative rotation small.
                self._master_quat, self._follower_quat = quat, self._target_quat
        else:
            self._target_quat = self._follower_quat

    def _reanchor(self, raw: np.ndarray, quat: Quat) -> None:
        if self._filter is not None:
            self._filter.reset(raw)
        self._master_pos, self._master_quat = raw.copy(), quat
        self._follower_pos, self._follower_quat = self._target_pos.copy(), self._target_quat
        self._following = True
        log.debug("re-anchored master %s to follower %s", raw, self._follower_pos)

    def _rebase(self) -> None:
        """Re-anchor at the current master and target (scale changes)."""
        if self._following and self._last_master is not None:
            master, quat = self._last_master
            self._master_pos, self._master_quat = master.copy(), quat
            self._follower_pos, self._follower_quat = self._target_pos.copy(), self._target_quat

    def _hold(self, why: str, clutch: bool, present: bool) -> TeleopOutput:
        self._following = False  # whatever the master does now, resuming re-anchors
        return self._output(False, why, clutch=clutch, present=present)

    def _output(self, valid: bool, why: str, *, clutch: bool, present: bool) -> TeleopOutput:
        if why != self._why:
            log.log(logging.INFO if valid else logging.WARNING, "teleop: %s", why or "following")
            self._why = why
        position, quat = self.follower_target
        return TeleopOutput(position=position, quat=quat, grip=self._grip, clutch=clutch,
                            operator_present=present, valid=valid, why=why)
