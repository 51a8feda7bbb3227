"""Clock sync: NTP arithmetic, minimum-delay filtering under asymmetric spikes, rejection."""

from __future__ import annotations

import random

import pytest

from telesurgery.errors import SchemaError
from transport import schema
from transport.clocksync import ClockSync
from transport.schema import Pong

MS = 1_000_000


class Peer:
    """A remote clock: remote = local - offset, so local = remote + offset."""

    def __init__(self, offset_ns: int) -> None:
        self.offset_ns = offset_ns

    def remote(self, local_ns: int) -> int:
        return local_ns - self.offset_ns


def exchange(cs: ClockSync, peer: Peer, t1: int, up_ns: int, down_ns: int, *,
             hold_ns: int = 50_000) -> int:
    """One ping/pong through real encode/decode; returns t4 on the local clock."""
    ping = schema.decode_as(schema.encode(cs.make_ping(t1)), schema.Ping)
    t2_local = t1 + up_ns
    t3_local = t2_local + hold_ns
    pong = ClockSync.answer(ping, peer.remote(t2_local), peer.remote(t3_local))
    t4 = t3_local + down_ns
    cs.on_pong(schema.decode_as(schema.encode(pong), schema.Pong), t4)
    return t4


def test_symmetric_exchange_gives_exact_rtt_and_offset() -> None:
    cs = ClockSync()
    peer = Peer(offset_ns=123_456_789)
    exchange(cs, peer, t1=10 * MS, up_ns=2 * MS, down_ns=2 * MS)
    assert cs.rtt_ns == 4 * MS
    assert cs.offset_ns == 123_456_789
    assert cs.to_local(peer.remote(5 * MS)) == 5 * MS
    assert cs.to_remote(5 * MS) == peer.remote(5 * MS)


def test_ping_seq_increments() -> None:
    cs = ClockSync()
    assert [cs.make_ping(i).seq for i in range(3)] == [1, 2, 3]


def test_min_delay_filter_keeps_offset_error_small_under_asymmetric_spikes() -> None:
    rng = random.Random(7)
    peer = Peer(offset_ns=-987_654_321)
    cs = ClockSync(window=16)
    naive_errors: list[int] = []
    filtered_errors: list[int] = []
    t = 1_000 * MS
    for _ in range(400):
        up = 1 * MS + rng.randint(0, 200_000)
        down = 1 * MS + rng.randint(0, 200_000)
        # One probe in three hits a one-way queueing spike of up to 80 ms.
        if rng.random() < 1 / 3:
            if rng.random() < 0.5:
                up += rng.randint(10 * MS, 80 * MS)
            else:
                down += rng.randint(10 * MS, 80 * MS)
        t = exchange(cs, peer, t, up, down) + 10 * MS
        naive_errors.append(abs((up - down) // 2))  # what a single-sample estimate gets
        assert cs.offset_ns is not None
        filtered_errors.append(abs(cs.offset_ns - peer.offset_ns))
    assert max(naive_errors) > 5 * MS  # the spikes are real
    # Half the asymmetry of the fastest exchange: a tenth of a millisecond, not tens.
    assert max(filtered_errors[16:]) <= 200_000
    assert cs.rtt_min_ns is not None and cs.rtt_min_ns < 3 * MS


def test_rtt_is_the_latest_sample_so_a_slow_link_shows_at_once() -> None:
    cs = ClockSync()
    peer = Peer(0)
    t = exchange(cs, peer, 0, 1 * MS, 1 * MS)
    exchange(cs, peer, t + MS, 150 * MS, 150 * MS)
    assert cs.rtt_ns == 300 * MS
    assert cs.rtt_min_ns is not None and cs.rtt_min_ns < 3 * MS


def test_offset_follows_a_changed_offset_once_old_samples_leave_the_window() -> None:
    cs = ClockSync(window=4)
    t = 0
    for _ in range(4):
        t = exchange(cs, Peer(0), t, MS // 2, MS // 2) + MS  # very fast samples
    for _ in range(4):
        t = exchange(cs, Peer(5 * MS), t, 2 * MS, 2 * MS) + MS
    assert cs.offset_ns == 5 * MS


def test_unknown_duplicate_and_mismatched_pongs_are_rejected() -> None:
    cs = ClockSync()
    ping = cs.make_ping(1_000)
    pong = ClockSync.answer(ping, 2_000, 3_000)
    assert cs.on_pong(pong, 4_000)
    assert cs.accepted == 1
    assert not cs.on_pong(pong, 5_000)  # duplicate
    cs.on_pong(Pong(seq=99, t1_ns=1_000, t2_ns=2_000, t3_ns=3_000), 5_000)  # never sent
    ping2 = cs.make_ping(6_000)
    cs.on_pong(Pong(seq=ping2.seq, t1_ns=5_999, t2_ns=7_000, t3_ns=7_100), 8_000)  # wrong t1
    assert cs.rejected == 3
    assert cs.accepted == 1
    assert cs.last_pong_ns == 4_000


def test_pongs_older_than_the_window_are_rejected() -> None:
    cs = ClockSync(window=4)
    first = cs.make_ping(0)
    for i in range(1, 5):
        cs.make_ping(i)
    cs.on_pong(ClockSync.answer(first, 10, 11), 20)
    assert cs.rejected == 1
    assert cs.rtt_ns is None


@pytest.mark.parametrize(("t2", "t3", "t4", "field"), [
    (2_000, 1_500, 4_000, "pong.t3_ns"),  # answered before it was received
    (2_000, 9_000, 4_000, "pong.t2_ns"),  # held longer than the whole round trip
])
def test_impossible_timestamps_are_counted_and_leave_the_estimate(
        t2: int, t3: int, t4: int, field: str, caplog: pytest.LogCaptureFixture) -> None:
    cs = ClockSync()
    ping = cs.make_ping(1_000)
    assert not cs.on_pong(Pong(seq=ping.seq, t1_ns=1_000, t2_ns=t2, t3_ns=t3), t4)
    assert isinstance(cs.last_invalid, SchemaError)
    assert cs.last_invalid.field == field
    assert cs.invalid == 1
    assert "impossible timestamps" in caplog.text
    assert cs.rtt_ns is None and cs.offset_ns is None
    # The ping is still outstanding: a correct answer to it is still taken.
    assert cs.on_pong(Pong(seq=ping.seq, t1_ns=1_000, t2_ns=1_500, t3_ns=1_600), 2_000)


def test_unknown_rtt_is_never_fresh_and_freshness_expires() -> None:
    cs = ClockSync(stale_after_ns=250 * MS)
    assert not cs.fresh(0)
    assert cs.rtt_ns is None and cs.offset_ns is None and cs.last_pong_ns is None
    t4 = exchange(cs, Peer(0), 0, MS, MS)
    assert cs.fresh(t4)
    assert cs.fresh(t4 + 250 * MS)
    assert not cs.fresh(t4 + 250 * MS + 1)


def test_pending_pings_stay_bounded() -> None:
    cs = ClockSync(window=8)
    for i in range(10_000):
        cs.make_ping(i)
    assert len(cs._pending) == 8


def test_bad_construction_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        ClockSync(window=0)
    with pytest.raises(ValueError, match="stale_after_ns"):
        ClockSync(stale_after_ns=0)


def test_a_claimed_hold_cannot_hide_the_round_trip() -> None:
    """The robot's clock bounds the console's claim: a 150 ms round trip whose answerer
    claims it held the ping for all but 1 us still measures about 150 ms."""
    cs = ClockSync(max_held_ns=2_000_000)
    ping = cs.make_ping(1_000_000)
    t4 = 1_000_000 + 150_000_000
    claimed_t2, claimed_t3 = 1_000_000 + 1, t4 - 1  # impossible to check from here
    assert cs.on_pong(Pong(seq=ping.seq, t1_ns=ping.t1_ns, t2_ns=claimed_t2, t3_ns=claimed_t3),
                      t4)
    assert cs.rtt_ns is not None and cs.rtt_ns >= 148_000_000
    assert cs.held_capped == 1
