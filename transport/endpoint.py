"""What both ends of the secured link share: socket bounds, ``Inbound``, the ``_Link`` base.

``transport.link`` (the robot's servers and the channel rules) and
``transport.console_link`` (the console's clients) build on it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import zmq

from telesurgery.errors import SchemaError
from telesurgery.ratelog import RateLimitedLog
from transport.schema import Message, Ping, Pong, decode, encode

log = logging.getLogger("transport.link")
"""One logger for the link, whichever module of it speaks."""

COMMAND_RCVHWM = 1000
"""Robot side: one second at 1 kHz, more than a 500 ms stall; older input is drained anyway."""
COMMAND_SNDHWM = 100
"""Console side: queued only while TCP is backed up; beyond this a send is dropped."""
CONTROL_HWM = 100
TELEMETRY_HWM = 100
VIDEO_HWM = 4
"""Frames: a late frame is worth nothing; the subscriber should drain to the newest."""
DRAIN_MAX = 4 * COMMAND_RCVHWM
"""Messages read per socket per poll, so a flood cannot starve the caller's loop."""
ARRIVALS_MAX = 4096
BUFFERED_MAX = 256
ROBOT_USER = "robot"

@dataclass(frozen=True, slots=True)
class Inbound:
    """One decoded message with its local receive time and who sent it."""

    msg: Message
    recv_ns: int
    peer: bytes
    """ROUTER identity on the robot's control socket, else b""."""
    user: str
    """ZAP user id: "surgeon", "observer:<name>"; "robot" on the console side."""
    key: str | None = None
    """The sender's session key (z85, ZAP metadata ``X-Key``) on the robot; None on a
    console. The robot's session guard ends a session whose key a reload revoked."""
    addr: str = ""
    """The sender's IP address as the robot's kernel saw it (ZeroMQ ``Peer-Address``),
    with two or more network paths configured: which path it came by. Else ""."""


class _Link:
    """What both ends share: counters, throttled logging, a poller, closing."""

    def __init__(self, ctx: zmq.Context[Any] | None) -> None:
        self._own_ctx = ctx is None
        self._ctx: zmq.Context[Any] = zmq.Context() if ctx is None else ctx
        self.counters: Counter[str] = Counter()
        self._log = RateLimitedLog(log)
        self._sockets: list[zmq.Socket[Any]] = []
        self._poller = zmq.Poller()

    def _add(self, sock: zmq.Socket[Any], poll: bool = True) -> zmq.Socket[Any]:
        self._sockets.append(sock)
        if poll:
            self._poller.register(sock, zmq.POLLIN)
        return sock

    def _bad_input(self, channel: str, err: SchemaError) -> None:
        self.counters[f"{channel}_schema_error"] += 1
        self._log(logging.WARNING, f"bad:{channel}",
                  "dropped bad %s message: %s", channel, err)

    def _user(self, frame: zmq.Frame) -> str:
        """Who sent ``frame``: the ZAP user id on the robot, the robot on a console."""
        return ROBOT_USER

    def _key(self, frame: zmq.Frame) -> str | None:
        """The sender's session key on the robot (ZAP metadata); None on a console."""
        return None

    def _addr(self, frame: zmq.Frame) -> str:
        """The sender's address on the robot with several paths; "" otherwise."""
        return ""

    def _drain(self, sock: zmq.Socket[Any], channel: str, accept: tuple[type[Message], ...],
               routed: bool = False) -> list[Inbound]:
        """Read everything queued (bounded), validate it, answer pings; bad input is dropped.

        ``routed``: ROUTER input, whose first frame is the peer's identity.
        """
        out: list[Inbound] = []
        for _ in range(DRAIN_MAX):
            try:
                frames: list[zmq.Frame] = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            recv_ns = time.monotonic_ns()
            try:
                if len(frames) != 1 + routed:
                    raise SchemaError("message", f"{len(frames) - routed} parts, expected 1")
                payload = frames[-1]
                user = self._user(payload)
                msg = decode(payload.buffer)
                if not isinstance(msg, accept):
                    raise SchemaError("t", f"{msg.TYPE!r} not expected on {channel}")
            except SchemaError as err:
                self._bad_input(channel, err)
                continue
            route = [frames[0].bytes] if routed else []
            if isinstance(msg, Ping):
                self._pong(sock, msg, recv_ns, route)
            out.append(Inbound(msg, recv_ns, route[0] if routed else b"", user,
                               self._key(payload), self._addr(payload)))
        return out

    def _pong(self, sock: zmq.Socket[Any], ping: Ping, recv_ns: int,
              route: list[bytes]) -> None:
        pong = Pong(seq=ping.seq, t1_ns=ping.t1_ns, t2_ns=recv_ns, t3_ns=time.monotonic_ns())
        self._send(sock, [*route, encode(pong)], "pong")

    def _send(self, sock: zmq.Socket[Any], parts: list[bytes], what: str) -> bool:
        try:
            sock.send_multipart(parts, zmq.NOBLOCK)
        except zmq.ZMQError as err:  # Again at HWM, EHOSTUNREACH for a gone ROUTER peer
            self.counters[f"{what}_send_failed"] += 1
            self._log(logging.WARNING, f"send:{what}", "could not send %s: %s", what, err)
            return False
        return True

    def close(self) -> None:
        for sock in self._sockets:
            sock.close(0)
        self._sockets.clear()
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


