"""The supervision page's web server (aiohttp): static page, WebSocket push, e-stop.

Every open page gets the robot's state ``push_hz`` times a second and the surgeon's
picture as it arrives. The handshake is refused without the page's Origin or the
access token; anyone with the page open may press the e-stop; a clear needs the
on-site PIN, and a refused clear is reported to the robot so it is audited.
Malformed messages get a one-line error and are counted; the connection and the
robot carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from robot_side import estop
from robot_side.supervision.config import PageConfig
from robot_side.supervision.credentials import PinCheck
from robot_side.supervision.state import FeedState
from robot_side.supervision.video import PictureClient, PictureRelay
from telesurgery.errors import TelesurgeryError
from telesurgery.ratelog import RateLimitedLog

if TYPE_CHECKING:  # the intercom (PyAV, Opus) is loaded only when the robot has one
    from robot_side.supervision.intercom import PageIntercom

log = logging.getLogger(__name__)
ratelog = RateLimitedLog(log)

STATIC = Path(__file__).parent / "static"
MAX_WS_MESSAGE = 4096
MIN_PUSH_GAP_S = 0.005
PAGE_SOURCE = "page"


def _send(path: Path, action: str, detail: str) -> str:
    """One request on the robot's e-stop socket, tagged as the page's.

    Speaks the source-tagged protocol (``ACTION SOURCE [DETAIL]``, ``robot_side.estop``);
    the fallback serves an e-stop module from before it (one bare word per request;
    there a ``refused`` report is answered with an error and only logged here).
    """
    send: Any = estop.send  # either protocol version; its answer is a str in both
    if "source" in inspect.signature(send).parameters:
        return str(send(path, action, PAGE_SOURCE, detail=detail))
    return str(send(path, f"{action} {PAGE_SOURCE} {detail}".strip()
                    if action == "refused" else action))


class PageServer:
    def __init__(self, cfg: PageConfig, feed: FeedState, estop_path: Path, *, token: str,
                 pins: PinCheck, video_path: Path | None,
                 intercom: PageIntercom | None = None) -> None:
        self.cfg = cfg
        self.feed = feed
        self.estop_path = estop_path
        self._token = token
        self.pins = pins
        self.counters: Counter[str] = Counter()
        self.relay = PictureRelay(video_path) if video_path is not None else None
        self.intercom = intercom
        """The on-site staff's push-to-talk (``/intercom``); None: the robot has none."""
        self.origins: set[str] = set(cfg.allowed_origins)
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wakeups: set[asyncio.Event] = set()
        self.clients = 0

    # ------------------------------------------------------------ lifecycle
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/intercom", self._intercom)
        app.router.add_static("/static/", STATIC)
        return app

    async def start(self) -> str:
        # No access log: it would hold the WebSocket URL, token included.
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/"
        self.origins.add(f"http://{host}:{port}")
        if host == "127.0.0.1":
            self.origins.add(f"http://localhost:{port}")
        if self.relay is not None:
            self._tasks.append(asyncio.create_task(self.relay.run()))
        loop = asyncio.get_running_loop()
        if self.intercom is not None:
            self.intercom.start(loop)

        def on_change() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while we shut down
                loop.call_soon_threadsafe(self._wake)

        self.feed.on_change = on_change
        return self.url

    def _wake(self) -> None:
        for event in self._wakeups:
            event.set()

    async def stop(self) -> None:
        self.feed.on_change = None
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
        if self.relay is not None:
            self.relay.close()
        if self.intercom is not None:
            self.intercom.close()

    # ------------------------------------------------------------ handlers
    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html",
                                headers={"Cache-Control": "no-store",
                                         "Content-Security-Policy": "default-src 'self'"})

    def _refuse(self, key: str, why: str, request: web.Request) -> web.Response:
        self.counters[key] += 1
        ratelog(logging.WARNING, key, "page: WebSocket refused from %s: %s",
                request.remote, why)
        return web.Response(status=403, text=f"refused: {why}\n")

    def _admit(self, request: web.Request) -> web.Response | None:
        """The handshake rules of every WebSocket of the page: its Origin, its token."""
        origin = request.headers.get("Origin", "")
        if origin not in self.origins:
            return self._refuse("refused_origin", f"origin {origin[:80]!r} not allowed",
                                request)
        token = request.query.get("token", "")
        if not hmac.compare_digest(token.encode(), self._token.encode()):
            return self._refuse("refused_token", "wrong or missing access token", request)
        return None

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        refused = self._admit(request)
        if refused is not None:
            return refused
        ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, heartbeat=5.0)
        await ws.prepare(request)
        self.clients += 1
        self.counters["connections"] += 1
        picture = self.relay.add() if self.relay is not None else None
        tasks = [asyncio.create_task(self._push(ws))]
        if picture is not None:
            tasks.append(asyncio.create_task(self._push_picture(ws, picture)))
        try:
            await ws.send_json({"type": "hello", "history": self.feed.history_rows(),
                                "stale_after_ms": self.feed.stale_after_ns / 1e6,
                                "push_hz": self.cfg.push_hz,
                                "history_s": self.cfg.history_s})
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_json(await self._on_message(msg.data))
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_json(self._bad("binary messages are not accepted"))
                elif msg.type == WSMsgType.ERROR:
                    self._bad(f"connection error: {ws.exception()}")
        finally:
            for task in tasks:
                task.cancel()
            if picture is not None and self.relay is not None:
                self.relay.clients.discard(picture)
            self.clients -= 1
        return ws

    async def _push(self, ws: web.WebSocketResponse) -> None:
        period = 1.0 / self.cfg.push_hz
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        try:
            await self._push_loop(ws, wakeup, period)
        finally:
            self._wakeups.discard(wakeup)

    async def _push_loop(self, ws: web.WebSocketResponse, wakeup: asyncio.Event,
                         period: float) -> None:
        while not ws.closed:
            wakeup.clear()
            now = time.monotonic_ns()
            snap = self.feed.snapshot(now)
            snap["picture_age_ms"] = self.relay.age_ms(now) if self.relay else None
            snap["counters"] = dict(self.counters)
            try:
                await ws.send_str(json.dumps(snap))
            except ConnectionError:
                return
            await asyncio.sleep(MIN_PUSH_GAP_S)  # a flapping state cannot flood the page
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), period)

    async def _push_picture(self, ws: web.WebSocketResponse, picture: PictureClient) -> None:
        while not ws.closed:
            data = await picture.queue.get()
            try:
                await ws.send_bytes(data)
            except ConnectionError:
                return

    async def _intercom(self, request: web.Request) -> web.StreamResponse:
        refused = self._admit(request)
        if refused is not None:
            return refused
        ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, heartbeat=5.0)
        await ws.prepare(request)
        if self.intercom is None:  # the page says why; nothing of the intercom is loaded
            await ws.send_json({"type": "intercom", "allowed": False,
                                "why": "the robot's intercom is off"})
            async for _msg in ws:
                pass
            return ws
        from robot_side.supervision.intercom import serve_intercom  # loaded with PageIntercom

        await serve_intercom(ws, self.intercom, self._bad)
        return ws

    # ------------------------------------------------------------ requests
    def _bad(self, why: str) -> dict[str, Any]:
        self.counters["bad_messages"] += 1
        ratelog(logging.WARNING, "bad_message", "page: bad WebSocket message: %s", why)
        return {"type": "error", "error": why}

    async def _on_message(self, text: str) -> dict[str, Any]:
        try:
            body = json.loads(text)
        except ValueError as err:
            return self._bad(f"not JSON: {err}")
        if not isinstance(body, dict):
            return self._bad("expected a JSON object")
        op = body.get("op")
        if op == "press":
            return await self._press()
        if op == "clear":
            return await self._clear(body.get("pin"))
        return self._bad(f"unknown op {str(op)[:32]!r}")

    async def _estop(self, action: str, detail: str = "") -> str:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, _send, self.estop_path, action, detail)
        except (OSError, TelesurgeryError) as err:
            return f"error: robot e-stop socket not reachable: {err}"

    async def _press(self) -> dict[str, Any]:
        self.counters["presses"] += 1
        answer = await self._estop("press")
        ok = answer.startswith("ok")
        if not ok:
            self.counters["press_failed"] += 1
            log.error("page: e-stop press NOT delivered: %s", answer)
        else:
            log.warning("page: e-stop pressed from the supervision page")
        return {"type": "reply", "op": "press", "ok": ok, "text": answer}

    async def _clear(self, pin: object) -> dict[str, Any]:
        # PBKDF2 takes a while on purpose: never on the event loop, which pushes the state.
        loop = asyncio.get_running_loop()
        verdict = await loop.run_in_executor(None, self.pins.check, pin, time.monotonic_ns())
        if not verdict.ok:
            self.counters["clears_refused"] += 1
            # The robot audits the refusal (who: the page; why: in words, never the PIN).
            answer = await self._estop("refused", verdict.why[:160])
            log.warning("page: e-stop clear refused (%s); robot: %s", verdict.why, answer)
            return {"type": "reply", "op": "clear", "ok": False,
                    "text": f"refused: {verdict.why}", "audited": answer.startswith("ok")}
        answer = await self._estop("clear")
        ok = answer.startswith("ok")
        self.counters["clears_ok" if ok else "clears_failed"] += 1
        log.warning("page: e-stop clear with the on-site PIN: %s", answer)
        return {"type": "reply", "op": "clear", "ok": ok, "text": answer}
