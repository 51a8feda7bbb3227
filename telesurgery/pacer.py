"""Periodic loop pacing against the monotonic clock, with measured jitter.

Absolute deadlines (``start + k * period``) so errors never accumulate. Lowering
the timer slack (``PR_SET_TIMERSLACK``) and SCHED_FIFO, where permitted, tighten
the wake-up; both fall back cleanly. A sleep alone still wakes 25-65 us late
(p50-p99 here), so a SCHED_FIFO loop sleeps to ``SPIN_LEAD_NS`` before the deadline
and spins the rest (measured with a 270 us step at 1 kHz, alone and under a 720p30
encode: p99 0.1 us, max ~55 us, for ~6 % of a core). Without SCHED_FIFO it only
sleeps: there a spinning loop is preempted by the processes it competes with and
collapses (p99 3.7 ms with two other busy processes on the two cores).

Like rclpy's ``TimerInfo``, every tick reports expected vs actual time, so loop
jitter is measured, not assumed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

PR_SET_TIMERSLACK = 29


def lower_timer_slack(slack_ns: int = 1000) -> bool:
    """Ask the kernel to wake this thread within ``slack_ns`` of its deadline."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        ok = bool(libc.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(slack_ns), 0, 0, 0) == 0)
    except (OSError, AttributeError) as err:
        log.info("timer slack unchanged: %s", err)
        return False
    if not ok:
        log.info("timer slack unchanged: prctl errno %d", ctypes.get_errno())
    return ok


def try_realtime(priority: int = 50, *, children_inherit: bool = False) -> bool:
    """SCHED_FIFO for this thread where permitted; logs and returns False otherwise.

    By default with SCHED_RESET_ON_FORK: a process or thread started from here begins at
    normal priority. Without it, an encoder spawned by the loop thread ran at the loop's
    own FIFO priority, and FIFO never preempts its equal: the loop then waited out x264's
    slices (measured: p99 period error 2 ms and 640 overruns in 10 s at 1 kHz).
    ``children_inherit`` is for a thread whose helpers carry its real-time work (the
    network thread's libzmq I/O thread carries every command).
    """
    policy = os.SCHED_FIFO if children_inherit else os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
    try:
        os.sched_setscheduler(0, policy, os.sched_param(priority))
    except (OSError, AttributeError) as err:
        log.info("SCHED_FIFO not available (%s); running at normal priority", err)
        return False
    log.info("SCHED_FIFO priority %d", priority)
    return True


SPIN_LEAD_NS = 80_000
"""How long before a deadline a SCHED_FIFO loop stops sleeping and spins: above the
sleep's p99 lateness here (65 us), so the wake-up is almost always on time."""

SWITCH_INTERVAL_S = 0.0005
"""How long a thread may hold the GIL while another waits for it (Python's default: 5 ms)."""


def enter_realtime(priority: int, realtime: bool = True) -> bool:
    """Prepare the calling thread of a control loop: timer slack, GIL switch interval
    (process-wide: the loop shares the GIL with its process's other threads), and
    SCHED_FIFO where permitted. The robot node and ``bench loop`` both use this, so the
    benchmark measures the loop as the node runs it."""
    lower_timer_slack()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return try_realtime(priority) if realtime else False


@dataclass(frozen=True, slots=True)
class Tick:
    """One loop iteration: when it should have started and when it did."""

    index: int
    expected_ns: int
    actual_ns: int
    skipped: int
    """Periods skipped because the previous iteration overran."""

    @property
    def error_ns(self) -> int:
        return self.actual_ns - self.expected_ns


@dataclass(frozen=True, slots=True)
class PeriodStats:
    ticks: int
    overruns: int
    err_p50_us: float
    err_p99_us: float
    err_max_us: float


class Pacer:
    """Sleeps to absolute deadlines; never bursts to catch up after an overrun."""

    def __init__(self, period_ns: int, history: int = 1 << 16, spin_ns: int = 0) -> None:
        if period_ns <= 0:
            raise ValueError(f"period_ns must be > 0, got {period_ns}")
        self.period_ns = period_ns
        self.spin_ns = 0
        self.set_spin(spin_ns)
        self._start_ns = time.monotonic_ns()
        self._index = 0
        self._errors = np.zeros(history, dtype=np.int64)
        self._count = 0
        self.overruns = 0

    def set_spin(self, spin_ns: int) -> None:
        """Spin this long before each deadline; only for a SCHED_FIFO thread."""
        if not 0 <= spin_ns < self.period_ns:
            raise ValueError(f"spin_ns must be in [0, period_ns), got {spin_ns}")
        self.spin_ns = spin_ns

    def restart(self) -> None:
        self._start_ns = time.monotonic_ns()
        self._index = 0

    def wait(self) -> Tick:
        """Sleep until the next deadline and report how late the wake-up was."""
        self._index += 1
        deadline = self._start_ns + self._index * self.period_ns
        now = time.monotonic_ns()
        skipped = 0
        if now > deadline + self.period_ns:
            # Overran by more than a period: start a fresh grid rather than
            # running several iterations back to back with stale inputs.
            skipped = (now - deadline) // self.period_ns
            self.overruns += 1
            self._index += skipped
            deadline += skipped * self.period_ns
        remaining = deadline - now
        if remaining > self.spin_ns:
            time.sleep((remaining - self.spin_ns) / 1e9)
        actual = time.monotonic_ns()
        while actual < deadline:  # the spin lead (a plain sleep never returns early)
            actual = time.monotonic_ns()
        err = actual - deadline
        if err > self.period_ns and skipped == 0:
            self.overruns += 1
        self._errors[self._count % len(self._errors)] = err
        self._count += 1
        return Tick(self._index, deadline, actual, int(skipped))

    def stats(self) -> PeriodStats:
        n = min(self._count, len(self._errors))
        if n == 0:
            return PeriodStats(0, self.overruns, 0.0, 0.0, 0.0)
        errs = np.abs(self._errors[:n]) / 1000.0
        p50, p99 = np.percentile(errs, [50, 99])
        return PeriodStats(self._count, self.overruns, float(p50), float(p99), float(errs.max()))

    def recent_jitter_us(self, last: int = 100) -> int:
        """p99 period error over the last ``last`` ticks, for telemetry."""
        n = min(self._count, len(self._errors), last)
        if n == 0:
            return 0
        end = self._count % len(self._errors)
        idx = (np.arange(end - n, end)) % len(self._errors)
        return int(np.percentile(np.abs(self._errors[idx]), 99) / 1000)
