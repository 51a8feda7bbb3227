"""Rate-limited logging: every event counted, at most one line per interval and key."""

from __future__ import annotations

import logging

import pytest

from telesurgery.ratelog import RateLimitedLog


def test_flood_is_counted_but_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    rl = RateLimitedLog(logging.getLogger("t.flood"), interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="t.flood"):
        written = [rl(logging.WARNING, "bad", "bad input %d", i) for i in range(1000)]
    assert written.count(True) == 1
    assert rl.counts["bad"] == 1000
    assert len(caplog.records) == 1


def test_suppressed_count_is_reported_on_next_line(caplog: pytest.LogCaptureFixture) -> None:
    rl = RateLimitedLog(logging.getLogger("t.next"), interval_s=0)
    rl._interval_ns = 10**18
    rl(logging.WARNING, "k", "first")
    rl(logging.WARNING, "k", "second")
    rl._next_ns["k"] = 0
    with caplog.at_level(logging.WARNING, logger="t.next"):
        rl(logging.WARNING, "k", "third")
    assert "1 more like it not logged" in caplog.records[-1].getMessage()


def test_peer_chosen_keys_are_bounded() -> None:
    rl = RateLimitedLog(logging.getLogger("t.keys"), max_keys=4)
    for i in range(100):
        rl(logging.DEBUG, f"k{i}", "x")
    assert len(rl.counts) <= 5
    assert rl.counts["other"] == 96
