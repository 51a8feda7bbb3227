"""Terminal status view for a console without a video window, drawn with ``rich``.

It shows the same ``HudState`` as the HUD (``operator_console.view`` builds it),
so the same staleness rules hold: once telemetry is late it says "ROBOT STATE
UNKNOWN" with the telemetry's age, never the last state, and every link
figure carries the age of the telemetry it came in.

On a terminal the block is redrawn in place (``rich.live``) a few times a
second. Written to a file or a pipe, a block is written only when what it says
changed (state, banner, warnings, teleop), stamped with the time of day, so a
log reads as a list of events rather than a stream of identical lines.
"""

from __future__ import annotations

import io
import time
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from operator_console.view import HudState, age_text, banner
from safety.config import WatchdogLimits

STATE_STYLES = {"following": "green", "ready": "cyan", "disabled": "cyan", "hold": "yellow",
                "fault": "bold red", "estop": "bold red", "unknown": "bold white on red"}
SEVERITY_STYLES = {"red": "bold white on red", "amber": "bold black on yellow", "grey": "bold"}
WIDTH = 110


def _figure(label: str, value: float | None, unit: str, warn: float, halt: float) -> Text:
    if value is None:
        return Text(f"{label} --")
    style = "red" if value >= halt else "yellow" if value >= warn else ""
    return Text.assemble(f"{label} ", (f"{value:.1f}{unit}", style))


def status_renderable(s: HudState, limits: WatchdogLimits | None = None) -> Group:
    """The block: robot state, link figures with their age, teleop, banner, warnings."""
    lim = limits or WatchdogLimits()
    state = s.shown_state
    robot = Text("robot  ")
    if s.robot_unknown:
        robot.append(" ROBOT STATE UNKNOWN ", STATE_STYLES["unknown"])
        robot.append(f"  no telemetry: last {age_text(s.telemetry_age_ms)}")
    else:
        robot.append(state.upper(), STATE_STYLES.get(state, ""))
        robot.append(f"  ({s.reason})  telemetry {age_text(s.telemetry_age_ms)}")
    rows = [
        ("rtt", s.rtt_ms, " ms", lim.rtt_warn_ms, lim.rtt_halt_ms),
        ("latency", s.latency_ms, " ms", lim.latency_halt_ms / 2, lim.latency_halt_ms),
        ("jitter", s.jitter_ms, " ms", lim.jitter_halt_ms / 2, lim.jitter_halt_ms),
        ("loss", None if s.robot_unknown else s.loss * 100.0, " %", lim.loss_halt * 50.0,
         lim.loss_halt * 100.0),
        ("video", s.video_age_ms, " ms", lim.video_stale_ms / 2, lim.video_stale_ms),
    ]
    link = Text("link   ").append(Text("  ").join(_figure(*row) for row in rows))
    present = (Text("operator present") if s.operator_present
               else Text("operator ABSENT", "yellow"))
    teleop = Text(f"teleop scale {s.scale:.3f}  clutch {'ON' if s.clutch else 'off'}  ")
    teleop.append(present)
    parts: list[Text] = [robot, link, teleop]
    if s.vitals is not None:  # the patient monitor's strip (operator_console.vitals_view)
        first, *alarms = s.vitals.lines()
        parts.append(Text("vitals ", "red" if not s.vitals.monitor_ok else "").append(first))
        styles = {"HIGH": "bold white on red", "MEDIUM": "yellow", "LOW": ""}
        parts.extend(Text(f"       {a}", styles.get(a.split()[1].rstrip(":"), ""))
                     for a in alarms)
    if s.handoff_line:
        parts.append(Text(f"       {s.handoff_line}", "yellow" if s.handoff_from else ""))
    b = banner(s)
    if b is not None:
        parts.append(Text.assemble("       ", (f" {b.title} ", SEVERITY_STYLES[b.severity]),
                                   f"  {b.detail}"))
    parts.extend(Text(f"       ! {w}", "yellow") for w in s.warnings)
    return Group(*parts)


def format_status(s: HudState, color: bool, limits: WatchdogLimits | None = None) -> str:
    """The block as text; ANSI colours only when ``color``."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=WIDTH,
                      color_system="standard" if color else None, highlight=False)
    console.print(status_renderable(s, limits))
    return buf.getvalue().rstrip("\n")


def _event_key(s: HudState) -> tuple[object, ...]:
    """What makes a new block worth writing to a log (ages and figures alone do not)."""
    b = banner(s)
    return (s.shown_state, s.reason, b and b.title, s.warnings, s.clutch, s.operator_present,
            s.connection)


class StatusView:
    """Redraws the status at most once per ``period_s`` (tty), or logs it on change."""

    def __init__(self, stream: TextIO, period_s: float = 0.25,
                 limits: WatchdogLimits | None = None) -> None:
        self.stream = stream
        self.period_ns = int(period_s * 1e9)
        self.limits = limits
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_ns: int | None = None
        self._last_key: tuple[object, ...] | None = None
        self._live: Live | None = None
        if self.tty:
            console = Console(file=stream, force_terminal=True, width=WIDTH, highlight=False)
            self._live = Live(console=console, auto_refresh=False, transient=False,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        self.redraws = 0

    def update(self, status: HudState, now_ns: int) -> bool:
        """Draw ``status`` if a period has passed since the last draw; True when drawn."""
        if self._last_ns is not None and now_ns - self._last_ns < self.period_ns:
            return False
        self._last_ns = now_ns
        if self._live is not None:
            self._live.update(status_renderable(status, self.limits), refresh=True)
        else:
            key = _event_key(status)
            if key == self._last_key:
                return False
            self._last_key = key
            stamp = time.strftime("%H:%M:%S")  # wall-clock ok: a time of day for the reader
            self.stream.write(f"[{stamp}]\n{format_status(status, False, self.limits)}\n")
            self.stream.flush()
        self.redraws += 1
        return True

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
