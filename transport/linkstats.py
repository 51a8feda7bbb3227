"""Link statistics for one sequenced stream: latency, jitter, loss, duplicates, reordering.

Pure logic, time passed in, O(1) amortised per message and bounded memory, so it runs
on every command at 1 kHz.

- One-way latency needs the clock offset (``local = remote + offset``, from
  ``transport.clocksync``): ``latency = recv - (t_send + offset)``. Without an offset it
  is None, never a guess.
- Jitter is the RFC 3550 interarrival jitter: for consecutive arrivals,
  ``D = (R_i - R_j) - (S_i - S_j)`` and ``J += (|D| - J) / 16``. It does not need the
  offset, since a constant offset cancels.
- Loss comes from sequence gaps, the RFC 3550 way: ``expected = highest - first + 1``,
  ``lost = expected - received``. A late (reordered) arrival fills its gap and so lowers
  the loss. The windowed fraction compares these cumulative counts now with their values
  at the window start (a checkpoint kept per message).

A sender restart starts a new sequence space: the owner calls ``reset()`` for a new
session. An arrival more than ``REORDER_HORIZON`` sequence numbers behind the highest
cannot be matched to a gap any more and is counted in ``stale`` and otherwise ignored.
One thread feeds and reads a ``LinkStats`` (the robot's control thread): it has no lock.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass, fields
from typing import NamedTuple

log = logging.getLogger(__name__)

REORDER_HORIZON = 1024
"""How far behind the highest sequence number a late arrival may still fill its gap."""
MAX_CHECKPOINTS = 8192
"""Per-message window entries kept; above this rate the window is shortened, not grown."""


@dataclass(frozen=True, slots=True)
class LinkSnapshot:
    latency_us: int | None
    """One-way latency of the latest arrival; None without a clock offset."""
    latency_p99_us: int | None
    """99th percentile of one-way latency over the window; None without samples."""
    jitter_us: int | None
    """RFC 3550 interarrival jitter; None before two arrivals."""
    loss: float
    """Fraction of the sequence numbers expected in the window that are missing."""
    received: int
    """Distinct sequence numbers received since reset."""
    lost: int
    """Sequence numbers still missing since reset (late arrivals fill their gaps)."""
    duplicates: int
    reordered: int
    """Late arrivals that filled a gap."""
    last_recv_ns: int | None
    stale: int = 0
    """Arrivals too far behind to be matched to a gap; ignored."""


_SNAPSHOT_FIELDS = ("latency_us", "latency_p99_us", "jitter_us", "loss", "received", "lost",
                    "duplicates", "reordered", "last_recv_ns", "stale")
if tuple(f.name for f in fields(LinkSnapshot)) != _SNAPSHOT_FIELDS:  # _build_snapshot sets these
    raise RuntimeError("LinkSnapshot fields changed: update LinkStats._build_snapshot")
(_set_latency, _set_p99, _set_jitter, _set_loss, _set_received, _set_lost, _set_duplicates,
 _set_reordered, _set_last_recv, _set_stale) = (
    getattr(LinkSnapshot, name).__set__ for name in _SNAPSHOT_FIELDS)
_new_object = object.__new__


class _Checkpoint(NamedTuple):
    """The cumulative counts at one arrival. A tuple: one is made per command, and a
    slotted dataclass's ``__init__`` is a Python call more (issue 11)."""

    recv_ns: int
    expected: int
    received: int
    latency_ns: int | None


class LinkStats:
    """Statistics of one stream over a sliding window of ``window_ns`` of arrival time."""

    def __init__(self, window_ns: int = 1_000_000_000) -> None:
        if window_ns <= 0:
            raise ValueError(f"window_ns = {window_ns}: must be > 0")
        self.window_ns = window_ns
        self.reset()

    def reset(self) -> None:
        self._first_seq: int | None = None
        self._highest = -1
        self._received = 0
        self._duplicates = 0
        self._reordered = 0
        self._stale = 0
        # Missing seqs within the reorder horizon: a set for lookup, an ascending deque
        # so that seqs falling behind the horizon are dropped in O(1) amortised.
        self._missing: set[int] = set()
        self._missing_order: deque[int] = deque()
        self._jitter_ns = 0.0
        self._prev: tuple[int, int] | None = None  # (send_ns, recv_ns) of the last arrival
        self._latency_ns: int | None = None
        self._last_recv_ns: int | None = None
        self._window: deque[_Checkpoint] = deque()
        self._base: _Checkpoint | None = None
        # The window's latencies kept sorted (insort/del are C memmoves), so the
        # percentile is a lookup rather than a sort on every snapshot.
        self._sorted_latency: list[int] = []
        self._snap: LinkSnapshot | None = None
        """The last snapshot, while nothing it depends on changed (see ``snapshot``)."""

    # ---------------------------------------------------------------- input
    def on_message(self, seq: int, t_send_ns: int, recv_ns: int, offset_ns: int | None) -> None:
        """Account one arrival. ``t_send_ns`` is on the sender's clock."""
        self._snap = None  # every arrival changes a count, even an ignored one
        if not self._classify(seq):
            return
        self._received += 1
        if self._prev is not None:
            prev_send, prev_recv = self._prev
            d = (recv_ns - prev_recv) - (t_send_ns - prev_send)
            self._jitter_ns += (abs(d) - self._jitter_ns) / 16.0
        self._prev = (t_send_ns, recv_ns)
        self._latency_ns = None if offset_ns is None else recv_ns - (t_send_ns + offset_ns)
        self._last_recv_ns = recv_ns
        if len(self._window) == MAX_CHECKPOINTS:
            self._drop_oldest()
        self._window.append(_Checkpoint(recv_ns, self._expected(), self._received,
                                        self._latency_ns))
        if self._latency_ns is not None:
            insort(self._sorted_latency, self._latency_ns)

    def _classify(self, seq: int) -> bool:
        """Update the sequence bookkeeping; False for an arrival to ignore."""
        if self._first_seq is None:
            self._first_seq = self._highest = seq
            return True
        highest = self._highest
        if seq > highest:
            if seq != highest + 1:
                # Only the last REORDER_HORIZON missing seqs can still be filled; a larger
                # gap is still counted in full through `expected`.
                for missing in range(max(highest + 1, seq - REORDER_HORIZON), seq):
                    self._missing.add(missing)
                    self._missing_order.append(missing)
            self._highest = seq
            if self._missing_order:  # nothing to forget on a link without gaps
                self._forget_old_gaps()
            return True
        if seq in self._missing:
            self._missing.discard(seq)
            self._reordered += 1
            return True
        if seq < max(self._first_seq, self._highest - REORDER_HORIZON):
            self._stale += 1
            log.debug("seq %d is %d behind the highest; ignored", seq, self._highest - seq)
        else:
            self._duplicates += 1
        return False

    def _forget_old_gaps(self) -> None:
        horizon = self._highest - REORDER_HORIZON
        order = self._missing_order
        while order and order[0] < horizon:
            self._missing.discard(order.popleft())

    def _expected(self) -> int:
        return 0 if self._first_seq is None else self._highest - self._first_seq + 1

    # ---------------------------------------------------------------- output
    def snapshot(self, now_ns: int) -> LinkSnapshot:
        """The statistics as of ``now_ns``; the window is ``(now - window_ns, now]``.

        ``now_ns`` acts only through the window: between two arrivals the snapshot
        changes only when a checkpoint leaves the window, so until then the last one
        is returned as it is (it is immutable). The control thread asks every period,
        and a period without a new command then costs one comparison (issue 11).
        """
        window = self._window
        if window and window[0].recv_ns <= now_ns - self.window_ns:
            start = now_ns - self.window_ns
            while window and window[0].recv_ns <= start:
                self._drop_oldest()
            self._snap = None
        snap = self._snap
        if snap is None:
            snap = self._snap = self._build_snapshot()
        return snap

    def _build_snapshot(self) -> LinkSnapshot:
        latencies = self._sorted_latency
        # Nearest-rank percentile: the ceil(0.99 n)-th smallest.
        p99 = latencies[-(len(latencies) // 100) - 1] if latencies else None
        latency = self._latency_ns
        received = self._received
        # Filled through its slot setters: the object ``LinkSnapshot(...)`` makes, without
        # the frozen dataclass's ``object.__setattr__`` per field (half the cost; one a
        # period at 1 kHz, issue 11). tests/unit/test_linkstats.py compares every field.
        snap: LinkSnapshot = _new_object(LinkSnapshot)
        _set_latency(snap, None if latency is None else latency // 1000)
        _set_p99(snap, None if p99 is None else p99 // 1000)
        _set_jitter(snap, None if received < 2 else round(self._jitter_ns / 1000))
        _set_loss(snap, self._window_loss())
        _set_received(snap, received)
        _set_lost(snap, max(0, self._expected() - received))
        _set_duplicates(snap, self._duplicates)
        _set_reordered(snap, self._reordered)
        _set_last_recv(snap, self._last_recv_ns)
        _set_stale(snap, self._stale)
        return snap

    def _drop_oldest(self) -> None:
        """The oldest checkpoint leaves the window and becomes its start."""
        self._base = oldest = self._window.popleft()
        if oldest.latency_ns is not None:
            del self._sorted_latency[bisect_left(self._sorted_latency, oldest.latency_ns)]

    def _window_loss(self) -> float:
        if not self._window:
            return 0.0
        last = self._window[-1]
        base = self._base
        if base is None:
            # Nothing has left the window yet: it starts at the first arrival.
            expected, received = last.expected, last.received
        else:
            expected, received = last.expected - base.expected, last.received - base.received
        if expected <= 0:
            return 0.0
        # A late arrival whose gap opened before the window can make this negative.
        return min(1.0, max(0.0, (expected - received) / expected))
