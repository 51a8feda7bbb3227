"""The on-site staff's end of the intercom: the supervision page's push-to-talk.

The browser captures the microphone (getUserMedia, an AudioWorklet cutting 20 ms
frames at 48 kHz) and sends raw int16 PCM over the page's authenticated WebSocket
(``/intercom``: the page's Origin and access token, like ``/ws``). This server
encodes it with the robot side's own Opus code (``operator_console.intercom``)
and pushes it into the robot's intercom hub through its local 0600 socket, where
it is checked like a console's packet as the user ``onsite`` (a line in
``intercom_rights``). Why PCM and not WebCodecs' AudioEncoder: the page is on-site
(96 kB/s on a LAN is nothing), one encoder and its settings for all talkers, and
no dependence on a browser's Opus build; encoding a frame here costs well under a
millisecond (``encode_us``).

Who may talk: whoever has the page open with its access token, when the robot
lists ``onsite`` in ``intercom_rights`` (the e-stop's rule: the page is in the
theatre; clearing needs the PIN because it moves the arm, talking does not). One
page talks at a time (one Opus stream per speaker id); a second gets "busy".

Everything is bounded and nothing waits on a page: the hub's packets are read by a
thread, decoded once, and queued per page (``PLAY_QUEUE`` frames, the oldest
dropped); a stalled page loses its own audio, never the robot's time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from operator_console.intercom import FRAME, OpusDecoder, OpusEncoder
from robot_side.telestration import DrawRights
from telesurgery.errors import SchemaError
from telesurgery.ratelog import RateLimitedLog
from transport.schema import MAX_MESSAGE_BYTES, AudioPacket, decode_as, encode

log = logging.getLogger(__name__)
ratelog = RateLimitedLog(log)

ONSITE_USER = "onsite"
PLAY_QUEUE = 10
"""20 ms frames waiting for one page at most (200 ms); older ones are dropped."""
FRAME_BYTES = 8 + 2 * FRAME
"""A talk frame from the browser: f64 epoch ms when the frame was complete, 960 int16."""
FLOOR_IDLE_NS = 500_000_000
"""A talking page that sent nothing for this long loses the floor."""
RIGHTS_POLL_S = 1.0
CLAIM_BOUND_NS = 1_000_000_000
"""A browser's capture time is believed within [now - this, now] only (measurement)."""


class PageClient:
    """One open intercom WebSocket: its playback queue and, while it talks, its encoder."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(PLAY_QUEUE)
        self.dropped = 0

    def offer(self, data: bytes) -> None:
        while True:
            try:
                self.queue.put_nowait(data)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.queue.get_nowait()
                    self.dropped += 1


class PageIntercom:
    """The page server's link to the robot's intercom hub (two local ipc sockets)."""

    def __init__(self, talk_path: Path, listen_path: Path, rights_path: Path,
                 ctx: zmq.Context[Any] | None = None) -> None:
        self._ctx = ctx or zmq.Context.instance()
        self.rights = DrawRights(rights_path)
        self._talk: zmq.Socket[bytes] = self._ctx.socket(zmq.PUSH)
        self._talk.setsockopt(zmq.LINGER, 0)
        self._talk.setsockopt(zmq.SNDHWM, PLAY_QUEUE)
        self._talk.connect(f"ipc://{talk_path}")
        self._listen: zmq.Socket[bytes] = self._ctx.socket(zmq.SUB)
        self._listen.setsockopt(zmq.LINGER, 0)
        self._listen.setsockopt(zmq.RCVHWM, 50)
        self._listen.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._listen.setsockopt(zmq.SUBSCRIBE, b"")
        self._listen.connect(f"ipc://{listen_path}")
        self.clients: set[PageClient] = set()
        self.counters: Counter[str] = Counter()
        self.encode_us: collections.deque[float] = collections.deque(maxlen=1000)
        self._floor: PageClient | None = None
        self._floor_ns = 0
        self._encoder: OpusEncoder | None = None
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halt = threading.Event()
        self._reader = threading.Thread(target=self._read, name="page-intercom", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader.start()

    def close(self) -> None:
        self._halt.set()
        self._reader.join(2.0)
        self._talk.close(0)
        self._listen.close(0)

    def allowed(self) -> str | None:
        """Why the page may not talk now (None: it may)."""
        if ONSITE_USER not in self.rights.users():
            return f"the robot does not list '{ONSITE_USER}' in intercom_rights"
        return None

    # ------------------------------------------------------------ page -> robot
    def floor(self, client: PageClient, on: bool, now_ns: int) -> str | None:
        """Take (``on``) or give back the floor; why not, or None."""
        holder = self._floor
        if not on:
            if holder is client:
                self._floor = None
            return None
        why = self.allowed()
        if why is not None:
            return why
        if holder is not None and holder is not client and now_ns - self._floor_ns < FLOOR_IDLE_NS:
            return "another page is talking"
        if holder is not client:
            self._floor, self._encoder = client, OpusEncoder()
        self._floor_ns = now_ns
        return None

    def talk(self, client: PageClient, data: bytes) -> str | None:
        """One 20 ms frame from a page; why it was not sent, or None."""
        now = time.monotonic_ns()
        if len(data) != FRAME_BYTES:
            self.counters["talk_bad_size"] += 1
            return f"a talk frame is {FRAME_BYTES} bytes, not {len(data)}"
        if self._floor is not client:
            why = self.floor(client, True, now)
            if why is not None:
                self.counters["talk_refused"] += 1
                return why
        self._floor_ns = now
        (claimed_ms,) = struct.unpack_from("<d", data)
        # Only the listeners' latency figure uses it; bounded by this machine's clock.
        wall_minus_mono = time.time_ns() - now  # wall-clock ok: maps the browser's stamp
        claimed = int(claimed_ms * 1e6) - wall_minus_mono if np.isfinite(claimed_ms) else now
        t_ns = min(now, max(now - CLAIM_BOUND_NS, claimed))
        pcm = np.frombuffer(data, dtype="<i2", offset=8)
        assert self._encoder is not None
        t0 = time.perf_counter()
        packets = self._encoder.encode(pcm)
        self.encode_us.append((time.perf_counter() - t0) * 1e6)
        for payload in packets:
            self._seq += 1
            try:
                self._talk.send(encode(AudioPacket(seq=self._seq, t_ns=t_ns, payload=payload)),
                                zmq.NOBLOCK)
                self.counters["talk_sent"] += 1
            except zmq.Again:  # the hub is not there or behind: this frame is lost
                self.counters["talk_dropped"] += 1
        return None

    # ------------------------------------------------------------ robot -> pages
    def _read(self) -> None:
        decoders: dict[str, OpusDecoder] = {}
        while not self._halt.is_set():
            if not self._listen.poll(100):
                continue
            try:
                pkt = decode_as(self._listen.recv(zmq.NOBLOCK), AudioPacket)
            except (SchemaError, zmq.Again) as err:
                self.counters["heard_bad"] += 1
                ratelog(logging.WARNING, "bad-audio", "page intercom: %s", err)
                continue
            speaker = pkt.speaker or "?"
            if speaker == ONSITE_USER:
                continue  # the staff's own voice is not played back to them (echo)
            pcm = decoders.setdefault(speaker[:64], OpusDecoder()).decode(pkt.payload)
            if pcm is None:
                continue
            name = speaker[:64].encode()
            data = bytes([len(name)]) + name + pcm.astype("<i2").tobytes()
            self.counters["heard"] += 1
            if self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed while stopping
                    self._loop.call_soon_threadsafe(self._fan_out, data)

    def _fan_out(self, data: bytes) -> None:
        for client in self.clients:
            client.offer(data)


async def serve_intercom(ws: Any, intercom: PageIntercom | None,
                         bad: Any) -> None:
    """One page's ``/intercom`` WebSocket (``ws``: an open aiohttp WebSocketResponse).

    Text: ``{"op": "ptt", "on": bool}``; binary: a talk frame (``FRAME_BYTES``). Out:
    ``{"type": "intercom", ...}`` replies and, binary, the robot side's speech as
    ``[len][speaker][960 int16]``."""
    from aiohttp import WSMsgType

    why = "the robot's intercom is off" if intercom is None else intercom.allowed()
    await ws.send_json({"type": "intercom", "allowed": why is None, "why": why or ""})
    if intercom is None:  # stay open: the page shows why, without reconnecting in a loop
        async for _msg in ws:
            pass
        return
    client = PageClient()
    intercom.clients.add(client)

    async def play() -> None:
        while not ws.closed:
            data = await client.queue.get()
            try:
                await ws.send_bytes(data)
            except ConnectionError:
                return

    async def rights() -> None:  # the rights file may change while the page is open
        shown = why
        while not ws.closed:
            await asyncio.sleep(RIGHTS_POLL_S)
            now_why = intercom.allowed()
            if now_why != shown:
                shown = now_why
                await ws.send_json({"type": "intercom", "allowed": now_why is None,
                                    "why": now_why or ""})

    tasks = [asyncio.create_task(play()), asyncio.create_task(rights())]
    last_refusal = ""
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                refusal = intercom.talk(client, msg.data)
                if refusal is not None and refusal != last_refusal:  # once, not per frame
                    await ws.send_json({"type": "talk", "ok": False, "why": refusal})
                last_refusal = refusal or ""
            elif msg.type == WSMsgType.TEXT:
                reply = _on_text(intercom, client, msg.data)
                await ws.send_json(reply if "error" not in reply else bad(reply["error"]))
    finally:
        for task in tasks:
            task.cancel()
        intercom.floor(client, False, time.monotonic_ns())
        intercom.clients.discard(client)


def _on_text(intercom: PageIntercom, client: PageClient, text: str) -> dict[str, Any]:
    import json

    try:
        body = json.loads(text)
    except ValueError:
        return {"error": "intercom: not JSON"}
    if not isinstance(body, dict) or body.get("op") != "ptt" or not isinstance(
            body.get("on"), bool):
        return {"error": 'intercom: expected {"op": "ptt", "on": true|false}'}
    why = intercom.floor(client, body["on"], time.monotonic_ns())
    return {"type": "talk", "ok": why is None, "on": body["on"], "why": why or ""}
