"""What the surgeon is told about the patient: the vitals strip, decided here, drawn elsewhere.

Pure: from the newest ``Vitals`` message, when it arrived (this console's clock) and
``now``. A value is stale when the robot says so, or when its age (as the robot
measured it, plus the time since the message arrived here) exceeds its expected
update interval: never shown as current. No vitals message for ``silent_ms``
(the robot, the link or the vitals process gone) is "NO MONITOR"; before any
vitals message ever arrived (no monitor configured) there is no strip at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from transport.schema import Vitals, VitalValue

VITALS_SILENT_MS = 3000.0
"""The robot relays a snapshot at least every second; silent longer, the source is gone."""

LABELS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("HR", "hr", ()), ("SpO2", "spo2", ()),
    ("ABP", "abp_sys", ("abp_dia", "abp_mean")),
    ("NIBP", "nibp_sys", ("nibp_dia", "nibp_mean")),
    ("RR", "rr", ()), ("EtCO2", "etco2", ()), ("T", "temp", ()),
)
"""Cells in display order: label, main sign, signs shown with it (sys/dia (mean))."""


@dataclass(frozen=True)
class VitalCell:
    label: str
    text: str
    stale: bool

    def __str__(self) -> str:
        return f"{self.label} {self.text}{'?' if self.stale else ''}"


@dataclass(frozen=True)
class AlarmLine:
    code: str
    priority: str
    text: str
    age_s: float


@dataclass(frozen=True)
class VitalsStrip:
    monitor_ok: bool
    cells: tuple[VitalCell, ...]
    alarms: tuple[AlarmLine, ...]
    note: str = ""
    """Why there is no monitor, in a few words."""

    def lines(self) -> list[str]:
        """The strip as plain text (the frame log, the terminal status view)."""
        head = "" if self.monitor_ok else "NO MONITOR  "
        out = [head + "  ".join(str(c) for c in self.cells)]
        out += [f"ALARM {a.priority.upper()}: {a.text}" for a in self.alarms]
        return out


PRIORITY_ORDER = {"high": 0, "medium": 1, "low": 2}


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.1f}"


def _stale(v: VitalValue, extra_ms: float) -> bool:
    return v.status != "ok" or v.age_ms + extra_ms > v.expected_ms


def vitals_strip(msg: Vitals | None, recv_ns: int | None, now_ns: int,
                 silent_ms: float = VITALS_SILENT_MS) -> VitalsStrip | None:
    if msg is None or recv_ns is None:
        return None
    since_ms = max(0.0, (now_ns - recv_ns) / 1e6)
    silent = since_ms > silent_ms
    monitor_ok = msg.monitor == "ok" and not silent
    by_name = {v.name: v for v in msg.values}
    cells = []
    for label, main, extra in LABELS:
        v = by_name.get(main)
        if v is None:
            continue
        parts = [v] + [by_name[e] for e in extra if e in by_name]
        text = f"{v.value:.1f}" if main == "temp" else _fmt(v.value)
        if len(parts) >= 2:
            text += "/" + _fmt(parts[1].value)
        if len(parts) == 3:
            text += f" ({_fmt(parts[2].value)})"
        stale = not monitor_ok or any(_stale(p, since_ms) for p in parts)
        cells.append(VitalCell(label, text, stale))
    alarms = tuple(sorted((AlarmLine(a.code, a.priority, a.text or a.code,
                                     (a.age_ms + since_ms) / 1000) for a in msg.alarms),
                          key=lambda a: (PRIORITY_ORDER.get(a.priority, 3), a.age_s)))
    note = "" if monitor_ok else ("no vitals from the robot" if silent else
                                  (msg.detail or "monitor silent")[:60])
    return VitalsStrip(monitor_ok, tuple(cells), alarms, note)


class AlarmDraws:
    """When each alarm was first drawn on the HUD (this clock): the demo's end-to-end
    "monitor alarm -> shown" latency ends here. Bounded; a re-raised alarm counts again."""

    MAX = 1000

    def __init__(self) -> None:
        self._shown: set[str] = set()
        self.first_drawn: list[dict[str, object]] = []

    def on_drawn(self, strip: VitalsStrip | None, drawn_ns: int) -> None:
        codes = set() if strip is None else {a.code for a in strip.alarms}
        for code in codes - self._shown:
            if len(self.first_drawn) < self.MAX:
                self.first_drawn.append({"alarm": code, "drawn_ns": drawn_ns})
        self._shown = codes
