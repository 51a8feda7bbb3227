"""NTP-style round-trip and clock-offset estimation, pure logic with time passed in.

One side sends ``Ping(seq, t1)``; the other answers ``Pong(seq, t1, t2, t3)`` with its
receive (t2) and send (t3) times on its own monotonic clock; the pong arrives at t4.

    rtt    = (t4 - t1) - (t3 - t2)
    offset = ((t1 - t2) + (t4 - t3)) / 2        so that  local = remote + offset

A delay spike on one direction only biases that sample's offset by half the spike, so
the offset is taken from the sample with the smallest round trip in a sliding window
(minimum-delay filtering, as NTP's clock filter does): the fastest exchange is the one
least distorted by queueing. ``rtt_ns`` on the other hand is the latest sample, so a
watchdog sees a slowing link at the first pong that measures it.

The round trip rests on this side's clock: of the answerer's claimed hold time
(t3 - t2) at most ``max_held_ns`` is subtracted, so a lying console cannot make a
150 ms link look like 1 us.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from telesurgery.errors import SchemaError
from transport.schema import Ping, Pong

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClockSample:
    t4_ns: int
    rtt_ns: int
    offset_ns: int


class ClockSync:
    """Round trip and offset from ping/pong exchanges; no sockets, no clock of its own."""

    def __init__(self, window: int = 16, stale_after_ns: int = 250_000_000,
                 max_held_ns: int = 2_000_000) -> None:
        if window < 1:
            raise ValueError(f"window = {window}: must be >= 1")
        if stale_after_ns <= 0:
            raise ValueError(f"stale_after_ns = {stale_after_ns}: must be > 0")
        self.window = window
        self.stale_after_ns = stale_after_ns
        self.max_held_ns = max_held_ns
        """The most of the answerer's claimed hold time (t3 - t2) believed: the rest of
        the round trip is the robot's own measurement (t4 - t1), so a console cannot
        hide a slow link by claiming it held the ping."""
        self.held_capped = 0
        self._seq = 0
        # Outstanding pings by seq; only the newest `window` are kept, so a pong
        # older than that is rejected as stale (and memory stays bounded).
        self._pending: dict[int, int] = {}
        self._samples: deque[ClockSample] = deque(maxlen=window)
        self._best: ClockSample | None = None
        self._last_pong_ns: int | None = None
        self.accepted = 0
        self.rejected = 0
        """Pongs for unknown, answered or too old seqs, or with a mismatched t1."""
        self.invalid = 0
        """Pongs with impossible timestamps (negative round trip or t3 < t2)."""
        self.last_invalid: SchemaError | None = None

    # ---------------------------------------------------------------- exchange
    def make_ping(self, now_ns: int) -> Ping:
        self._seq += 1
        self._pending[self._seq] = now_ns
        while len(self._pending) > self.window:
            del self._pending[next(iter(self._pending))]
        return Ping(seq=self._seq, t1_ns=now_ns)

    @staticmethod
    def answer(ping: Ping, recv_ns: int, send_ns: int) -> Pong:
        """The answering side: echo t1, stamp receive and send on this clock."""
        return Pong(seq=ping.seq, t1_ns=ping.t1_ns, t2_ns=recv_ns, t3_ns=send_ns)

    def on_pong(self, pong: Pong, now_ns: int) -> bool:
        """Take one answer received at ``now_ns`` (t4); True if it updated the estimate.

        A pong that does not match an outstanding ping (late, duplicated, forged) is
        counted in ``rejected``; one with impossible timestamps (answered before it was
        received, or held longer than the whole round trip) in ``invalid``, with a
        warning. Neither raises: this runs in the network threads, where a bad answer
        must cost one sample, not the loop. ``last_invalid`` says what was wrong.
        """
        t1 = self._pending.get(pong.seq)
        if t1 is None or t1 != pong.t1_ns:
            self.rejected += 1
            log.debug("pong seq %d rejected: no matching outstanding ping", pong.seq)
            return False
        held = pong.t3_ns - pong.t2_ns
        rtt = (now_ns - t1) - held
        if held < 0 or rtt < 0:
            self.invalid += 1
            field = "pong.t3_ns" if held < 0 else "pong.t2_ns"
            self.last_invalid = SchemaError(
                field, f"impossible timestamps: held {held} ns, round trip {rtt} ns")
            log.warning("pong seq %d invalid: %s", pong.seq, self.last_invalid)
            return False
        del self._pending[pong.seq]
        if held > self.max_held_ns:
            self.held_capped += 1
            rtt = (now_ns - t1) - self.max_held_ns
        offset = ((t1 - pong.t2_ns) + (now_ns - pong.t3_ns)) // 2
        sample = ClockSample(t4_ns=now_ns, rtt_ns=rtt, offset_ns=offset)
        evicted = self._samples[0] if len(self._samples) == self.window else None
        self._samples.append(sample)
        if self._best is None or evicted is self._best:
            self._best = min(self._samples, key=lambda s: s.rtt_ns)
        elif rtt <= self._best.rtt_ns:
            self._best = sample
        self._last_pong_ns = now_ns
        self.accepted += 1
        return True

    # ---------------------------------------------------------------- estimates
    @property
    def rtt_ns(self) -> int | None:
        """Round trip of the latest accepted pong; None before the first one."""
        return self._samples[-1].rtt_ns if self._samples else None

    @property
    def rtt_min_ns(self) -> int | None:
        """Smallest round trip in the window (the sample the offset comes from)."""
        return self._best.rtt_ns if self._best else None

    @property
    def offset_ns(self) -> int | None:
        """``local = remote + offset``, from the minimum-delay sample in the window."""
        return self._best.offset_ns if self._best else None

    @property
    def last_pong_ns(self) -> int | None:
        return self._last_pong_ns

    def fresh(self, now_ns: int) -> bool:
        """True only if a pong was accepted within ``stale_after_ns``.

        An unknown round trip is unhealthy, never "fine": no pong yet means False.
        """
        last = self._last_pong_ns
        return last is not None and now_ns - last <= self.stale_after_ns

    def to_remote(self, local_ns: int) -> int | None:
        """Map a local timestamp to the peer's clock; None without an estimate."""
        off = self.offset_ns
        return None if off is None else local_ns - off

    def to_local(self, remote_ns: int) -> int | None:
        """Map a peer timestamp to the local clock; None without an estimate."""
        off = self.offset_ns
        return None if off is None else remote_ns + off
