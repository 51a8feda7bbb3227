"""The supervision page's server over real sockets: handshake, pushes, bad input, e-stop.

The robot's side is real where it can be: a real ``ObserverFeed`` publishing schema
messages, the real ``EstopServer`` Unix socket. Only the control loop that answers the
e-stop requests is a stand-in thread (``_ControlLoopStandIn``): the browser test runs
the real node.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from robot_side.estop import EstopRequest, EstopServer
from robot_side.observe import ObserverFeed
from robot_side.supervision.config import PageConfig
from robot_side.supervision.credentials import (
    MAX_WRONG,
    PinCheck,
    load_or_create_token,
    set_pin,
)
from robot_side.supervision.server import PageServer
from robot_side.supervision.state import FeedReader, FeedState
from telesurgery.errors import ConfigError
from transport.schema import LinkReport, Pose, SafetyEvent, Telemetry

PIN = "4711"


def telemetry(seq: int, state: str = "following", reason: str = "engaged") -> Telemetry:
    return Telemetry(seq=seq, t_ns=time.monotonic_ns(), state=state, reason=reason,
                     measured_js=(0.0,) * 6, setpoint_js=(0.0,) * 6, measured_cp=Pose(),
                     setpoint_cp=Pose(), link=LinkReport(rtt_us=2000, latency_us=900,
                                                         jitter_us=50, loss=0.01),
                     scale=0.2, estop=state == "estop", firmware_flags=1 << 8)


class _ControlLoopStandIn(threading.Thread):
    """Answers the e-stop socket as the node's loop does (press -> estop, clear -> ok)."""

    def __init__(self, server: EstopServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.actions: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                req: EstopRequest = self.server.requests.get(timeout=0.05)
            except Exception:  # queue.Empty
                continue
            self.actions.append(req.action)
            req.answer = f"ok {req.action}"
            req.done.set()

    def stop(self) -> None:
        self._halt.set()


@pytest.fixture
def robot(tmp_path: Path) -> Iterator[dict[str, Any]]:
    feed = ObserverFeed(tmp_path / "observe.sock")
    estop = EstopServer(tmp_path / "estop.sock")
    estop.start()
    loop = _ControlLoopStandIn(estop)
    loop.start()
    halt = threading.Event()

    def publish() -> None:
        seq = 0
        while not halt.is_set():
            seq += 1
            feed.publish(telemetry(seq))
            time.sleep(0.01)

    pub = threading.Thread(target=publish, daemon=True)
    pub.start()
    yield {"dir": tmp_path, "feed": feed, "loop": loop, "halt": halt}
    halt.set()
    pub.join()
    loop.stop()
    estop.stop()
    feed.close()


async def _with_page(robot: dict[str, Any], body: Any) -> Any:
    d = robot["dir"]
    set_pin(d / "onsite.pin", PIN)
    token = load_or_create_token(d / "page.token")
    state = FeedState(stale_after_ms=1000, history_s=60)
    reader = FeedReader(d / "observe.sock", state)
    reader.start()
    server = PageServer(PageConfig(port=0), state, d / "estop.sock", token=token,
                        pins=PinCheck(d / "onsite.pin"), video_path=None)
    url = await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            return await body(server, http, url, token)
    finally:
        reader.stop()
        await server.stop()


def _ws_url(url: str, token: str) -> str:
    return url.replace("http://", "ws://") + f"ws?token={token}"


async def _next(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        msg = await asyncio.wait_for(ws.receive(), 5.0)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        body: dict[str, Any] = json.loads(msg.data)
        if body["type"] == kind:
            return body


def test_handshake_needs_the_pages_origin_and_the_token(robot: dict[str, Any]) -> None:
    async def body(server: PageServer, http: aiohttp.ClientSession, url: str,
                   token: str) -> None:
        origin = url.rstrip("/")
        for headers, tok, counter in (({"Origin": "http://evil.example"}, token,
                                       "refused_origin"),
                                      ({}, token, "refused_origin"),
                                      ({"Origin": origin}, "x" * 32, "refused_token"),
                                      ({"Origin": origin}, "", "refused_token")):
            before = server.counters[counter]
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(_ws_url(url, tok), headers=headers)
            assert err.value.status == 403
            assert server.counters[counter] == before + 1
        assert server.counters["refused_origin"] == 2
        assert server.counters["refused_token"] == 2
        async with http.ws_connect(_ws_url(url, token), headers={"Origin": origin}) as ws:
            hello = await _next(ws, "hello")
            assert hello["push_hz"] >= 20
            state = await _next(ws, "state")
            t0 = time.monotonic()
            n = 0
            while time.monotonic() - t0 < 1.0:
                state = await _next(ws, "state")
                n += 1
            print(f"page pushes: {n / (time.monotonic() - t0):.1f} updates/s")
            assert state["state"] == "following" and not state["stale"]
            assert state["link"]["rtt_ms"] == 2.0

    asyncio.run(_with_page(robot, body))


def test_malformed_messages_get_an_error_and_the_page_carries_on(
        robot: dict[str, Any]) -> None:
    async def body(server: PageServer, http: aiohttp.ClientSession, url: str,
                   token: str) -> None:
        async with http.ws_connect(_ws_url(url, token),
                                   headers={"Origin": url.rstrip("/")}) as ws:
            for bad in ("{not json", "[1, 2]", '{"op": "format_disk"}', '{"op": 7}'):
                await ws.send_str(bad)
                err = await _next(ws, "error")
                assert err["error"]
            await ws.send_bytes(b"\x00\x01")
            assert (await _next(ws, "error"))["error"].startswith("binary")
            assert server.counters["bad_messages"] == 5
            state = await _next(ws, "state")  # still pushed, still current
            assert not state["stale"]
        assert robot["loop"].actions == []  # nothing reached the robot

    asyncio.run(_with_page(robot, body))


def test_anyone_may_press_but_clearing_needs_the_onsite_pin(robot: dict[str, Any]) -> None:
    async def body(server: PageServer, http: aiohttp.ClientSession, url: str,
                   token: str) -> None:
        async with http.ws_connect(_ws_url(url, token),
                                   headers={"Origin": url.rstrip("/")}) as ws:
            await ws.send_json({"op": "press"})
            assert (await _next(ws, "reply"))["ok"]
            for pin in (None, "", "0000", 1234):
                await ws.send_json({"op": "clear", "pin": pin})
                reply = await _next(ws, "reply")
                assert not reply["ok"] and reply["text"].startswith("refused")
            await ws.send_json({"op": "clear", "pin": PIN})
            assert (await _next(ws, "reply"))["ok"]
        actions = robot["loop"].actions
        assert actions[0] == "press"
        assert actions.count("clear") == 1 and actions[-1] == "clear"
        assert server.counters["clears_refused"] == 4

    asyncio.run(_with_page(robot, body))


def test_wrong_pins_lock_clearing_out(tmp_path: Path) -> None:
    set_pin(tmp_path / "pin", PIN)
    pins = PinCheck(tmp_path / "pin")
    now = 10**12
    for i in range(MAX_WRONG):
        assert not pins.check("9999", now + i).ok
    locked = pins.check(PIN, now + MAX_WRONG)
    assert not locked.ok and "locked" in locked.why
    assert pins.check(PIN, now + 61 * 10**9).ok


def test_a_readable_pin_or_token_file_is_refused(tmp_path: Path) -> None:
    set_pin(tmp_path / "pin", PIN)
    (tmp_path / "pin").chmod(0o644)
    verdict = PinCheck(tmp_path / "pin").check(PIN, 0)
    assert not verdict.ok and "mode 644" in verdict.why
    load_or_create_token(tmp_path / "token")
    (tmp_path / "token").chmod(0o640)
    with pytest.raises(ConfigError, match="mode 640"):
        load_or_create_token(tmp_path / "token")


def test_a_feed_that_stops_turns_stale_within_the_bound() -> None:
    state = FeedState(stale_after_ms=1000, history_s=60)
    assert state.snapshot(0)["stale"]  # nothing yet: no data, not "all fine"
    t0 = 5 * 10**9
    state.on_telemetry(telemetry(1), t0)
    assert not state.snapshot(t0 + 999_000_000)["stale"]
    assert state.snapshot(t0 + 1_001_000_000)["stale"]


def test_transition_time_comes_from_the_robot(tmp_path: Path) -> None:
    state = FeedState(stale_after_ms=1000, history_s=60)
    state.on_telemetry(telemetry(1), 1)
    evt = SafetyEvent(seq=1, t_ns=123_456, code="command_timeout", state_from="following",
                      state_to="hold")
    state.on_event(evt, 2)
    state.on_telemetry(telemetry(2, "hold", "command_timeout"), 3)
    snap = state.snapshot(4)
    assert snap["state_since_ns"] == 123_456
    assert "commands stopped arriving" in snap["why"]
    assert snap["events"][0]["code"] == "command_timeout"
    # The console disengages at once; the page still says why the arm stopped.
    state.on_event(SafetyEvent(seq=2, t_ns=123_999, code="disengaged", state_from="hold",
                               state_to="ready"), 5)
    assert state.snapshot(6)["last_stop"]["code"] == "command_timeout"


def test_observer_count_from_the_fanout_status_unknown_when_absent_stale_or_garbled(
        tmp_path: Path) -> None:
    status = tmp_path / "fanout.json"
    state = FeedState(stale_after_ms=1000, history_s=60, fanout_status=status)
    s = 1_000_000_000
    assert state.observers(10 * s)["count"] is None  # the fan-out never ran
    status.write_text(json.dumps({"observers": 2, "who": ["alice", "anonymous"],
                                  "t_ns": 10 * s}))
    assert state.observers(10 * s + 1)["count"] is None  # read at most once a second
    now = 11 * s + 1
    assert state.snapshot(now)["observers"] == {"count": 2, "who": ["alice", "anonymous"]}
    assert state.observers(15 * s)["count"] is None  # stale: the fan-out stopped writing
    status.write_text(json.dumps({"observers": 2, "t_ns": 30 * s}))  # in the future
    assert state.observers(17 * s)["count"] is None
    status.write_text("{garbled")
    assert state.observers(19 * s)["count"] is None
    assert FeedState(1000, 60).snapshot(0)["observers"]["count"] is None


def test_the_page_state_carries_each_network_path() -> None:
    from dataclasses import replace

    from transport.schema import PathReport
    state = FeedState(stale_after_ms=1000, history_s=60)
    now = time.monotonic_ns()
    state.on_telemetry(telemetry(1), now)
    assert state.snapshot(now)["link"]["paths"] is None  # one path: no panel
    paths = (PathReport("A", True, rtt_us=1500, latency_us=700, jitter_us=40, loss=0.0),
             PathReport("B", False, rtt_us=None, latency_us=None, jitter_us=None, loss=0.25))
    state.on_telemetry(replace(telemetry(2), paths=paths), now)
    shown = state.snapshot(now)["link"]["paths"]
    assert shown == [
        {"name": "A", "live": True, "rtt_ms": 1.5, "latency_ms": 0.7, "jitter_ms": 0.04,
         "loss_pct": 0.0},
        {"name": "B", "live": False, "rtt_ms": None, "latency_ms": None, "jitter_ms": None,
         "loss_pct": 25.0}]
