"""The robot node's network thread: control requests, pings, telemetry, observers.

Commands do not pass through here: the control thread owns the command socket
(robot_side.command_port) and judges every command there. This thread owns the
link's other sockets and the local observer feed, and the one surgeon session
(``transport.session_guard``): it admits control requests, pongs and keyframe
requests only from the session's holder and grants the session token with
``arm``; the token reaches the control thread inside that request
(``PendingRequest.granted``) and leaves for the console in the reply. It turns
control requests and pongs into the control thread's inputs (pending requests,
the clock offset and round-trip time) and publishes what the control and audit
threads leave for it: replies, audited safety events, and telemetry, which it
builds here from the report the control loop swapped into the mailbox (one
reference per period), so the control thread never encodes or sends a telemetry
message. Handover is by atomic reference swaps and bounded deques, so the
control loop never waits on the network.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import zmq

from robot_side.control import CommandSample, LinkView, PendingRequest, StepReport
from robot_side.gilwindow import ControlWindow
from robot_side.lateperiods import Busy
from robot_side.observe import CommandRing, ObserverFeed
from robot_side.telemetry import telemetry_from
from telesurgery.errors import LinkError
from telesurgery.pacer import try_realtime
from transport.clocksync import ClockSync
from transport.config import LinkConfig
from transport.intake import AuditAlert
from transport.keys import ServerKeys
from transport.link import RobotLink
from transport.paths import PathView
from transport.schema import (
    Command,
    ControlReply,
    ControlRequest,
    KeyframeRequest,
    PathReport,
    Ping,
    Pong,
    SafetyEvent,
    Telemetry,
    Vitals,
)
from transport.session_guard import SessionGuard, refusal_reason

log = logging.getLogger(__name__)

NET_CHUNK_NS = 250_000
"""The longest run of Python this thread does between blocking calls (a telemetry
build, ~100-200 us cold): started no nearer than this to a control deadline."""

TELEMETRY_CHUNK_NS = 200_000
"""A telemetry build and its publish (~100-200 us cold): looked at again just before it,
as the chunk's first look may have been a dispatch earlier (round 7: the network thread
was the GIL holder in 56 % of the loop's slow wake-ups, the serial reader in 22 %)."""

POLL_MAX_MS = 5
"""Longest wait in the network thread's poll: how late a control reply may leave. Inbound
requests wake it at once; each wake-up takes the GIL from the control thread's process."""


class KeyframeSink(Protocol):
    def request_keyframe(self, reason: str) -> None: ...


class VideoSink(KeyframeSink, Protocol):
    """The robot's video process as the network thread sees it."""

    def poll(self) -> None:
        """Take what the sender reported; called a few times a second."""


@dataclass(frozen=True, slots=True)
class ClockView:
    """The console clock as the network thread's ClockSync knows it at one instant."""

    offset_ns: int | None
    rtt_ns: int | None
    last_pong_ns: int | None
    stale_after_ns: int

    def fresh(self, now_ns: int) -> bool:
        return self.last_pong_ns is not None and now_ns - self.last_pong_ns <= self.stale_after_ns


NO_CLOCK = ClockView(None, None, None, 0)


class Mailbox:
    """What the threads of the robot node hand each other (reference swaps, bounded deques)."""

    def __init__(self) -> None:
        self.command: CommandSample | None = None
        """Control thread -> reporters: the newest fresh command."""
        self.link_view: LinkView | None = None
        """Control thread -> reporters: the link as the last period judged it."""
        self.report: StepReport | None = None
        """Control thread -> network thread: the last period's report."""
        self.clock: ClockView = NO_CLOCK
        """Network thread -> control thread: clock offset and round-trip time."""
        self.requests: collections.deque[PendingRequest] = collections.deque(maxlen=64)
        self.replies: collections.deque[tuple[bytes, ControlReply]] = collections.deque(maxlen=64)
        self.events: collections.deque[SafetyEvent] = collections.deque(maxlen=1024)
        self.alerts: collections.deque[AuditAlert] = collections.deque(maxlen=256)
        """What the network thread found worth an audit record; the audit thread writes them."""
        self.telemetry: Telemetry | None = None
        self.vitals: Vitals | None = None
        """Vitals relay -> network thread: the newest patient-monitor snapshot."""
        self.dropped_requests = 0
        self.received = CommandRing()
        """Control thread -> network thread: accepted commands, for the observer feed."""

    def take_requests(self) -> list[PendingRequest]:
        out = []
        while self.requests:
            out.append(self.requests.popleft())
        return out




class NetworkThread(threading.Thread):
    """Serves control requests and pings; publishes telemetry to consoles and observers."""

    def __init__(self, cfg: LinkConfig, keys: ServerKeys, mailbox: Mailbox, *,
                 telemetry_hz: float, observe_path: Path | None = None,
                 observe_hz: float = 100.0, ctx: zmq.Context[Any] | None = None,
                 loop_jitter_us: Callable[[], int] = lambda: 0,
                 video: VideoSink | None = None, keyframes: KeyframeSink | None = None) -> None:
        super().__init__(name="robot-net", daemon=True)
        self.cfg = cfg
        self.keys = keys
        self.mailbox = mailbox
        self.ctx = ctx
        self.guard = SessionGuard(cfg.session_idle_ms, handoff_ms=cfg.handoff_ms)
        """One surgeon session at a time; its token reaches the control thread with the
        granted ``arm`` request (PendingRequest.granted), where commands are judged."""
        self._probed_ns = 0
        self.clock = ClockSync()
        self._ping_period_ns = int(1e9 / cfg.ping_hz)
        self._tlm_period_ns = int(1e9 / telemetry_hz)
        self._obs_period_ns = int(1e9 / observe_hz)
        self.observe_path = observe_path
        self.loop_jitter_us = loop_jitter_us
        self._halt = threading.Event()
        self.busy = Busy()
        """When this thread last ran Python (the node's late-period explainer)."""
        self.window: ControlWindow | None = None
        """The control period's phase: this thread's Python runs outside it (the node)."""
        self.video = video
        """The video process (its reports); it binds the video socket itself."""
        self.keyframes: KeyframeSink | None = keyframes if keyframes is not None else video
        """Where keyframe requests go: this thread's own line to the video process."""
        self.link: RobotLink | None = None
        self.feed: ObserverFeed | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.telemetry_built = 0
        self._path_names = {p.console: p.name for p in cfg.paths if p.console}
        self._path_rtt_us: dict[str, int] = {}
        self._peer_path: dict[bytes, str] = {}
        self.path_views: Callable[[], tuple[PathView, ...]] = tuple
        """Per-path health the control thread's ``CommandPort`` judged (dual path); the
        node hooks it up. Its RTT figures are this thread's (``path_rtt_us``)."""
        self.audit_head: Callable[[], str | None] = lambda: None
        """The audit chain head (``AuditLog.head``): the witness every telemetry carries."""
        self.recording: Callable[[], str | None] = lambda: None
        """The recorder's health (``robot_side.recording.health``), read here, never by
        the control thread; every telemetry carries it."""

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        # Control requests and pongs wait in this thread's poll; commands do not.
        try_realtime(45)
        try:
            with RobotLink(self.cfg, self.keys, self.ctx, video=self.video is None,
                           command=False) as link:
                self.link = link
                self.guard.identify = link.auth.identity
                feed = None if self.observe_path is None else ObserverFeed(
                    self.observe_path, self.ctx)
                try:
                    self.feed = feed
                    self.ready.set()
                    self._loop(link, feed)
                finally:
                    if feed is not None:
                        feed.close()
        except LinkError as err:  # a sentence (a port in use): the node says it, once
            self.error = err
            self.ready.set()
        except (zmq.ZMQError, OSError) as err:
            self.error = err
            log.exception("network thread stopped")
            self.ready.set()

    def _loop(self, link: RobotLink, feed: ObserverFeed | None) -> None:
        mb = self.mailbox
        now = time.monotonic_ns()
        next_ping = next_tlm = next_obs = now
        last_report: StepReport | None = None
        tlm: Telemetry | None = None
        seq = 0
        vitals: Vitals | None = None
        while not self._halt.is_set():
            now = time.monotonic_ns()
            due = min(next_ping, next_tlm, next_obs) - now
            # Rounded up: poll() counts whole ms, and rounding a 0.x ms wait down to 0
            # spun this loop (holding the GIL) until each telemetry/observe/ping was due,
            # up to 1 ms at 150+ Hz (issue 11: ~15 % of a core). Up to 1 ms late is fine
            # for 50-100 Hz reports; inbound requests still wake the poll at once.
            busy = self.busy
            busy.end_ns = time.monotonic_ns()
            items = link.poll(max(0, min(POLL_MAX_MS, -(-due // 1_000_000))))
            if self.window is not None:
                self.window.wait_quiet(NET_CHUNK_NS)
            busy.start_ns = time.monotonic_ns()
            for item in items:
                self._dispatch(link, item.msg, item.recv_ns, item.peer, item.key)
                if item.addr and isinstance(item.msg, Pong):
                    self._on_path_pong(item.peer, item.addr, item.msg, item.recv_ns)
            if self.guard.end_if_revoked(link.auth.allows, time.monotonic_ns()):
                link.bind_console(self.guard.ping_target)
                mb.alerts.extend(self.guard.drain_alerts())
            self._handoff_housekeeping(link)
            now = time.monotonic_ns()
            if now >= next_ping:
                self._ping(link, now)
                next_ping = now + self._ping_period_ns
                if self.video is not None:
                    # Its reports queue up until read: unread, the queue fills, new
                    # errors are lost and the video process cannot finish its exit.
                    self.video.poll()
            while mb.replies:
                self._reply(link, *mb.replies.popleft())
            while mb.events:
                event = mb.events.popleft()
                link.publish_event(event)
                if feed is not None:
                    feed.publish(event)
            if mb.vitals is not vitals and mb.vitals is not None:
                vitals = mb.vitals  # informational: relayed, never seen by the control loop
                link.publish_vitals(vitals)
                if feed is not None:
                    feed.publish(vitals)
            if now >= next_obs and feed is not None:
                for batch in mb.received.batches():  # commands as received, batched
                    feed.publish_encoded(batch)
            if now < next_tlm and now < next_obs:
                continue
            report, view = mb.report, mb.link_view
            if report is None or view is None:
                # Nothing to report before the control loop's first period: look again
                # when the next report is due, not at once (this loop spun at full
                # speed through the node's start-up, ~30k turns, issue 11).
                next_tlm = now + self._tlm_period_ns
                next_obs = now + self._obs_period_ns
                continue
            if report is not last_report:
                if self.window is not None:
                    # A second look before the chunk's longest piece: the dispatch,
                    # replies and events above may have brought the deadline near.
                    self.window.wait_quiet(TELEMETRY_CHUNK_NS)
                seq += 1
                sample = mb.command
                pending = self.guard.request_pending
                tlm = telemetry_from(seq, report, view, self.loop_jitter_us(),
                                     sample.cmd.video_age_us if sample else None,
                                     audit_head=self.audit_head(),
                                     recording=self.recording(),
                                     commander=self.guard.commander,
                                     handoff_from=pending[0] if pending else None,
                                     handoff_id=pending[1] if pending else None)
                if views := self.path_views():
                    tlm = dataclasses.replace(tlm, paths=self._path_reports(views))
                self.telemetry_built += 1
                last_report = report
                mb.telemetry = tlm
            if tlm is None:
                continue
            if now >= next_tlm:
                link.publish_telemetry(tlm)
                next_tlm = now + self._tlm_period_ns
            if now >= next_obs:
                if feed is not None:
                    feed.publish(tlm)
                next_obs = now + self._obs_period_ns

    def _ping(self, link: RobotLink, now: int) -> None:
        """Ping the console; with several paths, each of the holder's connections (one
        per path), so the clock offset survives a dead path and each path has an RTT."""
        targets = self.guard.ping_targets
        if len(targets) <= 1:
            link.send_ping(self.clock.make_ping(now))
            return
        for peer in targets:
            if not link.send_ping_to(peer, self.clock.make_ping(now)) and link.peer_gone(peer):
                self.guard.forget(peer)
                self._peer_path.pop(peer, None)
        link.bind_console(self.guard.ping_target)

    def _path_reports(self, views: tuple[PathView, ...]) -> tuple[PathReport, ...]:
        rtt = self._path_rtt_us
        return tuple(PathReport(name=v.name, live=v.live, rtt_us=rtt.get(v.name),
                                latency_us=v.latency_us, jitter_us=v.jitter_us, loss=v.loss)
                     for v in views)

    def path_of(self, peer: bytes) -> str | None:
        """The network path a connection of the session came by (from its pongs)."""
        return self._peer_path.get(peer)

    def path_rtt_us(self) -> dict[str, int]:
        """Round trip per path name, as the robot measured it (pongs by path)."""
        return dict(self._path_rtt_us)

    def _on_path_pong(self, peer: bytes, addr: str, pong: Pong, recv_ns: int) -> None:
        name = self._path_names.get(addr)
        if name is None:
            return
        rtt = (recv_ns - pong.t1_ns) - (pong.t3_ns - pong.t2_ns)
        if rtt >= 0:
            self._path_rtt_us[name] = rtt // 1000
        self._peer_path[peer] = name

    def _publish_clock(self) -> None:
        c = self.clock
        self.mailbox.clock = ClockView(c.offset_ns, c.rtt_ns, c.last_pong_ns, c.stale_after_ns)

    def _dispatch(self, link: RobotLink, msg: object, recv_ns: int, peer: bytes,
                  key: str | None = None) -> None:
        mb = self.mailbox
        if isinstance(msg, ControlRequest):
            self._control_request(link, msg, recv_ns, peer, key)
        elif isinstance(msg, Pong):
            if self.guard.pong_ok(peer, msg, recv_ns):
                self.clock.on_pong(msg, recv_ns)
                self._publish_clock()
        elif isinstance(msg, Ping):  # already answered by the link
            self.guard.on_ping(peer, msg, recv_ns)
            link.bind_console(self.guard.ping_target)
        elif isinstance(msg, KeyframeRequest):
            if self.keyframes is not None and self.guard.is_holder(peer):
                self.keyframes.request_keyframe(msg.reason)
        elif isinstance(msg, Command):  # never: commands have their own socket
            log.warning("command on the control channel dropped")
        if self.guard.has_alerts:
            mb.alerts.extend(self.guard.drain_alerts())

    def _control_request(self, link: RobotLink, req: ControlRequest, recv_ns: int,
                         peer: bytes, key: str | None) -> None:
        """Only the surgeon session's holder reaches the control loop (session_guard).

        A granted ``arm`` carries its new token to the control thread, which owns the
        command socket and starts the command session with it before it processes
        the arm (``CommandPort.on_requests``), so before the reply leaves.
        """
        mb = self.mailbox
        if len(mb.requests) == mb.requests.maxlen:
            # Before admission: a request that never reaches the loop grants nothing.
            mb.dropped_requests += 1
            log.warning("control request queue full; dropping %s", req.op)
            return
        pinged = self.guard.ping_target
        adm = self.guard.admit(peer, req, recv_ns, lambda holder: self._gone(link, holder),
                               key=key, key_allowed=link.auth.allows)
        link.bind_console(self.guard.ping_target)
        if adm.deferred:  # a command request: answered with the grant, or its end
            return
        if not adm.ok:
            tlm = mb.telemetry
            state = tlm.state if tlm else "disabled"
            link.reply(peer, ControlReply(req_id=req.req_id, ok=False, state=state,
                                          reason=refusal_reason(adm.reason, req.op, state)))
            return
        if self.guard.ping_target != pinged:
            # A new console's clock is not the last one's.
            self.clock = ClockSync()
            self._publish_clock()
        if adm.handoff is not None:
            # The grantee's request first: the control thread starts its command
            # session (the old token refused from here on) and holds the arm.
            mb.requests.append(PendingRequest(*adm.handoff))
        mb.requests.append(PendingRequest(peer, req, recv_ns, adm.granted))

    def _handoff_housekeeping(self, link: RobotLink) -> None:
        """Time out a pending command request; answer those that ended ungranted."""
        self.guard.expire(time.monotonic_ns())
        for peer, req_id, reason in self.guard.take_refusals():
            tlm = self.mailbox.telemetry
            link.reply(peer, ControlReply(req_id=req_id, ok=False,
                                          state=tlm.state if tlm else "disabled",
                                          reason=reason))
        if self.guard.has_alerts:
            self.mailbox.alerts.extend(self.guard.drain_alerts())
        while link.auth.alerts:  # observers that asked for command
            self.mailbox.alerts.append(link.auth.alerts.popleft())

    def _gone(self, link: RobotLink, holder: bytes) -> bool:
        """Is the session holder's connection gone? Probed with a ping (pinned to it):
        ROUTER_MANDATORY fails the send at once for a dropped connection."""
        now = time.monotonic_ns()
        # At most one probe per ping period: a flood of requests must not flood the
        # holder with pings (their pongs would fall out of the clock-sync window).
        if (not link.peer_gone(holder) and link.console_peer == holder
                and now - self._probed_ns >= self._ping_period_ns):
            self._probed_ns = now
            link.send_ping(self.clock.make_ping(now))
        return link.peer_gone(holder)

    def _reply(self, link: RobotLink, peer: bytes, reply: ControlReply) -> None:
        link.reply(peer, self.guard.on_reply(peer, reply, time.monotonic_ns()))
        if self.guard.has_alerts:
            self.mailbox.alerts.extend(self.guard.drain_alerts())
