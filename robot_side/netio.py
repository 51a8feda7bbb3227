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
from robot_side.observe import ObserverFeed
from telesurgery.pacer import try_realtime
from transport.clocksync import ClockSync
from transport.config import LinkConfig
from transport.gate import CommandGate, Verdict
from transport.keys import ServerKeys
from transport.link import RobotLink
from transport.linkstats import LinkStats
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
                 video: VideoSink | None = None, feed: ObserverFeed | None = None) -> None:
        super().__init__(name="robot-net", daemon=True)
        self.cfg = cfg
        self.keys = keys
        self.mailbox = mailbox
        self.gate = CommandGate(age_limit_ns)
        self.stats = LinkStats(loss_window_ns)
        self.clock = ClockSync()
        self._ping_period_ns = int(1e9 / cfg.ping_hz)
        self._tlm_period_ns = int(1e9 / telemetry_hz)
        self._halt = threading.Event()
        self.video = video
        """Where keyframe requests and the surgeon's picture age go; the video
        process binds the video socket itself, so the link does not."""
        self.feed = feed
        """The local observer feed (ROS 2 bridge, page, recorder): every new telemetry
        and every audited event, published once; owned by this thread."""
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
            offset = self.clock.offset_ns
            for a in link.command_arrivals():
                # Every arrival counts for loss and jitter, also those superseded
                # by a newer command in the same poll.
                self.stats.on_message(a.seq, a.t_send_ns, a.recv_ns, offset)
                if offset is not None:
                    self._latency_us[self._latency_n % len(self._latency_us)] = (
                        a.recv_ns - (a.t_send_ns + offset)) // 1000
                    self._latency_n += 1
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
                peer, reply = mb.replies.popleft()
                link.reply(peer, reply)
            while mb.events:
                event = mb.events.popleft()
                link.publish_event(event)
                if self.feed is not None:
                    self.feed.publish(event)
            tlm = mb.telemetry
            if tlm is not None and tlm.seq != last_tlm_seq:
                last_tlm_seq = tlm.seq
                if self.feed is not None:
                    self.feed.publish(tlm)
                if now >= next_tlm:
                    link.publish_telemetry(tlm)
                    next_tlm = now + self._tlm_period_ns

    def _dispatch(self, link: RobotLink, msg: object, recv_ns: int, peer: bytes) -> None:
        mb = self.mailbox
        if isinstance(msg, Command):
            offset = self.clock.offset_ns
            if self.gate.offer(msg, recv_ns, offset) is Verdict.FRESH:
                mb.command = CommandSample(msg, recv_ns)
                if self.video is not None:
                    self.video.report_video_age(msg.video_age_us)
        elif isinstance(msg, ControlRequest):
            if msg.op == "arm":
                # Arming starts a session: the console's sequence restarts per run.
                self.gate.reset()
                self.stats.reset()
            if len(mb.requests) == mb.requests.maxlen:
                mb.dropped_requests += 1
                log.warning("control request queue full; dropping %s", msg.op)
                return
            mb.requests.append(PendingRequest(peer, msg, recv_ns))
        elif isinstance(msg, Pong):
            self.clock.on_pong(msg, recv_ns)
        elif isinstance(msg, KeyframeRequest) and self.video is not None:
            self.video.request_keyframe(msg.reason)
