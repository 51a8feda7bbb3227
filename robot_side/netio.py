"""The robot node's network thread: control requests, pings, telemetry, observers.

Commands do not pass through here: the control thread owns the command socket
(robot_side.command_port). This thread owns the link's other sockets and the
local observer feed. It turns control requests and pongs into the control
thread's inputs (pending requests, the clock offset and round-trip time) and
publishes what the control and audit threads leave for it: replies, audited
safety events, and telemetry, which it builds here from the report the control
loop swapped into the mailbox (one reference per period), so the control thread
never encodes or sends a telemetry message. Handover is by atomic reference
swaps and bounded deques, so the control loop never waits on the network.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import zmq

from robot_side.control import CommandSample, LinkView, PendingRequest, StepReport
from robot_side.observe import ObserverFeed
from robot_side.telemetry import telemetry_from
from telesurgery.pacer import try_realtime
from transport.clocksync import ClockSync
from transport.config import LinkConfig
from transport.keys import ServerKeys
from transport.link import RobotLink
from transport.schema import (
    Command,
    ControlReply,
    ControlRequest,
    KeyframeRequest,
    Pong,
    SafetyEvent,
    Telemetry,
)

log = logging.getLogger(__name__)

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
        self.telemetry: Telemetry | None = None
        self.dropped_requests = 0

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
        self.clock = ClockSync()
        self._ping_period_ns = int(1e9 / cfg.ping_hz)
        self._tlm_period_ns = int(1e9 / telemetry_hz)
        self._obs_period_ns = int(1e9 / observe_hz)
        self.observe_path = observe_path
        self.loop_jitter_us = loop_jitter_us
        self._halt = threading.Event()
        self.video = video
        """The video process (its reports); it binds the video socket itself."""
        self.keyframes: KeyframeSink | None = keyframes if keyframes is not None else video
        """Where keyframe requests go: this thread's own line to the video process."""
        self.link: RobotLink | None = None
        self.feed: ObserverFeed | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.telemetry_built = 0
        self.audit_head: Callable[[], str | None] = lambda: None
        """The audit chain head (``AuditLog.head``): the witness every telemetry carries."""

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        # Control requests and pongs wait in this thread's poll; commands do not.
        try_realtime(45)
        try:
            with RobotLink(self.cfg, self.keys, self.ctx, video=self.video is None,
                           command=False) as link:
                self.link = link
                feed = None if self.observe_path is None else ObserverFeed(
                    self.observe_path, self.ctx)
                try:
                    self.feed = feed
                    self.ready.set()
                    self._loop(link, feed)
                finally:
                    if feed is not None:
                        feed.close()
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
        while not self._halt.is_set():
            now = time.monotonic_ns()
            due = min(next_ping, next_tlm, next_obs) - now
            for item in link.poll(max(0, min(POLL_MAX_MS, due // 1_000_000))):
                self._dispatch(link, item.msg, item.recv_ns, item.peer)
            now = time.monotonic_ns()
            if now >= next_ping:
                link.send_ping(self.clock.make_ping(now))
                next_ping = now + self._ping_period_ns
                if self.video is not None:
                    # Its reports queue up until read: unread, the queue fills, new
                    # errors are lost and the video process cannot finish its exit.
                    self.video.poll()
            while mb.replies:
                peer, reply = mb.replies.popleft()
                link.reply(peer, reply)
            while mb.events:
                event = mb.events.popleft()
                link.publish_event(event)
                if feed is not None:
                    feed.publish(event)
            if now < next_tlm and now < next_obs:
                continue
            report, view = mb.report, mb.link_view
            if report is None or view is None:
                continue
            if report is not last_report:
                seq += 1
                sample = mb.command
                tlm = telemetry_from(seq, report, view, self.loop_jitter_us(),
                                     sample.cmd.video_age_us if sample else None,
                                     audit_head=self.audit_head())
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

    def _publish_clock(self) -> None:
        c = self.clock
        self.mailbox.clock = ClockView(c.offset_ns, c.rtt_ns, c.last_pong_ns, c.stale_after_ns)

    def _dispatch(self, link: RobotLink, msg: object, recv_ns: int, peer: bytes) -> None:
        mb = self.mailbox
        if isinstance(msg, ControlRequest):
            if len(mb.requests) == mb.requests.maxlen:
                mb.dropped_requests += 1
                log.warning("control request queue full; dropping %s", msg.op)
                return
            # Arming starts a session: the control thread resets the command gate
            # (it owns it) when it takes this request.
            mb.requests.append(PendingRequest(peer, msg, recv_ns))
        elif isinstance(msg, Pong):
            self.clock.on_pong(msg, recv_ns)
            self._publish_clock()
        elif isinstance(msg, KeyframeRequest) and self.keyframes is not None:
            self.keyframes.request_keyframe(msg.reason)
        elif isinstance(msg, Command):  # never: commands have their own socket
            log.warning("command on the control channel dropped")
