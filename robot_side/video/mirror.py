"""The robot's local copy of the surgeon's video, for its own observers (page, recorder).

An ipc XPUB in the robot's runtime folder (0600) carries every access unit exactly
as the console gets it. XPUB_VERBOSE passes every subscription message up, so an
observer that joins (or resubscribes) asks for a keyframe; the video process grants
at most one per second, since the surgeon's stream carries the same keyframe.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import zmq

MIRROR_KEYFRAME_INTERVAL_NS = 1_000_000_000
"""A local observer's (re)subscription asks for a keyframe at most this often: the
surgeon's stream carries the same keyframe, so observers must not be able to flood it."""


def open_local_mirror(ctx: zmq.Context[zmq.Socket[bytes]],
                  path: Path | None) -> zmq.Socket[bytes] | None:
    """An XPUB whose every subscription (duplicates too) reaches us as a keyframe wish."""
    if path is None:
        return None
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 120)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket of a previous run; ours is created below
    old = os.umask(0o177)
    try:
        sock.bind(f"ipc://{path}")
    finally:
        os.umask(old)
    return sock


class MirrorKeyframes:
    """Turns local subscriptions into keyframe requests, at most one per interval; a
    wish inside the interval is kept, not lost, and served when the interval ends."""

    def __init__(self, mirror: zmq.Socket[bytes] | None) -> None:
        self._mirror = mirror
        self._last_ns: int | None = None
        self._pending = False

    def poll(self, sender: Any, now_ns: int) -> None:
        if self._mirror is None:
            return
        while True:
            try:
                msg = self._mirror.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._pending |= msg[:1] == b"\x01"
        if self._pending and (self._last_ns is None
                              or now_ns - self._last_ns >= MIRROR_KEYFRAME_INTERVAL_NS):
            sender.request_keyframe("observer")
            self._pending, self._last_ns = False, now_ns
