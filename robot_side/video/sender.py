"""The robot side of the video channel: encode the newest frame and publish it.

Each message is two ZeroMQ frames, [VideoFrameHeader, access unit], sent
without copying the payload and without blocking.

A PUB socket normally discards silently at its high-water mark, per subscriber.
With ``backpressure=True`` the sender sets ``XPUB_NODROP`` so a full queue fails
the send instead: the frame is dropped, counted, and the next frame forced to be
a keyframe (the encoder used the dropped frame as a reference). Use it only on a
socket that serves the surgeon alone: with NODROP, *any* slow subscriber (an
observer on a poor link) would make the send fail for everyone.

``header.frame_id`` numbers the access units actually sent, contiguously, so
the console reads any gap as loss. Capture frames the sender skipped because a
newer one was ready are not gaps: they were never encoded.

Bitrate adapts to congestion seen in delivery timing (AIMD, like TCP):

* the console reports how old the picture it shows is (``video_age_us`` in every
  command); an age above ``congested_age_ms`` in every report for ``congested_for_ms``
  means frames queue somewhere. One old report is not congestion: a picture that
  aged because one frame came late (the console's main thread busy, a scheduler
  hiccup on the way) is fresh again with the next frame, and a lower bitrate would
  not have helped it; a queue keeps every picture old (measured on the healthy
  loopback rig: single late pictures cut the rate every few seconds);
* a keyframe request for a gap or a backlog means frames were lost or piled up
  on the way (queues overflow silently at their high-water marks);
* with ``backpressure``, a send that would block: the queue toward the console
  is full, the link is not draining frames as fast as they are made;

either signal cuts the rate by ``decrease`` (at most once per ``holdoff_ms``, so a
cut takes effect before the next); a quiet ``increase_every_ms`` raises it by
``increase_frac`` of the ceiling until it is back at the configured bitrate.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import zmq

from robot_side.video.capture import CapturedFrame
from robot_side.video.encoder import H264Encoder
from telesurgery.gaps import PICTURE_AGES_MS, AgeCounter, GapCounter
from telesurgery.ratelog import RateLimitedLog
from transport import schema

log = logging.getLogger(__name__)
rate_log = RateLimitedLog(log)

LATE_AT_SEND_NS = 120_000_000
"""A picture older than this when published is logged with where it lost its time."""

LOSS_REASONS = frozenset({"gap", "backlog"})
"""KeyframeRequest reasons that mean the link lost or piled up frames."""


class BitrateController:
    """Pure AIMD rate control; the clock is passed in."""

    def __init__(self, max_kbps: int, min_kbps: int, *, decrease: float = 0.7,
                 increase_frac: float = 0.05, holdoff_ms: float = 500.0,
                 increase_every_ms: float = 1000.0, congested_age_ms: float = 120.0,
                 congested_for_ms: float = 200.0) -> None:
        self.max_kbps, self.min_kbps = max_kbps, min_kbps
        self.target_kbps = max_kbps
        self._decrease = decrease
        self._step = max(1, round(max_kbps * increase_frac))
        self._holdoff_ns = int(holdoff_ms * 1e6)
        self._increase_ns = int(increase_every_ms * 1e6)
        self._congested_age_us = int(congested_age_ms * 1000)
        self._congested_for_ns = int(congested_for_ms * 1e6)
        self._old_since_ns: int | None = None
        """Since when every reported age was above ``congested_age_ms`` (None: fresh)."""
        self._last_cut_ns: int | None = None
        self._last_change_ns: int | None = None
        self.cuts = 0

    def on_congestion(self, now_ns: int) -> int:
        if self._last_cut_ns is None or now_ns - self._last_cut_ns >= self._holdoff_ns:
            self.target_kbps = max(self.min_kbps, round(self.target_kbps * self._decrease))
            self._last_cut_ns = self._last_change_ns = now_ns
            self.cuts += 1
        return self.target_kbps

    def on_video_age(self, age_us: int, now_ns: int) -> int:
        if age_us <= self._congested_age_us:
            self._old_since_ns = None
            return self.target_kbps
        if self._old_since_ns is None:
            self._old_since_ns = now_ns
        if now_ns - self._old_since_ns >= self._congested_for_ns:
            return self.on_congestion(now_ns)
        return self.target_kbps

    def tick(self, now_ns: int) -> int:
        if self._last_change_ns is None:
            self._last_change_ns = now_ns
        elif (self.target_kbps < self.max_kbps
              and now_ns - self._last_change_ns >= self._increase_ns):
            self.target_kbps = min(self.max_kbps, self.target_kbps + self._step)
            self._last_change_ns = now_ns
        return self.target_kbps


@dataclass
class SenderStats:
    sent: int = 0
    bytes_sent: int = 0
    keyframes: int = 0
    dropped_backpressure: int = 0
    dropped_stale: int = 0
    keyframe_requests: int = 0
    encode_ns_total: int = 0
    """Hand-over (conversion) plus encode."""
    last_encode_ns: int = 0
    convert_ns_total: int = 0
    """The hand-over part of ``encode_ns_total``: copy, or colour conversion for BGR."""
    send_ns_total: int = 0
    """Header and queueing on the socket(s), mirror included."""
    mirror_dropped: int = 0


class VideoSender:
    def __init__(self, socket: zmq.Socket[bytes], encoder: H264Encoder,
                 controller: BitrateController | None = None, *,
                 backpressure: bool = False, mirror: zmq.Socket[bytes] | None = None) -> None:
        self._socket = socket
        self._mirror = mirror
        """Local copy for the robot's own observers (page, recorder); never blocks."""
        self._encoder = encoder
        self._cfg = encoder.cfg
        self.controller = controller or BitrateController(
            self._cfg.bitrate_kbps, self._cfg.min_bitrate_kbps)
        self._next_id = 0
        self._keyframe_due = True
        self.stats = SenderStats()
        # Where a stale picture lost its time on this side (the console counts its own).
        self.age_at_encode = AgeCounter()
        """Capture -> encode start: the camera's hand-over and this process's wake-up."""
        self.age_at_send = AgeCounter()
        """Capture -> published (encode included)."""
        self.send_gaps = GapCounter(PICTURE_AGES_MS)
        self.cuts: Counter[str] = Counter()
        """Bitrate cuts by what asked for them (age, gap, backlog, backpressure)."""
        if backpressure:
            socket.setsockopt(zmq.XPUB_NODROP, 1)

    def request_keyframe(self, reason: str = "") -> None:
        """A KeyframeRequest arrived: the next frame is IDR. Loss reasons cut the rate."""
        self._keyframe_due = True
        self.stats.keyframe_requests += 1
        if reason in LOSS_REASONS:
            self._cut(reason, self.controller.on_congestion(time.monotonic_ns()))

    def report_video_age(self, age_us: int | None, now_ns: int | None = None) -> None:
        """Feed the console's reported picture age into rate control."""
        if age_us is not None:
            self._cut("age", self.controller.on_video_age(age_us, now_ns or time.monotonic_ns()))

    def send(self, frame: CapturedFrame) -> bool:
        """Encode and publish ``frame``; False when it was dropped (stale or queue full)."""
        now = time.monotonic_ns()
        if now - frame.capture_ns > self._cfg.max_send_age_ms * 1e6:
            self.stats.dropped_stale += 1
            log.warning("video frame %d is %.0f ms old at send, dropped (%d so far)",
                        frame.frame_id, (now - frame.capture_ns) / 1e6,
                        self.stats.dropped_stale)
            return False
        self.age_at_encode.add(now - frame.capture_ns)
        self._apply(self.controller.tick(now))
        # Cleared before encoding so a request arriving meanwhile is not lost.
        force, self._keyframe_due = self._keyframe_due, False
        cpu0 = time.process_time_ns()
        encoded = self._encoder.encode(frame.image, frame.frame_id, force)
        encode_cpu_ns = time.process_time_ns() - cpu0
        self.stats.encode_ns_total += encoded.encode_ns
        self.stats.last_encode_ns = encoded.encode_ns
        self.stats.convert_ns_total += encoded.convert_ns
        send_ns = time.monotonic_ns()
        header = schema.VideoFrameHeader(
            frame_id=self._next_id, capture_ns=frame.capture_ns, send_ns=send_ns,
            keyframe=encoded.keyframe, width=frame.width, height=frame.height,
            payload_len=len(encoded.payload))
        try:
            self._socket.send(schema.encode(header), zmq.NOBLOCK | zmq.SNDMORE)
        except zmq.Again:
            self._dropped(frame.frame_id)
            return False
        # Once the first part is queued, ZeroMQ accepts the rest of the message.
        self._socket.send(encoded.payload, zmq.NOBLOCK, copy=False)
        if self._mirror is not None:
            self._send_mirror(self._mirror, schema.encode(header), encoded.payload)
        self._next_id += 1
        self.stats.sent += 1
        self.stats.bytes_sent += len(encoded.payload)
        self.stats.keyframes += encoded.keyframe
        sent_ns = time.monotonic_ns()
        self.stats.send_ns_total += sent_ns - send_ns
        self.age_at_send.add(sent_ns - frame.capture_ns)
        self.send_gaps.event(sent_ns)
        if sent_ns - frame.capture_ns > LATE_AT_SEND_NS:
            # Which stage: waiting to start, the encode's wall time against the CPU the
            # whole process used meanwhile (its slice threads included), or the send.
            rate_log(logging.INFO, "late", "video frame %d %.1f ms old at send: %.1f at "
                     "encode start, encode %.1f ms wall / %.1f ms process CPU, send %.1f ms "
                     "(monotonic %d)", frame.frame_id, (sent_ns - frame.capture_ns) / 1e6,
                     (now - frame.capture_ns) / 1e6, encoded.encode_ns / 1e6,
                     encode_cpu_ns / 1e6, (sent_ns - send_ns) / 1e6, sent_ns)
        return True

    def report(self) -> dict[str, Any]:
        """The counters and the per-stage figures, as plain data for the parent."""
        return {**asdict(self.stats), "stages": {
            "age_at_encode": self.age_at_encode.summary(),
            "age_at_send": self.age_at_send.summary(),
            "send_gaps": self.send_gaps.summary(), "bitrate_cuts": dict(self.cuts)}}

    def _send_mirror(self, mirror: zmq.Socket[bytes], header: bytes, payload: bytes) -> None:
        try:
            mirror.send(header, zmq.NOBLOCK | zmq.SNDMORE)
        except zmq.Again:
            self.stats.mirror_dropped += 1
            return
        mirror.send(payload, zmq.NOBLOCK, copy=False)

    def _dropped(self, frame_id: int) -> None:
        self.stats.dropped_backpressure += 1
        self._keyframe_due = True
        self._cut("backpressure", self.controller.on_congestion(time.monotonic_ns()))
        log.warning("video send queue full, frame %d dropped (%d so far), bitrate %d kbps",
                    frame_id, self.stats.dropped_backpressure, self._encoder.bitrate_kbps)

    def _cut(self, cause: str, target_kbps: int) -> None:
        if target_kbps < self._encoder.bitrate_kbps:
            self.cuts[cause] += 1
        self._apply(target_kbps)

    def _apply(self, target_kbps: int) -> None:
        if target_kbps != self._encoder.bitrate_kbps:
            self._encoder.set_bitrate(target_kbps)
