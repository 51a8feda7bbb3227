"""The ROS commander in the handoff: ask for command, grant or deny a console's request.

The robot's rule is the one for surgeon consoles (``transport.session_guard``,
docs/architecture.md "Roles and handoff"); the ROS commander is one more surgeon
key (identity ``[ros] command_key``, ``ros``) and plays it over the same control
requests. CRTK has no handoff, so it rides on the CRTK ``state_command`` strings
beside dVRK's ``enable``/``disable``/``pause``/``resume``:

- ``request_command``: ask the surgeon in command (their HUD says "Request from
  ros - press G"). The reply waits until the grant, a deny or ``[link] handoff_ms``;
  the commander handles nothing else meanwhile (it holds no command to hold). Once
  granted, ``resume`` engages (re-anchored at the arm's pose).
- ``grant`` / ``deny``: answer the pending request of a console while ROS is in
  command; the arm holds, the ROS stream stops counting (the robot refuses its
  commands from then on).
- ``takeover``: only for a mentor key (an empty ``<name>.mentor`` beside it).

Who is in command and who asks is what the robot tells every link client in its
telemetry (``commander``, ``handoff_from``, ``handoff_id``); the commander
publishes it on ``/diagnostics`` as its own status ``<ns>: command`` (values
``commander``, ``none`` when nobody; ``request_from`` and ``request_id`` while a
request is pending) on every change and once a second,
and logs each request. Every request, grant, refusal and timeout is audited by the
robot's session guard, as for a console.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from robot_side.ros.interface import RosBridge
from telesurgery.errors import LinkTimeout
from telesurgery.ratelog import RateLimitedLog
from transport.link import ConsoleLink
from transport.schema import ControlReply, Telemetry

log = logging.getLogger(__name__)

HANDOFF_COMMANDS = frozenset({"request_command", "grant", "deny", "takeover"})
REQUEST_WAIT_MS = 15_000
"""How long ``request_command`` waits: above the robot's ``handoff_ms`` (10 s), whose
own timeout answers first."""
PUBLISH_EVERY_NS = 1_000_000_000
STATUS_NAME = "command"
DIAG_OK, DIAG_WARN = 0, 1
"""diagnostic_msgs/DiagnosticStatus levels: a pending request is a WARN."""


class RosHandoff:
    """Tracks the link's handoff state for the commander and acts on its state commands."""

    def __init__(self, bridge: RosBridge, identity: str) -> None:
        self.bridge = bridge
        self.identity = identity
        self.commander: str | None = None
        self.request_from: str | None = None
        self.request_id: int | None = None
        self._next_publish_ns = 0
        self._ratelog = RateLimitedLog(log)
        self.counters: dict[str, int] = {"handoff_requests": 0, "handoff_granted": 0,
                                         "handoff_answers": 0, "handoff_refused": 0}

    @property
    def in_command(self) -> bool:
        return self.commander == self.identity

    def on_link(self, msg: Any, now_ns: int) -> None:
        """Each message the link delivered (telemetry carries the handoff state)."""
        if not isinstance(msg, Telemetry):
            return
        state = (msg.commander, msg.handoff_from, msg.handoff_id)
        if state == (self.commander, self.request_from, self.request_id):
            return
        self.commander, self.request_from, self.request_id = state
        if self.in_command and self.request_from is not None:
            log.info("ROS commander: request for command from %s (id %s): send "
                     "state_command 'grant' or 'deny'", self.request_from, self.request_id)
        self._next_publish_ns = now_ns  # publish the change at once

    def publish(self, now_ns: int) -> None:
        if now_ns < self._next_publish_ns:
            return
        self._next_publish_ns = now_ns + PUBLISH_EVERY_NS
        asking = self.request_from is not None
        if asking and self.in_command:
            message = f"Request from {self.request_from} - send state_command 'grant'"
        elif self.commander is None:
            message = "nobody in command"
        else:
            message = f"In command: {self.commander}"
        values = {"commander": self.commander or "none", "ros_identity": self.identity}
        if self.request_from is not None:  # a value may not be empty: left out instead
            values["request_from"] = self.request_from
            values["request_id"] = str(self.request_id)
        try:
            self.bridge.publish_diagnostics(DIAG_WARN if asking else DIAG_OK, STATUS_NAME,
                                            message, values, now_ns)
        except Exception as err:  # a status line must never end the commander
            self._ratelog(logging.WARNING, "status", "ROS commander: could not publish the "
                          "command status: %s", err)

    def act(self, link: ConsoleLink, what: str) -> bool:
        """Make the handoff request ``what``; True when command changed hands (ROS
        granted it away, or now holds it), so the commander's stream restarts idle."""
        if what == "request_command" and self.in_command:
            log.info("ROS request_command: already in command")
            return False
        if what in ("grant", "deny"):
            if self.request_id is None:
                log.warning("ROS %s refused here: nobody asks for command", what)
                return False
            reply = self._request(link, what, handoff=self.request_id, timeout_ms=2000)
            if reply is None or not reply.ok:
                return False
            self.counters["handoff_answers"] += 1
            log.info("ROS commander: %s the request of %s", "granted" if what == "grant"
                     else "denied", self.request_from)
            return what == "grant"  # the arm holds; ROS commands are refused from now
        self.counters["handoff_requests"] += 1
        log.info("ROS commander: %s sent to %s; waiting for the answer", what,
                 self.commander or "nobody")
        reply = self._request(link, what, timeout_ms=REQUEST_WAIT_MS)
        if reply is None or not reply.ok:
            return False
        self.counters["handoff_granted"] += 1
        log.info("ROS commander: in command (%s); send state_command 'resume' to engage",
                 what)
        self.commander = self.identity
        self._next_publish_ns = time.monotonic_ns()
        return True

    def _request(self, link: ConsoleLink, op: str, *, timeout_ms: int,
                 handoff: int | None = None) -> ControlReply | None:
        try:
            reply = link.request(op, handoff=handoff, timeout_ms=timeout_ms)
        except LinkTimeout as err:
            self.counters["handoff_refused"] += 1
            log.warning("ROS commander: %s: %s", op, err)
            return None
        if not reply.ok:
            self.counters["handoff_refused"] += 1
            log.warning("ROS commander: %s refused: %s (%s)", op, reply.reason, reply.state)
        return reply
