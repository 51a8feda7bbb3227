"""Per-peer rate limit for audit records of refused control requests.

Every control operation is an audit record (issue 12.5), queued for the audit
thread; a queue that overflows is an audit failure and trips the arm. A console
holding a surgeon key (and the session) that floods refused requests (engage
with no command, thousands a second) therefore filled the 256-slot queue and
tripped the robot it was not even moving: a denial of service by audit.

``RefusalLimiter`` lets the first ``burst`` refused records of each peer per
``window`` through; the rest are counted, and when that peer's window ends one
aggregate ("N refused requests from X in the last second") goes to the audit
instead. Accepted operations get their own, larger allowance (a flood of
accepted ``set_scale`` or no-op ``disengage`` filled the queue the same way; every
one that changes the supervisor's state is also a transition record, never
limited). At most ``max_peers`` peers are tracked at once; beyond that the
refusals of new peers share one bucket, so memory stays bounded too.

Pure logic, clock passed in; the control thread asks it about each record.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_NS = 1_000_000_000
OVERFLOW_PEER = b"*"
"""The shared bucket of peers beyond ``max_peers``."""


@dataclass(slots=True)
class _Window:
    start_ns: int
    passed: int = 0
    suppressed: int = 0


@dataclass(frozen=True, slots=True)
class RefusalSummary:
    """Refused requests of one peer that were counted instead of recorded."""

    peer: bytes
    suppressed: int
    span_ns: int
    what: str = "refused"

    def describe(self) -> str:
        who = "several peers" if self.peer == OVERFLOW_PEER else f"peer {self.peer.hex()[:16]}"
        return (f"{self.suppressed} {self.what} control requests from {who} in the last "
                f"{self.span_ns / 1e9:.1f} s (counted, not recorded one by one)")


class RefusalLimiter:
    """Which refused-request records to audit one by one; see the module doc."""

    def __init__(self, burst: int = 8, window_ns: int = WINDOW_NS, max_peers: int = 64,
                 what: str = "refused") -> None:
        self.burst = burst
        self.what = what
        self.window_ns = window_ns
        self.max_peers = max_peers
        self._windows: dict[bytes, _Window] = {}
        self.suppressed_total = 0

    def allow(self, peer: bytes, now_ns: int) -> bool:
        """Record this refusal of ``peer`` one by one? False: it is counted."""
        if peer not in self._windows and len(self._windows) >= self.max_peers:
            peer = OVERFLOW_PEER
        w = self._windows.get(peer)
        if w is None:
            w = self._windows[peer] = _Window(now_ns)
        if w.passed < self.burst:
            w.passed += 1
            return True
        w.suppressed += 1
        self.suppressed_total += 1
        return False

    @property
    def active(self) -> bool:
        """Any window open (asked every period: nothing is built for nothing)."""
        return bool(self._windows)

    def due(self, now_ns: int) -> list[RefusalSummary]:
        """Close the windows that ended; a summary for each that counted refusals."""
        out: list[RefusalSummary] = []
        for peer, w in list(self._windows.items()):
            if now_ns - w.start_ns < self.window_ns:
                continue
            del self._windows[peer]
            if w.suppressed:
                out.append(RefusalSummary(peer, w.suppressed, now_ns - w.start_ns, self.what))
        return out
