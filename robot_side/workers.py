"""The robot node's helper threads: audit, ROS 2 reporter and video sender.

Each keeps slow or blocking work (fsync, DDS, H.264) out of the control loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from robot_side.control import StepReport
from robot_side.control_io import ControlAudit
from robot_side.manipulator.base import Manipulator
from robot_side.netio import Mailbox
from robot_side.ros.interface import RosBridge
from safety.audit import AuditLog
from safety.states import crtk_state
from safety.supervisor import Transition
from telesurgery.errors import AuditError, TelesurgeryError
from telesurgery.pacer import HELPER_PRIORITY, try_realtime
from transport.schema import SafetyEvent

log = logging.getLogger(__name__)


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

    def run(self) -> None:
        try_realtime(HELPER_PRIORITY)  # it shares the GIL with the control thread
        while (t := self._queue.get()) is not None:
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


class RosReporter(threading.Thread):
    """Publishes CRTK topics at a decimated rate and watches the e-stop topic."""

    def __init__(self, bridge: RosBridge, joint_names: tuple[str, ...], rate_hz: float) -> None:
        super().__init__(name="robot-ros", daemon=True)
        self.bridge = bridge
        self.joint_names = joint_names
        self.period_s = 1.0 / rate_hz
        self.latest: StepReport | None = None
        self.estop_requested = threading.Event()
        self._halt = threading.Event()
        self.errors = 0

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        last_diag = 0
        while not self._halt.wait(self.period_s):
            try:
                if self.bridge.poll_estop():
                    self.estop_requested.set()
                r = self.latest
                if r is None:
                    continue
                stamp = time.time_ns()  # wall-clock ok: ROS header stamps are wall time
                self.bridge.publish_measured_js(self.joint_names, r.measured_q, r.measured_v,
                                                r.measured_effort, stamp)
                self.bridge.publish_measured_cp(*r.measured_cp, stamp)
                self.bridge.publish_setpoint_cp(*r.setpoint_cp, stamp)
                now = time.monotonic_ns()
                if now - last_diag > 500_000_000:
                    last_diag = now
                    self._diagnostics(r, stamp)
            except TelesurgeryError as err:
                self.errors += 1
                log.warning("ROS 2 publish failed: %s", err)

    def _diagnostics(self, r: StepReport, stamp: int) -> None:
        state = crtk_state(r.state)
        self.bridge.publish_operating_state(state, True, r.state == "following", stamp)
        level = 0 if r.state in ("ready", "following") else 1 if r.state == "hold" else 2
        h = r.health
        self.bridge.publish_diagnostics(level, "supervisor", f"{r.state}: {r.reason}", {
            "state": str(r.state), "reason": str(r.reason), "link_ok": str(h.ok),
            "link_detail": h.detail or "ok", "scale": f"{r.scale:.3f}",
            "tracking_error_mm": f"{r.tracking_error_m * 1000:.2f}",
        }, stamp)

    def close(self) -> None:
        self.stop()
        self.bridge.close()
