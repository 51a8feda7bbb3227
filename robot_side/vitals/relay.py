"""The robot node's side of the vitals: take, validate, audit alarms, hand to the network.

A thread of the robot node (never the control thread) binds the vitals socket
(ipc, in the 0700 runtime folder), validates every message as the wire schema's
``Vitals``, and leaves the newest in ``Mailbox.vitals`` (one reference swap): the
network thread relays it to the consoles on the telemetry PUB and to the local
observers (page, recorder). A newly raised high-priority alarm, and a monitor
that goes away, become audit records through ``Mailbox.alerts`` (the audit thread
writes them); neither reaches the control loop: an alarm never moves or stops the
arm by itself. A vitals process that falls silent is reported as ``monitor="gone"``
with every value stale, so no display shows a stale vital as current.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import zmq

from telesurgery.errors import SchemaError
from telesurgery.ratelog import RateLimitedLog
from transport.intake import AuditAlert
from transport.schema import U32, Vitals, decode_as

log = logging.getLogger(__name__)
ratelog = RateLimitedLog(log)

SILENT_AFTER_NS = 2_000_000_000
"""The vitals process publishes at least every second; silent longer, it is gone."""
MIN_GAP_NS = 50_000_000
"""At most 20 snapshots a second go to the network thread, whatever arrives: vitals must
not take the link's or the network thread's time from telemetry and control replies."""
AUDITED_PRIORITIES = frozenset({"high"})
AUDIT_BURST = 6
AUDIT_WINDOW_NS = 10_000_000_000
"""At most this many vitals audit records per window (AlarmAuditor)."""


class VitalsMailbox(Protocol):
    vitals: Vitals | None
    alerts: Any  # collections.deque[AuditAlert]


class AlarmAuditor:
    """Which alarms and monitor changes deserve an audit record: once per raise, and at
    most ``AUDIT_BURST`` records per ``AUDIT_WINDOW_NS``.

    The bound matters for the arm: the audit thread fsyncs each record and also writes
    the supervisor's transitions; a monitor flapping an alarm (or a hostile one) must
    not delay those. What the bound holds back is counted and said in the next record.
    """

    def __init__(self) -> None:
        self._active: set[str] = set()
        self._monitor = "none"
        self._window_start_ns: int | None = None
        self._in_window = 0
        self.suppressed = 0

    def review(self, msg: Vitals, now_ns: int) -> list[AuditAlert]:
        return self._bounded(self._changes(msg, now_ns), now_ns)

    def _bounded(self, alerts: list[AuditAlert], now_ns: int) -> list[AuditAlert]:
        if not alerts:
            return alerts
        if self._window_start_ns is None or now_ns - self._window_start_ns >= AUDIT_WINDOW_NS:
            self._window_start_ns, self._in_window = now_ns, 0
        room = max(0, AUDIT_BURST - self._in_window)
        kept, dropped = alerts[:room], len(alerts) - room
        if dropped > 0:
            self.suppressed += dropped
            ratelog(logging.WARNING, "vitals-audit", "vitals: %d alarm changes not audited "
                    "(more than %d in %.0f s)", dropped, AUDIT_BURST, AUDIT_WINDOW_NS / 1e9)
        elif kept and self.suppressed:
            kept[0] = dataclasses.replace(kept[0], detail=kept[0].detail[:200] + (
                f" [{self.suppressed} earlier vitals changes not audited]"))
            self.suppressed = 0
        self._in_window += len(kept)
        return kept

    def _changes(self, msg: Vitals, now_ns: int) -> list[AuditAlert]:
        out = []
        active = {a.code for a in msg.alarms if a.priority in AUDITED_PRIORITIES}
        for a in msg.alarms:
            if a.code in active and a.code not in self._active:
                out.append(AuditAlert(now_ns, "vitals_alarm",
                                      f"{a.priority} {a.code}: {a.text} (from the patient "
                                      "monitor; the arm is not stopped by it)",
                                      logging.WARNING))
        if msg.monitor == "ok" or not msg.alarms:
            self._active = active  # while the monitor is gone, its alarms are not over
        if msg.monitor != self._monitor and (msg.monitor == "gone" or self._monitor == "gone"):
            out.append(AuditAlert(now_ns, "vitals_monitor",
                                  f"patient monitor {self._monitor} -> {msg.monitor}"
                                  + (f": {msg.detail}" if msg.detail else ""),
                                  logging.WARNING if msg.monitor == "gone" else logging.INFO))
        self._monitor = msg.monitor
        return out


def gone_from(last: Vitals, now_ns: int, recv_ns: int, why: str) -> Vitals:
    """The last snapshot as the robot must now show it: monitor gone, every value stale,
    ages grown by the time since it arrived (robot clock)."""
    grown = (now_ns - recv_ns) // 1_000_000
    values = tuple(dataclasses.replace(v, status="stale", age_ms=min(U32, v.age_ms + grown))
                   for v in last.values)
    alarms = tuple(dataclasses.replace(a, age_ms=min(U32, a.age_ms + grown))
                   for a in last.alarms)
    return dataclasses.replace(last, seq=last.seq, t_ns=now_ns, monitor="gone",
                               values=values, alarms=alarms, detail=why)


class VitalsRelay(threading.Thread):
    def __init__(self, path: Path, mailbox: VitalsMailbox,
                 ctx: zmq.Context[Any] | None = None) -> None:
        super().__init__(name="robot-vitals-relay", daemon=True)
        self.path = path
        self.mailbox = mailbox
        self._ctx = ctx or zmq.Context.instance()
        self._halt = threading.Event()
        self.auditor = AlarmAuditor()
        self.counters: Counter[str] = Counter()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.handed_ns = 0
        """When the newest snapshot was handed to the network thread (this clock)."""

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        sock: zmq.Socket[Any] = self._ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 16)
        try:
            self.path.unlink(missing_ok=True)  # a stale socket file of a previous run
            sock.bind(f"ipc://{self.path}")
        except (zmq.ZMQError, OSError) as err:
            self.error = err
            log.error("vitals socket %s: %s; no vitals this run", self.path, err)
            sock.close(0)
            self.ready.set()
            return
        self.ready.set()
        try:
            self._loop(sock)
        finally:
            sock.close(0)

    def _loop(self, sock: zmq.Socket[Any]) -> None:
        last: Vitals | None = None
        last_ns = 0
        silent = False
        pending: Vitals | None = None
        while not self._halt.is_set():
            now = time.monotonic_ns()
            if pending is not None and now - self.handed_ns >= MIN_GAP_NS:
                self._hand_over(pending, now)
                pending = None
            wait_ms = 100 if pending is None else max(
                1, (MIN_GAP_NS - (now - self.handed_ns)) // 1_000_000)
            if sock.poll(wait_ms):
                data = sock.recv()
                now = time.monotonic_ns()
                try:
                    msg: Vitals = decode_as(data, Vitals)
                except SchemaError as err:
                    self.counters["invalid"] += 1
                    ratelog(logging.WARNING, "vitals-invalid",
                            "vitals: invalid message dropped (%s)", err)
                    continue
                self.counters["received"] += 1
                last, last_ns, silent = msg, now, False
                if now - self.handed_ns >= MIN_GAP_NS:
                    self._hand_over(msg, now)
                else:  # a flood is coalesced: the newest goes out when the gap is over
                    pending = msg
            elif last is not None and now - last_ns > SILENT_AFTER_NS and not silent:
                silent = True
                self.counters["silent"] += 1
                log.warning("vitals process silent for %.1f s: NO MONITOR",
                            (now - last_ns) / 1e9)
                self._hand_over(gone_from(last, now, last_ns, "vitals process silent"), now)
            elif silent and last is not None and now - self.handed_ns >= SILENT_AFTER_NS // 2:
                self._hand_over(gone_from(last, now, last_ns, "vitals process silent"), now)

    def _hand_over(self, msg: Vitals, now_ns: int) -> None:
        self.counters["relayed"] += 1
        self.handed_ns = now_ns
        self.mailbox.alerts.extend(self.auditor.review(msg, now_ns))
        self.mailbox.vitals = msg
