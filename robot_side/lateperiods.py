"""Why a control period started late: the node's own explainer (issue 11, round 6).

The control loop asks this, once a period, to note what it did (cheap stores into
preallocated arrays: no logging, no allocation worth the name); for every period
whose start error exceeds ``late_ns`` (and every overrun) it keeps what preceded
it and names one cause, in this order:

* ``gc``: the cyclic garbage collector ran (in any thread: it holds the GIL) for
  at least half the lateness between the previous period's start and this one's;
* ``knock_on``: the previous period started late itself (its own cause is counted)
  and its work, from that late start, ended after this period's deadline;
* ``long_period``: the previous period started on time but its work (read -> update
  -> write and the hand-offs) ended after this period's deadline: the wait never
  slept;
* ``preempted``: the control thread sat runnable but off the CPU (the kernel's
  ``run_delay`` in ``/proc/thread-self/schedstat``) for at least half the lateness:
  a higher SCHED_FIFO thread or process (the firmware emulator at 60, libzmq's I/O
  thread at 49...) had the core;
* ``command_take``: the wait woke for a command and judging what it took ran past
  the deadline (since round 7 only a take begun before the wait's take guard can:
  what arrives inside it is taken as the next period's first act, its work);
* ``slow_wakeup``: the wait's last ``select`` returned (timed out at the deadline,
  or a command came) but Python ran again only later, and not because the thread
  waited for a CPU: it waited for the GIL, which another thread of the process held;
* ``unexplained``: none of these reached half the lateness.

Per period the loop reads the thread's CPU time (``time.thread_time_ns``) and its
``run_delay`` (``/proc/thread-self/schedstat``, one ``pread`` on a descriptor kept
open) as the period starts and as its wait starts: ~8 us a period with the notes
(timeit). ``getrusage(RUSAGE_THREAD).ru_nivcsw`` costs 2 us but misses a thread that
was woken while a higher priority held its core (runnable, never preempted), and
``/proc/thread-self/status`` costs ~24 us.

Which helper threads ran Python in a late period's window (``Busy`` marks around
their blocking calls) is counted per class (``helpers_running``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

CLASSES = ("gc", "knock_on", "long_period", "preempted", "command_take", "slow_wakeup",
           "unexplained")
LATE_NS = 100_000
"""The issue's goal for the period error's p99: a start later than this is explained."""

# Columns of a late period's record (one row of ``LatePeriods.records``).
F_INDEX, F_ERR, F_PREV_WORK, F_PREV_HANDOFF, F_PREV_CPU, F_PREV_RUN_DELAY, F_WAIT_SLACK, \
    F_WAKE_LATE, F_RUN_DELAY, F_GC, F_COMMANDS, F_CLASS = range(12)
FIELDS = ("index", "err_us", "prev_work_us", "prev_handoff_us", "prev_work_cpu_us",
          "prev_work_run_delay_us", "wait_slack_us", "wake_late_us", "run_delay_us", "gc_us",
          "commands", "class")


class SchedStat:
    """The calling thread's time on a CPU and ``run_delay`` (runnable, not running), ns.

    The CPU time is ``time.thread_time_ns`` (2.3 us): schedstat's own first field is
    only brought up to date at a scheduler tick or switch, so a running thread's lags
    by up to a tick. ``run_delay`` is up to date whenever the thread runs."""

    def __init__(self) -> None:
        try:  # must be opened by the thread it describes: the fd stays bound to it
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def sample(self) -> tuple[int, int]:
        """(on-CPU ns, run_delay ns) so far; (0, 0) where the kernel does not say."""
        cpu = time.thread_time_ns()
        if self._fd is None:
            return cpu, 0
        try:
            return cpu, int(os.pread(self._fd, 96, 0).split()[1])
        except (OSError, IndexError, ValueError):
            return cpu, 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Busy:
    """When a helper thread of the control process last ran Python between two blocking
    calls (it holds the GIL then): two stores around its wait, read by the explainer to
    name who had the GIL when the control thread came back late."""

    __slots__ = ("end_ns", "start_ns")

    def __init__(self) -> None:
        self.start_ns = 0
        self.end_ns = 0

    def ran_within(self, t0_ns: int, t1_ns: int) -> bool:
        """Ran (or is still running, paused by the GIL) somewhere in [t0, t1]."""
        start, end = self.start_ns, self.end_ns
        return 0 < start <= t1_ns and (end >= t0_ns or end < start)


class LatePeriods:
    """Per-period notes and the explained late periods; pure (times are passed in)."""

    def __init__(self, period_ns: int, late_ns: int = LATE_NS, *, history: int = 1 << 16,
                 keep: int = 4096) -> None:
        self.period_ns = period_ns
        self.late_ns = late_ns
        self._work = np.zeros(history, dtype=np.int64)
        self._n_work = 0
        self.records = np.zeros((keep, len(FIELDS)), dtype=np.int64)
        self.late = 0
        """Late periods seen (the records keep the first ``keep``; the counts are all)."""
        self.counts = [0] * len(CLASSES)
        self.holders: tuple[tuple[str, Busy], ...] = ()
        """Helper threads to look for in a late period's window (set by the node)."""
        self.held: dict[str, dict[str, int]] = {}
        """Per class, per helper: late periods in whose window the helper ran Python."""
        # The period in progress.
        self._start_ns = 0
        self._has_past = False
        self._prev_err = 0
        self._run_end_ns = 0
        self._wait_start_ns = 0
        self._run_delay_at_wait = 0
        self._cpu_at_start = 0
        self._run_delay_at_start = 0
        self._work_cpu = 0
        self._work_run_delay = 0
        self._gc_at_start = 0

    # ---- the loop's notes (each a few stores)
    def ran(self, now_ns: int) -> None:
        """read -> update -> write returned; the hand-offs follow."""
        self._run_end_ns = now_ns

    def waiting(self, now_ns: int, run_delay_ns: int, cpu_ns: int = 0) -> None:
        """The period's work is done; the wait for the next deadline begins. The
        thread's CPU time and run_delay (``SchedStat``) split the work's length into
        running, waiting for a CPU, and the rest: blocked (the GIL, a syscall)."""
        self._wait_start_ns = now_ns
        self._run_delay_at_wait = run_delay_ns
        self._work_cpu = cpu_ns - self._cpu_at_start
        self._work_run_delay = run_delay_ns - self._run_delay_at_start
        if self._has_past:
            self._work[self._n_work % len(self._work)] = now_ns - self._start_ns
            self._n_work += 1

    def tick(self, index: int, deadline_ns: int, actual_ns: int, *, skipped: int,
             woke_ns: int, woke_until_ns: int, woke_ready: bool, commands: int,
             run_delay_ns: int, gc_total_ns: int, cpu_ns: int = 0) -> int | None:
        """A period starts at ``actual_ns`` for ``deadline_ns`` (after ``skipped`` whole
        periods, when the last one overran). Returns the class index when it was late
        (``run_delay_ns``, ``cpu_ns``: the thread's, read as the period starts)."""
        prev_start, gc_prev, has_past = self._start_ns, self._gc_at_start, self._has_past
        prev_err, err = self._prev_err, actual_ns - deadline_ns
        self._prev_err = err
        self._start_ns, self._gc_at_start, self._has_past = actual_ns, gc_total_ns, True
        self._cpu_at_start, self._run_delay_at_start = cpu_ns, run_delay_ns
        if (err <= self.late_ns and not skipped) or not has_past:
            return None
        half = err // 2
        gc_ns = gc_total_ns - gc_prev
        slack = deadline_ns - self._wait_start_ns  # < 0: the work ran past the deadline
        run_delay = run_delay_ns - self._run_delay_at_wait
        waited = woke_ns >= self._wait_start_ns  # the wait blocked at least once
        # After its last select: how late Python ran again (a descriptor that signalled
        # did so by the select's deadline at the latest), and what followed until the
        # period began (a command judged, the drain's checks).
        wake_late = max(0, woke_ns - woke_until_ns) if waited else 0
        take = actual_ns - max(woke_ns, deadline_ns) if waited and woke_ready else 0
        if gc_ns >= half:
            cls = 0
        elif slack <= 0 or skipped:
            cls = 1 if prev_err > self.late_ns else 2
        elif run_delay >= half:
            cls = 3
        elif take >= half:
            cls = 4
        elif wake_late - run_delay >= half:
            cls = 5
        else:
            cls = 6
        self.counts[cls] += 1
        if self.holders:
            # Who ran Python from the deadline (or the wake-up before it) to the start;
            # for a long period, during that period's work.
            t0 = prev_start if cls in (1, 2) else min(deadline_ns,
                                                      woke_ns if waited else deadline_ns)
            seen = self.held.setdefault(CLASSES[cls], {})
            for name, busy in self.holders:
                if busy.ran_within(t0, actual_ns):
                    seen[name] = seen.get(name, 0) + 1
        if self.late < len(self.records):
            self.records[self.late] = (
                index, err // 1000, (self._run_end_ns - prev_start) // 1000,
                (self._wait_start_ns - self._run_end_ns) // 1000, self._work_cpu // 1000,
                self._work_run_delay // 1000, slack // 1000,
                wake_late // 1000, run_delay // 1000, gc_ns // 1000, commands, cls)
        self.late += 1
        return cls

    # ---- the run's figures
    def summary(self, worst: int = 5) -> dict[str, Any]:
        n = min(self._n_work, len(self._work))
        work = self._work[:n] / 1000.0
        kept = self.records[:min(self.late, len(self.records))]
        by_class: dict[str, Any] = {}
        for i, name in enumerate(CLASSES):
            rows = kept[kept[:, F_CLASS] == i]
            if len(rows):
                by_class[name] = {
                    "n": self.counts[i],
                    "err_us_p50": int(np.median(rows[:, F_ERR])),
                    "prev_work_us_p50": int(np.median(rows[:, F_PREV_WORK])),
                    "prev_work_cpu_us_p50": int(np.median(rows[:, F_PREV_CPU])),
                    "prev_work_run_delay_us_p50": int(np.median(rows[:, F_PREV_RUN_DELAY])),
                    "prev_handoff_us_p50": int(np.median(rows[:, F_PREV_HANDOFF])),
                    "gc_us_mean": round(float(rows[:, F_GC].mean()), 1),
                    "wake_late_us_p50": int(np.median(rows[:, F_WAKE_LATE])),
                    "run_delay_us_p50": int(np.median(rows[:, F_RUN_DELAY])),
                    "commands_mean": round(float(rows[:, F_COMMANDS].mean()), 2)}
        order: list[int] = [int(i) for i in np.argsort(-kept[:, F_ERR])[:worst]]
        return {
            "late_ns": self.late_ns, "late": self.late,
            "classes": {name: self.counts[i] for i, name in enumerate(CLASSES)},
            "by_class": by_class,
            "helpers_running": self.held,
            "work_us": ({"p50": round(float(np.percentile(work, 50)), 1),
                         "p99": round(float(np.percentile(work, 99)), 1),
                         "max": round(float(work.max()), 1)} if n else {}),
            "worst": [dict(zip(FIELDS[:-1], (int(v) for v in kept[i][:-1]), strict=True))
                      | {"class": CLASSES[int(kept[i][F_CLASS])]} for i in order],
        }

    def describe(self) -> str:
        """One line for the exit log: "late periods 612: long_period 410 (work p99 ...)"."""
        return describe_late(self.summary(worst=0))


def describe_late(summary: dict[str, Any]) -> str:
    """The one-line classification of a run summary's ``late_periods`` (also for the
    benches, which read it from the node's JSON); "" when there is none."""
    if not summary:
        return ""
    parts = [f"{k} {v}" for k, v in summary.get("classes", {}).items() if v]
    work = summary.get("work_us", {})
    return (f"late periods (> {summary.get('late_ns', LATE_NS) // 1000} us) "
            f"{summary.get('late')}: {', '.join(parts) or 'none'}; work p50/p99/max "
            f"{work.get('p50')}/{work.get('p99')}/{work.get('max')} us")
