"""Two or more network paths between a console and the robot: per-path health, redundancy.

With ``LinkConfig.paths`` the console sends every command on every path and the
robot's one command socket, bound on every path's address, executes the first
fresh copy of each sequence number (``transport.intake``; the later copies are
the gate's DUPLICATE or REPLAY and are counted). The safety judgement therefore
sees the *combined* stream: one dead path is no gap and no trip.

What that hides is the loss of redundancy, so ``PathHealth`` watches each path
on its own, from the copies that arrive by it (the robot tells the paths apart
by the sender's address its kernel saw, ZeroMQ's ``Peer-Address``, never by a
claim in the message): one ``LinkStats`` per path (latency, jitter, loss) and
its last arrival. A path is live while copies arrive within ``live_ns``. When
fewer than two are left while commands still flow, that is a **warning, not a
hold**: one ``AuditAlert`` ("redundancy_lost", naming the silent paths), and
"redundancy_restored" once two paths stayed live for ``restore_ns`` (a flapping
path is no redundancy, and must not write an audit record every 100 ms). Both paths silent is the
watchdog's command timeout, as with one path.

Only copies of the current session that the intake judged FRESH, DUPLICATE or
REPLAY feed a path's statistics (a copy of an accepted sequence number is
evidence about its path; a foreign, invalid or stale one is not).

Pure logic: time passed in, no sockets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from transport.intake import AuditAlert
from transport.linkstats import LinkStats

log = logging.getLogger(__name__)

RESTORE_NS = 1_000_000_000
"""Redundancy counts as restored only after two paths stayed live this long."""
UNKNOWN_PATH = "?"
"""A copy from an address no configured path names (counted under this name)."""


@dataclass(frozen=True, slots=True)
class PathView:
    """One path at one instant, for telemetry, the HUD and the page."""

    name: str
    live: bool
    rtt_us: int | None = None
    latency_us: int | None = None
    """One-way latency of the path's last copy (robot side, with the clock offset)."""
    jitter_us: int | None = None
    loss: float = 0.0
    """Fraction of the sequence numbers missing on this path over the window."""
    lost: int = 0
    """Sequence numbers missing on this path since the session began (robot side)."""


class _PathLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def live(self) -> bool: ...
    @property
    def rtt_us(self) -> int | None: ...
    @property
    def latency_us(self) -> int | None: ...
    @property
    def loss(self) -> float: ...


def describe(paths: Sequence[_PathLike]) -> str:
    """The compact HUD line: "A ok 1.2 ms / B down" (a ``PathView`` or the telemetry's
    ``PathReport``: one-way latency where known, else the round trip)."""
    parts = []
    for p in paths:
        ms = p.latency_us if p.latency_us is not None else p.rtt_us
        if not p.live:
            parts.append(f"{p.name} down")
        elif ms is None:
            parts.append(f"{p.name} ok")
        else:
            loss = f" {p.loss * 100:.0f}%" if p.loss >= 0.005 else ""
            parts.append(f"{p.name} ok {ms / 1000:.1f} ms{loss}")
    return " / ".join(parts)


class PathHealth:
    """Per-path statistics of the command copies and the redundancy verdict."""

    def __init__(self, names: Sequence[str], *, window_ns: int, live_ns: int,
                 restore_ns: int = RESTORE_NS) -> None:
        if live_ns <= 0:
            raise ValueError(f"live_ns = {live_ns}: must be > 0")
        self.names = tuple(names)
        self.live_ns = live_ns
        self.restore_ns = restore_ns
        self._restoring_ns: int | None = None
        self._stats = {n: LinkStats(window_ns) for n in self.names}
        self._last_ns: dict[str, int] = {}
        self._redundant: bool | None = None
        """Two or more paths live at the last ``check``; None before any copy."""
        self._first_ns: int | None = None
        self._dropouts: set[str] = set()
        """Paths that were down and back since the last ``check`` (``on_copy``)."""
        self._run_from_ns: dict[str, int] = {}
        """Since when each path has delivered without a break over ``live_ns``."""
        self.lost_count = 0

    def on_copy(self, name: str, seq: int, t_send_ns: int, recv_ns: int,
                offset_ns: int | None) -> None:
        """One copy of a command arrived by path ``name`` (of this session)."""
        stats = self._stats.get(name)
        if stats is None:
            name = UNKNOWN_PATH
            stats = self._stats.setdefault(name, LinkStats(self._stats_window()))
        stats.on_message(seq, t_send_ns, recv_ns, offset_ns)
        last = self._last_ns.get(name)
        if last is None or recv_ns - last > self.live_ns:
            if last is not None and self._other_delivered(name, last, recv_ns):
                # Silent past the live bound while another path kept delivering: down and
                # back between two checks (a 100 ms flap seen by a check every 100 ms could
                # fall between them every time). The next check counts it.
                self._dropouts.add(name)
            self._run_from_ns[name] = recv_ns
        self._last_ns[name] = recv_ns

    def _other_delivered(self, name: str, silent_from: int, now_ns: int) -> bool:
        """Another path delivered without a break from before ``name`` went silent until now
        (not merely came back with it, as after both were down)."""
        return any(self._run_from_ns.get(n, now_ns) <= silent_from + self.live_ns
                   and now_ns - t <= self.live_ns
                   for n, t in self._last_ns.items() if n != name)

    def reset(self) -> None:
        """A new session: its sequence numbers start again on every path."""
        for stats in self._stats.values():
            stats.reset()
        self._last_ns.clear()
        self._dropouts.clear()
        self._run_from_ns.clear()
        self._redundant = None
        self._first_ns = None
        self._restoring_ns = None

    def live(self, now_ns: int) -> list[str]:
        return [n for n in self.names
                if (t := self._last_ns.get(n)) is not None and now_ns - t <= self.live_ns]

    def check(self, now_ns: int) -> AuditAlert | None:
        """The redundancy verdict now; an alert when it changed (lost or restored).

        Silence on every path is not news here: that is the watchdog's trip, and
        nothing to warn about before the first copy or after a session ends."""
        dropped, self._dropouts = self._dropouts & set(self.names), set()
        live = self.live(now_ns)
        if not live:
            return None
        redundant = len(set(live) - dropped) >= 2
        if self._first_ns is None:
            self._first_ns = now_ns
        if self._redundant is None and not redundant and now_ns - self._first_ns < self.live_ns:
            return None  # the first copies: the other path may not have delivered yet
        if self._redundant is False and redundant:
            # Back only once two paths stayed live for ``restore_ns``: a flapping path is
            # no redundancy, and each change is an audit record.
            if self._restoring_ns is None:
                self._restoring_ns = now_ns
            if now_ns - self._restoring_ns < self.restore_ns:
                return None
        self._restoring_ns = None
        before, self._redundant = self._redundant, redundant
        if before == redundant or (before is None and redundant):
            return None
        if redundant:
            return AuditAlert(now_ns, "redundancy_restored",
                              f"paths live again: {', '.join(live)}", logging.INFO)
        self.lost_count += 1
        silent = [n for n in self.names if n not in live or n in dropped]
        left = [n for n in live if n not in dropped] or live
        return AuditAlert(now_ns, "redundancy_lost",
                          f"down to one network path ({left[0]}); silent for over "
                          f"{self.live_ns / 1e6:.0f} ms: {', '.join(silent)}. No hold: "
                          "commands still arrive, but one more failure trips")

    def views(self, now_ns: int, rtt_us: dict[str, int] | None = None) -> list[PathView]:
        live = set(self.live(now_ns))
        out = []
        for name in self.names:
            snap = self._stats[name].snapshot(now_ns)
            out.append(PathView(name, name in live, (rtt_us or {}).get(name),
                                snap.latency_us, snap.jitter_us, snap.loss, snap.lost))
        return out

    def _stats_window(self) -> int:
        return next(iter(self._stats.values())).window_ns if self._stats else 1_000_000_000


SWITCH_MARGIN_US = 10_000
"""A live video path is left for a faster one only when that one is this much faster
(and twice as fast): every switch costs a keyframe and a short gap, so two paths of
similar latency (and a noisy round trip) must not make the picture flap."""


def choose_video_path(paths: Sequence[PathView], current: int) -> int:
    """Which path video should come by: the current one while it is live and not clearly
    slower than another; else the live path with the lowest round trip (unknown last).
    No live path: stay (nothing better to switch to)."""
    live = [i for i, p in enumerate(paths) if p.live]
    if not live:
        return current

    def rtt(i: int) -> float:
        r = paths[i].rtt_us
        return float("inf") if r is None else float(r)

    best = min(live, key=rtt)
    if current in live:
        here = rtt(current)
        if paths[current].rtt_us is None or rtt(best) + SWITCH_MARGIN_US >= here \
                or rtt(best) >= 0.5 * here:
            return current
    return best
