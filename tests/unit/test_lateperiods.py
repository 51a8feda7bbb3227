"""The control loop's late-period explainer (robot_side.lateperiods): each cause named
from the timings that make it, on synthetic ticks and on a real Pacer."""

from __future__ import annotations

import time

from robot_side.lateperiods import CLASSES, Busy, LatePeriods
from telesurgery.pacer import Pacer

MS = 1_000_000
US = 1_000


def _period(late: LatePeriods, start: int, work: int = 200 * US) -> None:
    """One period's notes: starts at ``start``, runs ``work``, then waits."""
    late.ran(start + work - 10 * US)
    late.waiting(start + work, run_delay_ns=0)


def _first(late: LatePeriods) -> None:
    # The explainer needs a previous period to judge the next one by.
    assert late.tick(0, 0, 0, skipped=0, woke_ns=0, woke_until_ns=0, woke_ready=False,
                     commands=0, run_delay_ns=0, gc_total_ns=0) is None
    _period(late, 0)


def _tick(late: LatePeriods, err: int, **kw: int | bool | None) -> str | None:
    args: dict[str, int | bool | None] = dict(
        skipped=0, woke_ns=MS, woke_until_ns=MS, woke_ready=False, commands=0,
        run_delay_ns=0, gc_total_ns=0)
    args.update(kw)
    cls = late.tick(1, MS, MS + err, **args)  # type: ignore[arg-type]
    return None if cls is None else CLASSES[cls]


def test_an_on_time_period_is_not_recorded() -> None:
    late = LatePeriods(MS)
    _first(late)
    assert _tick(late, 60 * US) is None
    assert late.late == 0 and sum(late.counts) == 0


def test_each_cause_is_named_from_its_timings() -> None:
    cases = {
        # the collector ran 250 us between the two starts
        "gc": dict(gc_total_ns=250 * US),
        # runnable but off the CPU for 200 of the 300 us
        "preempted": dict(woke_ns=MS + 300 * US, run_delay_ns=200 * US),
        # woke for a command 40 us before the deadline, judging it ran 300 us past it
        "command_take": dict(woke_ns=MS - 40 * US, woke_ready=True, commands=3),
        # the select timed out on time; Python ran again 280 us later, no CPU wait
        "slow_wakeup": dict(woke_ns=MS + 280 * US),
        # nothing reaches half of the lateness
        "unexplained": dict(woke_ns=MS + 20 * US),
    }
    for name, kw in cases.items():
        late = LatePeriods(MS)
        _first(late)
        assert _tick(late, 300 * US, **kw) == name, name
        assert late.counts[CLASSES.index(name)] == 1


def test_a_period_whose_work_ran_past_the_next_deadline_is_a_long_one() -> None:
    late = LatePeriods(MS)
    _first(late)
    late.ran(1_050 * US)
    late.waiting(1_100 * US, run_delay_ns=0)  # work ended 100 us after the 1 ms deadline
    assert _tick(late, 150 * US, woke_ns=0) == "long_period"
    row = late.summary()["worst"][0]
    assert row["wait_slack_us"] == -100 and row["prev_work_us"] == 1_050


def test_a_late_start_carried_into_the_next_period_is_a_knock_on() -> None:
    late = LatePeriods(MS)
    _first(late)
    assert _tick(late, 900 * US, woke_ns=MS + 890 * US) == "slow_wakeup"
    late.ran(MS + 1_050 * US)  # 150 us of ordinary work, from 900 us late
    late.waiting(MS + 1_060 * US, run_delay_ns=0)
    assert late.tick(2, 2 * MS, 2 * MS + 110 * US, skipped=0, woke_ns=0, woke_until_ns=0,
                     woke_ready=False, commands=0, run_delay_ns=0,
                     gc_total_ns=0) == CLASSES.index("knock_on")


def test_an_overrun_that_skipped_periods_is_a_long_one() -> None:
    late = LatePeriods(MS)
    _first(late)
    assert _tick(late, 20 * US, skipped=2) == "long_period"


def test_the_helper_that_ran_python_in_the_window_is_named() -> None:
    late = LatePeriods(MS)
    net, reader = Busy(), Busy()
    late.holders = (("robot-net", net), ("serial-reader", reader))
    _first(late)
    net.start_ns, net.end_ns = MS - 50 * US, MS + 250 * US  # ran across the deadline
    reader.start_ns, reader.end_ns = 300 * US, 400 * US  # long before it
    assert _tick(late, 300 * US, woke_ns=MS + 280 * US) == "slow_wakeup"
    assert late.summary()["helpers_running"] == {"slow_wakeup": {"robot-net": 1}}
    still = Busy()
    still.start_ns, still.end_ns = MS + 10 * US, MS - 500 * US  # began, not ended yet
    assert still.ran_within(MS, MS + 300 * US)
    assert not Busy().ran_within(0, MS)  # never ran


def test_summary_counts_every_late_period_past_the_kept_records() -> None:
    late = LatePeriods(MS, keep=2)
    start = 0
    for k in range(5):
        deadline = (k + 1) * MS
        late.waiting(start + 200 * US, run_delay_ns=0)
        late.tick(k, deadline, deadline + 400 * US, skipped=0, woke_ns=deadline + 390 * US,
                  woke_until_ns=deadline, woke_ready=False, commands=0, run_delay_ns=0,
                  gc_total_ns=0)
        start = deadline + 400 * US
    s = late.summary()
    assert s["late"] == 4 and s["classes"]["slow_wakeup"] == 4  # the first has no past
    assert len(s["worst"]) == 2 and s["work_us"]["p50"] > 0
    assert "late periods (> 100 us) 4: slow_wakeup 4" in late.describe()


def test_real_pacer_a_late_wakeup_and_a_long_period() -> None:
    """The real Pacer's ticks: a waiter that returns 8 ms after its deadline (what a
    GIL held elsewhere does), then a period whose work runs 6 ms past the next deadline.
    A 20 ms period and 5 ms for late: a loaded machine's own stalls stay below."""
    period = 20 * MS
    pacer, late = Pacer(period), LatePeriods(period, late_ns=5 * MS)
    woke = [0, 0]

    def late_waiter(until_ns: int) -> None:
        while time.monotonic_ns() < until_ns + 8 * MS:
            pass
        woke[:] = [time.monotonic_ns(), until_ns]

    def tick(waiter: object, work_ns: int) -> str | None:
        late.waiting(time.monotonic_ns(), run_delay_ns=0)
        t = pacer.wait(waiter)  # type: ignore[arg-type]
        cls = late.tick(t.index, t.expected_ns, t.actual_ns, skipped=t.skipped,
                        woke_ns=woke[0], woke_until_ns=woke[1], woke_ready=False,
                        commands=0, run_delay_ns=0, gc_total_ns=0)
        end = t.actual_ns + work_ns
        while time.monotonic_ns() < end:
            pass
        late.ran(time.monotonic_ns())
        return None if cls is None else CLASSES[cls]

    pacer.restart()
    tick(None, 100 * US)  # the first: nothing to judge it by
    assert tick(late_waiter, 100 * US) == "slow_wakeup"
    tick(None, period + 6 * MS)  # this period's work runs past the next deadline
    assert tick(None, 100 * US) == "long_period"
