"""The fan-out loop: local observer feed + video mirror in, one Zenoh put per message out.

Runs in its own process (``process.py``), never in the control process. It reads
what every local observer reads (``robot_side.observe`` and the video mirror,
both ipc sockets in the robot's 0700 runtime folder) and publishes it once into
Zenoh; the router copies it to every watcher. A slow watcher costs the router,
never this loop and never the robot (puts use ``CongestionControl.DROP``).

Watchers are counted by their liveliness tokens under
``telesurgery/<robot>/observers/*``; the count goes onto every ``Telemetry`` the
fan-out publishes (``Telemetry.observers``), and a watcher joining makes the
fan-out resubscribe to the mirror, which asks the encoder for a keyframe (the
video process grants at most one per second) so the newcomer decodes at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import zenoh
import zmq

from robot_side.fanout import keys
from robot_side.observe import ObserverClient
from telesurgery.errors import SchemaError
from telesurgery.ratelog import RateLimitedLog
from transport.schema import (
    SafetyEvent,
    Stroke,
    Telemetry,
    VideoFrameHeader,
    Vitals,
    decode_as,
    encode,
)

log = logging.getLogger(__name__)
POLL_MS = 50
STATUS_PERIOD_NS = 1_000_000_000


@dataclasses.dataclass
class FanoutStats:
    telemetry: int = 0
    events: int = 0
    video: int = 0
    bad_video: int = 0
    strokes: int = 0
    observers: int = 0
    joins: int = 0
    leaves: int = 0


class FanoutPublisher:
    """Owns one Zenoh session (a router or a router's client) and its local SUBs."""

    def __init__(self, session: zenoh.Session, robot: str, observe_path: Path,
                 video_path: Path | None, *, ctx: zmq.Context[Any] | None = None,
                 strokes_path: Path | None = None, status_path: Path | None = None) -> None:
        self._session = session
        self._robot = robot
        self._ctx = ctx or zmq.Context.instance()
        self.stats = FanoutStats()
        self._ratelog = RateLimitedLog(log)
        self._feed = ObserverClient(observe_path, self._ctx)
        self._video: zmq.Socket[bytes] | None = None
        if video_path is not None:
            self._video = self._ctx.socket(zmq.SUB)
            self._video.setsockopt(zmq.LINGER, 0)
            self._video.setsockopt(zmq.RCVHWM, 120)
            self._video.setsockopt(zmq.SUBSCRIBE, b"")
            self._video.connect(f"ipc://{video_path}")
        self._strokes: zmq.Socket[bytes] | None = None
        if strokes_path is not None:  # the telestration relay's local copy
            self._strokes = self._ctx.socket(zmq.SUB)
            self._strokes.setsockopt(zmq.LINGER, 0)
            self._strokes.setsockopt(zmq.SUBSCRIBE, b"")
            self._strokes.connect(f"ipc://{strokes_path}")
        drop = zenoh.CongestionControl.DROP
        self._pub_tlm = session.declare_publisher(keys.telemetry(robot), congestion_control=drop)
        self._pub_evt = session.declare_publisher(keys.events(robot),
                                                  congestion_control=zenoh.CongestionControl.BLOCK,
                                                  reliability=zenoh.Reliability.RELIABLE)
        self._pub_vid = session.declare_publisher(keys.video(robot), congestion_control=drop,
                                                  express=True)
        self._pub_stk = session.declare_publisher(keys.strokes(robot), congestion_control=drop,
                                                  express=True)
        self._watchers: set[str] = set()
        self._live = session.liveliness().declare_subscriber(
            keys.observers(robot) + "/*", history=True)
        self._stop = threading.Event()
        self._status_path = status_path
        self._next_status_ns = 0

    @property
    def observers(self) -> int:
        return len(self._watchers)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._feed.socket, zmq.POLLIN)
        if self._video is not None:
            poller.register(self._video, zmq.POLLIN)
        if self._strokes is not None:
            poller.register(self._strokes, zmq.POLLIN)
        while not self._stop.is_set():
            ready = dict(poller.poll(POLL_MS))
            if self._count_watchers() and self._status_path is not None:
                self._next_status_ns = 0  # a join or a leave is written at once
            self._write_status()
            if self._feed.socket in ready:
                self._drain_feed()
            if self._video is not None and self._video in ready:
                self._drain_video(self._video)
            if self._strokes is not None and self._strokes in ready:
                self._drain_strokes(self._strokes)

    def _count_watchers(self) -> bool:
        """Take the liveliness changes; True when the count changed."""
        before = len(self._watchers)
        joined = False
        while (sample := self._live.try_recv()) is not None:
            key = str(sample.key_expr)
            if sample.kind == zenoh.SampleKind.PUT and key not in self._watchers:
                self._watchers.add(key)
                self.stats.joins += 1
                joined = True
                log.info("observer joined: %s (%d watching)", key, len(self._watchers))
            elif sample.kind == zenoh.SampleKind.DELETE and key in self._watchers:
                self._watchers.discard(key)
                self.stats.leaves += 1
                log.info("observer left: %s (%d watching)", key, len(self._watchers))
        self.stats.observers = len(self._watchers)
        if joined and self._video is not None:
            # XPUB_VERBOSE on the mirror turns a resubscription into a keyframe wish.
            self._video.setsockopt(zmq.UNSUBSCRIBE, b"")
            self._video.setsockopt(zmq.SUBSCRIBE, b"")
        return len(self._watchers) != before

    def _write_status(self) -> None:
        """``fanout.json`` beside the feed for local tools (the page): the count and the
        totals, stamped with this machine's monotonic clock so a reader can age it."""
        now = time.monotonic_ns()
        if self._status_path is None or now < self._next_status_ns:
            return
        self._next_status_ns = now + STATUS_PERIOD_NS
        who = sorted(keys.watcher_name(k.rsplit("/", 1)[-1]) for k in self._watchers)
        body = {**dataclasses.asdict(self.stats), "who": who, "t_ns": now}
        tmp = self._status_path.with_name(self._status_path.name + ".new")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(body))
            os.replace(tmp, self._status_path)

    def _drain_feed(self) -> None:
        while (msg := self._feed.recv(0)) is not None:
            if isinstance(msg, Telemetry):
                stamped = dataclasses.replace(msg, observers=len(self._watchers))
                self._pub_tlm.put(encode(stamped))
                self.stats.telemetry += 1
            elif isinstance(msg, SafetyEvent | Vitals):
                # Vitals ride the events key: low rate, and a watcher keeps every one.
                self._pub_evt.put(encode(msg))
                self.stats.events += 1

    def _drain_strokes(self, sock: zmq.Socket[bytes]) -> None:
        while True:
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                decode_as(data, Stroke)
            except SchemaError as err:
                self._ratelog(logging.WARNING, "bad-stroke", "fan-out: bad stroke: %s", err)
                continue
            self._pub_stk.put(data)
            self.stats.strokes += 1

    def _drain_video(self, sock: zmq.Socket[bytes]) -> None:
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                if len(parts) != 2:
                    raise SchemaError("video", f"{len(parts)} frames, expected 2")
                header: VideoFrameHeader = decode_as(parts[0], VideoFrameHeader)
                if header.payload_len != len(parts[1]):
                    raise SchemaError("video.payload_len", "does not match the access unit")
            except SchemaError as err:
                self.stats.bad_video += 1
                self._ratelog(logging.WARNING, "bad-video", "fan-out: bad mirror frame: %s", err)
                continue
            # The access unit as payload, the validated header as attachment: one put.
            self._pub_vid.put(parts[1], attachment=parts[0])
            self.stats.video += 1

    def close(self) -> None:
        self._live.undeclare()  # type: ignore[no-untyped-call]
        for pub in (self._pub_tlm, self._pub_evt, self._pub_vid, self._pub_stk):
            pub.undeclare()  # type: ignore[no-untyped-call]
        self._feed.close()
        for sock in (self._video, self._strokes):
            if sock is not None:
                sock.close(0)

