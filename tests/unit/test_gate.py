"""CommandGate: only fresh, in-order, never-seen commands pass."""

from __future__ import annotations

import pytest

from transport.gate import CommandGate, Verdict
from transport.schema import Command

MS = 1_000_000


def cmd(seq: int, t_send_ns: int) -> Command:
    return Command(seq=seq, t_send_ns=t_send_ns, position=(0.3, 0.0, 0.2),
                   orientation=(1.0, 0.0, 0.0, 0.0), grip=0.0, clutch=False,
                   operator_present=True)


def test_fresh_commands_pass_in_order() -> None:
    gate = CommandGate(50 * MS)
    assert gate.offer(cmd(1, 1000 * MS), 1001 * MS, 0) is Verdict.FRESH
    assert gate.offer(cmd(3, 1002 * MS), 1003 * MS, 0) is Verdict.FRESH  # a gap is loss, not replay
    assert gate.last_seq == 3


def test_duplicate_and_replay_are_never_fresh() -> None:
    gate = CommandGate(50 * MS)
    assert gate.offer(cmd(5, 0), 1 * MS, 0) is Verdict.FRESH
    # Same seq again, even with a brand-new timestamp: a duplicate.
    assert gate.offer(cmd(5, 2 * MS), 2 * MS, 0) is Verdict.DUPLICATE
    assert gate.offer(cmd(4, 2 * MS), 2 * MS, 0) is Verdict.REPLAY
    assert gate.offer(cmd(0, 2 * MS), 2 * MS, 0) is Verdict.REPLAY
    assert gate.last_seq == 5


def test_stale_uses_offset_and_age_limit() -> None:
    gate = CommandGate(50 * MS)
    # The console clock is 10 s behind ours: local = remote + offset.
    offset = 10_000 * MS
    assert gate.offer(cmd(1, 0), offset + 49 * MS, offset) is Verdict.FRESH
    assert gate.offer(cmd(2, 0), offset + 51 * MS, offset) is Verdict.STALE
    assert gate.last_age_ns == 51 * MS
    # Without the offset, the same command would look 10 s old: the offset sign matters.
    assert gate.offer(cmd(3, 100 * MS), offset + 120 * MS, offset) is Verdict.FRESH


def test_stale_does_not_advance_sequence() -> None:
    gate = CommandGate(50 * MS)
    assert gate.offer(cmd(10, 0), 100 * MS, 0) is Verdict.STALE
    assert gate.last_seq is None
    assert gate.offer(cmd(9, 100 * MS), 101 * MS, 0) is Verdict.FRESH


def test_command_from_the_future_is_stale() -> None:
    gate = CommandGate(50 * MS)
    assert gate.offer(cmd(1, 200 * MS), 100 * MS, 0) is Verdict.STALE
    assert gate.offer(cmd(2, 110 * MS), 100 * MS, 0) is Verdict.FRESH  # small clock error is ok


def test_unknown_clock_is_not_fresh() -> None:
    gate = CommandGate(50 * MS)
    assert gate.offer(cmd(1, 0), 0, None) is Verdict.NO_CLOCK
    assert gate.last_seq is None
    # A duplicate is a duplicate whether or not the clock is known.
    gate.offer(cmd(2, 0), 0, 0)
    assert gate.offer(cmd(2, 0), 0, None) is Verdict.DUPLICATE


def test_reset_starts_a_new_session() -> None:
    gate = CommandGate(50 * MS)
    assert gate.offer(cmd(1000, 0), 0, 0) is Verdict.FRESH
    assert gate.offer(cmd(1, 0), 0, 0) is Verdict.REPLAY  # console restarted its sequence
    gate.reset()
    assert gate.offer(cmd(1, 0), 0, 0) is Verdict.FRESH


def test_counters_per_verdict() -> None:
    gate = CommandGate(50 * MS)
    gate.offer(cmd(1, 0), 0, 0)
    gate.offer(cmd(1, 0), 0, 0)
    gate.offer(cmd(0, 0), 0, 0)
    gate.offer(cmd(2, 0), 0, None)
    gate.offer(cmd(3, 0), 60 * MS, 0)
    assert gate.counters == {"fresh": 1, "duplicate": 1, "replay": 1, "no_clock": 1, "stale": 1,
                             "invalid": 0, "foreign": 0}


def test_rejects_nonpositive_limit() -> None:
    with pytest.raises(ValueError, match="age_limit_ns"):
        CommandGate(0)
