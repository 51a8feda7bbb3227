"""A scripted patient for the simulated monitor: stable, then a desaturation and a tachycardia.

Pure: ``patient_at(t_s)`` is the monitor's reading ``t_s`` seconds into the script,
so the HL7 sender, the SDC provider, the demo and the tests play the same patient.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Script:
    stable_s: float = 4.0
    """Normal readings for this long."""
    desat_s: float = 4.0
    """SpO2 then falls from 98 % to 84 % over this long (alarm below 90 %)."""
    tachy_after_s: float = 2.0
    """After the desaturation, the heart rate jumps to 138/min (alarm above 120)."""
    repeat_s: float | None = None
    """Replay the script with this period (the patient recovers, then deteriorates
    again): more alarm onsets for the demo's latency figure. None: play it once."""


@dataclass(frozen=True)
class Reading:
    values: dict[str, tuple[float, str]]
    """name -> (value, unit), names as in robot_side.vitals.model.VITALS."""
    alarms: dict[str, tuple[str, str]]
    """code -> (priority, text): the alarms active now."""


def _lerp(a: float, b: float, f: float) -> float:
    return a + (b - a) * min(1.0, max(0.0, f))


def patient_at(t_s: float, script: Script = Script()) -> Reading:
    if script.repeat_s is not None and script.repeat_s > 0:
        t_s %= script.repeat_s
    desat_f = (t_s - script.stable_s) / script.desat_s
    spo2 = round(_lerp(98.0, 84.0, desat_f), 1)
    tachy_at = script.stable_s + script.desat_s + script.tachy_after_s
    hr = 138.0 if t_s >= tachy_at else round(_lerp(72.0, 96.0, desat_f), 0)
    values = {
        "hr": (hr, "/min"), "spo2": (spo2, "%"),
        "nibp_sys": (120.0, "mmHg"), "nibp_dia": (80.0, "mmHg"), "nibp_mean": (93.0, "mmHg"),
        "abp_sys": (118.0, "mmHg"), "abp_dia": (76.0, "mmHg"), "abp_mean": (90.0, "mmHg"),
        "rr": (14.0, "/min"), "etco2": (38.0, "mmHg"), "temp": (36.8, "Cel"),
    }
    alarms: dict[str, tuple[str, str]] = {}
    if spo2 < 90.0:
        alarms["SPO2_LOW"] = ("medium", f"SpO2 low {spo2:g} %")
    if hr > 120.0:
        alarms["HR_HIGH"] = ("high", f"Tachycardia {hr:g}/min")
    return Reading(values, alarms)
