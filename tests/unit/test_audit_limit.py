"""RefusalLimiter: refused-request audit records per peer and second, the rest aggregated."""

from __future__ import annotations

from safety.audit_limit import OVERFLOW_PEER, RefusalLimiter

MS = 1_000_000


def test_a_burst_passes_the_rest_is_one_summary_per_peer_and_window() -> None:
    lim = RefusalLimiter(burst=3, max_peers=4)
    passed = [lim.allow(b"a", i * MS) for i in range(1000)]
    assert sum(passed) == 3 and passed[:3] == [True, True, True]
    assert lim.allow(b"b", 5 * MS), "another peer has its own burst"
    assert lim.due(999 * MS) == [], "nothing before the window ends"
    (summary,) = lim.due(1000 * MS)
    assert summary.peer == b"a" and summary.suppressed == 997
    assert "997 refused control requests from peer 61" in summary.describe()
    assert lim.due(1005 * MS) == [], "b had nothing suppressed: no summary"
    assert not lim.active
    assert lim.allow(b"a", 1001 * MS), "a new window, a new burst"


def test_memory_is_bounded_by_max_peers() -> None:
    lim = RefusalLimiter(burst=1, max_peers=2)
    for i in range(100):
        lim.allow(bytes([i]), 0)
    assert len(lim.due(2000 * MS)) == 1
    lim2 = RefusalLimiter(burst=1, max_peers=2)
    for i in range(100):
        lim2.allow(bytes([i]), 0)
    (summary,) = lim2.due(1000 * MS)
    assert summary.peer == OVERFLOW_PEER and summary.suppressed == 97
