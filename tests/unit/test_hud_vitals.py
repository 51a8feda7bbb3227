"""The vitals strip on the surgeon's HUD: stale marks, NO MONITOR, alarm colours (issue 17).

Checked by pixel regions like test_hud.py, and by the strip's text (what the frame log
records)."""

from __future__ import annotations

import dataclasses

import numpy as np

from operator_console.video.hud import HudState, hud_layout, render_hud
from operator_console.video.hud_vitals import AMBER, RED, strip_rect
from operator_console.vitals_view import VITALS_SILENT_MS, AlarmDraws, vitals_strip
from robot_side.video.synthetic import SyntheticScene
from transport.schema import VitalAlarm, Vitals, VitalValue

W, H = 1280, 720
FOLLOWING = HudState(state="following", reason="engaged", rtt_ms=12.3, latency_ms=6.1,
                     g2g_ms=15.2, video_age_ms=40.0, loss=0.0, jitter_ms=1.2, scale=0.5,
                     clutch=False, operator_present=True, warnings=(), encoder="libx264",
                     fps=30.0)
BASE = SyntheticScene(W, H, 30.0).render(5, 0)
MS = 1_000_000
T0 = 50_000 * MS
STRIP, _, LINE_H = strip_rect(W, H, hud_layout(W, H).panel[2])


def snapshot(monitor: str = "ok", alarms: tuple[VitalAlarm, ...] = (),
             hr_age_ms: int = 100, hr_status: str = "ok") -> Vitals:
    return Vitals(seq=1, t_ns=0, source="hl7", monitor=monitor, values=(
        VitalValue("hr", 72.0, "/min", hr_age_ms, 5000, hr_status),
        VitalValue("spo2", 98.0, "%", 100, 5000),
        VitalValue("nibp_sys", 120.0, "mmHg", 100, 600_000),
        VitalValue("nibp_dia", 80.0, "mmHg", 100, 600_000),
        VitalValue("nibp_mean", 93.0, "mmHg", 100, 600_000),
        VitalValue("temp", 36.8, "Cel", 100, 120_000)), alarms=alarms)


def cells(v: Vitals, since_ms: float = 0.0) -> dict[str, tuple[str, bool]]:
    strip = vitals_strip(v, T0, T0 + int(since_ms * MS))
    assert strip is not None
    return {c.label: (c.text, c.stale) for c in strip.cells}


def colour_count(image: np.ndarray, rect: tuple[int, int, int, int],
                 colour: tuple[int, int, int]) -> int:
    x0, y0, x1, y1 = rect
    return int(np.all(image[y0:y1, x0:x1] == colour, axis=-1).sum())


def draw(v: Vitals | None, since_ms: float = 0.0) -> np.ndarray:
    strip = vitals_strip(v, T0, T0 + int(since_ms * MS))
    return render_hud(BASE.copy(), dataclasses.replace(FOLLOWING, vitals=strip))


def test_current_values_in_one_line() -> None:
    strip = vitals_strip(snapshot(), T0, T0)
    assert strip is not None and strip.monitor_ok
    assert strip.lines() == ["HR 72  SpO2 98  NIBP 120/80 (93)  T 36.8"]


def test_each_value_is_marked_stale_on_its_own_interval() -> None:
    assert cells(snapshot(hr_age_ms=4_000))["HR"] == ("72", False)
    # 4 s old at the robot plus 1.5 s since it arrived here: past HR's 5 s.
    got = cells(snapshot(hr_age_ms=4_000), since_ms=1_500)
    assert got["HR"] == ("72", True)
    assert got["NIBP"] == ("120/80 (93)", False)  # a cuff reading lives for minutes
    assert cells(snapshot(hr_status="stale"))["HR"][1]  # the robot's own verdict stands


def test_no_vitals_for_a_while_is_no_monitor_and_everything_stale() -> None:
    strip = vitals_strip(snapshot(), T0, T0 + int((VITALS_SILENT_MS + 1) * MS))
    assert strip is not None and not strip.monitor_ok
    assert all(c.stale for c in strip.cells)
    assert strip.lines()[0].startswith("NO MONITOR")
    gone = vitals_strip(snapshot(monitor="gone"), T0, T0)
    assert gone is not None and not gone.monitor_ok and all(c.stale for c in gone.cells)


def test_no_strip_before_any_vitals() -> None:
    assert vitals_strip(None, None, T0) is None
    plain = render_hud(BASE.copy(), FOLLOWING)
    assert np.array_equal(draw(None), plain)


def test_no_monitor_is_drawn_in_red() -> None:
    x0, y0, x1, _ = STRIP
    first_line = (x0, y0, x1, y0 + LINE_H + 4)
    assert colour_count(draw(snapshot()), first_line, RED) == 0
    assert colour_count(draw(snapshot(monitor="gone")), first_line, RED) > 50


def test_alarm_colours_by_priority() -> None:
    x0, y0, x1, _ = STRIP
    alarm_line = (x0, y0 + LINE_H + 4, x1, y0 + 2 * LINE_H + 8)
    high = draw(snapshot(alarms=(VitalAlarm("HR_HIGH", "high", "Tachycardia", 0),)))
    medium = draw(snapshot(alarms=(VitalAlarm("SPO2_LOW", "medium", "SpO2 low", 0),)))
    assert colour_count(high, alarm_line, RED) > 300  # a filled red box
    assert colour_count(medium, alarm_line, AMBER) > 30
    assert colour_count(medium, alarm_line, RED) == 0


def test_the_highest_priority_alarm_comes_first() -> None:
    strip = vitals_strip(snapshot(alarms=(VitalAlarm("A", "low", "low one", 0),
                                          VitalAlarm("B", "high", "high one", 0))), T0, T0)
    assert strip is not None
    assert [a.priority for a in strip.alarms] == ["high", "low"]


def test_alarm_first_draws_are_recorded_once_per_raise() -> None:
    draws = AlarmDraws()
    raised = vitals_strip(snapshot(alarms=(VitalAlarm("B", "high", "x", 0),)), T0, T0)
    quiet = vitals_strip(snapshot(), T0, T0)
    draws.on_drawn(quiet, 1)
    draws.on_drawn(raised, 2)
    draws.on_drawn(raised, 3)
    draws.on_drawn(quiet, 4)
    draws.on_drawn(raised, 5)
    assert draws.first_drawn == [{"alarm": "B", "drawn_ns": 2}, {"alarm": "B", "drawn_ns": 5}]


def test_the_supervision_page_shows_the_same_strip() -> None:
    from robot_side.supervision.state import FeedState

    state = FeedState(stale_after_ms=1000, history_s=60)
    assert state.snapshot(T0)["vitals"] is None
    state.on_vitals(snapshot(alarms=(VitalAlarm("HR_HIGH", "high", "Tachycardia", 0),)), T0)
    shown = state.snapshot(T0 + 10 * MS)["vitals"]
    assert shown["monitor_ok"] and shown["cells"][0] == {"label": "HR", "text": "72",
                                                         "stale": False}
    assert shown["alarms"][0]["priority"] == "high"
    later = state.snapshot(T0 + int((VITALS_SILENT_MS + 1) * MS))["vitals"]
    assert not later["monitor_ok"] and all(c["stale"] for c in later["cells"])


def test_the_terminal_status_view_shows_the_strip_too() -> None:
    from operator_console.status_view import format_status

    strip = vitals_strip(snapshot(alarms=(VitalAlarm("HR_HIGH", "high", "Tachycardia", 0),)),
                         T0, T0)
    text = format_status(dataclasses.replace(FOLLOWING, vitals=strip), color=False)
    assert "vitals HR 72  SpO2 98" in text and "ALARM HIGH: Tachycardia" in text
