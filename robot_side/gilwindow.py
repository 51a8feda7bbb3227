"""Helpers of the control process run their Python outside the control period.

Every thread of the control process shares one GIL, and CPython's GIL has no
priorities: a control thread that wakes at its deadline (or comes back from the
period's serial ``os.write``) while a helper runs Python waits for that helper to
block again, or for the switch interval (0.5 ms) to force it. The round-6 explainer
(robot_side.lateperiods) named this the first cause of late periods: the wake-up
after ``select`` came back late with the network thread or the serial reader in the
middle of a telemetry build or a report's decode.

So a helper asks ``ControlWindow.wait_quiet(budget)`` before a chunk of Python: if
the control thread is in its period's work, or its next deadline is nearer than the
chunk's budget, the helper sleeps (GIL released) until the period's work is done.
It is bounded (``max_wait_ns``) so no helper starves, and it costs the control
thread two stores a period. A stopped loop (no deadline ahead) lets every helper run.
"""

from __future__ import annotations

import time

POLL_S = 50e-6
"""A deferred helper looks again this often (each look takes the GIL for ~1 us)."""


class ControlWindow:
    """The control thread's phase, published for the helpers of its process."""

    __slots__ = ("deferred", "deferred_ns", "max_wait_ns", "next_deadline_ns", "period_ns",
                 "working")

    def __init__(self, period_ns: int, max_wait_ns: int = 2_000_000) -> None:
        self.period_ns = period_ns
        self.max_wait_ns = max_wait_ns
        self.next_deadline_ns = 0
        self.working = False
        self.deferred = 0
        """How many chunks of helper work waited (the helpers' own counter, summed)."""
        self.deferred_ns = 0

    # ---- the control thread (two stores each)
    def period_started(self) -> None:
        self.working = True

    def period_done(self, next_deadline_ns: int) -> None:
        self.next_deadline_ns = next_deadline_ns
        self.working = False

    # ---- a helper thread
    def wait_quiet(self, budget_ns: int) -> int:
        """Return when ``budget_ns`` of Python from now would not reach into the control
        period (or after ``max_wait_ns``); returns how long it waited."""
        start = now = time.monotonic_ns()
        while now - start < self.max_wait_ns:
            if self.working:
                time.sleep(POLL_S)
            else:
                left = self.next_deadline_ns - now
                if left >= budget_ns or left < -self.period_ns:  # room, or no loop running
                    break
                # The deadline comes first: sleep past it, then until the work is done.
                time.sleep(max(left, 0) / 1e9 + POLL_S)
            now = time.monotonic_ns()
        waited = now - start
        if waited:
            self.deferred += 1
            self.deferred_ns += waited
        return waited
