"""The two ends of the secured link: ``RobotLink`` (servers) and ``ConsoleLink`` (clients).

Channels and who may use them (ZAP domain in brackets, see ``transport.auth``):

=========  ==============  ==============  =========================================
channel    robot           console         carries
=========  ==============  ==============  =========================================
command    PULL [surgeon]  PUSH            Command, up to 1 kHz
control    ROUTER [surg.]  DEALER          ControlRequest/Reply, Ping/Pong both ways,
                                           KeyframeRequest
telemetry  PUB [observer]  SUB             Telemetry, SafetyEvent
video      PUB [observer]  SUB             multipart [VideoFrameHeader, access unit]
=========  ==============  ==============  =========================================

No stale backlog on the command path: ``RobotLink.poll`` drains every queued
command and hands over only the newest, so a receiver that stalled 500 ms acts
on the latest setpoint, never on the oldest. Every command drained is still
recorded (``command_arrivals()``) so that loss and latency statistics see them.
The console sends without blocking and counts what it could not send.

Bad input (undecodable bytes, a wrong message type, a multipart where one part
is expected) is a ``SchemaError``: counted in ``counters``, logged at most once
a second per kind, dropped; the link keeps running.

Threading: ZeroMQ sockets are not thread-safe. Each link, with all its sockets,
belongs to the thread that created it; only that thread may call its methods.
The authenticator runs in its own thread with its own socket.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import zmq
from zmq.utils.monitor import parse_monitor_message

from telesurgery.errors import AuthError, LinkTimeout, SchemaError
from transport.auth import session_key, start_authenticator
from transport.config import VIDEO_MAX_MESSAGE_BYTES, LinkConfig
from transport.keys import SURGEON_USER, ClientKeys, ServerKeys
from transport.schema import (
    Command,
    ControlReply,
    ControlRequest,
    KeyframeRequest,
    Message,
    Ping,
    Pong,
    SafetyEvent,
    Telemetry,
    decode,
    encode,
)
from transport.sockets import ThrottledLog, bound_port, client_socket, server_socket

log = logging.getLogger(__name__)

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
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_MONITORED = _HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
_CONTROL_IN = (ControlRequest, Ping, Pong, KeyframeRequest)


@dataclass(frozen=True, slots=True)
class Inbound:
    """One decoded message with its local receive time and who sent it."""

    msg: Message
    recv_ns: int
    peer: bytes
    """ROUTER identity on the robot's control socket, else b""."""
    user: str
    """ZAP user id: "surgeon", "observer:<name>"; "robot" on the console side."""


@dataclass(frozen=True, slots=True)
class Arrival:
    """A command as it arrived, including ones superseded by a newer one in the same poll."""

    seq: int
    t_send_ns: int
    recv_ns: int


class _Link:
    """What both ends share: counters, throttled logging, a poller, closing."""

    def __init__(self, ctx: zmq.Context[Any] | None) -> None:
        self._own_ctx = ctx is None
        self._ctx: zmq.Context[Any] = zmq.Context() if ctx is None else ctx
        self.counters: Counter[str] = Counter()
        self._log = ThrottledLog(log)
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
            out.append(Inbound(msg, recv_ns, route[0] if routed else b"", user))
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


def video_server_socket(ctx: zmq.Context[Any], cfg: LinkConfig,
                        keys: ServerKeys) -> zmq.Socket[Any]:
    """The robot's video PUB socket, for a process that serves video on its own.

    Same options as ``RobotLink``'s own video socket; the caller's context must
    run an authenticator (``start_authenticator``), which this socket requires.
    """
    return server_socket(ctx, zmq.PUB, cfg.video_port, cfg.host, keys, "observer",
                         VIDEO_MAX_MESSAGE_BYTES, hwm=VIDEO_HWM,
                         heartbeat_ivl_ms=cfg.heartbeat_ivl_ms,
                         heartbeat_timeout_ms=cfg.heartbeat_timeout_ms)


class RobotLink(_Link):
    """The robot's four server sockets behind a fail-closed authenticator."""

    def __init__(self, cfg: LinkConfig, keys: ServerKeys,
                 ctx: zmq.Context[Any] | None = None, *, video: bool = True,
                 command: bool = True) -> None:
        """``command=False``: the robot's control thread binds the command socket
        itself (robot_side.command_port) in ``ctx``, behind this link's authenticator."""
        super().__init__(ctx)
        self._arrivals: deque[Arrival] = deque(maxlen=ARRIVALS_MAX)
        self._console: bytes | None = None
        self._monitors: dict[zmq.Socket[Any], str] = {}
        try:
            self.auth = start_authenticator(self._ctx, keys)

            def server(name: str, kind: int, port: int, domain: Literal["surgeon", "observer"],
                       *, hwm: int, max_msg: int = cfg.max_message_bytes) -> zmq.Socket[Any]:
                sock = server_socket(self._ctx, kind, port, cfg.host, keys, domain, max_msg,
                                     hwm=hwm, heartbeat_ivl_ms=cfg.heartbeat_ivl_ms,
                                     heartbeat_timeout_ms=cfg.heartbeat_timeout_ms)
                self._add(sock, poll=kind in (zmq.PULL, zmq.ROUTER))
                self._monitors[self._add(sock.get_monitor_socket(_MONITORED))] = name
                return sock

            self._command: zmq.Socket[Any] | None = None
            if command:
                self._command = server("command", zmq.PULL, cfg.command_port, "surgeon",
                                       hwm=COMMAND_RCVHWM)
            self._control = server("control", zmq.ROUTER, cfg.control_port, "surgeon",
                                   hwm=CONTROL_HWM)
            # A reply to a console that is gone must fail loudly, not vanish.
            self._control.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._telemetry = server("telemetry", zmq.PUB, cfg.telemetry_port, "observer",
                                     hwm=TELEMETRY_HWM)
            self.video_socket: zmq.Socket[Any] | None = None
            if video:
                self.video_socket = server("video", zmq.PUB, cfg.video_port, "observer",
                                           hwm=VIDEO_HWM, max_msg=VIDEO_MAX_MESSAGE_BYTES)
        except BaseException:
            self.close()
            raise
        named = [("control", self._control), ("telemetry", self._telemetry)]
        if self._command is not None:
            named.insert(0, ("command", self._command))
        if self.video_socket is not None:
            named.append(("video", self.video_socket))
        self.endpoints = {name: bound_port(sock) for name, sock in named}
        log.info("robot link listening on %s %s", cfg.host, self.endpoints)

    @property
    def console_peer(self) -> bytes | None:
        """ROUTER identity of the surgeon console, learnt from its last control message."""
        return self._console

    def poll(self, timeout_ms: int) -> list[Inbound]:
        """Wait up to ``timeout_ms`` and return what arrived (at most one, the newest, command)."""
        ready = dict(self._poller.poll(timeout_ms))
        out: list[Inbound] = []
        if self._control in ready:
            out.extend(self._drain_control())
        if self._command is not None and self._command in ready:
            newest = self._drain_commands()
            if newest is not None:
                out.append(newest)
        for mon, name in self._monitors.items():
            if mon in ready:
                self._drain_monitor(mon, name)
        return out

    def command_arrivals(self) -> list[Arrival]:
        """Every command received since the last call (bounded), oldest first."""
        arrivals = list(self._arrivals)
        self._arrivals.clear()
        return arrivals

    def reply(self, peer: bytes, reply: ControlReply) -> bool:
        return self._send(self._control, [peer, encode(reply)], "reply")

    def send_ping(self, ping: Ping) -> bool:
        """Ping the surgeon console; False until it has sent a control message.

        The caller's ClockSync makes the Ping, so the Pong's seq is one it knows."""
        if self._console is None:
            return False
        return self._send(self._control, [self._console, encode(ping)], "ping")

    def publish_telemetry(self, t: Telemetry) -> None:
        self._send(self._telemetry, [encode(t)], "telemetry")

    def publish_event(self, e: SafetyEvent) -> None:
        self._send(self._telemetry, [encode(e)], "event")

    def close(self) -> None:
        self._monitors.clear()  # the monitor sockets are closed with the others
        if hasattr(self, "auth"):  # absent when __init__ failed before it started
            self.auth.stop()
        super().close()

    def _user(self, frame: zmq.Frame) -> str:
        try:
            user = str(frame.get("User-Id"))
        except zmq.ZMQError:  # no ZAP user attached: nobody vouched for this sender
            user = ""
        # Both robot sockets that read input are in the surgeon domain, so this never
        # fires while ZAP works; it is here so that a ZAP bug cannot let a command in.
        if user != SURGEON_USER:
            raise SchemaError("user", f"{user!r} may not command")
        # A session whose key a reload revoked stays connected: refuse it per message.
        if not self.auth.allows(session_key(frame)):
            raise SchemaError("user", "the key of this session was revoked")
        return user

    def _drain_commands(self) -> Inbound | None:
        if self._command is None:
            return None
        commands = self._drain(self._command, "command", (Command,))
        for item in commands:
            if isinstance(item.msg, Command):  # always, by ``accept``; narrows the type
                self._arrivals.append(Arrival(item.msg.seq, item.msg.t_send_ns, item.recv_ns))
        self.counters["command_received"] += len(commands)
        self.counters["command_superseded"] += max(0, len(commands) - 1)
        return commands[-1] if commands else None

    def _drain_control(self) -> list[Inbound]:
        items = self._drain(self._control, "control", _CONTROL_IN, routed=True)
        if items:
            self._console = items[-1].peer
        return items

    def _drain_monitor(self, mon: zmq.Socket[Any], name: str) -> None:
        while mon.poll(0):
            event = parse_monitor_message(mon.recv_multipart())
            kind = event["event"]
            where = event["endpoint"].decode(errors="replace")
            if kind & _HANDSHAKE_FAILED:
                # Plaintext peers only show up here: they never reach the authenticator.
                self.counters["handshake_failed"] += 1
                self._log(logging.WARNING, f"handshake:{name}",
                          "no session for a peer on %s (%s): %s, code %s", name, where,
                          zmq.Event(kind).name, event["value"])
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.counters[f"{name}_sessions"] += 1
                log.info("authenticated session on %s (%s)", name, where)
            else:  # a failed handshake also ends in a disconnect; both are counted
                self.counters[f"{name}_disconnects"] += 1
                self._log(logging.INFO, f"disconnect:{name}", "a peer left %s (%s)", name, where)


class ConsoleLink(_Link):
    """The console's client sockets; an observer gets only telemetry and video."""

    def __init__(self, cfg: LinkConfig, keys: ClientKeys, ctx: zmq.Context[Any] | None = None,
                 observer: bool = False) -> None:
        super().__init__(ctx)
        self.observer = observer
        self._timeout_ms = cfg.control_timeout_ms
        self._req_id = 0
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
        try:
            self._surgeon(self._command).send(encode(cmd), zmq.NOBLOCK)
        except zmq.Again:
            self.counters["command_send_drops"] += 1
            return False
        return True

    def request(self, op: str, value: float | None = None,
                timeout_ms: int | None = None) -> ControlReply:
        """Send a control request and wait for its reply, or raise ``LinkTimeout``."""
        control = self._surgeon(self._control)
        self._req_id += 1
        req_id = self._req_id
        payload = encode(ControlRequest(req_id=req_id, op=op, value=value))
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
                    return item.msg
                self._buffered.append(item)
        raise LinkTimeout(f"no reply to control request {op!r} (req_id {req_id}) "
                          f"within {timeout} ms")

    def send_keyframe_request(self, req: KeyframeRequest) -> bool:
        return self._send(self._surgeon(self._control), [encode(req)], "keyframe_request")

    def send_ping(self, ping: Ping) -> bool:
        return self._send(self._surgeon(self._control), [encode(ping)], "ping")

    def poll(self, timeout_ms: int) -> list[Inbound]:
        """Telemetry, safety events, pings (already answered) and pongs that arrived."""
        out = list(self._buffered)
        self._buffered.clear()
        ready = dict(self._poller.poll(0 if out else timeout_ms))
        if self._control is not None and self._control in ready:
            out.extend(self._drain_control(self._control, awaiting=None))
        if self._telemetry in ready:
            out.extend(self._drain(self._telemetry, "telemetry", (Telemetry, SafetyEvent)))
        return out

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

