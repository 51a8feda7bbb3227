"""The console's end of the secured link (``transport.link`` has the robot's and the rules).

The console's client sockets: command PUSH, control DEALER, telemetry and video SUB.
It keeps the surgeon session's token the robot granted in its ``arm`` reply and
stamps it on every command, control request, ping and pong it sends
(``transport.session_guard``).

Threading: as in ``transport.link``, each socket is used by one thread only (the
console's command thread the command socket, its session thread the control and
telemetry sockets); ``session`` is one reference read by both.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from typing import Any

import zmq

from telesurgery.errors import AuthError, LinkTimeout
from transport.config import VIDEO_MAX_MESSAGE_BYTES, LinkConfig
from transport.endpoint import (
    BUFFERED_MAX,
    COMMAND_SNDHWM,
    CONTROL_HWM,
    TELEMETRY_HWM,
    VIDEO_HWM,
    Inbound,
    _Link,
)
from transport.keys import ClientKeys
from transport.schema import (
    Command,
    ControlReply,
    ControlRequest,
    KeyframeRequest,
    Ping,
    Pong,
    SafetyEvent,
    Telemetry,
    Vitals,
    decode,
    encode,
)
from transport.sockets import client_socket

log = logging.getLogger(__name__)


class ConsoleLink(_Link):
    """The console's client sockets; an observer gets only telemetry and video."""

    def __init__(self, cfg: LinkConfig, keys: ClientKeys, ctx: zmq.Context[Any] | None = None,
                 observer: bool = False) -> None:
        super().__init__(ctx)
        self.observer = observer
        self._timeout_ms = cfg.control_timeout_ms
        self._req_id = 0
        self.session: int | None = None
        """The surgeon session the robot granted in its last ``arm`` reply; every
        command, request and pong carries it (``transport.session_guard``)."""
        self._buffered: deque[Inbound] = deque(maxlen=BUFFERED_MAX)
        self._command: zmq.Socket[Any] | None = None
        self._control: zmq.Socket[Any] | None = None

        def client(kind: int, port: int, max_msg: int, hwm: int, poll: bool) -> zmq.Socket[Any]:
            sock = client_socket(self._ctx, kind, f"tcp://{cfg.host}:{port}", keys, max_msg,
                                 hwm=hwm, heartbeat_ivl_ms=cfg.heartbeat_ivl_ms,
                                 heartbeat_timeout_ms=cfg.heartbeat_timeout_ms)
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            return self._add(sock, poll)

        try:
            self._telemetry = client(zmq.SUB, cfg.telemetry_port, cfg.max_message_bytes,
                                     TELEMETRY_HWM, True)
            self.video_socket = client(zmq.SUB, cfg.video_port, VIDEO_MAX_MESSAGE_BYTES,
                                       VIDEO_HWM, False)
            if not observer:
                self._command = client(zmq.PUSH, cfg.command_port, cfg.max_message_bytes,
                                       COMMAND_SNDHWM, False)
                self._control = client(zmq.DEALER, cfg.control_port, cfg.max_message_bytes,
                                       CONTROL_HWM, True)
        except BaseException:
            self.close()
            raise

    def send_command(self, cmd: Command) -> bool:
        """Send without blocking; False (and counted) when the link cannot take it now."""
        if cmd.session != self.session:
            cmd = dataclasses.replace(cmd, session=self.session)
        try:
            self._surgeon(self._command).send(encode(cmd), zmq.NOBLOCK)
        except zmq.Again:
            self.counters["command_send_drops"] += 1
            return False
        return True

    def request(self, op: str, value: float | None = None,
                timeout_ms: int | None = None, handoff: int | None = None) -> ControlReply:
        """Send a control request and wait for its reply, or raise ``LinkTimeout``.

        ``handoff``: the command request a ``grant``/``deny`` answers. A
        ``request_command`` is answered only when granted or ended: wait long."""
        control = self._surgeon(self._control)
        self._req_id += 1
        req_id = self._req_id
        payload = encode(ControlRequest(req_id=req_id, op=op, value=value, session=self.session,
                                        handoff=handoff))
        decode(payload)  # validate here: a bad op is the caller's SchemaError, not a timeout
        timeout = self._timeout_ms if timeout_ms is None else timeout_ms
        if not self._send(control, [payload], "request"):
            raise LinkTimeout(f"control request {op!r}: link down, not sent")
        deadline = time.monotonic_ns() + timeout * 1_000_000
        while (left_ms := (deadline - time.monotonic_ns()) // 1_000_000) > 0:
            if not control.poll(left_ms):
                break
            for item in self._drain_control(control, awaiting=req_id):
                if isinstance(item.msg, ControlReply) and item.msg.req_id == req_id:
                    if item.msg.session is not None:
                        self.session = item.msg.session
                    return item.msg
                self._buffered.append(item)
        raise LinkTimeout(f"no reply to control request {op!r} (req_id {req_id}) "
                          f"within {timeout} ms")

    def send_keyframe_request(self, req: KeyframeRequest) -> bool:
        return self._send(self._surgeon(self._control), [encode(req)], "keyframe_request")

    def send_ping(self, ping: Ping) -> bool:
        if ping.session != self.session:
            ping = dataclasses.replace(ping, session=self.session)
        return self._send(self._surgeon(self._control), [encode(ping)], "ping")

    def poll(self, timeout_ms: int) -> list[Inbound]:
        """Telemetry, safety events, pings (already answered) and pongs that arrived."""
        out = list(self._buffered)
        self._buffered.clear()
        ready = dict(self._poller.poll(0 if out else timeout_ms))
        if self._control is not None and self._control in ready:
            out.extend(self._drain_control(self._control, awaiting=None))
        if self._telemetry in ready:
            out.extend(self._drain(self._telemetry, "telemetry", (Telemetry, SafetyEvent,
                                                                   Vitals)))
        return out

    def _pong(self, sock: zmq.Socket[Any], ping: Ping, recv_ns: int,
              route: list[bytes]) -> None:
        pong = Pong(seq=ping.seq, t1_ns=ping.t1_ns, t2_ns=recv_ns, t3_ns=time.monotonic_ns(),
                    session=self.session)
        self._send(sock, [*route, encode(pong)], "pong")

    def _surgeon(self, sock: zmq.Socket[Any] | None) -> zmq.Socket[Any]:
        if sock is None:
            raise AuthError("an observer link may only receive telemetry and video")
        return sock

    def _drain_control(self, control: zmq.Socket[Any], awaiting: int | None) -> list[Inbound]:
        """Control input with pings answered and every reply but the awaited one dropped.

        A reply that is not awaited is late: its request already timed out and
        the caller was told so; acting on it now would be acting on old news.
        """
        out: list[Inbound] = []
        for item in self._drain(control, "control", (ControlReply, Ping, Pong)):
            msg = item.msg
            if isinstance(msg, ControlReply) and msg.req_id != awaiting:
                self.counters["late_reply"] += 1
                log.info("dropped a late reply to control request %d", msg.req_id)
                continue
            out.append(item)
        return out

