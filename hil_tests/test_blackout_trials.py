"""A link blackout during motion is detected within its bound in N of N trials (N = 100).

One rig (in network namespaces where possible, else on loopback), many short
blackouts: each trial waits until the arm follows the scripted surgeon, blacks
the link out for 150 ms in both directions, and reads the robot's ``TRIP`` line.
The detection must be ``command_timeout`` within the command timeout plus one
control period after the last command that arrived (+ ``CI_SLACK_MS`` on this
shared machine; the strict count is printed and recorded), and the hold must go
out within one control period of the detection.

To fit 100 trials in about two minutes the trial rig shortens two settling
rules, not the detection under test: ``loss_window_ms`` 200 (the 75 commands a
blackout loses leave the loss window 200 ms later instead of 1 s, and a latched
hold never lasts the 1 s that escalates it to a fault) and ``settle_ms`` 100 (how
long the link must be healthy before the surgeon's re-engage is accepted). The
command timeout, 50 ms, and the control rate, 500 Hz, are the defaults.

A trial in which another trip (e.g. a serial fault of a starved emulator on a
loaded machine) fires first is not a measurement of the blackout: it is counted
as interfered, reported, and replaced by another trial (at most 10).
``HIL_BLACKOUT_TRIALS`` sets N (default 100).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from hil_tests.conftest import HilReport
from hil_tests.netns import NetnsPair, netns_available
from hil_tests.rig import RigOptions, SimRig, poll
from hil_tests.scenarios import (
    CI_SLACK_MS,
    COMMAND_TIMEOUT_MS,
    FIRMWARE_FIFO,
    HOLD_SLACK_MS,
    PERIOD_MS,
    RATE_HZ,
    RIG_NICE,
    ROTATION_SCALE,
)

TRIALS = int(os.environ.get("HIL_BLACKOUT_TRIALS", "100"))
MAX_INTERFERED = 10
BLACKOUT_S = 0.15
REENGAGE_AFTER_S = 0.5
BOUND_MS = COMMAND_TIMEOUT_MS + PERIOD_MS
TRIAL_OVERRIDES: dict[str, dict[str, Any]] = {
    "safety.watchdog": {"loss_window_ms": 200.0, "settle_ms": 100.0},
    "video": {"width": 640, "height": 360},
}


@pytest.fixture(scope="module")
def trial_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRig]:
    ok, _ = netns_available()
    with ExitStack() as stack:
        pair = stack.enter_context(NetnsPair()) if ok else None
        rig = stack.enter_context(SimRig(RigOptions(
            run_dir=tmp_path_factory.mktemp("hil-trials"), console_seconds=3600.0,
            netns=pair, reengage_after_s=REENGAGE_AFTER_S, rotation_scale=ROTATION_SCALE,
            robot_overrides=TRIAL_OVERRIDES, nice=RIG_NICE, rate_hz=RATE_HZ,
            firmware_fifo=FIRMWARE_FIFO)))
        rig.start()
        yield rig


def one_trial(rig: SimRig) -> dict[str, Any]:
    rig.wait_following()
    n = len(rig.trips())
    start_ns = time.monotonic_ns()
    assert rig.proxy({"blackout": BLACKOUT_S})["ok"]
    trip: dict[str, Any] = poll("the blackout's trip", 5.0, lambda: rig.trips()[n:])[0]
    return {
        "reason": trip["reason"],
        "since_last_command_ms": (trip["detected_ns"] - trip["last_command_ns"]) / 1e6,
        "since_blackout_ms": (trip["detected_ns"] - start_ns) / 1e6,
        "hold_ms": (trip["hold_sent_ns"] - trip["detected_ns"]) / 1e6,
    }


def summarize(trials: list[dict[str, Any]], interfered: list[dict[str, Any]],
              where: str) -> str:
    detect = sorted(t["since_last_command_ms"] for t in trials)
    hold = sorted(t["hold_ms"] for t in trials)
    strict = sum(d <= BOUND_MS for d in detect)
    hold_strict = sum(h <= PERIOD_MS for h in hold)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    return "\n".join([
        f"| rig | trials | within {BOUND_MS:g} ms | within {BOUND_MS + CI_SLACK_MS:g} ms "
        f"| detect p50 / p99 / max ms | hold within {PERIOD_MS:g} ms | hold max ms "
        f"| interfered |",
        "|---|---|---|---|---|---|---|---|",
        f"| {where} | {len(trials)} | {strict}/{len(trials)} "
        f"| {sum(d <= BOUND_MS + CI_SLACK_MS for d in detect)}/{len(trials)} "
        f"| {statistics.median(detect):.2f} / {pct(detect, 0.99):.2f} / {detect[-1]:.2f} "
        f"| {hold_strict}/{len(trials)} | {hold[-1]:.3f} "
        f"| {len(interfered)} ({', '.join(t['reason'] for t in interfered) or '-'}) |",
    ])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_blackout_detected_every_time(trial_rig: SimRig, hil_report: HilReport) -> None:
    trials: list[dict[str, Any]] = []
    interfered: list[dict[str, Any]] = []
    while len(trials) < TRIALS:
        t = one_trial(trial_rig)
        if t["reason"] != "command_timeout":
            interfered.append(t)
            assert len(interfered) <= MAX_INTERFERED, f"too many interfered trials: {interfered}"
            continue
        trials.append(t)
    where = "network namespaces" if trial_rig.opts.netns else "loopback"
    table = summarize(trials, interfered, where)
    path = hil_report.write("blackout_trials", f"HIL blackout trials ({where})",
                            trials + interfered, table)
    print(f"\n{table}\nresults: {path}")
    late = [t for t in trials if t["since_last_command_ms"] > BOUND_MS + CI_SLACK_MS]
    assert not late, f"{len(late)} of {len(trials)} detected late: {late}"
    slow_hold = [t for t in trials if not 0 <= t["hold_ms"] <= PERIOD_MS + HOLD_SLACK_MS]
    assert not slow_hold, f"{len(slow_hold)} holds later than one period: {slow_hold}"

