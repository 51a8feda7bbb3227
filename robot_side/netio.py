"""The robot node's network thread: the only owner of the link's sockets.

It turns inbound traffic into the control thread's inputs (the newest fresh
command, the link view, pending control requests) and publishes what the
control and audit threads leave for it (telemetry, replies, audited safety
events). Handover is by atomic reference swaps and bounded deques, so the
control loop never waits on the network.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Protocol

import numpy as np
import zmq

from robot_side.control import CommandSample, LinkView, PendingRequest
from telesurgery.errors import LinkError
from telesurgery.pacer import try_realtime
from transport.clocksync import ClockSync
from transport.config import LinkConfig
from transport.gate import Verdict
from transport.intake import AuditAlert, CommandIntake
from transport.keys import ServerKeys
from transport.link import Arrival, RobotLink
from transport.linkstats import LinkStats
from transport.schema import (
    Command,
    ControlReply,
    ControlRequest,
    KeyframeRequest,
    Ping,
    Pong,
    SafetyEvent,
    Telemetry,
)
from transport.session_guard import SessionGuard

log = logging.getLogger(__name__)


class VideoSink(Protocol):
    """The robot's video sender as the network thread sees it."""

    def request_keyframe(self, reason: str) -> None: ...

    def report_video_age(self, age_us: int | None) -> None: ...

    def poll(self) -> None:
        """Take what the sender reported; called a few times a second."""


class Mailbox:
    """What the threads of the robot node hand each other."""

    def __init__(self) -> None:
        self.command: CommandSample | None = None
        self.link_view: LinkView | None = None
        self.requests: collections.deque[PendingRequest] = collections.deque(maxlen=64)
        self.replies: collections.deque[tuple[bytes, ControlReply]] = collections.deque(maxlen=64)
        self.events: collections.deque[SafetyEvent] = collections.deque(maxlen=1024)
        self.alerts: collections.deque[AuditAlert] = collections.deque(maxlen=256)
        """What the network thread found worth an audit record; the audit thread writes them."""
        self.telemetry: Telemetry | None = None
        self.dropped_requests = 0

    def take_requests(self) -> list[PendingRequest]:
        out = []
        while self.requests:
            out.append(self.requests.popleft())
        return out


class NetworkThread(threading.Thread):
    """Polls the link at ~1 kHz; pings the surgeon's console for RTT and offset."""

    def __init__(self, cfg: LinkConfig, keys: ServerKeys, mailbox: Mailbox, *, age_limit_ns: int,
                 loss_window_ns: int, telemetry_hz: float,
                 video: VideoSink | None = None) -> None:
        super().__init__(name="robot-net", daemon=True)
        self.cfg = cfg
        self.keys = keys
        self.mailbox = mailbox
        self.intake = CommandIntake(age_limit_ns, loss_window_ns, cfg.max_command_hz)
        self.guard = SessionGuard(cfg.session_idle_ms)
        self._probed_ns = 0
        self.clock = ClockSync()
        self._ping_period_ns = int(1e9 / cfg.ping_hz)
        self._tlm_period_ns = int(1e9 / telemetry_hz)
        self._halt = threading.Event()
        self.video = video
        """Where keyframe requests and the surgeon's picture age go; the video
        process binds the video socket itself, so the link does not."""
        self.link: RobotLink | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        # One-way command latency of every arrival over the run, for the run summary.
        self._latency_us = np.zeros(1 << 18, dtype=np.int64)
        self._latency_n = 0

    def latency_percentiles(self) -> dict[str, float]:
        n = min(self._latency_n, len(self._latency_us))
        if n == 0:
            return {"n": 0}
        p50, p99, p999 = np.percentile(self._latency_us[:n], [50, 99, 99.9])
        return {"n": self._latency_n, "p50_us": float(p50), "p99_us": float(p99),
                "p999_us": float(p999), "max_us": float(self._latency_us[:n].max())}

    @property
    def stats(self) -> LinkStats:
        return self.intake.stats

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        # Commands wait in this thread's poll: starve it and the watchdog sees a timeout.
        # The libzmq I/O thread the link creates below carries them: it inherits.
        try_realtime(45, children_inherit=True)
        try:
            with RobotLink(self.cfg, self.keys, video=self.video is None) as link:
                self.link = link
                self.ready.set()
                self._loop(link)
        except LinkError as err:  # a sentence (a port in use): the node says it, once
            self.error = err
            self.ready.set()
        except (zmq.ZMQError, OSError) as err:
            self.error = err
            log.exception("network thread stopped")
            self.ready.set()

    def _loop(self, link: RobotLink) -> None:
        mb = self.mailbox
        next_ping = next_tlm = time.monotonic_ns()
        last_tlm_seq = -1
        while not self._halt.is_set():
            for item in link.poll(1):
                self._dispatch(link, item.msg, item.recv_ns, item.peer)
            self._take_commands(link.command_arrivals())
            now = time.monotonic_ns()
            if now >= next_ping:
                link.send_ping(self.clock.make_ping(now))
                next_ping = now + self._ping_period_ns
                if self.video is not None:
                    # Its reports queue up until read: unread, the queue fills, new
                    # errors are lost and the video process cannot finish its exit.
                    self.video.poll()
            mb.link_view = LinkView(self.stats.snapshot(now), self.clock.rtt_ns,
                                    self.clock.fresh(now))
            while mb.replies:
                self._reply(link, *mb.replies.popleft())
            while mb.events:
                link.publish_event(mb.events.popleft())
            tlm = mb.telemetry
            if tlm is not None and now >= next_tlm and tlm.seq != last_tlm_seq:
                link.publish_telemetry(tlm)
                last_tlm_seq = tlm.seq
                next_tlm = now + self._tlm_period_ns

    def _take_commands(self, arrivals: list[Arrival]) -> None:
        """Judge every command drained this poll, oldest first; act on the newest fresh one.

        Each is judged (also those a newer one superseded) so that the statistics see
        every fresh command and nothing else (``transport.intake``)."""
        offset = self.clock.offset_ns
        newest: CommandSample | None = None
        for a in arrivals:
            if self.intake.offer(a.cmd, a.recv_ns, offset) is Verdict.FRESH:
                newest = CommandSample(a.cmd, a.recv_ns)
                if offset is not None:
                    self._latency_us[self._latency_n % len(self._latency_us)] = (
                        a.recv_ns - (a.t_send_ns + offset)) // 1000
                    self._latency_n += 1
        self.mailbox.alerts.extend(self.intake.drain_alerts())
        if newest is not None:
            self.mailbox.command = newest
            if self.video is not None:
                self.video.report_video_age(newest.cmd.video_age_us)

    def _dispatch(self, link: RobotLink, msg: object, recv_ns: int, peer: bytes) -> None:
        mb = self.mailbox
        if isinstance(msg, Command):
            pass  # judged with every other arrival of this poll in _take_commands
        elif isinstance(msg, ControlRequest):
            self._control_request(link, msg, recv_ns, peer)
        elif isinstance(msg, Pong):
            if self.guard.pong_ok(peer, msg, recv_ns):
                self.clock.on_pong(msg, recv_ns)
        elif isinstance(msg, Ping):  # already answered by the link
            self.guard.on_ping(peer, msg, recv_ns)
            link.bind_console(self.guard.ping_target)
        elif (isinstance(msg, KeyframeRequest) and self.video is not None
              and self.guard.is_holder(peer)):
            self.video.request_keyframe(msg.reason)
        mb.alerts.extend(self.guard.drain_alerts())

    def _control_request(self, link: RobotLink, req: ControlRequest, recv_ns: int,
                         peer: bytes) -> None:
        """Only the surgeon session's holder reaches the control loop (session_guard)."""
        mb = self.mailbox
        pinged = self.guard.ping_target
        adm = self.guard.admit(peer, req, recv_ns, lambda holder: self._gone(link, holder))
        link.bind_console(self.guard.ping_target)
        if not adm.ok:
            tlm = mb.telemetry
            link.reply(peer, ControlReply(req_id=req.req_id, ok=False,
                                          state=tlm.state if tlm else "disabled",
                                          reason=adm.reason))
            return
        if adm.granted is not None:
            # A new session: its commands restart their sequence and carry the new
            # token; a new console's clock is not the last one's.
            self.intake.reset(adm.granted)
            if peer != pinged:
                self.clock = ClockSync()
        if len(mb.requests) == mb.requests.maxlen:
            mb.dropped_requests += 1
            log.warning("control request queue full; dropping %s", req.op)
            return
        mb.requests.append(PendingRequest(peer, req, recv_ns))

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
        self.mailbox.alerts.extend(self.guard.drain_alerts())
