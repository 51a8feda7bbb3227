"""All safety limits in one config section, with the design brief's defaults.

Every field is validated at load; an error names the dotted key and value.
Speeds rather than per-period steps are configured so that changing the control
rate does not silently change the permitted motion; ``MotionLimits.step_m()``
derives the per-period bound.


Every limit also has a range (``WATCHDOG_LIMITS``, ``MOTION_LIMITS``): outside it
the config is refused with the key, the range and why (``command_timeout_ms =
5000`` would let the arm follow a dead link for five seconds); inside the range
but outside the recommended band it loads, and ``SafetyConfig.warnings()`` lists
it for the start-up log and the audit's start record. The tables are the
documentation of the ranges (docs/hazards.md, "Limits and their ranges").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from telesurgery.config import Limit, check, check_limits, limit_warnings

WATCHDOG_LIMITS: dict[str, Limit] = {
    "command_timeout_ms": Limit(5, 500, 20, 100, "ms",
                                "the arm follows a link that delivers nothing for this long"),
    "rtt_warn_ms": Limit(1, 1000, 20, 150, "ms", "motion slows down above this round trip"),
    "rtt_halt_ms": Limit(2, 2000, 50, 300, "ms",
                         "the surgeon steers a picture this old before the arm holds"),
    "latency_halt_ms": Limit(1, 1000, 20, 150, "ms",
                             "a command this old is still executed (the age limit)"),
    "loss_halt": Limit(0, 0.5, 0.02, 0.2, "", "the fraction of commands lost that holds the arm",
                       lo_open=True),
    "loss_window_ms": Limit(100, 10_000, 500, 2000, "ms", "loss is judged over this window"),
    "jitter_halt_ms": Limit(1, 500, 5, 50, "ms", "interarrival jitter that holds the arm"),
    "video_stale_ms": Limit(50, 2000, 100, 400, "ms",
                            "the surgeon operates on a picture this old before the arm holds"),
    "settle_ms": Limit(0, 10_000, 200, 2000, "ms",
                       "a link must be healthy this long before a re-engage"),
    "hold_to_fault_ms": Limit(100, 60_000, 500, 5000, "ms",
                              "a degraded-link hold becomes a latched fault after this"),
    "min_warn_scale": Limit(0, 1, 0.2, 1, "", "motion scale reached at rtt_halt_ms",
                            lo_open=True),
}
"""Range and recommended band of every ``[safety.watchdog]`` limit."""

MOTION_LIMITS: dict[str, Limit] = {
    "workspace_radius_m": Limit(0.001, 2.0, 0.05, 1.0, "m", "the sphere the tool stays in"),
    "max_speed_m_s": Limit(0.001, 2.0, 0.01, 0.5, "m/s", "the fastest the tool may move"),
    "max_angular_speed_rad_s": Limit(0.01, 20, 0.5, 6, "rad/s",
                                     "the fastest the tool may turn"),
    "jump_fault_factor": Limit(1, 100, 3, 20, "x",
                               "a setpoint step this many times the per-period bound faults",
                               lo_open=True),
    "max_joint_speed_rad_s": Limit(0.01, 20, 0.2, 4, "rad/s", "the fastest a joint may turn"),
    "joint_jump_fault_rad": Limit(0.01, math.pi, 0.1, 1.0, "rad",
                                  "an IK step this large is a branch flip: fault"),
    "joint_margin_rad": Limit(0, 0.5, 0.005, 0.1, "rad",
                              "distance kept from the URDF joint limits"),
    "tracking_error_m": Limit(0.0005, 0.2, 0.002, 0.03, "m",
                              "the arm may be this far from its setpoint before it faults"),
    "tracking_error_rad": Limit(0.005, math.pi, 0.05, 0.5, "rad",
                                "the tool may be turned this far from its setpoint"),
}
"""Range and recommended band of every scalar ``[safety.motion]`` limit."""


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
        check_limits(self, "safety.watchdog", WATCHDOG_LIMITS)
        check(self.rtt_warn_ms < self.rtt_halt_ms, "safety.watchdog.rtt_warn_ms",
              self.rtt_warn_ms, "must be below rtt_halt_ms")

    def warnings(self) -> list[str]:
        return limit_warnings(self, "safety.watchdog", WATCHDOG_LIMITS)


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
        for name, corner in (("workspace_min", lo), ("workspace_max", hi),
                             ("workspace_center", self.workspace_center)):
            check(all(math.isfinite(c) and abs(c) <= 10.0 for c in corner),
                  f"safety.motion.{name}", corner,
                  "must be finite and within 10 m of the base (the wire schema's bound)")
        check_limits(self, "safety.motion", MOTION_LIMITS)
        if self.align_tolerance_rad is not None:
            check(0 < self.align_tolerance_rad <= math.pi, "safety.motion.align_tolerance_rad",
                  self.align_tolerance_rad, "must be in (0, pi]")

    def warnings(self) -> list[str]:
        return limit_warnings(self, "safety.motion", MOTION_LIMITS)

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

    def warnings(self) -> list[str]:
        """Limits inside their range but outside the recommended band, one line each."""
        return self.watchdog.warnings() + self.motion.warnings()
