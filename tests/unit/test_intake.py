"""CommandIntake: only accepted commands feed the statistics; no single message locks anyone out."""

from __future__ import annotations

import pytest

from safety.config import WatchdogLimits
from safety.watchdog import LinkWatchdog
from telesurgery.errors import ConfigError
from transport.gate import Verdict
from transport.intake import CommandIntake
from transport.schema import I64_MIN, U64, Command

MS = 1_000_000
AGE = 100 * MS


def cmd(seq: int, t_send_ns: int, session: int | None = None) -> Command:
    return Command(seq=seq, t_send_ns=t_send_ns, position=(0.3, 0.0, 0.2),
                   orientation=(1.0, 0.0, 0.0, 0.0), grip=0.0, clutch=False,
                   operator_present=True, session=session)


def intake() -> CommandIntake:
    return CommandIntake(AGE, 1000 * MS, 1000.0)


def stream(it: CommandIntake, seqs: range, t0: int, offset: int = 0,
           session: int | None = None) -> list[Verdict]:
    """The console at 1 kHz, 1 ms one-way latency; seq s is sent at t0 + s ms."""
    return [it.offer(cmd(s, t0 + s * MS - offset, session), t0 + s * MS + MS, offset)
            for s in seqs]


def test_a_stale_command_never_feeds_the_statistics() -> None:
    """Issue 12.2: seq 2**64-1 sent at INT64_MIN is STALE and must leave no trace."""
    it = intake()
    assert set(stream(it, range(1, 200), 0)) == {Verdict.FRESH}
    before = it.stats.snapshot(200 * MS)
    assert it.offer(cmd(U64, I64_MIN), 200 * MS, 0) is not Verdict.FRESH
    # A plausible sequence number with an impossible send time: STALE, not counted.
    assert it.offer(cmd(250, I64_MIN), 200 * MS, 0) is Verdict.STALE
    assert it.offer(cmd(251, 2**62), 200 * MS, 0) is Verdict.STALE
    after = it.stats.snapshot(200 * MS)
    assert after == before
    # Later real commands are fresh and judged as before: no latency_high, no loss.
    assert set(stream(it, range(200, 400), 0)) == {Verdict.FRESH}
    snap = it.stats.snapshot(401 * MS)
    assert snap.latency_us == 1000 and snap.loss == 0.0 and snap.received == 399
    wd = LinkWatchdog(WatchdogLimits())
    wd.on_fresh_command(401 * MS)
    wd.on_video_age(401 * MS, 0)
    health = wd.evaluate(401 * MS, snap, 2 * MS, True)
    assert health.ok, health.detail


def test_one_huge_sequence_number_with_a_fresh_time_locks_nobody_out() -> None:
    """Issue 12.3 (Bonaci 2015): a fresh-looking seq 2**64-1 is INVALID, not the newest."""
    it = intake()
    assert set(stream(it, range(1, 100), 0)) == {Verdict.FRESH}
    assert it.offer(cmd(U64, 99 * MS), 100 * MS, 0) is Verdict.INVALID
    assert it.offer(cmd(2**40, 99 * MS), 100 * MS, 0) is Verdict.INVALID
    assert it.last_seq == 99
    # The surgeon's next commands are fresh at once: no replay, no lock-out.
    assert set(stream(it, range(100, 300), 0)) == {Verdict.FRESH}
    assert it.stats.snapshot(300 * MS).loss == 0.0
    assert it.counters["invalid"] == 2
    alerts = it.drain_alerts()
    assert [a.code for a in alerts] == ["implausible_sequence_jump"], "audited once"
    assert it.drain_alerts() == []


def test_the_bound_is_the_robots_elapsed_time_not_the_consoles_claim() -> None:
    """A forward-dated send time does not buy a larger jump: only the robot's clock counts."""
    it = intake()
    stream(it, range(1, 10), 0)
    # 10 ms later on the robot's clock: 10 commands at 1 kHz, + 2 x 100 ms of latency spread.
    allowed = int((10 * MS + 2 * AGE) * 1000 * 1.25 / 1e9) + 16
    recv = 10 * MS + 10 * MS
    assert it.offer(cmd(9 + allowed + 1, recv + 90 * MS), recv, 0) is Verdict.INVALID
    assert it.offer(cmd(9 + allowed, recv - MS), recv, 0) is Verdict.FRESH


def test_legitimate_gaps_and_bursts_stay_fresh() -> None:
    it = intake()
    stream(it, range(1, 50), 0)
    # A 2 s silence (console paused), then it resumes 2000 seqs further on.
    assert it.offer(cmd(2050, 2050 * MS), 2051 * MS, 0) is Verdict.FRESH
    # A stalled network delivers 300 queued commands in one burst at the end.
    t = 2051 * MS
    verdicts = [it.offer(cmd(2051 + i, 2051 * MS + i * MS), t + 300 * MS, 0)
                for i in range(300)]
    assert verdicts.count(Verdict.STALE) > 0  # the oldest ones are too old now
    assert verdicts[-1] is Verdict.FRESH


def test_only_reset_clears_the_sequence_history() -> None:
    it = intake()
    stream(it, range(1000, 1010), 0)
    assert it.offer(cmd(5, 1010 * MS), 1011 * MS, 0) is Verdict.REPLAY
    it.reset(session=7)
    assert it.offer(cmd(5, 1012 * MS, session=7), 1013 * MS, 0) is Verdict.FRESH
    assert it.stats.snapshot(1013 * MS).received == 1


def test_commands_of_another_session_are_foreign() -> None:
    it = intake()
    stream(it, range(1, 5), 0)
    it.reset(session=42)
    # In flight across the re-arm (the old, untokened stream): refused quietly.
    assert it.offer(cmd(5, 5 * MS), 6 * MS, 0) is Verdict.FOREIGN
    assert it.drain_alerts() == []
    # Someone else's token: refused and audited once.
    assert it.offer(cmd(6, 6 * MS, session=41), 7 * MS, 0) is Verdict.FOREIGN
    assert it.offer(cmd(7, 7 * MS, session=43), 8 * MS, 0) is Verdict.FOREIGN
    assert [a.code for a in it.drain_alerts()] == ["command_foreign_session"]
    assert it.offer(cmd(8, 8 * MS, session=42), 9 * MS, 0) is Verdict.FRESH
    assert it.stats.snapshot(9 * MS).received == 1
    assert it.counters["foreign"] == 3
    # After the session's first fresh command an untokened one is news: audited.
    it.reset(session=43)
    assert it.offer(cmd(1, 9 * MS, session=43), 10 * MS, 0) is Verdict.FRESH
    assert it.offer(cmd(2, 9 * MS, session=42), 10 * MS, 0) is Verdict.FOREIGN
    assert [a.code for a in it.drain_alerts()] == ["command_foreign_session"]


def test_rejects_a_nonpositive_rate() -> None:
    with pytest.raises(ConfigError, match="max_command_hz"):
        CommandIntake(AGE, 1000 * MS, 0.0)
