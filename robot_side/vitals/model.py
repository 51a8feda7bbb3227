"""The patient's vital signs as the robot's vitals process holds them: pure, clock-injected.

Each backend (HL7 v2, SDC) turns what the monitor sends into ``offer_value`` /
``offer_alarm`` calls; this module validates (known sign, finite, inside its
physiological range), keeps the last good value with the time *this process*
received it, and builds the ``Vitals`` snapshot the robot relays. A value out of
range or unparseable is refused with a counter and a one-line reason, and the
last good one is marked stale: never shown as current. Ages come from our own
monotonic clock; the monitor's timestamps are never trusted for freshness.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from telesurgery.errors import TelesurgeryError
from transport.schema import (
    ALARM_PRIORITIES,
    MAX_ALARMS,
    U32,
    VitalAlarm,
    Vitals,
    VitalValue,
)


class VitalsError(TelesurgeryError, ValueError):
    """A value or message from the patient monitor that is refused, with the reason."""


@dataclass(frozen=True)
class VitalSpec:
    unit: str
    lo: float
    hi: float
    """Physiological range: outside it the value is a sensor or gateway error."""
    expected_ms: int
    """How often a monitor updates it: older than this, the HUD marks it stale."""


VITALS: dict[str, VitalSpec] = {
    "hr": VitalSpec("/min", 0.0, 350.0, 5_000),
    "spo2": VitalSpec("%", 0.0, 100.0, 5_000),
    "nibp_sys": VitalSpec("mmHg", 0.0, 350.0, 600_000),
    "nibp_dia": VitalSpec("mmHg", 0.0, 350.0, 600_000),
    "nibp_mean": VitalSpec("mmHg", 0.0, 350.0, 600_000),
    "abp_sys": VitalSpec("mmHg", 0.0, 350.0, 5_000),
    "abp_dia": VitalSpec("mmHg", 0.0, 350.0, 5_000),
    "abp_mean": VitalSpec("mmHg", 0.0, 350.0, 5_000),
    "rr": VitalSpec("/min", 0.0, 150.0, 10_000),
    "etco2": VitalSpec("mmHg", 0.0, 150.0, 10_000),
    "temp": VitalSpec("Cel", 15.0, 45.0, 120_000),
}
"""NIBP is a cuff measurement every few minutes; the rest are continuous."""

UNIT_ALIASES: dict[str, str] = {
    "bpm": "/min", "{beats}/min": "/min", "/min": "/min", "{breaths}/min": "/min",
    "%": "%", "mmhg": "mmHg", "mm[hg]": "mmHg", "cel": "Cel", "degc": "Cel", "°c": "Cel",
    "c": "Cel", "kpa": "kPa",
}
KPA_TO_MMHG = 7.50062
ALARM_EXPIRE_MS = 10_000
"""An alarm the monitor stops repeating for this long is over (HL7 has no 'end' for a
gateway that simply drops it)."""


def normalise(name: str, value: float, unit: str) -> tuple[float, str]:
    """Check one value and convert it to the sign's unit; ``VitalsError`` says why not."""
    spec = VITALS.get(name)
    if spec is None:
        raise VitalsError(f"unknown vital sign {name!r}")
    if not math.isfinite(value):
        raise VitalsError(f"{name}: non-finite value {value}")
    canon = UNIT_ALIASES.get(unit.strip().lower(), unit.strip()) if unit else spec.unit
    if canon == "kPa" and spec.unit == "mmHg":
        value, canon = value * KPA_TO_MMHG, "mmHg"
    if canon != spec.unit:
        raise VitalsError(f"{name}: unit {unit!r}, expected {spec.unit}")
    if not spec.lo <= value <= spec.hi:
        raise VitalsError(f"{name}: {value:g} {spec.unit} outside the physiological range "
                          f"{spec.lo:g}..{spec.hi:g}")
    return value, canon


@dataclass
class _Held:
    value: float
    unit: str
    recv_ns: int
    refused_since_ns: int | None = None
    """A newer value was refused: the shown one is stale whatever its age."""


@dataclass
class _Alarm:
    priority: str
    text: str
    since_ns: int
    seen_ns: int


class VitalsBook:
    """The last good value of each sign and the active alarms, aged by ``now``."""

    def __init__(self, source: str, monitor_timeout_ms: int) -> None:
        self.source = source
        self.monitor_timeout_ns = monitor_timeout_ms * 1_000_000
        self._values: dict[str, _Held] = {}
        self._alarms: dict[str, _Alarm] = {}
        self._heard_ns: int | None = None
        self.connected = False
        """The backend has a live connection or subscription to the monitor."""
        self.counters: Counter[str] = Counter()
        self.last_error = ""
        self.seq = 0

    # ------------------------------------------------------------------ input
    def heard(self, now_ns: int) -> None:
        """A valid message arrived from the monitor."""
        self._heard_ns = now_ns

    def offer_value(self, name: str, value: float, unit: str, now_ns: int) -> None:
        try:
            v, u = normalise(name, value, unit)
        except VitalsError as err:
            self.refuse(name, str(err), now_ns)
            raise
        self._values[name] = _Held(v, u, now_ns)
        self.counters["values"] += 1

    def refuse(self, name: str | None, reason: str, now_ns: int) -> None:
        """Something from the monitor was refused: count it; the sign it was for goes stale."""
        self.counters["refused"] += 1
        self.last_error = reason[:200]
        held = self._values.get(name) if name else None
        if held is not None:
            held.refused_since_ns = now_ns

    def offer_alarm(self, code: str, priority: str, text: str, active: bool,
                    now_ns: int) -> bool:
        """Returns True when this is a newly raised alarm."""
        code, text = code.strip()[:32], text.strip()[:128]
        if not code:
            raise VitalsError("alarm without a code")
        if priority not in ALARM_PRIORITIES:
            raise VitalsError(f"alarm {code}: priority {priority!r} not one of "
                              f"{sorted(ALARM_PRIORITIES)}")
        if not active:
            self._alarms.pop(code, None)
            return False
        held = self._alarms.get(code)
        if held is None:
            if len(self._alarms) >= MAX_ALARMS:
                self.counters["alarms_dropped"] += 1
                raise VitalsError(f"more than {MAX_ALARMS} alarms active; {code} not shown")
            self._alarms[code] = _Alarm(priority, text, now_ns, now_ns)
            self.counters["alarms_raised"] += 1
            return True
        held.priority, held.text, held.seen_ns = priority, text, now_ns
        return False

    # ------------------------------------------------------------------ output
    def monitor_state(self, now_ns: int) -> str:
        if self._heard_ns is None:
            return "none"
        if not self.connected or now_ns - self._heard_ns > self.monitor_timeout_ns:
            return "gone"
        return "ok"

    def snapshot(self, now_ns: int) -> Vitals:
        """The ``Vitals`` message for ``now``: ages and stale marks by this process's clock."""
        self.seq += 1
        monitor = self.monitor_state(now_ns)
        expire = ALARM_EXPIRE_MS * 1_000_000
        if monitor == "ok":  # while it is gone its alarms are unknown, not over
            for code in [c for c, a in self._alarms.items() if now_ns - a.seen_ns > expire]:
                del self._alarms[code]
        values = []
        for name, held in self._values.items():
            spec = VITALS[name]
            age_ms = min(U32, max(0, (now_ns - held.recv_ns) // 1_000_000))
            stale = (monitor != "ok" or held.refused_since_ns is not None
                     or age_ms > spec.expected_ms)
            values.append(VitalValue(name=name, value=round(held.value, 2), unit=held.unit,
                                     age_ms=age_ms, expected_ms=spec.expected_ms,
                                     status="stale" if stale else "ok"))
        alarms = tuple(VitalAlarm(code=c, priority=a.priority, text=a.text,
                                  age_ms=min(U32, max(0, (now_ns - a.since_ns) // 1_000_000)))
                       for c, a in self._alarms.items())
        detail = "" if monitor == "ok" else self.last_error[:256]
        return Vitals(seq=self.seq, t_ns=now_ns, source=self.source[:32], monitor=monitor,
                      values=tuple(values), alarms=alarms, detail=detail)
