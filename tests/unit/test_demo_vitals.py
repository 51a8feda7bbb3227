"""The demo's "monitor alarm -> shown on the HUD" figure, from the simulator's onsets and
the console's first draws (telesurgery.demo_vitals)."""

from __future__ import annotations

import json
from pathlib import Path

from telesurgery.demo_vitals import alarm_latency, alarm_row


def test_each_onset_is_matched_to_the_first_draw_after_it(tmp_path: Path) -> None:
    (tmp_path / "monitor_events.jsonl").write_text("\n".join(json.dumps(e) for e in [
        {"alarm": "SPO2_LOW", "sent_ns": 1_000_000_000},
        {"alarm": "HR_HIGH", "sent_ns": 2_000_000_000},
        {"alarm": "HR_HIGH", "sent_ns": 9_000_000_000}]) + "\n")
    console = {"vitals_alarms_drawn": [
        {"alarm": "HR_HIGH", "drawn_ns": 2_300_000_000},
        {"alarm": "SPO2_LOW", "drawn_ns": 1_200_000_000},
        {"alarm": "HR_HIGH", "drawn_ns": 10_500_000_000}]}
    got = alarm_latency(tmp_path, console)
    assert got["onsets"] == 3 and got["n"] == 3
    assert got["p50_ms"] == 300.0 and got["max_ms"] == 1500.0
    assert alarm_row({"vitals_alarm_to_hud": got})[3] == "FAILED"  # p99 above 1 s


def test_an_alarm_never_drawn_fails_and_a_run_without_one_does_not(tmp_path: Path) -> None:
    (tmp_path / "monitor_events.jsonl").write_text(
        json.dumps({"alarm": "HR_HIGH", "sent_ns": 5}) + "\n")
    never = alarm_latency(tmp_path, {"vitals_alarms_drawn": []})
    assert alarm_row({"vitals_alarm_to_hud": never})[3] == "FAILED"
    empty = alarm_latency(tmp_path / "nothing", {})
    assert alarm_row({"vitals_alarm_to_hud": empty})[3] == "ok"
