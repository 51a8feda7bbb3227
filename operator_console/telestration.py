"""Telestration on the console: draw strokes (mentor, observer) and show them (every HUD).

``StrokePad`` pushes ``Stroke`` messages to the robot's draw socket over CURVE
(the robot relays only strokes of keys with the draw right, see
``robot_side.telestration``); it takes mouse events on the console's OpenCV
window or a scripted source. ``StrokeLayer`` subscribes to the robot's relayed
strokes and draws them onto the picture before the HUD: a stroke is shown only
on the frame it was drawn on and later ones (never on an older picture, where
it would point at what was not there yet), fades over the last part of its TTL
and is gone after it. TTL runs on this console's clock from the stroke's
arrival, never on a time the drawer claims.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import zmq

from operator_console.video.hud import Image
from telesurgery.errors import SchemaError
from telesurgery.ratelog import RateLimitedLog
from transport.keys import ClientKeys
from transport.schema import MAX_MESSAGE_BYTES, MAX_STROKE_POINTS, Stroke, decode_as, encode
from transport.sockets import client_socket

log = logging.getLogger(__name__)
MAX_SHOWN = 64
"""Strokes kept at once; the oldest go first (a flood cannot grow the layer)."""
FADE_FRACTION = 0.3
"""The last part of a stroke's TTL over which it fades out."""


@dataclass(frozen=True)
class ConsoleTelestration:
    """``[telestration]`` of the console config: the robot's stroke ports (None: off)."""

    strokes_port: int | None = None
    """Show the relayed strokes on this console's HUD (the robot's telestration.strokes_port)."""
    draw_port: int | None = None
    """Draw with the mouse on this console's window (needs the draw right on the robot)."""


def _clamp01(v: float) -> float:
    return 0.0 if not math.isfinite(v) else min(1.0, max(0.0, v))


def make_stroke(seq: int, frame_id: int, points: list[tuple[float, float]], colour: int,
                ttl_ms: int) -> Stroke:
    """A stroke of at most ``MAX_STROKE_POINTS`` points (evenly thinned), clamped to 0..1."""
    if len(points) > MAX_STROKE_POINTS:
        step = len(points) / MAX_STROKE_POINTS
        points = [points[int(i * step)] for i in range(MAX_STROKE_POINTS)]
    if len(points) == 1:
        points = points * 2
    flat = tuple(_clamp01(c) for p in points for c in p)
    return Stroke(seq=seq, frame_id=frame_id, points=flat, colour=colour, ttl_ms=ttl_ms,
                  t_ns=time.monotonic_ns())


class StrokePad:
    """The drawing end: one PUSH socket to the robot's draw port."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, keys: ClientKeys,
                 colour: int = 0xFFD000, ttl_ms: int = 3000) -> None:
        self._sock = client_socket(ctx, zmq.PUSH, endpoint, keys, MAX_MESSAGE_BYTES, hwm=64)
        self.colour, self.ttl_ms = colour, ttl_ms
        self.seq = 0
        self.dropped = 0
        self._trace: list[tuple[float, float]] = []
        self._size = (1, 1)
        self.frame_id = 0
        """The frame on screen now (the console keeps it current); strokes are tied to it."""

    def draw(self, points: list[tuple[float, float]], frame_id: int | None = None) -> Stroke | None:
        if not points:
            return None
        self.seq += 1
        stroke = make_stroke(self.seq, self.frame_id if frame_id is None else frame_id,
                             points, self.colour, self.ttl_ms)
        try:
            self._sock.send(encode(stroke), zmq.NOBLOCK)
        except zmq.Again:  # not connected or the robot is behind: a stroke is not worth a wait
            self.dropped += 1
            return None
        return stroke

    def on_mouse(self, event: int, x: int, y: int, _flags: int, _param: object) -> None:
        """``cv2.setMouseCallback`` handler: press, drag, release = one stroke."""
        w, h = self._size
        pt = (x / max(1, w), y / max(1, h))
        if event == cv2.EVENT_LBUTTONDOWN:
            self._trace = [pt]
        elif event == cv2.EVENT_MOUSEMOVE and self._trace:
            self._trace.append(pt)
        elif event == cv2.EVENT_LBUTTONUP and self._trace:
            self._trace.append(pt)
            self.draw(self._trace)
            self._trace = []

    def set_image_size(self, width: int, height: int) -> None:
        self._size = (width, height)

    def close(self) -> None:
        self._sock.close(0)


def scripted_circle(cx: float = 0.5, cy: float = 0.5, r: float = 0.1,
                    n: int = 32) -> list[tuple[float, float]]:
    """A circle around a point of interest: the demo's and the tests' drawing."""
    return [(cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n))
            for i in range(n + 1)]


@dataclass
class _Shown:
    stroke: Stroke
    recv_ns: int
    first_shown_ns: int | None = None


@dataclass
class StrokeLayer:
    """The showing end: relayed strokes in, drawn on the right pictures."""

    sock: zmq.Socket[Any] | None
    """The robot's relayed strokes; None where they come another way (``add``)."""
    strokes: deque[_Shown] = field(default_factory=lambda: deque(maxlen=MAX_SHOWN))
    bad_messages: int = 0
    latency_ns: list[int] = field(default_factory=list)
    """Draw -> first shown, per stroke (the drawer's stamp: same machine on loopback only)."""

    @classmethod
    def connect(cls, ctx: zmq.Context[Any], endpoint: str, keys: ClientKeys) -> StrokeLayer:
        sock = client_socket(ctx, zmq.SUB, endpoint, keys, MAX_MESSAGE_BYTES, hwm=256)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        return cls(sock)

    def __post_init__(self) -> None:
        self._ratelog = RateLimitedLog(log)

    def poll(self, now_ns: int) -> int:
        """Take every stroke that has arrived; returns how many."""
        n = 0
        while self.sock is not None:
            try:
                data = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return n
            try:
                stroke: Stroke = decode_as(data, Stroke)
            except SchemaError as err:
                self.bad_messages += 1
                self._ratelog(logging.WARNING, "bad-stroke", "telestration: %s", err)
                continue
            self.add(stroke, now_ns)
            n += 1
        return n

    def add(self, stroke: Stroke, now_ns: int) -> None:
        """A validated stroke that arrived now (a watcher gets them from the fan-out)."""
        self.strokes.append(_Shown(stroke, now_ns))

    def render(self, image: Image, frame_id: int, now_ns: int) -> int:
        """Draw the live strokes that belong on ``frame_id``; returns how many were drawn."""
        h, w = image.shape[:2]
        drawn = 0
        for s in list(self.strokes):
            ttl_ns = s.stroke.ttl_ms * 1_000_000
            age = now_ns - s.recv_ns
            if age >= ttl_ns:
                self.strokes.remove(s)
                continue
            if frame_id < s.stroke.frame_id:
                continue  # the picture is older than the one the stroke was drawn on
            fade_from = ttl_ns * (1 - FADE_FRACTION)
            alpha = 1.0 if age <= fade_from else max(0.0, (ttl_ns - age) / (ttl_ns - fade_from))
            pts = np.array(s.stroke.points, dtype=np.float64).reshape(-1, 2)
            pix = np.round(pts * (w - 1, h - 1)).astype(np.int32).reshape(-1, 1, 2)
            rgb = s.stroke.colour
            bgr = (rgb & 0xFF, (rgb >> 8) & 0xFF, (rgb >> 16) & 0xFF)
            thick = max(2, w // 320)
            if alpha >= 1.0:
                cv2.polylines(image, [pix], False, bgr, thick, cv2.LINE_AA)
            else:
                x0, y0 = pix[:, 0, 0].min(), pix[:, 0, 1].min()
                x1, y1 = pix[:, 0, 0].max() + 1, pix[:, 0, 1].max() + 1
                pad = thick + 1
                x0, y0 = max(0, x0 - pad), max(0, y0 - pad)
                x1, y1 = min(w, x1 + pad), min(h, y1 + pad)
                roi = image[y0:y1, x0:x1]
                over = roi.copy()
                cv2.polylines(over, [pix - (x0, y0)], False, bgr, thick, cv2.LINE_AA)
                cv2.addWeighted(over, alpha, roi, 1 - alpha, 0, dst=roi)
            if s.first_shown_ns is None:
                s.first_shown_ns = now_ns
                self.latency_ns.append(now_ns - s.stroke.t_ns)
            drawn += 1
        return drawn

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)


def strokes_of(layer: StrokeLayer) -> Iterator[Stroke]:
    return (s.stroke for s in layer.strokes)
