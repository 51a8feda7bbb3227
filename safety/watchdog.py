"""The link watchdog: is the link fit for motion right now, and how much should it scale?

Pure logic with time passed in. The control loop calls ``evaluate()`` once per control
period with the link statistics (``transport.linkstats``) and the clock-sync round trip
(``transport.clocksync``); the supervisor turns an unhealthy result into a hold in the
same period. Unknown is unhealthy: no command yet, no round trip, no clock offset or no
picture each trip, they never pass as "fine".

Detection bounds, with ``P`` the evaluate period (one control period). Each condition
trips at the first ``evaluate()`` at which it holds, so its bound is the time for the
condition to become true plus ``P``:

- command_timeout: ``now - last fresh command > command_timeout_ms``; bound
  ``command_timeout_ms + P`` after the last fresh command.
- rtt_unknown: no pong accepted for the clock-sync ``stale_after_ns`` (``clock_fresh``
  False), or no round trip / no clock offset yet; bound ``stale_after_ns + P`` after the
  last pong. This also bounds a link whose pongs stop coming back at all.
- rtt_high: the latest round trip ``> rtt_halt_ms``; bound: one ping interval plus the
  round trip itself (the first pong that measures it arrives then) ``+ P``; a round trip
  beyond the clock-sync ``stale_after_ns`` trips rtt_unknown at that bound instead.
- latency_high: the latest command's one-way latency ``> latency_halt_ms``; that command
  arrives no earlier than ``latency_halt_ms`` after it was sent, so the bound is that
  arrival ``+ P``. A link that delivers nothing at all trips command_timeout first, and
  so does any latency above ``command_timeout_ms`` (the age limit of a command, which
  with the defaults, 50 ms, is below ``latency_halt_ms``, 100 ms).
- loss_burst: the fraction of sequence numbers missing over ``loss_window_ms``
  ``> loss_halt``; gaps are seen at the next arrival after them, so the bound is one
  command interval after the burst ``+ P`` (a silent burst longer than the command
  timeout trips command_timeout first).
- jitter_high: RFC 3550 jitter ``> jitter_halt_ms``; jitter is an exponential average
  with gain 1/16, so a sustained interarrival variation ``D`` crosses a limit ``L < D``
  after ``ceil(log(1 - L/D) / log(15/16))`` arrivals, ``+ P``.
- video_stale: the age of the surgeon's frame, as last reported, plus the time since
  that report ``> video_stale_ms`` (or no picture reported); bound ``video_stale_ms + P``
  after the frame was captured, whether or not reports keep arriving.

Warning: above ``rtt_warn_ms`` the result is ok but ``warn`` is set and ``scale`` falls
linearly from 1.0 at ``rtt_warn_ms`` to ``min_warn_scale`` at ``rtt_halt_ms``.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import NamedTuple

from safety.config import WatchdogLimits
from safety.states import Reason
from transport.linkstats import LinkSnapshot

log = logging.getLogger(__name__)

_MS = 1_000_000


class LinkHealth(NamedTuple):
    ok: bool
    trip: Reason | None
    warn: bool
    scale: float
    """Motion scale factor in (0, 1] when ok; 0.0 when tripped."""
    detail: str
    healthy_since_ns: int | None = None
    """Start of the current unbroken healthy streak; None when not ok. The settling rule."""


class LinkWatchdog:
    """Staged link checks against ``WatchdogLimits``; see the module doc for the bounds."""

    def __init__(self, cfg: WatchdogLimits) -> None:
        self.cfg = cfg
        # The limits in the units compared every period (cfg is frozen): the same
        # products as before, made once instead of five multiplications a period.
        self._timeout_ns = cfg.command_timeout_ms * _MS
        self._rtt_halt_ns = cfg.rtt_halt_ms * _MS
        self._latency_halt_us = cfg.latency_halt_ms * 1000
        self._jitter_halt_us = cfg.jitter_halt_ms * 1000
        self._video_stale_ns = cfg.video_stale_ms * _MS
        self._ok: tuple[int | None, LinkHealth] | None = None
        """(round trip, verdict) of the last healthy evaluation of this healthy streak:
        a healthy verdict depends only on the round trip then (issue 11)."""
        self._last_command_ns: int | None = None
        self._video_age_ns: int | None = None
        self._video_reported_ns: int | None = None
        self._healthy_since_ns: int | None = None
        self._last_trip: Reason | None = None
        self.trips: Counter[Reason] = Counter()
        """Evaluations that found each trip condition (one per period while it lasts)."""

    # ---------------------------------------------------------------- inputs
    def on_fresh_command(self, now_ns: int) -> None:
        """A command within its age limit was received at ``now_ns``."""
        self._last_command_ns = now_ns

    def forget_commands(self) -> None:
        """No command at all any more (a new session): as before the first one."""
        self._last_command_ns = None

    def on_video_age(self, now_ns: int, video_age_us: int | None) -> None:
        """The console reports the age of the frame the surgeon sees; None: no picture."""
        self._video_reported_ns = now_ns
        self._video_age_ns = None if video_age_us is None else video_age_us * 1000

    @property
    def healthy_since_ns(self) -> int | None:
        return self._healthy_since_ns

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, now_ns: int, stats: LinkSnapshot, rtt_ns: int | None,
                 clock_fresh: bool) -> LinkHealth:
        found = self._find_trip(now_ns, stats, rtt_ns, clock_fresh)
        if found is not None:
            reason, detail = found
            self.trips[reason] += 1
            if reason != self._last_trip:
                log.warning("link trip %s: %s", reason, detail)
            self._last_trip = reason
            self._healthy_since_ns = None
            self._ok = None
            return LinkHealth(False, reason, True, 0.0, detail)
        if self._last_trip is not None:
            log.info("link healthy again after %s", self._last_trip)
            self._last_trip = None
        ok = self._ok
        if ok is not None and ok[0] == rtt_ns:
            return ok[1]
        if self._healthy_since_ns is None:
            self._healthy_since_ns = now_ns
        scale, detail = self._warn_scale(rtt_ns)
        health = LinkHealth(True, None, scale < 1.0, scale, detail, self._healthy_since_ns)
        self._ok = (rtt_ns, health)
        return health

    def _find_trip(self, now_ns: int, stats: LinkSnapshot, rtt_ns: int | None,
                   clock_fresh: bool) -> tuple[Reason, str] | None:
        c = self.cfg
        if self._last_command_ns is None:
            return Reason.COMMAND_TIMEOUT, "no command received yet"
        silent_ns = now_ns - self._last_command_ns
        if silent_ns > self._timeout_ns:
            return Reason.COMMAND_TIMEOUT, f"no fresh command for {silent_ns / _MS:.1f} ms"
        if rtt_ns is None or not clock_fresh:
            return Reason.RTT_UNKNOWN, "round trip unknown: no recent clock-sync pong"
        if rtt_ns > self._rtt_halt_ns:
            return Reason.RTT_HIGH, f"round trip {rtt_ns / _MS:.1f} ms > {c.rtt_halt_ms} ms"
        if stats.latency_us is None:
            return Reason.RTT_UNKNOWN, "one-way latency unknown: no clock offset"
        if stats.latency_us > self._latency_halt_us:
            return (Reason.LATENCY_HIGH,
                    f"one-way latency {stats.latency_us / 1000:.1f} ms > {c.latency_halt_ms} ms")
        if stats.loss > c.loss_halt:
            return (Reason.LOSS_BURST,
                    f"loss {stats.loss:.1%} over {c.loss_window_ms:.0f} ms > {c.loss_halt:.1%}")
        if stats.jitter_us is not None and stats.jitter_us > self._jitter_halt_us:
            return (Reason.JITTER_HIGH,
                    f"jitter {stats.jitter_us / 1000:.1f} ms > {c.jitter_halt_ms} ms")
        return self._video_trip(now_ns)

    def _video_trip(self, now_ns: int) -> tuple[Reason, str] | None:
        if not self.cfg.require_video:
            return None
        if self._video_age_ns is None or self._video_reported_ns is None:
            return Reason.VIDEO_STALE, "no picture on the surgeon's display"
        # The frame keeps ageing after the report, so a silent console cannot keep it fresh.
        age_ns = self._video_age_ns + (now_ns - self._video_reported_ns)
        if age_ns > self._video_stale_ns:
            return (Reason.VIDEO_STALE,
                    f"surgeon's frame is {age_ns / _MS:.0f} ms old > {self.cfg.video_stale_ms} ms")
        return None

    def _warn_scale(self, rtt_ns: int | None) -> tuple[float, str]:
        c = self.cfg
        if rtt_ns is None:  # unreachable: an unknown round trip has already tripped
            return 0.0, "round trip unknown"
        rtt_ms = rtt_ns / _MS
        if rtt_ms <= c.rtt_warn_ms:
            return 1.0, ""
        frac = (rtt_ms - c.rtt_warn_ms) / (c.rtt_halt_ms - c.rtt_warn_ms)
        scale = 1.0 - min(1.0, frac) * (1.0 - c.min_warn_scale)
        return scale, f"round trip {rtt_ms:.1f} ms > {c.rtt_warn_ms} ms: motion scaled {scale:.2f}"
