"""The console process's one config: every section, validated at load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from operator_console.devices.base import DeviceConfig
from operator_console.sound import ConsoleIntercom
from operator_console.teleop import TeleopConfig
from operator_console.telestration import ConsoleTelestration
from telesurgery.config import check, finite_positive
from transport.config import LinkConfig


@dataclass(frozen=True)
class LoopConfig:
    rate_hz: float = 1000.0
    """Command rate, the robot's control rate; the command timeout (50 ms) spans 50."""
    realtime: bool = True
    gil_switch_ms: float | None = 0.5
    """How long another console thread may hold the GIL while the command thread waits
    for it (``sys.setswitchinterval``; None: Python's 5 ms). The robot's loop uses 0.5."""

    def __post_init__(self) -> None:
        finite_positive("loop.rate_hz", self.rate_hz)
        if self.gil_switch_ms is not None:
            finite_positive("loop.gil_switch_ms", self.gil_switch_ms)
            check(self.gil_switch_ms <= 10.0, "loop.gil_switch_ms", self.gil_switch_ms,
                  "must be at most 10 ms")
        check(20.0 <= self.rate_hz <= 1000.0, "loop.rate_hz", self.rate_hz,
              "must be within 20..1000 Hz")


@dataclass(frozen=True)
class DisplayConfig:
    enabled: bool = True
    """False: no video at all (the robot must then run with require_video = false)."""
    headless: bool | None = None
    """None: a window where a display exists, headless otherwise."""
    out_dir: Path | None = None
    """Headless: where HUD frames are written (None keeps only the last one)."""
    every_n: int = 0
    stale_ms: float = 250.0
    """Disengage when the displayed frame is older than this."""
    telemetry_stale_ms: float = 300.0
    """The HUD and status view say "ROBOT STATE UNKNOWN" (and show no state, no link
    figures) once the newest telemetry is older than this: 15 periods of the robot's
    50 Hz telemetry (``operator_console.view``)."""
    status_view: bool = True
    """Terminal status lines when there is no video window."""

    def __post_init__(self) -> None:
        check(self.every_n >= 0, "display.every_n", self.every_n, "must be >= 0")
        finite_positive("display.stale_ms", self.stale_ms)
        check(20.0 <= self.telemetry_stale_ms <= 5000.0, "display.telemetry_stale_ms",
              self.telemetry_stale_ms, "must be within 20..5000 ms")


@dataclass(frozen=True)
class SessionConfig:
    scale: float = 0.2
    """Motion scale requested from the robot at start (the robot applies it)."""
    auto_engage: bool = False
    """Arm and engage at start: the scripted surgeon's deliberate engage."""
    reengage_after_s: float | None = None
    """Scripted surgeon: re-engage this long after a trip. None: never by itself."""
    surgeon: str | None = None
    """Whose surgeon key this console holds (``telesurgery keys add-surgeon NAME``, in
    ``<keys>/surgeons/NAME/``); None: the first surgeon's (``<keys>/console/``)."""
    takeover_after_s: float | None = None
    """Scripted mentor (a mentor key): take command this long after start, then engage
    (``auto_engage``); until then neither arm nor engage. None: never by itself."""

    def __post_init__(self) -> None:
        check(0 < self.scale <= 1.0, "session.scale", self.scale, "must be in (0, 1]")
        if self.reengage_after_s is not None:
            check(self.reengage_after_s >= 0, "session.reengage_after_s",
                  self.reengage_after_s, "must be >= 0")
        if self.takeover_after_s is not None:
            check(self.takeover_after_s >= 0, "session.takeover_after_s",
                  self.takeover_after_s, "must be >= 0")


@dataclass(frozen=True)
class ConsoleConfig:
    link: LinkConfig = field(default_factory=LinkConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    teleop: TeleopConfig = field(default_factory=TeleopConfig)
    """Registration and tremor filter only: the robot applies every gain."""
    loop: LoopConfig = field(default_factory=LoopConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    telestration: ConsoleTelestration = field(default_factory=ConsoleTelestration)
    """Strokes a mentor draws, shown on this HUD (operator_console.telestration)."""
    intercom: ConsoleIntercom = field(default_factory=ConsoleIntercom)
    """Talk with the mentor, the other consoles and the on-site staff (operator_console.sound)."""

    def __post_init__(self) -> None:
        # The tremor filter is designed for the rate it is called at: the command rate.
        check(self.teleop.rate_hz == self.loop.rate_hz, "teleop.rate_hz", self.teleop.rate_hz,
              f"must equal loop.rate_hz ({self.loop.rate_hz})")
