"""Link watchdog: every trip with its detection bound, the warning scale, the settling clock.

The bounds are checked on a simulated link with an injected clock: a console sending
commands at 1 kHz, clock-sync pings every 20 ms, the real LinkStats and ClockSync, and
one evaluate per 1 ms control period. Faults are injected at a known time and the first
trip must come after the fault and no later than its documented bound.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import replace

import pytest

from safety.config import WatchdogLimits
from safety.states import Reason
from safety.watchdog import LinkHealth, LinkWatchdog
from transport.clocksync import ClockSync
from transport.linkstats import LinkSnapshot, LinkStats
from transport.schema import Pong

MS = 1_000_000
P = MS  # control period
OFFSET = 3_000 * MS  # robot clock = console clock + OFFSET
CFG = WatchdogLimits()


class Rig:
    """The robot side of a simulated link, everything driven by one injected clock."""

    def __init__(self, cfg: WatchdogLimits = CFG, ping_every_ns: int = 20 * MS,
                 send_every_ns: int = MS) -> None:
        self.cfg = cfg
        self.now = 0
        self.ping_every_ns = ping_every_ns
        self.send_every_ns = send_every_ns
        self.cs = ClockSync(stale_after_ns=250 * MS)
        self.ls = LinkStats(window_ns=int(cfg.loss_window_ms * MS))
        self.wd = LinkWatchdog(cfg)
        self.fwd: Callable[[int, int], int] = lambda seq, t: MS  # console -> robot delay
        self.back_ns = MS  # robot -> console delay
        self.drop: Callable[[int], bool] = lambda seq: False
        self.pongs = True
        self.video_age_us: int | None = 20_000
        self.seq = 0
        self._heap: list[tuple[int, int, object]] = []
        self._n = 0
        self.arrivals: list[tuple[int, int]] = []  # (recv_ns, seq)

    def _push(self, at: int, obj: object) -> None:
        self._n += 1  # a tie-breaker, so that equal arrival times keep sending order
        heapq.heappush(self._heap, (at, self._n, obj))

    def tick(self) -> LinkHealth:
        t = self.now
        if t % self.send_every_ns == 0:
            if not self.drop(self.seq):
                payload = (self.seq, t - OFFSET, self.video_age_us)
                self._push(t + self.fwd(self.seq, t), payload)
            self.seq += 1
        if t % self.ping_every_ns == 0 and self.pongs:
            ping = self.cs.make_ping(t)
            at_console = t + self.back_ns
            pong = ClockSync.answer(ping, at_console - OFFSET, at_console - OFFSET + 10_000)
            self._push(at_console + 10_000 + self.fwd(-1, t), pong)
        while self._heap and self._heap[0][0] <= t:
            at, _, obj = heapq.heappop(self._heap)
            if isinstance(obj, Pong):
                self.cs.on_pong(obj, at)
                continue
            seq, sent, video_age_us = obj  # type: ignore[misc]
            self.ls.on_message(seq, sent, at, self.cs.offset_ns)
            self.arrivals.append((at, seq))
            if at - (sent + OFFSET) <= self.cfg.command_timeout_ms * MS:
                self.wd.on_fresh_command(at)
            self.wd.on_video_age(at, video_age_us)
        health = self.wd.evaluate(t, self.ls.snapshot(t), self.cs.rtt_ns, self.cs.fresh(t))
        self.now += P
        return health

    def run_until_trip(self, limit_ns: int) -> tuple[int, LinkHealth]:
        end = self.now + limit_ns
        while self.now <= end:
            t = self.now
            health = self.tick()
            if not health.ok:
                return t, health
        raise AssertionError(f"no trip within {limit_ns / MS} ms")

    def warm_up(self, ns: int = 1_000 * MS) -> None:
        end = self.now + ns
        while self.now < end:
            health = self.tick()
        assert health.ok, health


def test_healthy_link_is_ok_with_full_scale() -> None:
    rig = Rig()
    rig.warm_up()
    trips = dict(rig.wd.trips)  # only the start-up ones: nothing had arrived yet
    assert set(trips) <= {Reason.COMMAND_TIMEOUT, Reason.RTT_UNKNOWN}
    for _ in range(2000):
        health = rig.tick()
        assert health == LinkHealth(True, None, False, 1.0, "", health.healthy_since_ns)
    assert rig.wd.trips == trips


def test_command_timeout_bound() -> None:
    rig = Rig()
    rig.warm_up()
    fault_at = rig.now
    rig.drop = lambda seq: True
    t, health = rig.run_until_trip(500 * MS)
    last_cmd = max(at for at, _ in rig.arrivals)
    assert health.trip is Reason.COMMAND_TIMEOUT
    assert t > fault_at
    assert last_cmd + CFG.command_timeout_ms * MS < t <= last_cmd + CFG.command_timeout_ms * MS + P


def test_rtt_high_bound_with_a_slow_return_path() -> None:
    rig = Rig()
    rig.warm_up()
    fault_at = rig.now
    rig.back_ns = 205 * MS  # commands still fast; only the round trip grows
    t, health = rig.run_until_trip(1_000 * MS)
    assert health.trip is Reason.RTT_HIGH, health
    rtt = rig.cs.rtt_ns
    assert rtt is not None and rtt > CFG.rtt_halt_ms * MS
    # The first ping after the fault comes back one round trip later.
    assert fault_at < t <= fault_at + rig.ping_every_ns + rtt + P


def test_rtt_unknown_when_pongs_stop() -> None:
    rig = Rig()
    rig.warm_up()
    rig.pongs = False
    last_pong = rig.cs.last_pong_ns
    assert last_pong is not None
    t, health = rig.run_until_trip(1_000 * MS)
    assert health.trip is Reason.RTT_UNKNOWN
    assert last_pong + rig.cs.stale_after_ns < t <= last_pong + rig.cs.stale_after_ns + P


def test_latency_high_trips_at_the_first_late_command() -> None:
    # With the defaults a command older than the 50 ms command timeout is never fresh, so
    # the timeout fires before the 100 ms latency limit; a limit below the timeout is
    # needed to see this trip first.
    cfg = replace(CFG, latency_halt_ms=30.0)
    # One-way latency creeps up 0.5 ms per command; the sender slows to one every 2 ms
    # so that commands keep arriving in order and the command timeout never fires.
    rig = Rig(cfg, send_every_ns=2 * MS)
    rig.warm_up()
    start = rig.seq
    rig.fwd = lambda seq, t: MS + max(0, seq - start) * MS // 2 if seq >= 0 else MS
    t, health = rig.run_until_trip(2_000 * MS)
    assert health.trip is Reason.LATENCY_HIGH, health
    offset = rig.cs.offset_ns
    assert offset is not None
    first_late = min(at for at, seq in rig.arrivals
                     if seq >= start and at - ((seq * 2 * MS) - OFFSET + offset)
                     > cfg.latency_halt_ms * MS)
    assert first_late <= t <= first_late + P


def test_loss_burst_bound() -> None:
    rig = Rig()
    rig.warm_up()
    base = rig.seq
    # Three 40 ms bursts (each shorter than the command timeout) 200 ms apart: 12 % of a
    # second. Two are only 8 %, under the limit.
    bursts = [range(base + k * 200, base + k * 200 + 40) for k in range(3)]
    rig.drop = lambda seq: any(seq in b for b in bursts)
    t, health = rig.run_until_trip(2_000 * MS)
    assert health.trip is Reason.LOSS_BURST, health
    first_after_third = min(at for at, seq in rig.arrivals if seq >= bursts[2].stop)
    assert first_after_third <= t <= first_after_third + P


def test_jitter_trips_after_the_predicted_number_of_arrivals() -> None:
    cfg = replace(CFG, command_timeout_ms=100.0)
    rig = Rig(cfg, send_every_ns=40 * MS)
    rig.warm_up()
    start = rig.seq
    rig.fwd = lambda seq, t: (37 * MS if seq % 2 else 2 * MS) if seq >= start else 2 * MS
    t, health = rig.run_until_trip(3_000 * MS)
    assert health.trip is Reason.JITTER_HIGH, health
    # |D| = 35 ms per arrival from the second one on; J crosses 20 ms after n arrivals.
    n = math.ceil(math.log(1 - cfg.jitter_halt_ms / 35) / math.log(15 / 16))
    # Depending on the parity of `start`, the first new arrival has D = 0 or 35 ms.
    late = sorted(at for at, seq in rig.arrivals if seq >= start)
    assert len(late) in (n, n + 1)
    assert late[-1] <= t <= late[-1] + P


def test_video_stale_bound_without_further_reports() -> None:
    """A console that stops reporting cannot keep its last frame fresh: it keeps ageing."""
    wd = LinkWatchdog(CFG)
    wd.on_video_age(0, 100_000)  # the surgeon sees a frame captured 100 ms ago
    deadline = (CFG.video_stale_ms - 100) * MS
    wd.on_fresh_command(deadline)  # isolate the video rule
    assert wd.evaluate(deadline, good_snapshot(), 2 * MS, True).ok
    health = wd.evaluate(deadline + 1, good_snapshot(), 2 * MS, True)
    assert health.trip is Reason.VIDEO_STALE
    assert "ms old" in health.detail


def test_video_stale_on_the_simulated_link() -> None:
    rig = Rig()
    rig.warm_up()
    fault_at = rig.now
    rig.video_age_us = 300_000  # the console's display froze on an old frame
    t, health = rig.run_until_trip(100 * MS)
    assert health.trip is Reason.VIDEO_STALE
    assert fault_at < t <= fault_at + rig.fwd(0, 0) + P


@pytest.mark.parametrize(("age_us", "ok"), [(249_000, True), (251_000, False), (None, False)])
def test_video_age_reported(age_us: int | None, ok: bool) -> None:
    wd = LinkWatchdog(CFG)
    wd.on_fresh_command(0)
    wd.on_video_age(0, age_us)
    health = wd.evaluate(0, good_snapshot(), 2 * MS, True)
    assert health.ok is ok
    assert health.trip is (None if ok else Reason.VIDEO_STALE)


def test_no_video_needed_when_not_required() -> None:
    wd = LinkWatchdog(replace(CFG, require_video=False))
    wd.on_fresh_command(0)
    assert wd.evaluate(0, good_snapshot(), 2 * MS, True).ok


def good_snapshot(**over: object) -> LinkSnapshot:
    snap = LinkSnapshot(latency_us=1_000, latency_p99_us=1_000, jitter_us=100, loss=0.0,
                        received=1000, lost=0, duplicates=0, reordered=0, last_recv_ns=0)
    return replace(snap, **over)  # type: ignore[arg-type]


def fresh_watchdog(cfg: WatchdogLimits = CFG) -> LinkWatchdog:
    wd = LinkWatchdog(cfg)
    wd.on_fresh_command(0)
    wd.on_video_age(0, 10_000)
    return wd


@pytest.mark.parametrize(("snap", "rtt_ms", "clock_fresh", "trip"), [
    (good_snapshot(), None, True, Reason.RTT_UNKNOWN),
    (good_snapshot(), 2, False, Reason.RTT_UNKNOWN),
    (good_snapshot(latency_us=None), 2, True, Reason.RTT_UNKNOWN),
    (good_snapshot(), 200.001, True, Reason.RTT_HIGH),
    (good_snapshot(latency_us=100_001), 2, True, Reason.LATENCY_HIGH),
    (good_snapshot(loss=0.1001), 2, True, Reason.LOSS_BURST),
    (good_snapshot(jitter_us=20_001), 2, True, Reason.JITTER_HIGH),
])
def test_each_limit_trips_just_above_it(snap: LinkSnapshot, rtt_ms: float | None,
                                        clock_fresh: bool, trip: Reason) -> None:
    wd = fresh_watchdog()
    rtt = None if rtt_ms is None else int(rtt_ms * MS)
    health = wd.evaluate(0, snap, rtt, clock_fresh)
    assert (health.ok, health.trip, health.scale) == (False, trip, 0.0)
    assert health.detail
    assert wd.trips[trip] == 1


@pytest.mark.parametrize("snap", [
    good_snapshot(latency_us=100_000), good_snapshot(loss=0.1), good_snapshot(jitter_us=20_000),
])
def test_at_the_limit_is_still_ok(snap: LinkSnapshot) -> None:
    assert fresh_watchdog().evaluate(0, snap, 200 * MS, True).ok


def test_no_command_yet_is_a_timeout() -> None:
    health = LinkWatchdog(CFG).evaluate(0, good_snapshot(), 2 * MS, True)
    assert health.trip is Reason.COMMAND_TIMEOUT


@pytest.mark.parametrize(("rtt_ms", "scale", "warn"), [
    (50, 1.0, False), (100, 1.0, False), (150, 0.7, True), (200, 0.4, True),
])
def test_latency_adaptive_scale(rtt_ms: float, scale: float, warn: bool) -> None:
    health = fresh_watchdog().evaluate(0, good_snapshot(), int(rtt_ms * MS), True)
    assert health.ok
    assert health.scale == pytest.approx(scale)
    assert health.warn is warn
    assert bool(health.detail) is warn


def test_healthy_since_restarts_after_every_trip() -> None:
    wd = fresh_watchdog()
    assert wd.healthy_since_ns is None
    assert wd.evaluate(10 * MS, good_snapshot(), 2 * MS, True).healthy_since_ns == 10 * MS
    assert wd.evaluate(20 * MS, good_snapshot(), 2 * MS, True).healthy_since_ns == 10 * MS
    bad = wd.evaluate(30 * MS, good_snapshot(loss=0.5), 2 * MS, True)
    assert bad.healthy_since_ns is None and wd.healthy_since_ns is None
    wd.on_fresh_command(40 * MS)
    assert wd.evaluate(40 * MS, good_snapshot(), 2 * MS, True).healthy_since_ns == 40 * MS
    assert wd.healthy_since_ns == 40 * MS


def test_scale_follows_the_round_trip_within_one_healthy_streak() -> None:
    """A healthy verdict is kept between evaluations while the round trip is the same
    (issue 11); a new round trip, in or out of the warning band, must still change it."""
    wd = fresh_watchdog()
    seen = []
    for t, rtt_ms in enumerate((50, 50, 150, 150, 200, 50, 100, 150)):
        wd.on_fresh_command(t * MS)
        health = wd.evaluate(t * MS, good_snapshot(), rtt_ms * MS, True)
        assert health.ok and health.healthy_since_ns == 0
        seen.append((round(health.scale, 6), health.warn, bool(health.detail)))
    assert seen == [(1.0, False, False)] * 2 + [(0.7, True, True)] * 2 + [
        (0.4, True, True), (1.0, False, False), (1.0, False, False), (0.7, True, True)]
