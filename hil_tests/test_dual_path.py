"""Two network paths in the rig: one blacked out in motion is no trip; both down trip as today.

The whole rig as real processes on loopback (firmware emulator, robot node,
console, and one fault proxy per path: ``RigOptions.dual_path``). While the arm
follows the scripted surgeon, path A is blacked out (TCP up, every message
dropped both ways, on every channel): the robot must keep following (no trip, no
stop, no missed command at the robot: its gate saw every sequence number fresh by
path B) and audit one ``redundancy_lost`` warning. Then both paths are blacked
out: the command timeout trips, exactly as the one-path ``link_blackout`` row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil_tests.rig import RigOptions, SimRig, poll
from hil_tests.scenarios import CI_SLACK_MS, COMMAND_TIMEOUT_MS, PERIOD_MS, RATE_HZ

BLACKOUT_S = 1.0
SMALL_VIDEO = {"video": {"width": 640, "height": 360}}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[SimRig]:
    opts = RigOptions(run_dir=tmp_path / "rig", console_seconds=3600.0, ros_backend="none",
                      rate_hz=RATE_HZ, reengage_after_s=0.3, robot_overrides=SMALL_VIDEO,
                      dual_path=True)
    with SimRig(opts) as r:
        r.start()
        yield r


def left_following(rig: SimRig, since: int) -> list[tuple[str, str, str]]:
    return [t for t in rig.transitions()[since:] if t[0] == "following" and t[2] != "clutch"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_one_path_down_is_hitless_and_both_down_trips(rig: SimRig) -> None:
    rig.wait_following()
    time.sleep(0.5)  # both paths carry commands and pings
    n_trips, n_trans = len(rig.trips()), len(rig.transitions())
    assert rig.proxy({"blackout": BLACKOUT_S})["ok"]
    time.sleep(BLACKOUT_S + 0.3)
    assert rig.trips()[n_trips:] == [], "a trip with one path left"
    assert left_following(rig, n_trans) == [], "the arm stopped with one path left"
    assert rig.state()[0] == "following"
    log = rig.robot_log()
    assert "redundancy_lost" in log, "no warning when down to one path"
    poll("redundancy restored", 5.0, lambda: "redundancy_restored" in rig.robot_log())

    # Both paths down: the combined stream stops, and the command timeout trips.
    rig.wait_following()
    n_trips = len(rig.trips())
    start = time.monotonic_ns()
    assert rig.proxy({"blackout": 0.5})["ok"] and rig.proxy_b({"blackout": 0.5})["ok"]
    trips = poll("a trip with both paths down", 5.0, lambda: rig.trips()[n_trips:])
    assert trips[0]["reason"] == "command_timeout", json.dumps(trips[0])
    last = trips[0]["last_command_ns"]
    detect_ms = (trips[0]["detected_ns"] - (last or start)) / 1e6
    assert detect_ms <= COMMAND_TIMEOUT_MS + PERIOD_MS + CI_SLACK_MS, detect_ms
