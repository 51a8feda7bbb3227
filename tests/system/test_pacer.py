"""The loop pacer and the real-time helpers, on this machine's real scheduler."""

from __future__ import annotations

import os
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


LIFT = textwrap.dedent("""
    import os, subprocess, sys, threading
    from telesurgery.pacer import lift_normal_threads, realtime_permitted
    if not realtime_permitted():
        print("unavailable")
        sys.exit(0)
    park = threading.Event()
    helpers = [threading.Thread(target=park.wait) for _ in range(3)]
    for t in helpers:
        t.start()
    lifted = lift_normal_threads(7)
    def policy(tid: int) -> str:
        p = os.sched_getscheduler(tid)
        prio = os.sched_getparam(tid).sched_priority
        return f"{'fifo' if p & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO else 'other'}{prio}"
    seen = sorted({policy(t.native_id) for t in helpers} | {policy(0)})
    child = subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                           capture_output=True, text=True, check=True)
    park.set()
    print(len(lifted), " ".join(seen), child.stdout.strip())
""")


def test_every_normal_thread_is_lifted_and_no_child_process_inherits_it() -> None:
    """lift_normal_threads: a helper nobody gave a priority, preempted while it holds the
    GIL, stalls every real-time thread of its process (the emulator's main thread
    stopped the state reports: serial_fault on a healthy rig)."""
    out = subprocess.run([sys.executable, "-c", LIFT], capture_output=True, text=True,
                         check=True, timeout=30).stdout.strip()
    if out == "unavailable":
        pytest.skip("SCHED_FIFO is not permitted here")
    parts = out.split()
    lifted, policies, child = int(parts[0]), parts[1:-1], int(parts[-1])
    assert lifted >= 4  # the main thread and the three helpers
    assert policies == ["fifo7"]
    assert child == os.SCHED_OTHER  # reset on fork


def test_an_overrun_is_counted_and_never_caught_up_in_a_burst() -> None:
    pacer = Pacer(1_000_000)
    pacer.wait()
    # The first wait may itself be late when the machine preempted this test between
    # building the pacer and waiting; only the deliberate stall below is judged.
    before = pacer.overruns
    time.sleep(0.005)  # the step overran by several periods
    late = pacer.wait()
    assert late.skipped >= 3
    assert pacer.overruns == before + 1, "one stall is one overrun, however many periods"
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


def test_the_waiter_replaces_the_sleep_and_the_deadline_stays() -> None:
    pacer = Pacer(2_000_000)
    calls: list[int] = []

    def waiter(until_ns: int) -> None:
        calls.append(until_ns)
        while time.monotonic_ns() < until_ns:
            time.sleep(0.0002)

    tick = pacer.wait(waiter)
    assert calls == [tick.expected_ns]  # no spin lead set: wait to the deadline itself
    assert tick.actual_ns >= tick.expected_ns


def test_shift_moves_every_later_deadline() -> None:
    pacer = Pacer(1_000_000)
    before = pacer.next_deadline_ns()
    pacer.shift(-30_000)
    assert pacer.next_deadline_ns() == before - 30_000


def _lock_onto(arrival_phase_ns: int, lead_ns: int = 50_000, rounds: int = 400) -> int:
    """Simulated arrivals ``arrival_phase_ns`` (+ jitter) after each deadline of a
    shifting grid; returns how long before its deadline the latest recent arrival came."""
    from telesurgery.pacer import PhaseLock

    period = 1_000_000
    lock = PhaseLock(period, lead_ns, max_step_ns=20_000, every=16, quantile=0.0)
    grid = 0  # where the grid's deadlines sit (mod period)
    befores: list[int] = []
    for k in range(rounds * 16):
        arrival = k * period + arrival_phase_ns + (k % 5) * 10_000  # jitter: 0..40 us late
        nxt = grid + ((arrival - grid) // period + 1) * period
        befores.append(nxt - arrival)
        lock.on_arrival(arrival, nxt)
        grid += lock.correction()
        # Never more than the bounded step at once: the loop's rate stays its own.
        assert abs(lock.correction()) == 0
    return min(befores[-16:])


@pytest.mark.parametrize("phase_us", [0, 10, 300, 700, 990])
def test_phase_lock_starts_periods_just_after_commands_arrive(phase_us: int) -> None:
    # Locked on the latest arrivals (quantile 0): the latest comes ~lead before its deadline.
    latest = _lock_onto(phase_us * 1000)
    assert abs(latest - 50_000) <= 20_000, latest


def test_phase_lock_without_arrivals_never_moves_the_grid() -> None:
    from telesurgery.pacer import PhaseLock

    lock = PhaseLock(1_000_000, 50_000)
    assert all(lock.correction() == 0 for _ in range(10_000))
    assert lock.adjustments == 0


def test_phase_lock_reports_how_long_before_their_deadline_commands_came() -> None:
    from telesurgery.pacer import PhaseLock

    lock = PhaseLock(1_000_000, 50_000)
    assert lock.before_us() == {"n": 0}
    for k in range(98):  # 5..102 us before the deadline at 10 ms
        lock.on_arrival(10_000_000 - 5_000 - k * 1_000, 10_000_000)
    for _ in range(2):  # two just after it: they waited a whole period (~990 us before)
        lock.on_arrival(10_010_000, 10_000_000)
    before = lock.before_us()
    assert before["n"] == 100
    assert before["p2"] == 0.0 and before["p50"] == 50.0 and before["p98"] == 100.0
    assert before["p99"] == 990.0  # the misses show at the far end
