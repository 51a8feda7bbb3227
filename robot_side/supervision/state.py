"""What the page shows, built from the robot's observer feed.

A reader thread keeps the newest ``Telemetry``, the recent ``SafetyEvent``s and a
one-minute history of the link figures, each with the robot-monotonic time it
arrived. ``snapshot()`` turns them into the JSON the page renders, with every
figure's age: a feed that stops turns into ``stale`` and the page says NO DATA.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robot_side.observe import ObserverClient
from robot_side.supervision.words import firmware_words, reason_words, why
from safety.states import SURGEON_HOLDS
from transport.schema import SafetyEvent, Telemetry, Vitals

EVENTS_KEPT = 30
RECORDING_READ_NS = 1_000_000_000
FANOUT_STALE_NS = 3_000_000_000
"""The fan-out rewrites its status every second: three missed, and the count is unknown."""
STOP_STATES = frozenset({"hold", "fault", "estop"})
HISTORY_HZ = 10.0
"""Plot samples per second: a minute at 10 Hz is 600 points per figure."""


def _ms(us: int | None) -> float | None:
    return None if us is None else round(us / 1000.0, 2)


@dataclass
class _Event:
    event: SafetyEvent
    recv_ns: int


def _last_stop(events: list[_Event], now_ns: int) -> dict[str, Any] | None:
    """The newest stop the surgeon did not ask for: it stays on the page after the
    state moves on (a trip is followed at once by the console's disengage)."""
    for e in reversed(events):
        evt = e.event
        if (evt.state_to in STOP_STATES and evt.state_from != evt.state_to
                and evt.code not in SURGEON_HOLDS):
            return {"code": evt.code, "words": reason_words(evt.code), "to": evt.state_to,
                    "age_s": round((now_ns - e.recv_ns) / 1e9, 1)}
    return None


class FeedState:
    """The newest robot state; written by the reader thread, read by the server."""

    def __init__(self, stale_after_ms: float, history_s: float,
                 recording_status: Path | None = None,
                 fanout_status: Path | None = None) -> None:
        self.stale_after_ns = int(stale_after_ms * 1e6)
        self._fanout_path = fanout_status
        self._fanout: dict[str, Any] = {"count": None, "why": "no fan-out status"}
        self._fanout_read_ns: int | None = None
        self._recording_path = recording_status
        self._recording: dict[str, Any] | None = None
        self._recording_read_ns = 0
        self._lock = threading.Lock()
        self.telemetry: Telemetry | None = None
        self.telemetry_ns: int | None = None
        self.events: collections.deque[_Event] = collections.deque(maxlen=EVENTS_KEPT)
        n = max(1, int(history_s * HISTORY_HZ))
        self.history: collections.deque[list[float | None]] = collections.deque(maxlen=n)
        self._next_sample_ns = 0
        self.state_since_ns: int | None = None
        """Robot-monotonic time of the newest state change seen (event or telemetry)."""
        self.messages = 0
        self.vitals: Vitals | None = None
        self.vitals_ns: int | None = None
        self.on_change: Callable[[], None] | None = None
        """Called (from the reader thread) when the state changes: the server pushes at
        once instead of at its next tick, so a stop reaches the page without waiting."""

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def on_telemetry(self, tlm: Telemetry, now_ns: int) -> None:
        with self._lock:
            prev = self.telemetry
            if prev is None or prev.state != tlm.state:
                newest_evt = self.events[-1].event if self.events else None
                if newest_evt is None or newest_evt.state_to != tlm.state:
                    self.state_since_ns = tlm.t_ns
            changed = prev is None or prev.state != tlm.state or prev.reason != tlm.reason
            self.telemetry, self.telemetry_ns = tlm, now_ns
            self.messages += 1
            if now_ns >= self._next_sample_ns:
                self._next_sample_ns = now_ns + int(1e9 / HISTORY_HZ)
                lk = tlm.link
                self.history.append([now_ns / 1e6, _ms(lk.rtt_us), _ms(lk.latency_us),
                                     _ms(lk.jitter_us), round(lk.loss * 100, 2),
                                     _ms(lk.video_age_us)])
        if changed:
            self._changed()

    def on_event(self, evt: SafetyEvent, now_ns: int) -> None:
        with self._lock:
            self.events.append(_Event(evt, now_ns))
            if evt.state_from != evt.state_to:
                self.state_since_ns = evt.t_ns
            self.messages += 1
        self._changed()

    def on_vitals(self, msg: Vitals, now_ns: int) -> None:
        with self._lock:
            self.vitals, self.vitals_ns = msg, now_ns
            self.messages += 1

    def history_rows(self) -> list[list[float | None]]:
        with self._lock:
            return list(self.history)

    def recording(self, now_ns: int) -> dict[str, Any] | None:
        """The recorder's status, read at most once a second; None: not recording."""
        if self._recording_path is None:
            return None
        if now_ns - self._recording_read_ns >= RECORDING_READ_NS:
            self._recording_read_ns = now_ns
            try:
                body = json.loads(self._recording_path.read_text())
                self._recording = body if isinstance(body, dict) else None
            except (OSError, ValueError):
                self._recording = {"state": "unknown", "why": "no status from the recorder"}
        return self._recording

    def observers(self, now_ns: int) -> dict[str, Any]:
        """How many watch through the fan-out, and who: ``count`` None when unknown (no
        fan-out, no status file, or one older than ``FANOUT_STALE_NS``)."""
        if self._fanout_path is None:
            return {"count": None, "why": "no fan-out configured"}
        if self._fanout_read_ns is not None and now_ns - self._fanout_read_ns < RECORDING_READ_NS:
            return self._fanout
        self._fanout_read_ns = now_ns
        try:
            body = json.loads(self._fanout_path.read_text())
            count, t_ns, who = body["observers"], body["t_ns"], body.get("who", [])
            if not (isinstance(count, int) and isinstance(t_ns, int) and isinstance(who, list)):
                raise ValueError("unexpected fields")
        except (OSError, ValueError, KeyError, TypeError):
            self._fanout = {"count": None, "why": "the fan-out is not running"}
            return self._fanout
        age = now_ns - t_ns  # the fan-out's monotonic clock is this machine's
        if not 0 <= age <= FANOUT_STALE_NS:
            self._fanout = {"count": None, "why": f"fan-out status {age / 1e9:.0f} s old"}
        else:
            self._fanout = {"count": count, "who": [str(w)[:40] for w in who[:50]]}
        return self._fanout

    def snapshot(self, now_ns: int) -> dict[str, Any]:
        recording = self.recording(now_ns)
        observers = self.observers(now_ns)
        with self._lock:
            tlm, t_ns = self.telemetry, self.telemetry_ns
            events = list(self.events)
            since = self.state_since_ns
            last_sample = self.history[-1] if self.history else None
            vitals, vitals_ns = self.vitals, self.vitals_ns
        age_ns = None if t_ns is None else now_ns - t_ns
        out: dict[str, Any] = {
            "type": "state", "now_ms": now_ns / 1e6,
            "feed_age_ms": None if age_ns is None else round(age_ns / 1e6, 1),
            "stale": age_ns is None or age_ns > self.stale_after_ns,
            "events": [{"age_s": round((now_ns - e.recv_ns) / 1e9, 1), "code": e.event.code,
                        "words": reason_words(e.event.code), "from": e.event.state_from,
                        "to": e.event.state_to, "detail": e.event.detail}
                       for e in reversed(events)],
            "sample": last_sample, "recording": recording,
            "last_stop": _last_stop(events, now_ns),
            "vitals": _vitals_json(vitals, vitals_ns, now_ns), "observers": observers,
        }
        if tlm is None:
            return out
        flags, flags_bad = firmware_words(tlm.firmware_flags)
        lk = tlm.link
        out.update({
            "state": tlm.state, "reason": tlm.reason, "why": why(tlm.state, tlm.reason),
            "estop": tlm.estop, "robot_t_ns": tlm.t_ns, "state_since_ns": since,
            "state_age_s": None if since is None else round((tlm.t_ns - since) / 1e9, 1),
            "link": {"rtt_ms": _ms(lk.rtt_us), "latency_ms": _ms(lk.latency_us),
                     "jitter_ms": _ms(lk.jitter_us), "loss_pct": round(lk.loss * 100, 2),
                     "video_age_ms": _ms(lk.video_age_us), "paths": _paths_json(tlm)},
            "firmware": {"flags": tlm.firmware_flags, "words": flags, "bad": flags_bad},
            "tracking_error_mm": round(tlm.tracking_error_m * 1000, 2),
            "scale": round(tlm.scale, 3), "loop_jitter_us": tlm.loop_jitter_us,
            "measured_js": [round(q, 4) for q in tlm.measured_js],
        })
        return out


def _paths_json(tlm: Telemetry) -> list[dict[str, Any]] | None:
    """Dual path: each path as the robot measures it (the page's paths.js panel)."""
    if not tlm.paths:
        return None
    return [{"name": p.name, "live": p.live, "rtt_ms": _ms(p.rtt_us),
             "latency_ms": _ms(p.latency_us), "jitter_ms": _ms(p.jitter_us),
             "loss_pct": round(p.loss * 100, 2)} for p in tlm.paths]


def _vitals_json(msg: Vitals | None, recv_ns: int | None, now_ns: int) -> dict[str, Any] | None:
    """The same strip the surgeon's HUD shows (stale marks, NO MONITOR, alarms)."""
    from operator_console.vitals_view import vitals_strip

    strip = vitals_strip(msg, recv_ns, now_ns)
    if strip is None:
        return None
    return {"monitor_ok": strip.monitor_ok, "note": strip.note,
            "cells": [{"label": c.label, "text": c.text, "stale": c.stale} for c in strip.cells],
            "alarms": [{"code": a.code, "priority": a.priority, "text": a.text,
                        "age_s": round(a.age_s, 1)} for a in strip.alarms]}


class FeedReader(threading.Thread):
    """Reads the observer feed into a ``FeedState`` until stopped."""

    def __init__(self, path: Path, state: FeedState) -> None:
        super().__init__(name="page-feed", daemon=True)
        self.path = path
        self.state = state
        self._halt = threading.Event()
        self.bad_messages = 0

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        with ObserverClient(self.path) as client:
            while not self._halt.is_set():
                msg = client.recv(100)
                self.bad_messages = client.bad_messages
                if msg is None:
                    continue
                now = time.monotonic_ns()
                if isinstance(msg, Telemetry):
                    self.state.on_telemetry(msg, now)
                elif isinstance(msg, SafetyEvent):
                    self.state.on_event(msg, now)
                elif isinstance(msg, Vitals):
                    self.state.on_vitals(msg, now)
