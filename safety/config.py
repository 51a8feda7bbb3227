"""All safety limits in one config section, with the design brief's defaults.

Every field is validated at load; an error names the dotted key and value.
Speeds rather than per-period steps are configured so that changing the control
rate does not silently change the permitted motion; ``MotionLimits.step_m()``
derives the per-period bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from telesurgery.config import check, finite_positive


@dataclass(frozen=True)
class WatchdogLimits:
    command_timeout_ms: float = 50.0
    """No fresh command for this long: hold."""
    rtt_warn_ms: float = 100.0
    """Above this round trip: warn and scale motion down."""
    rtt_halt_ms: float = 200.0
    """Above this round trip: hold (trip)."""
    latency_halt_ms: float = 100.0
    """One-way console->robot latency above this: hold (trip). Also the age limit of a
    single command: an older one is never executed."""
    loss_halt: float = 0.10
    """Fraction of commands lost over ``loss_window_ms`` that trips."""
    loss_window_ms: float = 1000.0
    jitter_halt_ms: float = 20.0
    """RFC 3550 interarrival jitter above this: hold (trip)."""
    video_stale_ms: float = 250.0
    """The surgeon's displayed frame older than this: hold (trip)."""
    require_video: bool = True
    """False only for rigs without a camera; then video age is not required."""
    settle_ms: float = 500.0
    """The link must be healthy this long before a re-engage is accepted."""
    hold_to_fault_ms: float = 1000.0
    """A degraded-link hold that lasts this long escalates to a latched fault."""
    min_warn_scale: float = 0.4
    """Scale factor reached at rtt_halt_ms; linear from 1.0 at rtt_warn_ms."""

    def __post_init__(self) -> None:
        for name in ("command_timeout_ms", "rtt_warn_ms", "rtt_halt_ms", "latency_halt_ms",
                     "loss_window_ms", "jitter_halt_ms", "video_stale_ms", "hold_to_fault_ms"):
            finite_positive(f"safety.watchdog.{name}", getattr(self, name))
        check(self.settle_ms >= 0, "safety.watchdog.settle_ms", self.settle_ms, "must be >= 0")
        check(self.rtt_warn_ms < self.rtt_halt_ms, "safety.watchdog.rtt_warn_ms",
              self.rtt_warn_ms, "must be below rtt_halt_ms")
        check(0.0 < self.loss_halt < 1.0, "safety.watchdog.loss_halt", self.loss_halt,
              "must be in (0, 1)")
        check(0.0 < self.min_warn_scale <= 1.0, "safety.watchdog.min_warn_scale",
              self.min_warn_scale, "must be in (0, 1]")


@dataclass(frozen=True)
class MotionLimits:
    workspace_shape: Literal["box", "sphere"] = "box"
    workspace_min: tuple[float, float, float] = (0.15, -0.30, 0.05)
    """Box corner in the robot base frame, metres."""
    workspace_max: tuple[float, float, float] = (0.55, 0.30, 0.50)
    workspace_center: tuple[float, float, float] = (0.35, 0.0, 0.25)
    workspace_radius_m: float = 0.25
    max_speed_m_s: float = 0.25
    """Cartesian speed bound; the per-period step is speed x period."""
    max_angular_speed_rad_s: float = 3.0
    jump_fault_factor: float = 10.0
    """A setpoint step this many times the per-period bound is an attack or a bug: fault."""
    max_joint_speed_rad_s: float = 2.0
    """Joint velocity bound after inverse kinematics (URDF limits apply too)."""
    joint_jump_fault_rad: float = 0.5
    """An IK solution this far from the previous joint setpoint is a branch flip: fault.
    Smaller excesses over the velocity bound (IK near a wrist singularity) are clamped;
    attacks on the command path are caught before IK by ``jump_fault_factor``."""
    joint_margin_rad: float = 0.02
    """Keep this far inside the URDF joint position limits."""
    tracking_error_m: float = 0.01
    """Measured pose this far from the setpoint: fault."""
    tracking_error_rad: float = 0.2
    align_tolerance_rad: float | None = 0.35
    """Engaging requires the surgeon's hand (the registered master orientation) and the
    instrument within this (20 degrees; None: no check). Wide enough for a hand matched
    by eye to the instrument on the display, narrow enough that hand and instrument
    visibly agree; a self-aligning master (the scripted surgeon) aligns far inside it."""

    def __post_init__(self) -> None:
        lo, hi = self.workspace_min, self.workspace_max
        check(all(a < b for a, b in zip(lo, hi, strict=True)), "safety.motion.workspace_min",
              lo, "must be below workspace_max on every axis")
        for name in ("workspace_radius_m", "max_speed_m_s", "max_angular_speed_rad_s",
                     "max_joint_speed_rad_s", "joint_jump_fault_rad", "tracking_error_m",
                     "tracking_error_rad"):
            finite_positive(f"safety.motion.{name}", getattr(self, name))
        check(self.jump_fault_factor > 1.0, "safety.motion.jump_fault_factor",
              self.jump_fault_factor, "must be > 1")
        check(self.joint_margin_rad >= 0, "safety.motion.joint_margin_rad",
              self.joint_margin_rad, "must be >= 0")
        if self.align_tolerance_rad is not None:
            check(0 < self.align_tolerance_rad <= math.pi, "safety.motion.align_tolerance_rad",
                  self.align_tolerance_rad, "must be in (0, pi]")

    def step_m(self, period_s: float) -> float:
        return self.max_speed_m_s * period_s

    def step_rad(self, period_s: float) -> float:
        return self.max_angular_speed_rad_s * period_s


@dataclass(frozen=True)
class AuditConfig:
    path: Path = Path("out/audit/robot.audit")
    max_bytes: int = 64 * 1024 * 1024
    """Rotate to a new segment past this size."""
    keep_segments: int = 10

    def __post_init__(self) -> None:
        check(self.max_bytes >= 4096, "safety.audit.max_bytes", self.max_bytes, "must be >= 4096")
        check(self.keep_segments >= 1, "safety.audit.keep_segments", self.keep_segments,
              "must be >= 1")


@dataclass(frozen=True)
class SafetyConfig:
    watchdog: WatchdogLimits = field(default_factory=WatchdogLimits)
    motion: MotionLimits = field(default_factory=MotionLimits)
    audit: AuditConfig = field(default_factory=AuditConfig)
