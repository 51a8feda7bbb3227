"""The loop pacer and the real-time helpers, on this machine's real scheduler."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from telesurgery.pacer import Pacer

CHILDREN = textwrap.dedent("""
    import os, subprocess, sys, threading
    from telesurgery.pacer import try_realtime
    if not try_realtime(10, children_inherit=sys.argv[1] == "inherit"):
        print("unavailable")
        sys.exit(0)
    names = {os.SCHED_OTHER: "other", os.SCHED_FIFO: "fifo"}
    seen = []
    t = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
    t.start()
    t.join()
    child = subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                           capture_output=True, text=True, check=True)
    print(names[os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK], names[seen[0]],
          names[int(child.stdout)])
""")


def _policies(mode: str) -> str:
    out = subprocess.run([sys.executable, "-c", CHILDREN, mode], capture_output=True,
                         text=True, check=True, timeout=30).stdout.strip()
    if out == "unavailable":
        pytest.skip("SCHED_FIFO is not permitted here")
    return out


def test_nothing_started_from_the_loop_thread_inherits_its_priority() -> None:
    # An encoder spawned at the loop's FIFO priority starved the loop (2 ms p99).
    assert _policies("reset") == "fifo other other"  # this thread, a thread, a process


def test_children_inherit_only_when_asked() -> None:
    assert _policies("inherit") == "fifo fifo fifo"


def test_an_overrun_is_counted_and_never_caught_up_in_a_burst() -> None:
    pacer = Pacer(1_000_000)
    pacer.wait()
    time.sleep(0.005)  # the step overran by several periods
    late = pacer.wait()
    assert late.skipped >= 3
    assert pacer.overruns == 1
    nxt = pacer.wait()
    # A fresh grid: the next deadline is one period on, not the missed ones back to back.
    assert nxt.expected_ns - late.expected_ns == 1_000_000
    assert nxt.actual_ns >= nxt.expected_ns


def test_pacer_refuses_a_non_positive_period() -> None:
    with pytest.raises(ValueError, match="period_ns"):
        Pacer(0)


def test_the_spin_lead_never_wakes_before_the_deadline() -> None:
    # Sleeping to 300 us before each deadline and returning there would be 300 us early.
    pacer = Pacer(1_000_000, spin_ns=300_000)
    ticks = [pacer.wait() for _ in range(50)]
    assert min(t.error_ns for t in ticks) >= 0


@pytest.mark.parametrize("spin_ns", [-1, 1_000_000])
def test_a_spin_lead_outside_the_period_is_refused(spin_ns: int) -> None:
    with pytest.raises(ValueError, match="spin_ns"):
        Pacer(1_000_000, spin_ns=spin_ns)
