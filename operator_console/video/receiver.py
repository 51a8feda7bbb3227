"""The console side of the video channel: drain, decode in order, show the newest.

The console never queues pictures. Each ``poll`` drains every pending message
(up to ``max_drain``) and decodes them in order, since H.264 P-frames need
their references, but returns only the newest picture; the others are counted
as ``dropped`` (decoded, never shown). Decoding starts at the newest keyframe in
a batch, because nothing before it is needed any more. A batch larger than
``max_backlog`` without a keyframe is thrown away and a keyframe requested:
catching up through it would only show the surgeon the past.

A gap in ``frame_id`` (the sender numbers the access units it sends
contiguously) or a decode error means the reference chain is broken: nothing
is decoded until the next keyframe, so the surgeon keeps the last clean picture
(and its growing age) rather than a smeared one, and a KeyframeRequest is
offered through ``take_keyframe_request`` (rate-limited) for the control channel.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import zmq

from operator_console.video.decoder import H264Decoder, Image, Picture
from telesurgery.errors import SchemaError, VideoError
from transport import schema

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    frame_id: int
    capture_ns: int
    """Sender's monotonic clock, as in the header."""
    recv_ns: int
    decoded_ns: int
    picture: Picture
    """Still in YUV: give it to the display as is; ``image`` converts it."""
    keyframe: bool = False
    offset_ns: int = 0
    """Add to a sender timestamp to get this process's monotonic clock."""
    send_ns: int = 0
    """Sender's monotonic clock when it published the access unit (encoded)."""

    @property
    def image(self) -> Image:
        """BGR pixels (converted on first use, then kept)."""
        return self.picture.bgr

    @property
    def capture_local_ns(self) -> int:
        return self.capture_ns + self.offset_ns

    def g2g_ns(self, display_ns: int) -> int:
        """Glass-to-glass latency: capture on the robot to display here."""
        return display_ns - self.capture_local_ns


@dataclass
class ReceiverStats:
    received: int = 0
    bytes_received: int = 0
    decoded: int = 0
    shown: int = 0
    dropped: int = 0
    """Arrived but never shown: superseded in a batch, or thrown away as backlog."""
    lost: int = 0
    """Access units missing from the frame_id sequence."""
    skipped: int = 0
    """Not decoded while waiting for a keyframe."""
    bad_messages: int = 0
    decode_errors: int = 0
    keyframe_requests: int = 0

    @property
    def loss(self) -> float:
        total = self.received + self.lost
        return self.lost / total if total else 0.0


class VideoReceiver:
    def __init__(self, socket: zmq.Socket[bytes], decoder: H264Decoder, *,
                 offset_ns: int = 0, max_backlog: int = 15, max_drain: int = 64,
                 keyframe_retry_ms: float = 250.0) -> None:
        self._socket = socket
        self._decoder = decoder
        self.offset_ns = offset_ns
        self._max_backlog = max_backlog
        self._max_drain = max_drain
        self._retry_ns = int(keyframe_retry_ms * 1e6)
        self._last_id: int | None = None
        self.keyframe_needed = True
        """True until a keyframe is decoded; set again by a gap or decode error."""
        self._need_reason = "start"
        self._last_request_ns: int | None = None
        self._request_seq = 0
        self._ask_on_next_frame = False
        self.stats = ReceiverStats()

    # -- public interface
    def use_socket(self, socket: zmq.Socket[bytes]) -> None:
        """Read video from ``socket`` from now on (dual path: each path has its own SUB,
        ``ConsoleLink.switch_video``)."""
        self._socket = socket

    def on_path_switch(self) -> None:
        """Video now comes by another path (dual path): ask for a keyframe now, and once
        more with the first frame by the new path. The first request may reach the robot
        before the new connection subscribed, and its keyframe is then published to no
        one; waiting the retry interval for the next cost a 300 ms picture gap (HIL)."""
        self._need_keyframe("path switch")
        self._last_request_ns = None
        self._ask_on_next_frame = True

    def poll(self, timeout_ms: int = 0) -> DecodedFrame | None:
        """Wait up to ``timeout_ms`` for video; return the newest new picture, if any."""
        if not self._socket.poll(timeout_ms, zmq.POLLIN):
            return None
        batch = self._drain()
        start = self._start_index(batch)
        newest: DecodedFrame | None = None
        for index, (header, payload, recv_ns) in enumerate(batch):
            if not self._in_sequence(header) or index < start:
                self.stats.dropped += 1
                continue
            picture = self._decode(header, payload, recv_ns)
            if picture is not None:
                if newest is not None:
                    self.stats.dropped += 1
                newest = picture
        if newest is not None:
            self.stats.shown += 1
        return newest

    def take_keyframe_request(self, now_ns: int | None = None) -> schema.KeyframeRequest | None:
        """A KeyframeRequest to send now, or None (not needed, or asked too recently)."""
        if not self.keyframe_needed:
            return None
        now = time.monotonic_ns() if now_ns is None else now_ns
        if self._last_request_ns is not None and now - self._last_request_ns < self._retry_ns:
            return None
        self._last_request_ns = now
        self._request_seq += 1
        self.stats.keyframe_requests += 1
        return schema.KeyframeRequest(seq=self._request_seq, last_frame_id=self._last_id,
                                      reason=self._need_reason)

    # -- internals
    def _drain(self) -> list[tuple[schema.VideoFrameHeader, memoryview, int]]:
        batch: list[tuple[schema.VideoFrameHeader, memoryview, int]] = []
        while len(batch) < self._max_drain:
            try:
                parts = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            recv_ns = time.monotonic_ns()
            message = self._validate(parts)
            if message is not None:
                batch.append((*message, recv_ns))
        return batch

    def _validate(self, parts: list[zmq.Frame]) -> tuple[schema.VideoFrameHeader,
                                                           memoryview] | None:
        try:
            if len(parts) != 2:
                raise SchemaError("message", f"expected 2 frames, got {len(parts)}")
            header: schema.VideoFrameHeader = schema.decode_as(parts[0].buffer,
                                                               schema.VideoFrameHeader)
            payload = parts[1].buffer
            if len(payload) != header.payload_len:
                raise SchemaError("vid.payload_len", f"header says {header.payload_len}, "
                                  f"payload has {len(payload)} bytes")
        except SchemaError as err:
            self.stats.bad_messages += 1
            log.warning("bad video message dropped (%d so far): %s",
                        self.stats.bad_messages, err)
            return None
        self.stats.received += 1
        self.stats.bytes_received += len(payload)
        return header, payload

    def _start_index(self, batch: list[tuple[schema.VideoFrameHeader, memoryview, int]]) -> int:
        """Index of the first message worth decoding in ``batch``."""
        keyframes = [i for i, (h, _, _) in enumerate(batch) if h.keyframe]
        if keyframes:
            return keyframes[-1]
        if len(batch) > self._max_backlog:
            self._need_keyframe("backlog")
            log.warning("video backlog of %d frames thrown away", len(batch))
            return len(batch)
        return 0

    def _in_sequence(self, header: schema.VideoFrameHeader) -> bool:
        """Track frame ids: count and flag gaps; False for a stale or repeated id."""
        last = self._last_id
        if last is not None and header.frame_id <= last and not header.keyframe:
            # Reordered, duplicated, or a restarted sender: only a keyframe resyncs.
            return False
        if last is not None and header.frame_id > last + 1:
            self.stats.lost += header.frame_id - last - 1
            log.warning("video gap: frames %d..%d missing", last + 1, header.frame_id - 1)
            self._need_keyframe("gap")
        self._last_id = header.frame_id
        return True

    def _decode(self, header: schema.VideoFrameHeader, payload: memoryview,
                recv_ns: int) -> DecodedFrame | None:
        if self.keyframe_needed and not header.keyframe:
            self.stats.skipped += 1
            if self._ask_on_next_frame:  # the new path delivers: a keyframe will too
                self._ask_on_next_frame = False
                self._last_request_ns = None
            return None
        try:
            image = self._decoder.decode_picture(payload)
        except VideoError as err:
            self.stats.decode_errors += 1
            log.warning("video frame %d: %s", header.frame_id, err)
            self._need_keyframe("decode error")
            return None
        if image is None:
            return None
        if header.keyframe:
            self.keyframe_needed = False
            self._ask_on_next_frame = False
        self.stats.decoded += 1
        return DecodedFrame(header.frame_id, header.capture_ns, recv_ns, time.monotonic_ns(),
                            image, header.keyframe, self.offset_ns, header.send_ns)

    def _need_keyframe(self, reason: str) -> None:
        if not self.keyframe_needed:
            # A new break deserves a request now, not after the retry interval.
            self._last_request_ns = None
        self.keyframe_needed = True
        self._need_reason = reason
