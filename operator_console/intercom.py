"""The console's intercom: push-to-talk Opus over the robot's secured intercom hub.

Everything here is apart from the command path: its own two CURVE sockets, its
own threads, and a bounded queue (``SEND_QUEUE`` frames, the oldest dropped) so
that audio can never hold up a command. Opus comes from PyAV's libopus: 48 kHz
mono, 20 ms frames, VoIP tuning. Echo safety: a console never plays its own
voice back: it sends a random per-connection token (``token``) as its packets'
``speaker``, the robot stamps ``<authenticated name>#<token>`` (robot_side.intercom),
and packets that come back with this token are skipped; every other talker is
heard, another console with the same surgeon user id included. And
with push-to-talk the microphone is closed while the other side speaks.

``mouth_to_ear_ns`` per packet = when its first sample is played - when it was
spoken: (decode time + ``PLAYOUT_NS`` jitter buffer) - (frame complete - 20 ms)
+ the encoder's lookahead. On one machine the talker's stamp is this clock.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import zmq

from telesurgery.errors import SchemaError
from telesurgery.ratelog import RateLimitedLog
from transport.keys import ClientKeys
from transport.schema import MAX_MESSAGE_BYTES, AudioPacket, decode_as, encode
from transport.sockets import client_socket

log = logging.getLogger(__name__)

TOKEN_BYTES = 3
"""6 hex digits: the most the robot keeps of a connection token
(``robot_side.intercom.TOKEN_HEX``, bounded by ``AudioPacket.speaker``'s 48 characters)."""
RATE = 48_000
FRAME = 960
"""Samples per 20 ms frame."""
FRAME_NS = 20_000_000
SEND_QUEUE = 10
"""Frames (200 ms) waiting to be sent at most; older ones are dropped."""
PLAYOUT_NS = 40_000_000
"""The receiver's jitter buffer: a packet plays this long after it was decoded."""


class OpusEncoder:
    def __init__(self, bitrate: int = 24_000) -> None:
        self._ctx = av.CodecContext.create("libopus", "w")
        self._ctx.sample_rate = RATE  # type: ignore[attr-defined]
        self._ctx.layout = "mono"  # type: ignore[attr-defined]
        self._ctx.format = "s16"  # type: ignore[attr-defined]
        self._ctx.bit_rate = bitrate
        self._ctx.options = {"application": "voip", "frame_duration": "20"}
        self._ctx.open()
        self._pts = 0
        self.lookahead_ns = int(getattr(self._ctx, "delay", 312) or 312) * 1_000_000_000 // RATE

    def encode(self, pcm: np.ndarray[Any, Any]) -> list[bytes]:
        """One 20 ms frame (960 int16 samples) in, its packet(s) out."""
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1).astype(np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        self._pts += FRAME
        return [bytes(p) for p in self._ctx.encode(frame)]  # type: ignore[attr-defined]


class OpusDecoder:
    def __init__(self) -> None:
        self._ctx = av.CodecContext.create("libopus", "r")
        self._ctx.sample_rate = RATE  # type: ignore[attr-defined]
        self._ctx.layout = "mono"  # type: ignore[attr-defined]
        self.errors = 0

    def decode(self, payload: bytes) -> np.ndarray[Any, Any] | None:
        try:
            frames = self._ctx.decode(av.Packet(payload))  # type: ignore[attr-defined]
        except (av.error.FFmpegError, ValueError):
            self.errors += 1
            return None
        out = [f.to_ndarray().reshape(-1) for f in frames]
        if not out:
            return None
        pcm = np.concatenate(out)
        if pcm.dtype != np.int16:  # the decoder's native format is float
            scaled = np.asarray(pcm, dtype=np.float64) * 32767.0
            pcm = np.clip(scaled, -32768, 32767).astype(np.int16)
        return pcm


Sink = Callable[[str, AudioPacket, "np.ndarray[Any, Any]", int], None]
"""(speaker, packet, pcm, play_at_ns): where decoded speech goes (a sound card, a test)."""


class IntercomClient:
    """Push-to-talk: ``talk(True)``, ``feed()`` 20 ms frames, ``talk(False)``."""

    def __init__(self, ctx: zmq.Context[Any], talk_ep: str, listen_ep: str, *,
                 keys: ClientKeys, me: str, sink: Sink) -> None:
        self.me = me
        """The name this console talks under (for the log; the robot stamps its own)."""
        self.token = secrets.token_hex(TOKEN_BYTES)
        """This connection's token: the robot's ``<name>#<token>`` of our own voice."""
        self._sink = sink
        self._ptt = threading.Event()
        self._queue: queue.Queue[tuple[np.ndarray[Any, Any], int]] = queue.Queue(SEND_QUEUE)
        self._talk = client_socket(ctx, zmq.PUSH, talk_ep, keys, MAX_MESSAGE_BYTES, hwm=SEND_QUEUE)
        self._listen = client_socket(ctx, zmq.SUB, listen_ep, keys, MAX_MESSAGE_BYTES, hwm=100)
        self._listen.setsockopt(zmq.SUBSCRIBE, b"")
        self._halt = threading.Event()
        self._encoder = OpusEncoder()
        self._decoders: dict[str, OpusDecoder] = {}
        self._ratelog = RateLimitedLog(log)
        self.sent = self.dropped = self.received = self.bad = 0
        self.mouth_to_ear_ns: list[int] = []
        self._seq = 0
        self._threads = [threading.Thread(target=self._send_loop, name="intercom-tx", daemon=True),
                         threading.Thread(target=self._recv_loop, name="intercom-rx", daemon=True)]
        for t in self._threads:
            t.start()

    def talk(self, on: bool) -> None:
        """Push-to-talk: frames fed while off are not sent at all."""
        if on:
            self._ptt.set()
        else:
            self._ptt.clear()

    def feed(self, pcm: np.ndarray[Any, Any], done_ns: int | None = None) -> None:
        """One captured 20 ms frame; never blocks (a full queue drops its oldest frame)."""
        if not self._ptt.is_set():
            return
        item = (pcm, time.monotonic_ns() if done_ns is None else done_ns)
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _send_loop(self) -> None:
        while not self._halt.is_set():
            try:
                pcm, done_ns = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            for payload in self._encoder.encode(pcm):
                self._seq += 1
                try:
                    self._talk.send(encode(AudioPacket(seq=self._seq, t_ns=done_ns,
                                                       payload=payload, speaker=self.token)),
                                    zmq.NOBLOCK)
                    self.sent += 1
                except zmq.Again:
                    self.dropped += 1

    def _recv_loop(self) -> None:
        while not self._halt.is_set():
            if not self._listen.poll(100):
                continue
            try:
                pkt: AudioPacket = decode_as(self._listen.recv(zmq.NOBLOCK), AudioPacket)
            except (SchemaError, zmq.Again) as err:
                self.bad += 1
                self._ratelog(logging.WARNING, "bad-audio", "intercom: %s", err)
                continue
            speaker = pkt.speaker or "?"
            if self.own(speaker):
                continue  # never our own voice back (echo)
            dec = self._decoders.setdefault(speaker, OpusDecoder())
            pcm = dec.decode(pkt.payload)
            if pcm is None:
                continue
            play_at = time.monotonic_ns() + PLAYOUT_NS
            self.received += 1
            self.mouth_to_ear_ns.append(play_at - (pkt.t_ns - FRAME_NS)
                                        + self._encoder.lookahead_ns)
            self._sink(speaker, pkt, pcm, play_at)

    def own(self, speaker: str) -> bool:
        """Whether ``speaker`` (as the robot stamped it) is this connection's voice."""
        name, sep, token = speaker.rpartition("#")
        return bool(sep and name) and token == self.token

    def close(self) -> None:
        self._halt.set()
        for t in self._threads:
            t.join(2.0)
        self._talk.close(0)
        self._listen.close(0)
