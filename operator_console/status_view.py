"""Terminal status view for a console without a video window.

A few lines (supervisor state and reason, link figures, teleop state, the latest
message) redrawn in place a few times a second on a terminal, or written as
plain blocks when the output is a file or a pipe (only when something changed,
so a log does not fill with identical lines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

from operator_console.teleop import TeleopOutput
from safety.config import WatchdogLimits
from transport.schema import Telemetry

RESET, BOLD, RED, YELLOW, GREEN, CYAN = (
    "\x1b[0m", "\x1b[1m", "\x1b[31m", "\x1b[33m", "\x1b[32m", "\x1b[36m")
STATE_COLOURS = {"following": GREEN, "ready": CYAN, "hold": YELLOW, "fault": BOLD + RED,
                 "estop": BOLD + RED}


@dataclass(frozen=True)
class ConsoleStatus:
    state: str
    """Supervisor state as telemetry reports it ("ready", "following", "hold", ...)."""
    reason: str
    rtt_ms: float | None
    latency_ms: float | None
    loss: float
    """Fraction 0..1."""
    jitter_ms: float | None
    scale: float
    """Effective motion scale (surgeon's scale times any degraded-link factor)."""
    clutch: bool
    operator_present: bool
    video_age_ms: float | None
    message: str = ""
    """Why the arm does not follow, or the latest event, for the surgeon."""


def _ms(us: int | None) -> float | None:
    return None if us is None else us / 1000.0


def status_from(telemetry: Telemetry | None, teleop: TeleopOutput | None, scale: float,
                video_age_ms: float | None = None, message: str = "") -> ConsoleStatus:
    """Build the view's status from the latest telemetry and teleop output.

    The message is ``message`` if given, else why the follower is not following.
    """
    if not message and teleop is not None and teleop.why:
        message = teleop.why
    if telemetry is None:
        return ConsoleStatus(state="disabled", reason="no telemetry yet", rtt_ms=None,
                             latency_ms=None, loss=0.0, jitter_ms=None, scale=scale,
                             clutch=bool(teleop and teleop.clutch),
                             operator_present=bool(teleop and teleop.operator_present),
                             video_age_ms=video_age_ms, message=message)
    link = telemetry.link
    return ConsoleStatus(
        state=telemetry.state, reason=telemetry.reason, rtt_ms=_ms(link.rtt_us),
        latency_ms=_ms(link.latency_us), loss=link.loss, jitter_ms=_ms(link.jitter_us),
        scale=scale, clutch=bool(teleop and teleop.clutch),
        operator_present=bool(teleop and teleop.operator_present),
        video_age_ms=video_age_ms if video_age_ms is not None else _ms(link.video_age_us),
        message=message)


def _paint(text: str, colour: str, on: bool) -> str:
    return f"{colour}{text}{RESET}" if on and colour else text


def _figure(label: str, value: float | None, unit: str, warn: float, halt: float,
            *, color: bool) -> str:
    if value is None:
        return f"{label} --"
    colour = RED if value >= halt else YELLOW if value >= warn else ""
    return f"{label} " + _paint(f"{value:.1f}{unit}", colour, color)


def format_status(s: ConsoleStatus, color: bool, limits: WatchdogLimits | None = None) -> str:
    """Four lines; values past a warning or halt limit are yellow or red when ``color``."""
    lim = limits or WatchdogLimits()
    state = _paint(s.state.upper(), STATE_COLOURS.get(s.state, ""), color)
    rows = [
        ("rtt", s.rtt_ms, " ms", lim.rtt_warn_ms, lim.rtt_halt_ms),
        ("latency", s.latency_ms, " ms", lim.latency_halt_ms / 2, lim.latency_halt_ms),
        ("jitter", s.jitter_ms, " ms", lim.jitter_halt_ms / 2, lim.jitter_halt_ms),
        ("loss", s.loss * 100.0, " %", lim.loss_halt * 50.0, lim.loss_halt * 100.0),
        ("video", s.video_age_ms, " ms", lim.video_stale_ms / 2, lim.video_stale_ms),
    ]
    link = "  ".join(_figure(*row, color=color) for row in rows)
    present = ("operator present" if s.operator_present
               else _paint("operator ABSENT", YELLOW, color))
    teleop = f"scale {s.scale:.3f}  clutch {'ON' if s.clutch else 'off'}  {present}"
    serious = s.state in {"fault", "estop"}
    message = _paint(s.message, RED if serious else YELLOW, color) if s.message else ""
    return "\n".join([f"robot  {state}  ({s.reason})", f"link   {link}", f"teleop {teleop}",
                      f"       {message}"])


class StatusView:
    """Redraws ``format_status`` on ``stream`` at most once per ``period_s``."""

    def __init__(self, stream: TextIO, period_s: float = 0.25,
                 limits: WatchdogLimits | None = None) -> None:
        self.stream = stream
        self.period_ns = int(period_s * 1e9)
        self.limits = limits
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_ns: int | None = None
        self._lines = 0
        self._last_text = ""
        self.redraws = 0

    def update(self, status: ConsoleStatus, now_ns: int) -> bool:
        """Draw ``status`` if a period has passed since the last draw; True when drawn."""
        if self._last_ns is not None and now_ns - self._last_ns < self.period_ns:
            return False
        self._last_ns = now_ns
        text = format_status(status, color=self.tty, limits=self.limits)
        if self.tty:
            # Back to the first line of the previous block, then overwrite line by line.
            up = f"\x1b[{self._lines}F" if self._lines else ""
            self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in text.split("\n")))
            self._lines = text.count("\n") + 1
        elif text != self._last_text:
            self.stream.write(text + "\n")
        else:
            return False
        self._last_text = text
        self.stream.flush()
        self.redraws += 1
        return True
