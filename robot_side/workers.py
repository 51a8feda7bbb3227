"""The robot node's helper threads: audit and serial reconnect.

Each keeps slow or blocking work (fsync, a serial handshake) out of the control
loop; DDS and H.264 run in child processes (robot_side.ros.process,
robot_side.video_process).
"""

from __future__ import annotations

import logging
import queue
import threading

from robot_side.control_io import ControlAudit
from robot_side.manipulator.base import Manipulator
from robot_side.netio import Mailbox
from safety.audit import AuditLog
from safety.supervisor import Transition
from telesurgery.errors import AuditError
from telesurgery.pacer import HELPER_PRIORITY, try_realtime
from transport.schema import SafetyEvent

log = logging.getLogger(__name__)

PUBLISHED_ALERTS = frozenset({"redundancy_lost", "redundancy_restored"})
"""Alerts the staff and the surgeon must see, not only the audit log: sent as a
``SafetyEvent`` whose from and to are the state it happened in (no transition: the arm
does not stop for it), so the page, the HUD's event list, ROS 2 and the recording
show "down to one path" when it happens (issue 16: a warning, not a hold)."""


class AuditThread(threading.Thread):
    """Persists every transition (fsync) *before* it is published (invariant 7)."""

    def __init__(self, audit: AuditLog, mailbox: Mailbox) -> None:
        super().__init__(name="robot-audit", daemon=True)
        self.audit = audit
        self.mailbox = mailbox
        self._queue: queue.Queue[Transition | ControlAudit | None] = queue.Queue(maxsize=256)
        self.healthy = True
        self.persisted = 0

    def submit(self, t: Transition | ControlAudit) -> None:
        try:
            self._queue.put_nowait(t)
        except queue.Full:
            # An event that cannot be queued would be lost: that is an audit failure.
            self.healthy = False
            log.error("audit queue full; holding the arm")

    def stop(self) -> None:
        self._queue.put(None)

    def _alerts(self) -> None:
        """Audit what the network thread found (a peer's misbehaviour), once each."""
        alerts = self.mailbox.alerts
        while alerts:
            a = alerts.popleft()
            try:
                index = self.audit.append("alert", {
                    "t_ns": a.t_ns, "code": a.code, "detail": a.detail,
                    "level": logging.getLevelName(a.level)}, sync=True)
            except AuditError as err:
                self.healthy = False
                log.error("audit append failed (%s): alert %s not recorded", err, a.code)
                continue
            self.persisted += 1
            log.log(a.level, "audited alert: %s: %s", a.code, a.detail)
            if a.code in PUBLISHED_ALERTS:
                report = self.mailbox.report
                state = str(report.state) if report is not None else "disabled"
                self.mailbox.events.append(SafetyEvent(
                    seq=index, t_ns=a.t_ns, code=a.code[:64], state_from=state,
                    state_to=state, detail=a.detail[:256]))

    def run(self) -> None:
        try_realtime(HELPER_PRIORITY)  # it shares the GIL with the control thread
        while True:
            self._alerts()
            try:
                t = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if t is None:
                self._alerts()
                return
            if isinstance(t, ControlAudit):
                self._control(t)
                continue
            try:
                index = self.audit.append("transition", {
                    "t_ns": t.t_ns, "from": str(t.state_from), "to": str(t.state_to),
                    "reason": str(t.reason), "detail": t.detail,
                }, sync=True)
            except AuditError as err:
                self.healthy = False
                log.error("audit append failed (%s): %s -> %s %s not reported",
                          err, t.state_from, t.state_to, t.reason)
                continue
            self.persisted += 1
            log.info("safety event #%d: %s -> %s (%s) %s", index, t.state_from, t.state_to,
                     t.reason, t.detail)
            self.mailbox.events.append(SafetyEvent(
                seq=index, t_ns=t.t_ns, code=str(t.reason)[:64], state_from=str(t.state_from),
                state_to=str(t.state_to), detail=t.detail[:256]))


    def _control(self, c: ControlAudit) -> None:
        """Every control operation, accepted or refused (issue 12.5).

        Not fsync'd on its own: one that changes state is followed by its transition,
        whose fsync covers it (the node submits control records first), and a flood of
        refused requests must not turn into a flood of fsyncs that fills this queue.
        """
        try:
            self.audit.append("control", {
                "t_ns": c.t_ns, "peer": c.peer.hex()[:64], "op": c.op, "req_id": c.req_id,
                "value": c.value, "ok": c.ok, "result": c.result, "state": c.state,
            }, sync=False)
        except AuditError as err:
            self.healthy = False
            log.error("audit append failed (%s): control %s not recorded", err, c.op)
            return
        self.persisted += 1


class SerialReconnector(threading.Thread):
    """Reopens a vanished serial port; a handshake can block, so not in the loop."""

    def __init__(self, driver: Manipulator, interval_s: float) -> None:
        super().__init__(name="robot-serial-reconnect", daemon=True)
        self.driver = driver
        self.interval_s = interval_s
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            if not self.driver.connected and self.driver.reconnect():
                log.warning("serial port back; the arm holds until the surgeon re-engages")
