"""The console's session thread: control requests, telemetry, clock, the surgeon's intent.

It owns the link's control and telemetry sockets (the command thread owns the
command socket, the video loop the video socket; ZeroMQ sockets are never
shared between threads). A control request blocks only this thread, so the
command stream keeps flowing while the robot answers.

Engaging is one request: the robot anchors the master to the follower itself
(``safety.anchor``), so nothing here waits or hands over. Before it, the
scripted surgeon aligns the hand with the instrument, as the dVRK aligns its
master: a one-way request to the command thread, and the engage comes at the
next attempt, once the registered orientation agrees.

Handoff between surgeon consoles (``transport.session_guard``): the surgeon asks
for command (``R`` in the video window), grants a pending request (``G``, the HUD
says "Request from NAME - press G to grant") or, with a mentor key, takes over
(``T``); each is one request here (``ConsoleShared.handoff_action``). A
``request_command`` waits for its grant for seconds: it is sent without blocking
(``ConsoleLink.send_request``) and its reply taken from the poll with the
telemetry, so the HUD stays live while it waits. A console
that gets command never moves the arm by it: it engages like any engage, the
robot re-anchoring to its master. A console whose command went to another
(the telemetry's commander changed while it was engaged) stops and does not
re-engage by itself.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field

from operator_console.config import SessionConfig
from operator_console.teleop import TeleopOutput
from safety.states import SURGEON_HOLDS
from telesurgery.errors import LinkTimeout
from telesurgery.pacer import try_realtime
from telesurgery.quat import Quat, quat_angle
from transport.clocksync import ClockSync
from transport.link import ConsoleLink
from transport.schema import ControlReply, KeyframeRequest, Pong, SafetyEvent, Telemetry, Vitals

log = logging.getLogger(__name__)

REQUEST_WAIT_MS = 12_000
"""How long a ``request_command`` waits for the grant: above the robot's
``[link] handoff_ms`` (10 s), whose own timeout answers first."""
HANDOFF_KEYS = {ord("G"): "grant", ord("g"): "grant", ord("R"): "request_command",
                ord("r"): "request_command", ord("T"): "takeover", ord("t"): "takeover"}
"""Keys in the video window (``Display.last_key``) -> the handoff request they make."""
ALIGNED_RAD = 0.1
"""The console asks the hand to align when it is further than this from the instrument;
well inside the robot's engage tolerance (``safety.motion.align_tolerance_rad``)."""


@dataclass
class ConsoleShared:
    """Handover between the console's threads (reference swaps and bounded deques)."""

    telemetry: Telemetry | None = None
    align_to: Quat | None = None
    """The instrument's orientation (robot frame): the command thread aligns the hand."""
    telemetry_ns: int | None = None
    """When the newest telemetry arrived (this clock): the displays age every figure by it."""
    engaged: bool = False
    message: str = ""
    last_output: TeleopOutput | None = None
    video_age_us: int | None = None
    video_stale: bool = True
    offset_ns: int | None = None
    rtt_ns: int | None = None
    scale: float = 0.0
    events: collections.deque[SafetyEvent] = field(
        default_factory=lambda: collections.deque(maxlen=256))
    keyframe_requests: collections.deque[KeyframeRequest] = field(
        default_factory=lambda: collections.deque(maxlen=4))
    engagements: list[dict[str, object]] = field(default_factory=list)
    trips: list[dict[str, object]] = field(default_factory=list)
    message_ns: int = 0
    """When ``message`` was last set, so the displays can let a warning expire."""
    vitals: Vitals | None = None
    """The patient monitor's newest snapshot, relayed by the robot (display only)."""
    vitals_ns: int | None = None
    handoff_action: str | None = None
    """A handoff the surgeon asked for (``HANDOFF_KEYS``): the session thread makes it."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "message":
            # Stamped here so that every writer of a message stamps it, whichever thread.
            object.__setattr__(self, "message_ns", time.monotonic_ns())
        object.__setattr__(self, name, value)


class SessionThread(threading.Thread):
    PING_PERIOD_NS = 100_000_000

    def __init__(self, link: ConsoleLink, cfg: SessionConfig, shared: ConsoleShared,
                 command_period_ns: int) -> None:
        super().__init__(name="console-session", daemon=True)
        self.link = link
        self.cfg = cfg
        self.shared = shared
        self.clock = ClockSync()
        self._halt = threading.Event()
        self._command_period_ns = command_period_ns
        self.want_engage = cfg.auto_engage
        self._next_attempt_ns = 0
        self._armed = False
        self._scale_sent = False
        self._align_asked = False
        self._takeover_at_ns: int | None = None if cfg.takeover_after_s is None else (
            time.monotonic_ns() + int(cfg.takeover_after_s * 1e9))
        """Scripted mentor: when to take command; None once taken (or never)."""
        self.takeover_sent_ns: int | None = None
        self._eager_until_ns = 0
        """Until then engage attempts come every 50 ms, not 500 (just got command)."""
        self._waiting: tuple[int, str, int] | None = None
        """A handoff request in flight without blocking: (request id, op, deadline ns)."""

    def stop(self) -> None:
        self._halt.set()

    def request(self, op: str, value: float | None = None, *, handoff: int | None = None,
                timeout_ms: int | None = None) -> bool:
        try:
            reply = self.link.request(op, value, timeout_ms=timeout_ms, handoff=handoff)
        except LinkTimeout as err:
            self.shared.message = f"{op}: no answer from the robot"
            log.warning("%s", err)
            return False
        if not reply.ok:
            # The detail says what a robot still starting waits for (not_ready): the
            # engage attempts go on as for any refusal until it is accepted.
            why = f"{reply.reason} ({reply.detail})" if reply.detail else reply.reason
            self.shared.message = f"{op} refused: {why}"
            log.info("robot refused %s: %s (%s)", op, why, reply.state)
        return reply.ok

    def run(self) -> None:
        # Pongs answered late would read as round-trip time on the robot.
        try_realtime(35)
        next_ping = 0
        while not self._halt.is_set():
            for item in self.link.poll(5):
                self._inbound(item.msg, item.recv_ns)
            now = time.monotonic_ns()
            # No pings before the robot was heard from: unanswerable, they only fill the log.
            if now >= next_ping and self.shared.telemetry is not None:
                self.link.send_ping(self.clock.make_ping(now))
                next_ping = now + self.PING_PERIOD_NS
            sh = self.shared
            sh.offset_ns, sh.rtt_ns = self.clock.offset_ns, self.clock.rtt_ns
            if self._waiting is not None and now > self._waiting[2]:
                req_id, op, _ = self._waiting
                self._waiting = None
                self.link.forget_request(req_id)
                sh.message = f"{op}: no answer from the robot"
                log.warning("%s: no answer within %d ms", op, REQUEST_WAIT_MS)
            while sh.keyframe_requests and sh.telemetry is not None:
                self.link.send_keyframe_request(sh.keyframe_requests.popleft())
            self._surgeon(now)

    def _inbound(self, msg: object, recv_ns: int) -> None:
        sh = self.shared
        if isinstance(msg, Telemetry):
            prev = sh.telemetry
            sh.telemetry = msg
            sh.telemetry_ns = recv_ns  # after the telemetry: a torn read overstates its age
            # A stop is a change away from following (or a latch). Telemetry queued while
            # the engage request was in flight still says ready/hold and is not one; a
            # trip before the first following telemetry arrives as a safety event.
            left = (prev is not None and prev.state == "following") or msg.state in (
                "fault", "estop")
            if (sh.engaged and prev is not None and prev.commander is not None
                    and msg.commander != prev.commander):
                # Only the commander can be engaged: the command went to another.
                self._stopped(recv_ns, f"command handed to {msg.commander or 'nobody'}")
                self.want_engage = False
            elif sh.engaged and left and msg.state != "following":
                self._robot_stopped(recv_ns, msg.state, msg.reason)
        elif isinstance(msg, SafetyEvent):
            sh.events.append(msg)
            log.info("safety event: %s -> %s (%s) %s", msg.state_from, msg.state_to,
                     msg.code, msg.detail)
            if sh.engaged and msg.state_from == "following" and msg.state_to != "following":
                self._robot_stopped(recv_ns, msg.state_to, msg.code)
        elif isinstance(msg, Vitals):  # shown, never acted on
            sh.vitals = msg
            sh.vitals_ns = recv_ns
        elif isinstance(msg, Pong):
            self.clock.on_pong(msg, recv_ns)
        elif isinstance(msg, ControlReply) and self._waiting is not None \
                and msg.req_id == self._waiting[0]:
            op = self._waiting[1]
            self._waiting = None
            if msg.ok:
                self._in_command(op)
            else:
                sh.message = f"{op} refused: {msg.reason}"
                log.info("robot refused %s: %s (%s)", op, msg.reason, msg.state)

    def _robot_stopped(self, now: int, state: str, reason: str) -> None:
        if reason in SURGEON_HOLDS:
            return
        self.shared.trips.append({"t_ns": now, "state": state, "reason": reason})
        log.warning("robot stopped following: %s (%s)", state, reason)
        self._stopped(now, f"robot {state}: {reason}")

    def _stopped(self, now: int, why: str) -> None:
        """Motion stopped (a trip, or the stale-picture lockout): only a deliberate
        re-engage restarts it; the scripted surgeon makes one only if configured to."""
        sh = self.shared
        sh.engaged = False
        sh.message = why
        self.want_engage = self.cfg.reengage_after_s is not None
        if self.want_engage:
            self._next_attempt_ns = now + int((self.cfg.reengage_after_s or 0.0) * 1e9)

    def _surgeon(self, now: int) -> None:
        """The surgeon's deliberate actions: stale-picture lockout and (scripted) engage."""
        sh = self.shared
        tlm = sh.telemetry
        if tlm is None:
            return
        action, sh.handoff_action = sh.handoff_action, None
        if self._takeover_at_ns is not None:
            if now < self._takeover_at_ns:
                return  # a scripted mentor watches until its moment
            self._takeover_at_ns, action = None, "takeover"
            self.takeover_sent_ns = now
        if action is not None:
            self._handoff(action, tlm)
        if sh.engaged and sh.video_stale:
            log.warning("stale picture: disengaging")
            self._stopped(now, "disengaged: the picture is stale")
            self.request("disengage")
            return
        me = self.cfg.surgeon or "surgeon"
        if not self._scale_sent and tlm.commander in (None, me):
            # Not while another surgeon is in command: refused (session_busy) every pass.
            self._scale_sent = self.request("set_scale", self.cfg.scale)
            if self._scale_sent:
                sh.scale = self.cfg.scale
        if not self.want_engage or sh.engaged or now < self._next_attempt_ns:
            return
        # Just after getting command the link to the robot is settling: ask again soon.
        self._next_attempt_ns = now + (50_000_000 if now < self._eager_until_ns else 500_000_000)
        # A fault first: the robot refuses "arm" while latched, so a console that
        # met a robot already in FAULT would otherwise ask to arm for ever.
        if tlm.state == "fault":
            self.request("clear_fault")
            return
        if tlm.state == "disabled" or not self._armed:
            self._armed = self.request("arm")
            return
        if sh.video_stale:
            sh.message = "waiting for a fresh picture before engaging"
            return
        if tlm.state not in ("ready", "hold"):
            if tlm.state == "following":  # telemetry from before a handoff's hold: soon again
                self._next_attempt_ns = now + 20_000_000
            return
        out = sh.last_output
        instrument = tlm.measured_cp.orientation
        if (not self._align_asked and out is not None
                and quat_angle(out.quat, instrument) > ALIGNED_RAD):
            # Align first; engage at the next attempt, soon: the robot judges the
            # alignment with its own tolerance, the hand keeps moving meanwhile.
            sh.align_to = instrument
            self._align_asked = True
            self._next_attempt_ns = now + 50_000_000
            return
        self._align_asked = False
        self._engage()

    def _handoff(self, action: str, tlm: Telemetry) -> None:
        """Ask for command, grant the pending request, or (a mentor) take over."""
        sh = self.shared
        if action == "grant":
            if tlm.handoff_id is None:
                sh.message = "grant: nobody asks for command"
            elif self.request("grant", handoff=tlm.handoff_id):
                sh.engaged = False  # the robot holds: the arm is the other surgeon's now
                self.want_engage = False
                sh.message = f"command granted to {tlm.handoff_from}"
            return
        if action == "request_command":
            if self._waiting is not None:
                sh.message = "a command request is already waiting"
                return
            sh.message = "asking for command ..."
            try:  # answered from the poll, with the telemetry: the HUD stays live
                req_id = self.link.send_request(action)
            except LinkTimeout as err:
                sh.message = f"{action}: no answer from the robot"
                log.warning("%s", err)
                return
            self._waiting = (req_id, action, time.monotonic_ns() + REQUEST_WAIT_MS * 1_000_000)
            return
        sh.message = "taking over ..."
        if self.request(action):
            self._in_command(action)

    def _in_command(self, action: str) -> None:
        """In command, armed, holding: engage deliberately (re-anchored to this master)."""
        self._armed = True
        self._eager_until_ns = time.monotonic_ns() + 2_000_000_000
        self.shared.message = "in command: engage to move"
        log.info("%s: in command now", action)

    def _engage(self) -> None:
        sh = self.shared
        if self.request("engage"):
            sh.engaged = True
            sh.message = ""
            sh.engagements.append({"t_ns": time.monotonic_ns(), "after_trip": bool(sh.trips)})
            log.info("engaged (scale %.2f)", sh.scale)
