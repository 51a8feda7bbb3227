"""The cyclic garbage collector in a process with a real-time thread.

Why: a collection of the oldest generation walks every container object the process
holds and keeps the GIL for its whole length. Measured on the 1 kHz rig (a
``gc.callbacks`` timer in every process, 60 s soaks): 12-46 ms in the robot process,
whose control loop is its main thread, and 18 ms in the console, whose SCHED_FIFO
command thread cannot send meanwhile; the first of them within seconds of the start.
That is a control loop stopped for 12-46 periods, and a healthy link tripping a 20 ms
command timeout ~1.2 s after every engage (5 of 8 one-minute soaks).

What: once a process has built what it keeps for its life (modules, models, sockets,
threads), :func:`settle` collects once and moves every survivor into the permanent
generation (``gc.freeze``), which later collections skip: they walk only what was made
since. Reference counting still frees everything at once; the collector is left on for
the cycles made later. :class:`GcPauses` times every collection (``gc.callbacks``) for
the process's summary; its callback only counts (it may run inside the control loop,
which never logs).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

SLOW_PAUSE_NS = 1_000_000
"""A collection longer than one 1 kHz control period is counted as slow."""


class GcPauses:
    """Every collection's length in this process, per generation, from install() on."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.max_ns = [0, 0, 0]
        self.total_ns = 0
        self.slow = 0
        self._start_ns = 0
        self._installed = False

    def install(self) -> GcPauses:
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._on_gc)
            self._installed = False

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start_ns = time.monotonic_ns()
            return
        pause = time.monotonic_ns() - self._start_ns
        gen = info["generation"]
        self.count[gen] += 1
        self.max_ns[gen] = max(self.max_ns[gen], pause)
        self.total_ns += pause
        self.slow += pause > SLOW_PAUSE_NS

    def summary(self) -> dict[str, Any]:
        return {"collections": list(self.count),
                "max_pause_us": [round(ns / 1000, 1) for ns in self.max_ns],
                "total_ms": round(self.total_ns / 1e6, 2),
                "over_1ms": self.slow,
                "frozen_objects": gc.get_freeze_count()}

    def describe(self) -> str:
        s = self.summary()
        return (f"garbage collections per generation {s['collections']}, longest "
                f"{s['max_pause_us']} us, {s['over_1ms']} over 1 ms, "
                f"{s['frozen_objects']} objects frozen at start-up")


PAUSES = GcPauses()
"""This process's recorder (one per process: ``gc.callbacks`` is process-wide)."""


def settle(what: str) -> GcPauses:
    """Start-up is done: collect once, freeze the survivors, time every later collection.

    Call it from the thread about to run the real-time work, before that work starts
    (the collection itself takes as long as the pauses it prevents). Safe to call again:
    a second call freezes what was made since.
    """
    t0 = time.monotonic_ns()
    gc.collect()
    gc.freeze()
    log.info("%s: heap settled in %.1f ms, %d objects frozen (later collections skip "
             "them)", what, (time.monotonic_ns() - t0) / 1e6, gc.get_freeze_count())
    return PAUSES.install()
