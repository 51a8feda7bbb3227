"""Periodic loop pacing against the monotonic clock, with measured jitter.

Absolute deadlines (``start + k * period``) so errors never accumulate. Lowering
the timer slack (``PR_SET_TIMERSLACK``) and SCHED_FIFO, where permitted, tighten
the wake-up; both fall back cleanly. A sleep alone wakes 15-65 us late (p50-p99
here), within the 100 us p99 goal: the robot's loop only sleeps by default
(``control.spin_us = 0``). A SCHED_FIFO loop may spin the last ``spin_ns`` instead
(``SPIN_LEAD_NS`` = 80 us: p99 ~1 us alone, ~22 us under a 720p30 encode, for ~9 %
of a core). Without SCHED_FIFO never spin: there a spinning loop is preempted by the
processes it competes with and collapses (p99 3.7 ms with two other busy processes
on the two cores).

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

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


HELPER_PRIORITY = 20
"""SCHED_FIFO priority of the control process's helper threads (audit, log writer).

Not for their own sake: every thread of the control process takes the GIL, and a
helper preempted by an unrelated busy process *while holding it* stalls the control
thread until the helper runs again (measured: period errors of milliseconds on a
loaded machine). At a low real-time priority a helper is never preempted by
ordinary processes, so it releases the GIL within the switch interval."""

def lift_normal_threads(priority: int = HELPER_PRIORITY) -> list[str]:
    """Every thread of this process still at normal priority -> SCHED_FIFO ``priority``.

    For the helpers nobody wrote a priority for (the e-stop server, the serial
    reconnector, the signal desk, the ZAP authenticator, multiprocessing's feeders): each
    takes the GIL now and then, and a normal thread preempted *while holding it* by the
    machine's real-time load stalls every real-time thread of the process until the
    scheduler gives it a core again (what HELPER_PRIORITY is for). With reset-on-fork,
    so no process they start inherits it. Quiet (no log per thread); returns the names
    of the threads lifted (Python's, or the kernel's for a thread Python did not start).
    """
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    lifted: list[str] = []
    for task in os.listdir("/proc/self/task"):
        tid = int(task)
        try:
            if os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK != os.SCHED_OTHER:
                continue
            os.sched_setscheduler(tid, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                                  os.sched_param(priority))
            if tid in names:
                lifted.append(names[tid])
                continue
            with open(f"/proc/self/task/{tid}/comm") as fh:
                lifted.append(fh.read().strip())
        except OSError:  # gone meanwhile, or not permitted here
            continue
    return lifted


def zmq_context(io_priority: int = 0) -> zmq.Context[Any]:
    """A ZeroMQ context whose I/O thread runs at SCHED_FIFO ``io_priority`` (0: normal).

    libzmq's I/O thread takes its scheduling from these context options when it starts
    (with the first socket), not from the thread that creates it; and it aborts the
    process when it cannot apply them, so ask only where permitted
    (``realtime_permitted``)."""
    ctx: zmq.Context[Any] = zmq.Context()
    if io_priority:
        ctx.set(zmq.THREAD_SCHED_POLICY, os.SCHED_FIFO)
        ctx.set(zmq.THREAD_PRIORITY, io_priority)
    return ctx


def fifo_quietly(priority: int) -> bool:
    """SCHED_FIFO (reset-on-fork) for the calling thread, without a log line: for
    short-lived threads started per request (one log line each would be noise)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                              os.sched_param(priority))
    except OSError:
        return False
    return True


SPIN_LEAD_NS = 80_000
"""A spin lead above the sleep's p99 lateness here (65 us), so the wake-up is almost
always on time: for a loop that wants ~1 us rather than the sleep's tens of us and can
pay ~9 % of a core for it (``control.spin_us``; the robot's default is 0)."""

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

    def shift(self, delta_ns: int) -> None:
        """Move the whole grid by ``delta_ns`` (the caller bounds it; see ``PhaseLock``)."""
        self._start_ns += delta_ns

    def next_deadline_ns(self) -> int:
        return self._start_ns + (self._index + 1) * self.period_ns

    def wait(self, waiter: Callable[[int], None] | None = None) -> Tick:
        """Sleep until the next deadline and report how late the wake-up was.

        ``waiter(until_ns)``, when given, is called instead of the sleep: it must
        return at ``until_ns`` (not much later) and may do work meanwhile, e.g.
        take input from a socket as it arrives. The deadline stays the grid's.
        """
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
            if waiter is None:
                time.sleep((remaining - self.spin_ns) / 1e9)
            else:
                waiter(deadline - self.spin_ns)
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
        if end >= n:
            window = np.abs(self._errors[end - n:end])
        else:  # wrapped round the ring
            window = np.abs(np.concatenate((self._errors[end - n:], self._errors[:end])))
        return int(p99_linear(window) / 1000)


def p99_linear(values: np.ndarray) -> float:
    """``np.percentile(values, 99)`` (its default, linear method, and its arithmetic),
    with a partition in place of the full sort and general machinery: the network
    thread asks for the loop's jitter with every telemetry it builds (issue 11: the
    percentile was ~1/4 of a telemetry's cost)."""
    n = len(values)
    k = 0.99 * (n - 1)
    lo = int(k)
    hi = min(lo + 1, n - 1)
    part = np.partition(values, (lo, hi)) if hi != lo else np.partition(values, lo)
    a, b = float(part[lo]), float(part[hi])
    t = k - lo
    diff = b - a
    # numpy's _lerp: from the nearer end, for monotonicity.
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


BEFORE_BIN_NS = 10_000
"""Resolution of ``PhaseLock.before_us``."""


class PhaseLock:
    """Slews a ``Pacer``'s grid so each period starts just after a command arrives.

    The console sends at the loop's rate; without a lock, a command waits between
    0 and one period for the next tick (up to 1 ms at 1 kHz, on every command). The
    lock observes each arrival's phase within the period and moves the grid, by at
    most ``max_step_ns`` per adjustment (2 % of a 1 ms period, once per ``every``
    periods), so that the late arrivals (``quantile``) land ``lead_ns`` before a
    deadline and the usual one just before it. It only ever nudges: with no commands
    it does nothing and the loop keeps its own rate, so no safety check depends on
    commands arriving.
    """

    def __init__(self, period_ns: int, lead_ns: int, *, max_step_ns: int = 20_000,
                 every: int = 128, quantile: float = 0.02) -> None:
        if not 0 <= lead_ns < period_ns:
            raise ValueError(f"lead_ns must be in [0, period_ns), got {lead_ns}")
        if not 0.0 <= quantile <= 0.5:
            raise ValueError(f"quantile must be in [0, 0.5], got {quantile}")
        self.period_ns = period_ns
        self.lead_ns = lead_ns
        self.max_step_ns = max_step_ns
        self.every = every
        self.quantile = quantile
        """Which arrivals to lock on: 0.02 puts all but the latest 2 % ``lead_ns`` or
        more before their deadline (a command that misses it waits a whole period)."""
        self._phases = np.zeros(every, dtype=np.int64)
        self._n = 0
        self.shifted_ns = 0
        """Sum of every shift applied: how far the grid moved over the run."""
        self.adjustments = 0
        self._before = np.zeros(period_ns // BEFORE_BIN_NS + 1, dtype=np.int64)
        """Every arrival's time before its deadline, in ``BEFORE_BIN_NS`` bins (the run's
        figure of how the lock placed them; a command that missed a deadline shows as
        one that came almost a period before the next)."""

    def on_arrival(self, recv_ns: int, deadline_ns: int) -> None:
        """Record one arrival; ``deadline_ns`` is any deadline of the grid (only the
        arrival's phase counts)."""
        # How far before a deadline it came, folded into one period.
        before = (deadline_ns - recv_ns) % self.period_ns
        self._phases[self._n % self.every] = before
        self._n += 1
        self._before[before // BEFORE_BIN_NS] += 1

    def before_us(self, quantiles: tuple[float, ...] = (0.01, 0.02, 0.5, 0.98, 0.99)
                  ) -> dict[str, float]:
        """Quantiles of the arrivals' time before their deadline over the run, us (to the
        bin's lower edge), and how many arrivals there were."""
        n = int(self._before.sum())
        if not n:
            return {"n": 0}
        cum = np.cumsum(self._before)
        out: dict[str, float] = {"n": n}
        for q in quantiles:
            i = int(np.searchsorted(cum, q * n, side="left"))
            out[f"p{q * 100:g}"] = i * BEFORE_BIN_NS / 1000
        return out

    def correction(self) -> int:
        """The shift to apply now (0 until ``every`` arrivals were seen since the last)."""
        if self._n < self.every:
            return 0
        self._n = 0
        # Phases are circular (a command just late for one deadline is early for the
        # next): centre them on their circular mean, then take the quantile.
        angles = self._phases * (2 * np.pi / self.period_ns)
        mean = np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())
        ref = int(mean * self.period_ns / (2 * np.pi)) % self.period_ns
        half = self.period_ns // 2
        rel = (self._phases - ref + half) % self.period_ns - half
        before = ref + int(np.quantile(rel, self.quantile))
        # before > lead: the command waits too long; move deadlines earlier.
        err = self.lead_ns - before
        step = max(-self.max_step_ns, min(self.max_step_ns, err))
        if step:
            self.adjustments += 1
            self.shifted_ns += step
        return step


def realtime_permitted(priority: int = 1) -> bool:
    """Whether a thread of this process may take SCHED_FIFO, tried on a throw-away thread.

    libzmq aborts the process when it cannot apply a context's thread priority, so
    the robot asks this before it sets ``zmq.THREAD_SCHED_POLICY``.
    """
    import threading

    result: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
            result.append(True)
        except (OSError, AttributeError):
            result.append(False)

    t = threading.Thread(target=probe, name="rt-probe", daemon=True)
    t.start()
    t.join(5.0)
    return bool(result and result[0])
