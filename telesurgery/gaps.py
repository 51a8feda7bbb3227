"""Where a late command or a stale picture lost its time: cheap counters, clock passed in.

``GapCounter`` watches the interval between successive events of one stream (commands
sent, commands relayed, pictures shown) and ``AgeCounter`` the age of items at one
stage (a picture's age when encoded, received, shown). Each keeps its maximum and how
many exceeded a few thresholds, which is what a false trip needs to be traced: a
command timeout of 20 ms is a gap of 20 ms somewhere between the console's sample and
the robot's receive, a stale picture an age of 250 ms at some stage. O(1) per event, no
allocation, no lock (one writer; a reader may see a summary one event old).
"""

from __future__ import annotations

from collections.abc import Sequence

COMMAND_GAPS_MS = (5.0, 10.0, 20.0)
"""Command-stream thresholds: a 1 kHz stream should never see 5 ms; 20 ms trips."""
PICTURE_AGES_MS = (120.0, 250.0)
"""Picture thresholds: rate control's congestion age and the stale-picture lockout."""


class _Thresholds:
    def __init__(self, thresholds_ms: Sequence[float]) -> None:
        if not thresholds_ms or any(not t > 0 for t in thresholds_ms):
            raise ValueError(f"thresholds must be > 0 ms, got {list(thresholds_ms)}")
        self.thresholds_ms = tuple(sorted(thresholds_ms))
        self._limits_ns = tuple(int(t * 1e6) for t in self.thresholds_ms)
        self.over = [0] * len(self._limits_ns)
        self.n = 0
        self.max_ns = 0

    def _count(self, ns: int) -> None:
        self.n += 1
        self.max_ns = max(self.max_ns, ns)
        if ns > self._limits_ns[0]:  # the common case (on time) costs one comparison
            for i, limit in enumerate(self._limits_ns):
                if ns > limit:
                    self.over[i] += 1

    def summary(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"n": self.n, "max_ms": round(self.max_ns / 1e6, 2)}
        for t, k in zip(self.thresholds_ms, self.over, strict=True):
            out[f"over_{t:g}ms"] = k
        return out

    def describe(self) -> str:
        """``max 21.3 ms, >5: 4, >10: 2, >20: 1`` (for a report line)."""
        over = ", ".join(f">{t:g}: {k}" for t, k in zip(self.thresholds_ms, self.over,
                                                         strict=True))
        return f"max {self.max_ns / 1e6:.1f} ms, {over}"


class GapCounter(_Thresholds):
    """Intervals between successive events of one stream."""

    def __init__(self, thresholds_ms: Sequence[float] = COMMAND_GAPS_MS) -> None:
        super().__init__(thresholds_ms)
        self._last_ns: int | None = None

    def event(self, now_ns: int) -> int:
        """An event at ``now_ns``; returns the interval since the previous one (0: first)."""
        last, self._last_ns = self._last_ns, now_ns
        if last is None:
            return 0
        gap = now_ns - last
        self._count(gap)
        return gap

    def restart(self) -> None:
        """The stream paused on purpose (a reconnect): the next interval is not a gap."""
        self._last_ns = None


class AgeCounter(_Thresholds):
    """Ages of items at one stage (each item counted once)."""

    def __init__(self, thresholds_ms: Sequence[float] = PICTURE_AGES_MS) -> None:
        super().__init__(thresholds_ms)

    def add(self, age_ns: int) -> None:
        self._count(max(0, age_ns))
