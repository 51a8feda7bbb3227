"""The supervision page's intercom endpoint over real sockets, without a browser.

A real ``IntercomRelay`` (the robot's hub, CURVE and its local page sockets), the
real ``PageServer`` with its ``/intercom`` WebSocket, and a real surgeon console
(``IntercomClient``); the WebSocket client plays the page's JavaScript part (the
browser test runs the real page in Chromium).
"""

from __future__ import annotations

import asyncio
import collections
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import zmq
from helpers import wait_until

from operator_console.intercom import FRAME, FRAME_NS, RATE, IntercomClient
from robot_side.intercom import (
    LOCAL_SOCKET,
    ONSITE_SOCKET,
    RIGHTS_FILE,
    IntercomConfig,
    IntercomRelay,
)
from robot_side.supervision.config import PageConfig
from robot_side.supervision.credentials import PinCheck
from robot_side.supervision.intercom import PLAY_QUEUE, PageClient, PageIntercom
from robot_side.supervision.server import PageServer
from robot_side.supervision.state import FeedState
from transport.auth import start_authenticator
from transport.keys import ClientKeys, ServerKeys, init_keys
from transport.schema import AudioPacket

TOKEN = "t" * 32


class Ear:
    def __init__(self) -> None:
        self.heard: list[tuple[str, np.ndarray[Any, Any]]] = []

    def __call__(self, speaker: str, _pkt: AudioPacket, pcm: np.ndarray[Any, Any],
                 _at: int) -> None:
        self.heard.append((speaker, pcm))


def tone(n_frames: int, hz: float = 440.0) -> np.ndarray[Any, Any]:
    t = np.arange(FRAME * n_frames) / RATE
    return (8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


@pytest.fixture
def hub(tmp_path: Path, ctx: zmq.Context[Any]) -> Iterator[tuple[IntercomRelay, Path]]:
    init_keys(tmp_path, [])
    auth = start_authenticator(ctx, ServerKeys.load(tmp_path))
    relay = IntercomRelay(ctx, IntercomConfig(talk_port=0, listen_port=0), host="127.0.0.1",
                          keys=ServerKeys.load(tmp_path), auth=auth, keys_dir=tmp_path,
                          runtime=tmp_path, alerts=collections.deque(maxlen=256))
    relay.start()
    yield relay, tmp_path
    relay.stop()
    relay.join(2.0)
    auth.stop()


def talk_frame(pcm: np.ndarray[Any, Any]) -> bytes:
    return struct.pack("<d", time.time() * 1000) + pcm.astype("<i2").tobytes()  # wall-clock ok


async def _next(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        msg = await asyncio.wait_for(ws.receive(), 5.0)
        if msg.type == aiohttp.WSMsgType.TEXT:
            body: dict[str, Any] = json.loads(msg.data)
            if body["type"] == kind:
                return body


def test_staff_talk_to_the_console_and_hear_it_only_with_the_onsite_right(
        hub: tuple[IntercomRelay, Path], ctx: zmq.Context[Any]) -> None:
    relay, d = hub
    ear = Ear()
    surgeon = IntercomClient(ctx, f"tcp://127.0.0.1:{relay.talk_port}",
                             f"tcp://127.0.0.1:{relay.listen_port}",
                             keys=ClientKeys.load_surgeon(d), me="surgeon", sink=ear)
    intercom = PageIntercom(d / ONSITE_SOCKET, d / LOCAL_SOCKET, d / RIGHTS_FILE, ctx)

    async def run() -> None:
        server = PageServer(PageConfig(port=0), FeedState(1000, 60), d / "estop.sock",
                            token=TOKEN, pins=PinCheck(d / "onsite.pin"), video_path=None,
                            intercom=intercom)
        url = await server.start()
        ws_url = url.replace("http://", "ws://") + "intercom?token="
        origin = {"Origin": url.rstrip("/")}
        try:
            async with aiohttp.ClientSession() as http:
                with pytest.raises(aiohttp.WSServerHandshakeError):  # the page's token
                    await http.ws_connect(ws_url + "x" * 32, headers=origin)
                async with http.ws_connect(ws_url + TOKEN, headers=origin) as page, \
                        http.ws_connect(ws_url + TOKEN, headers=origin) as other:
                    hello = await _next(page, "intercom")
                    assert not hello["allowed"] and "intercom_rights" in hello["why"]
                    await page.send_bytes(talk_frame(tone(1)))
                    assert not (await _next(page, "talk"))["ok"]
                    (d / RIGHTS_FILE).write_text("surgeon\nonsite\n")
                    assert (await _next(page, "intercom"))["allowed"]  # live, no reload
                    await page.send_json({"op": "ptt", "on": True})
                    assert (await _next(page, "talk"))["ok"]
                    await other.send_json({"op": "ptt", "on": True})  # one talker at a time
                    assert (await _next(other, "talk"))["why"] == "another page is talking"
                    speech = tone(50)
                    t = time.monotonic_ns()
                    for i in range(50):
                        t += FRAME_NS
                        await asyncio.sleep(max(0.0, (t - time.monotonic_ns()) / 1e9))
                        await page.send_bytes(talk_frame(speech[i * FRAME:(i + 1) * FRAME]))
                    await page.send_bytes(b"\x00" * 10)  # a bad frame: said, counted
                    assert "bytes" in (await _next(page, "talk"))["why"]
                    await page.send_json({"op": "ptt", "on": False})
                    await asyncio.to_thread(wait_until, lambda: len(ear.heard) >= 45, 5.0,
                                            "the staff's voice at the console")
                    # The console answers; both pages hear it, never their own voice.
                    surgeon.talk(True)
                    for i in range(20):
                        surgeon.feed(speech[i * FRAME:(i + 1) * FRAME])
                        await asyncio.sleep(0.02)
                    surgeon.talk(False)
                    got = 0
                    while got < 15:
                        msg = await asyncio.wait_for(page.receive(), 5.0)
                        if msg.type == aiohttp.WSMsgType.BINARY:
                            n = msg.data[0]
                            assert msg.data[1:1 + n] == f"surgeon#{surgeon.token}".encode()
                            pcm = np.frombuffer(msg.data[1 + n:], "<i2")
                            assert len(pcm) == FRAME
                            got += 1
        finally:
            await server.stop()

    try:
        asyncio.run(run())
    finally:
        surgeon.close()
    assert {s for s, _ in ear.heard} == {"onsite"}
    loud = [float(np.sqrt(np.mean(p.astype(float) ** 2))) for _, p in ear.heard[5:]]
    assert min(loud) > 2000  # the tone, not silence
    assert intercom.counters["talk_bad_size"] == 1 and relay.refused["no right"] == 0
    enc = np.array(intercom.encode_us)
    print(f"page server Opus encode per 20 ms frame: p50 {np.percentile(enc, 50):.0f} us, "
          f"p99 {np.percentile(enc, 99):.0f} us over {len(enc)} frames")


def test_a_stalled_page_loses_its_own_oldest_audio_and_holds_nothing_up() -> None:
    async def run() -> PageClient:
        client = PageClient()
        for i in range(3 * PLAY_QUEUE):
            client.offer(bytes([i]))  # nobody reads: the page stalls
        return client

    client = asyncio.run(run())
    assert client.queue.qsize() == PLAY_QUEUE
    assert client.dropped == 2 * PLAY_QUEUE
    assert client.queue.get_nowait() == bytes([2 * PLAY_QUEUE])  # the newest kept
