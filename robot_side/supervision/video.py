"""The surgeon's picture for the page: H.264 access units relayed to the browser.

Measured and chosen (see docs/architecture.md): the browser decodes with WebCodecs,
so the robot machine spends nothing on decoding or re-encoding; a JPEG still stream
would decode every frame here (an H.264 stream cannot be sampled without decoding
everything since the last keyframe) and re-encode it.

The video process publishes every access unit on a local XPUB; this side is an XSUB
so that it can ask for a keyframe whenever a page joins (each subscription message
is a keyframe wish, rate-limited by the video process). Each page has a bounded
queue: a page that cannot keep up loses frames up to the next keyframe, never the
robot's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from telesurgery.errors import SchemaError
from telesurgery.ratelog import RateLimitedLog
from transport.schema import VideoFrameHeader, decode

log = logging.getLogger(__name__)
ratelog = RateLimitedLog(log)

FRAME_HEAD = struct.Struct("<cQqBHH")
"""b"V", frame id, picture age at send (us), keyframe, width, height; the AU follows."""
CLIENT_QUEUE = 30


class PictureClient:
    """One page's frame queue; after a drop it waits for the next keyframe."""

    def __init__(self, want_keyframe: Callable[[], None]) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=CLIENT_QUEUE)
        self.need_keyframe = True
        self.dropped = 0
        self._want_keyframe = want_keyframe

    def offer(self, keyframe: bool, message: bytes) -> None:
        if self.need_keyframe and not keyframe:
            return
        try:
            self.queue.put_nowait(message)
            self.need_keyframe = False
        except asyncio.QueueFull:
            self.dropped += 1
            self.need_keyframe = True
            self._want_keyframe()


class PictureRelay:
    """Reads the video mirror; hands every frame to every page's queue."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clients: set[PictureClient] = set()
        self.frames = 0
        self.bad = 0
        self.last_capture_ns: int | None = None
        self.last_recv_ns: int | None = None
        self._ctx = zmq.asyncio.Context()
        self._sock: Any = self._ctx.socket(zmq.XSUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 60)
        self._sock.connect(f"ipc://{path}")
        self.want_keyframe()

    def want_keyframe(self) -> None:
        # Without a video process yet, the subscription is sent when it connects.
        with contextlib.suppress(zmq.Again):
            self._sock.send(b"\x01", zmq.NOBLOCK)

    def add(self) -> PictureClient:
        client = PictureClient(self.want_keyframe)
        self.clients.add(client)
        self.want_keyframe()
        return client

    def age_ms(self, now_ns: int) -> float | None:
        if self.last_capture_ns is None:
            return None
        return round((now_ns - self.last_capture_ns) / 1e6, 1)

    async def run(self) -> None:
        while True:
            parts = await self._sock.recv_multipart()
            now = time.monotonic_ns()
            try:
                if len(parts) != 2:
                    raise SchemaError("video", f"expected 2 frames, got {len(parts)}")
                header = decode(parts[0])
                if not isinstance(header, VideoFrameHeader):
                    raise SchemaError("video", f"expected a video header, got {header.TYPE}")
                if header.payload_len != len(parts[1]):
                    raise SchemaError("video.payload_len", "does not match the payload")
            except SchemaError as err:
                self.bad += 1
                ratelog(logging.WARNING, "video", "page: bad video message (%s)", err)
                continue
            self.frames += 1
            # Same machine, same CLOCK_MONOTONIC: the capture time is the robot's own.
            self.last_capture_ns, self.last_recv_ns = header.capture_ns, now
            age_us = max(0, (now - header.capture_ns) // 1000)
            msg = FRAME_HEAD.pack(b"V", header.frame_id, age_us, header.keyframe,
                                  header.width, header.height) + parts[1]
            for client in self.clients:
                client.offer(header.keyframe, msg)

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()
