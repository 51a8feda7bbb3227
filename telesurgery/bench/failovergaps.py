"""Failover trials' gaps (``telesurgery bench link --paths 2``, ``bench.dualpath``).

Each trial is a stream of fresh arrivals at the robot, ``(seq, console send stamp,
robot receive time)`` on one clock, with a blackout of one path from after sequence
``begin`` to ``end``. Gaps between consecutive fresh arrivals are grouped (at the
switch, one path down, both up) with the link's share, and each trial's switch is
judged against the same trial with both paths up (a loaded machine's stalls show in
every group alike; the failover's own cost is what the switch adds to them)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

SWITCH_WINDOW = 1
"""Fresh commands counted as "at the switch" after each blackout edge."""


def classify_gaps(arrivals: list[tuple[int, int, int]], begin: int,
                  end: int) -> dict[str, list[tuple[int, int]]]:
    """Each gap between consecutive fresh arrivals as (gap, the link's share), grouped:
    "switch" the first ``SWITCH_WINDOW`` after sequence ``begin`` (blackout began) or
    ``end`` (it ended), "down" the rest of the blackout, "up" both paths up."""
    out: dict[str, list[tuple[int, int]]] = {"switch": [], "down": [], "up": []}
    after_begin = after_end = 0
    for (_, send_a, recv_a), (seq, send_b, recv_b) in itertools.pairwise(arrivals):
        gap = recv_b - recv_a
        share = gap - (send_b - send_a)
        if seq > end and after_end < SWITCH_WINDOW:
            after_end += 1
            group = "switch"
        elif begin < seq <= end:
            after_begin += 1
            group = "switch" if after_begin <= SWITCH_WINDOW else "down"
        else:
            group = "up"
        out[group].append((gap, share))
    return out


LATE_PERCENTILE = 99.0
"""A command of the blackout is late when its one-way latency exceeds this percentile of
the same trial's commands with both paths up (so 1 % of them are, by chance alone)."""


def switch_against_up(arrivals: list[tuple[int, int, int]],
                      trial_gaps: dict[str, list[tuple[int, int]]], begin: int,
                      end: int) -> dict[str, float | int]:
    """One trial's switch against itself with both paths up: the largest gap at the
    switch and the largest with both up (ms); the commands of the blackout (and the
    first after it) executed late, one-way (send stamp to the robot's receive) above
    the trial's both-up ``LATE_PERCENTILE``, and how many chance alone would give. More
    than chance would be commands only the dead path carried in time (its copy would
    have come first): the robot has no per-copy arrival record to show that directly."""
    window = [recv - send for seq, send, recv in arrivals if begin < seq <= end + 1]
    up = [recv - send for seq, send, recv in arrivals if not begin < seq <= end + 1]
    bound = float(np.percentile(up, LATE_PERCENTILE)) if up else 0.0
    return {"switch_gap_ms": max((g for g, _ in trial_gaps["switch"]), default=0) / 1e6,
            "up_gap_ms": max((g for g, _ in trial_gaps["up"]), default=0) / 1e6,
            "late": sum(1 for lat in window if lat > bound),
            "late_by_chance": len(window) * (100.0 - LATE_PERCENTILE) / 100.0}


def per_trial_figures(results: list[dict[str, Any]]) -> dict[str, float | int]:
    """Over the trials: in how many the gap at the switch exceeded the same trial's
    largest gap with both paths up, by how much at most, and the late commands."""
    excess = [r["switch_gap_ms"] - r["up_gap_ms"] for r in results]
    return {"switch_over_up": sum(1 for e in excess if e > 0),
            "max_excess_ms": round(max(excess, default=0.0), 3),
            "max_switch_gap_ms": round(max((r["switch_gap_ms"] for r in results),
                                           default=0.0), 3),
            "late_commands": sum(r["late"] for r in results),
            "late_by_chance": round(sum(r["late_by_chance"] for r in results), 1),
            "trials_with_late": sum(1 for r in results if r["late"])}


def gap_figures(gaps: list[tuple[int, int]]) -> dict[str, float]:
    """p50/p99/max of the gaps and of the link's share of them, in ms."""
    if not gaps:
        return {"n": 0}
    g = np.array(gaps, dtype=np.float64) / 1e6
    out: dict[str, float] = {"n": len(gaps)}
    for col, name in ((0, "gap"), (1, "link")):
        p50, p99 = np.percentile(g[:, col], [50, 99])
        out |= {f"{name}_p50_ms": round(float(p50), 3), f"{name}_p99_ms": round(float(p99), 3),
                f"{name}_max_ms": round(float(g[:, col].max()), 3)}
    return out
