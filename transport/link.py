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
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import zmq
from zmq.utils.monitor import parse_monitor_message

from telesurgery.errors import SchemaError
from transport.auth import session_key, start_authenticator
from transport.config import VIDEO_MAX_MESSAGE_BYTES, LinkConfig, tos_byte
from transport.endpoint import (
    ARRIVALS_MAX,
    COMMAND_RCVHWM,
    COMMAND_SNDHWM,
    CONTROL_HWM,
    TELEMETRY_HWM,
    VIDEO_HWM,
    Inbound,
    _Link,
)
from transport.keys import SURGEON_USER, ServerKeys
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
    encode,
)
from transport.sockets import PortInUse, bound_port, server_socket

log = logging.getLogger(__name__)

_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_MONITORED = _HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
_CONTROL_IN = (ControlRequest, Ping, Pong, KeyframeRequest)


@dataclass(frozen=True, slots=True)
class Arrival:
    """A command as it arrived, including ones superseded by a newer one in the same poll."""

    cmd: Command
    recv_ns: int

    @property
    def seq(self) -> int:
        return self.cmd.seq

    @property
    def t_send_ns(self) -> int:
        return self.cmd.t_send_ns


def video_server_socket(ctx: zmq.Context[Any], cfg: LinkConfig,
                        keys: ServerKeys) -> zmq.Socket[Any]:
    """The robot's video PUB socket, for a process that serves video on its own.

    Same options as ``RobotLink``'s own video socket; the caller's context must
    run an authenticator (``start_authenticator``), which this socket requires.
    """
    first, *more = (p.robot for p in cfg.path_list)
    try:
        return server_socket(ctx, zmq.PUB, cfg.video_port, first, keys, "observer",
                             VIDEO_MAX_MESSAGE_BYTES, hwm=VIDEO_HWM,
                             heartbeat_ivl_ms=cfg.heartbeat_ivl_ms,
                             heartbeat_timeout_ms=cfg.heartbeat_timeout_ms,
                             tos=tos_byte(cfg.dscp_video), more_hosts=tuple(more))
    except PortInUse as err:
        raise PortInUse(err.host, err.port, "link.video_port") from None


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
        self._pinned = False
        self._gone: deque[bytes] = deque(maxlen=64)
        self._monitors: dict[zmq.Socket[Any], str] = {}
        self._dual = cfg.dual
        # Every channel is bound on every path's address, on the same port.
        first, *more = (p.robot for p in cfg.path_list)
        try:
            self.auth = start_authenticator(self._ctx, keys)

            def server(name: str, kind: int, port: int, domain: Literal["surgeon", "observer"],
                       *, hwm: int, max_msg: int = cfg.max_message_bytes,
                       dscp: int = cfg.dscp_command) -> zmq.Socket[Any]:
                try:
                    sock = server_socket(self._ctx, kind, port, first, keys, domain,
                                         max_msg, hwm=hwm,
                                         heartbeat_ivl_ms=cfg.heartbeat_ivl_ms,
                                         heartbeat_timeout_ms=cfg.heartbeat_timeout_ms,
                                         tos=tos_byte(dscp), more_hosts=tuple(more))
                except PortInUse as err:
                    raise PortInUse(err.host, err.port, f"link.{name}_port") from None
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
                                           hwm=VIDEO_HWM, max_msg=VIDEO_MAX_MESSAGE_BYTES,
                                           dscp=cfg.dscp_video)
        except BaseException:
            self.close()
            raise
        named = [("control", self._control), ("telemetry", self._telemetry)]
        if self._command is not None:
            named.insert(0, ("command", self._command))
        if self.video_socket is not None:
            named.append(("video", self.video_socket))
        self.endpoints = {name: bound_port(sock) for name, sock in named}
        log.info("robot link listening on %s %s", [first, *more], self.endpoints)

    @property
    def console_peer(self) -> bytes | None:
        """ROUTER identity of the console the robot pings.

        Learnt from the last control message until ``bind_console`` pins it: the
        robot node pins the surgeon session's holder (``transport.session_guard``),
        so a second console can never take over the pings."""
        return self._console

    def bind_console(self, peer: bytes | None) -> None:
        self._pinned = True
        self._console = peer

    def peer_gone(self, peer: bytes) -> bool:
        """True once a send to ``peer`` failed because its connection is gone."""
        return peer in self._gone

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
        return self._send_to(peer, reply, "reply")

    def send_ping(self, ping: Ping) -> bool:
        """Ping the surgeon console; False until it has sent a control message.

        The caller's ClockSync makes the Ping, so the Pong's seq is one it knows."""
        if self._console is None:
            return False
        return self._send_to(self._console, ping, "ping")

    def send_ping_to(self, peer: bytes, ping: Ping) -> bool:
        """Ping one of the session holder's connections (one per network path)."""
        return self._send_to(peer, ping, "ping")

    def _send_to(self, peer: bytes, msg: ControlReply | Ping, what: str) -> bool:
        try:
            self._control.send_multipart([peer, encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError as err:
            if err.errno == zmq.EHOSTUNREACH and peer not in self._gone:
                # ROUTER_MANDATORY: the peer's connection is gone (heartbeat or close).
                self._gone.append(peer)
            self.counters[f"{what}_send_failed"] += 1
            self._log(logging.WARNING, f"send:{what}", "could not send %s: %s", what, err)
            return False
        return True

    def publish_telemetry(self, t: Telemetry) -> None:
        self._send(self._telemetry, [encode(t)], "telemetry")

    def publish_event(self, e: SafetyEvent) -> None:
        self._send(self._telemetry, [encode(e)], "event")

    def publish_vitals(self, v: Vitals) -> None:
        self._send(self._telemetry, [encode(v)], "vitals")

    def close(self) -> None:
        self._monitors.clear()  # the monitor sockets are closed with the others
        if hasattr(self, "auth"):  # absent when __init__ failed before it started
            self.auth.stop()
        super().close()

    def _key(self, frame: zmq.Frame) -> str | None:
        return session_key(frame)

    def _addr(self, frame: zmq.Frame) -> str:
        if not self._dual:
            return ""
        try:
            return str(frame.get("Peer-Address"))
        except zmq.ZMQError:
            return ""

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
                self._arrivals.append(Arrival(item.msg, item.recv_ns))
        self.counters["command_received"] += len(commands)
        self.counters["command_superseded"] += max(0, len(commands) - 1)
        return commands[-1] if commands else None

    def _drain_control(self) -> list[Inbound]:
        items = self._drain(self._control, "control", _CONTROL_IN, routed=True)
        if items and not self._pinned:
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


# The console's end lives in its own module; importing it from here keeps working.
from transport.console_link import ConsoleLink  # noqa: E402

__all__ = ["ARRIVALS_MAX", "COMMAND_RCVHWM", "COMMAND_SNDHWM", "CONTROL_HWM", "TELEMETRY_HWM",
           "VIDEO_HWM", "Arrival", "ConsoleLink", "Inbound", "RobotLink", "video_server_socket"]
