"""Link statistics: loss from gaps, reordering filling gaps, duplicates, jitter, latency."""

from __future__ import annotations

import random

import pytest

from transport.linkstats import MAX_CHECKPOINTS, REORDER_HORIZON, LinkSnapshot, LinkStats

MS = 1_000_000
OFFSET = 7_000 * MS  # local = remote + OFFSET


def feed(ls: LinkStats, seqs: list[int], latency_ns: int = 2 * MS, start_ns: int = 0,
         period_ns: int = MS) -> int:
    """Deliver ``seqs`` in the given order, seq i sent at start + i * period (remote clock)."""
    recv = start_ns
    for seq in seqs:
        send_remote = start_ns + seq * period_ns - OFFSET
        recv = max(recv, start_ns + seq * period_ns + latency_ns)
        ls.on_message(seq, send_remote, recv, OFFSET)
    return recv


def test_clean_stream() -> None:
    ls = LinkStats()
    last = feed(ls, list(range(500)))
    snap = ls.snapshot(last)
    assert (snap.received, snap.lost, snap.duplicates, snap.reordered) == (500, 0, 0, 0)
    assert snap.loss == 0.0
    assert snap.latency_us == 2_000 and snap.latency_p99_us == 2_000
    assert snap.jitter_us == 0
    assert snap.last_recv_ns == last


def test_nothing_is_guessed_before_data_or_without_offset() -> None:
    ls = LinkStats()
    snap = ls.snapshot(0)
    assert snap.latency_us is None and snap.latency_p99_us is None and snap.jitter_us is None
    assert snap.last_recv_ns is None and snap.received == 0
    ls.on_message(0, 0, 5 * MS, None)
    snap = ls.snapshot(5 * MS)
    assert snap.latency_us is None and snap.latency_p99_us is None
    assert snap.jitter_us is None  # needs two arrivals


def test_gaps_are_loss() -> None:
    ls = LinkStats()
    last = feed(ls, [0, 1, 2, 5, 6, 7, 8, 9])  # 3 and 4 missing out of 10
    snap = ls.snapshot(last)
    assert snap.received == 8 and snap.lost == 2
    assert snap.loss == pytest.approx(0.2)


def test_reordered_arrivals_fill_their_gaps() -> None:
    ls = LinkStats()
    last = feed(ls, [0, 1, 3, 4, 2, 5])
    snap = ls.snapshot(last)
    assert snap.received == 6 and snap.lost == 0 and snap.reordered == 1
    assert snap.loss == 0.0


def test_duplicates_are_counted_not_received() -> None:
    ls = LinkStats()
    last = feed(ls, [0, 1, 1, 2, 2, 2, 3])
    snap = ls.snapshot(last)
    assert snap.received == 4 and snap.duplicates == 3 and snap.lost == 0
    # A reordered arrival is a duplicate the second time.
    last = feed(ls, [5, 4, 4], start_ns=0)
    snap = ls.snapshot(last)
    assert snap.reordered == 1 and snap.duplicates == 4


def test_ten_percent_burst_over_one_second_then_recovery() -> None:
    ls = LinkStats(window_ns=1000 * MS)
    lost = set(range(400, 501))  # 101 consecutive commands of 1000 at 1 kHz: 10.1 %
    last = feed(ls, [s for s in range(1000) if s not in lost])
    snap = ls.snapshot(last)
    assert snap.lost == 101
    assert snap.loss > 0.10
    # One clean second later the burst has left the window.
    last = feed(ls, list(range(1000, 2001)))
    snap = ls.snapshot(last)
    assert snap.loss == 0.0
    assert snap.lost == 101  # the cumulative count stays


def test_scattered_loss_at_the_limit() -> None:
    ls = LinkStats(window_ns=1000 * MS)
    last = feed(ls, [s for s in range(2000) if s % 10 != 3])  # every tenth lost
    assert ls.snapshot(last).loss == pytest.approx(0.1, abs=0.002)


def test_an_outage_counts_when_the_next_message_reveals_it() -> None:
    ls = LinkStats(window_ns=100 * MS)
    feed(ls, list(range(100)))
    # 300 commands vanish, longer than the window: the gap still counts in it.
    last = feed(ls, [400, 401])
    snap = ls.snapshot(last)
    assert snap.lost == 300
    assert snap.loss > 0.9


def test_rfc3550_jitter() -> None:
    ls = LinkStats()
    # Sent every 1 ms; arrivals alternate 0 and 2 ms of extra delay, so |D| = 2 ms each time.
    for seq in range(400):
        extra = 2 * MS if seq % 2 else 0
        ls.on_message(seq, seq * MS, seq * MS + MS + extra, 0)
        if seq == 1:
            assert ls.snapshot(seq * MS + 3 * MS).jitter_us == 125  # 2000 / 16
    assert ls.snapshot(400 * MS).jitter_us == pytest.approx(2000, abs=1)


def test_latency_and_p99_over_the_window() -> None:
    ls = LinkStats(window_ns=1000 * MS)
    latencies = list(range(1, 1001))  # 1..1000 us, shuffled
    random.Random(3).shuffle(latencies)
    for seq, lat_us in enumerate(latencies):
        ls.on_message(seq, seq * 10_000, seq * 10_000 + lat_us * 1000, 0)
    snap = ls.snapshot(999 * 10_000 + 1)
    assert snap.latency_p99_us == 990
    assert snap.latency_us == latencies[-1]
    # Offset applies: local = remote + offset.
    ls.on_message(1000, 0, 10 * MS, 4 * MS)
    assert ls.snapshot(10 * MS).latency_us == 6_000


def test_p99_forgets_old_samples() -> None:
    ls = LinkStats(window_ns=100 * MS)
    ls.on_message(0, 0, 500 * MS, 0)  # one awful sample
    for seq in range(1, 200):
        ls.on_message(seq, 500 * MS + seq * MS, 500 * MS + seq * MS + MS, 0)
    snap = ls.snapshot(700 * MS)
    assert snap.latency_p99_us == 1_000


def test_arrivals_far_behind_are_stale_and_ignored() -> None:
    ls = LinkStats()
    last = feed(ls, [0, *range(2, REORDER_HORIZON + 10)])
    snap_before = ls.snapshot(last)
    ls.on_message(1, 0, last + 1, OFFSET)  # seq 1 finally turns up, far too late
    snap = ls.snapshot(last + 1)
    assert snap.stale == 1 and snap.reordered == 0
    assert snap.received == snap_before.received and snap.lost == 1


def test_huge_gap_is_counted_in_full_with_bounded_memory() -> None:
    ls = LinkStats()
    ls.on_message(0, 0, MS, 0)
    ls.on_message(10**9, MS, 2 * MS, 0)
    snap = ls.snapshot(2 * MS)
    assert snap.lost == 10**9 - 1
    assert len(ls._missing) <= REORDER_HORIZON


def test_memory_stays_bounded_at_high_rate() -> None:
    ls = LinkStats(window_ns=10_000 * MS)
    for seq in range(3 * MAX_CHECKPOINTS):
        ls.on_message(seq, seq * 100_000, seq * 100_000 + MS, 0)  # 10 kHz
    assert len(ls._window) <= MAX_CHECKPOINTS
    assert len(ls._sorted_latency) <= MAX_CHECKPOINTS
    assert ls.snapshot(3 * MAX_CHECKPOINTS * 100_000).loss == 0.0


def test_reset_starts_a_new_sequence_space() -> None:
    ls = LinkStats()
    feed(ls, list(range(100)))
    ls.reset()
    last = feed(ls, [0, 1, 2])
    snap = ls.snapshot(last)
    assert (snap.received, snap.lost, snap.duplicates, snap.stale) == (3, 0, 0, 0)


def test_bad_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window_ns"):
        LinkStats(window_ns=0)


class _Rebuilt(LinkStats):
    """The reference: a snapshot computed afresh at every call (no kept snapshot)."""

    def snapshot(self, now_ns: int) -> LinkSnapshot:
        self._snap = None
        return super().snapshot(now_ns)


@pytest.mark.parametrize("seed", range(4))
def test_kept_snapshot_is_the_fresh_one(seed: int) -> None:
    """The control thread asks for a snapshot every period; between arrivals the last
    one is returned (issue 11). It must be the one a fresh computation gives at every
    instant: after gaps (a loss burst the watchdog trips on), late fills, duplicates,
    stale arrivals, checkpoints leaving the window, silences and a reset."""
    rng = random.Random(seed)
    kept, fresh = LinkStats(window_ns=50 * MS), _Rebuilt(window_ns=50 * MS)
    now, seq = 0, 0
    for step in range(6_000):
        now += rng.choice((MS // 4, MS, MS, 3 * MS)) if step % 997 else 80 * MS  # silences
        if step == 3_000:
            kept.reset()
            fresh.reset()
        for _ in range(rng.choice((0, 0, 1, 1, 1, 2))):  # periods with 0, 1 or 2 arrivals
            r = rng.random()
            seq = (seq + rng.randint(2, 40) if r < 0.05 else  # a gap
                   seq if r < 0.07 else  # a duplicate
                   max(0, seq - rng.randint(1, 30)) if r < 0.1 else  # late or stale
                   seq + 1)
            offset = None if r > 0.98 else OFFSET
            send = now - OFFSET - rng.randint(0, 3 * MS)
            kept.on_message(seq, send, now, offset)
            fresh.on_message(seq, send, now, offset)
        for probe in (now, now + MS // 2):  # also asked twice between arrivals
            assert kept.snapshot(probe) == fresh.snapshot(probe), (seed, step)
