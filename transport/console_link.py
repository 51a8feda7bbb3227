"""The console's end of the secured link (``transport.link`` has the robot's and the rules).

The console's client sockets: command PUSH, control DEALER, telemetry and video SUB.
It keeps the surgeon session's token the robot granted in its ``arm`` reply and
stamps it on every command, control request, ping and pong it sends
(``transport.session_guard``).

With two or more network paths (``LinkConfig.paths``) the console holds one
CurveZMQ session per path and channel: every command goes out on every path (the
robot executes the first fresh copy), pings and their answers on every path (so
the robot's clock sync and the session's liveness survive a dead path), telemetry
is taken from every path and each message kept once; a control request goes on
the path that last heard from the robot (a request must not run twice), and
video comes by one path (``video_path``). Per-path health the console measures
itself is in ``path_health()``.

Threading: as in ``transport.link``, each socket is used by one thread only (the
console's command thread the command sockets, its session thread the control and
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
from transport.config import VIDEO_MAX_MESSAGE_BYTES, LinkConfig, LinkPath, tos_byte
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
from transport.paths import PathView
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

SEEN_MAX = 256
"""Telemetry and events remembered to keep one copy of each (dual path)."""


def endpoint(path: LinkPath, port: int) -> str:
    """The robot's endpoint on ``path``, sent from the console's address on it if given."""
    source = f"{path.console}:0;" if path.console else ""
    return f"tcp://{source}{path.robot}:{port}"


class ConsoleLink(_Link):
    """The console's client sockets; an observer gets only telemetry and video."""

    def __init__(self, cfg: LinkConfig, keys: ClientKeys, ctx: zmq.Context[Any] | None = None,
                 observer: bool = False) -> None:
        super().__init__(ctx)
        self.observer = observer
        self._timeout_ms = cfg.control_timeout_ms
        self._req_id = 0
        self._open_requests: set[int] = set()
        """Requests sent with ``send_request``: their replies come out of ``poll()``."""
        self.session: int | None = None
        """The surgeon session the robot granted in its last ``arm`` reply; every
        command, request and pong carries it (``transport.session_guard``)."""
        self._buffered: deque[Inbound] = deque(maxlen=BUFFERED_MAX)
        self.paths = cfg.path_list
        self._commands: list[zmq.Socket[Any]] = []
        self._controls: list[zmq.Socket[Any]] = []
        self._telemetries: list[zmq.Socket[Any]] = []
        self._heard_ns = [0] * len(self.paths)
        """When each path last brought anything from the robot (console clock)."""
        self._rtt_ns: list[int | None] = [None] * len(self.paths)
        self._seen: deque[tuple[str, int]] = deque(maxlen=SEEN_MAX)
        self._video_port = cfg.video_port
        self.video_path = 0
        """Index of the path video comes by (``switch_video``)."""

        def client(kind: int, path: LinkPath, port: int, *, max_msg: int, hwm: int,
                   poll: bool, dscp: int = cfg.dscp_command,
                   subscribe: bool = True) -> zmq.Socket[Any]:
            sock = client_socket(self._ctx, kind, endpoint(path, port), keys, max_msg,
                                 hwm=hwm, heartbeat_ivl_ms=cfg.heartbeat_ivl_ms,
                                 heartbeat_timeout_ms=cfg.heartbeat_timeout_ms,
                                 tos=tos_byte(dscp))
            if kind == zmq.SUB and subscribe:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            return self._add(sock, poll)

        try:
            for path in self.paths:
                self._telemetries.append(client(
                    zmq.SUB, path, cfg.telemetry_port, max_msg=cfg.max_message_bytes,
                    hwm=TELEMETRY_HWM, poll=True))
            # One video SUB per path, connected (its CURVE handshake done) all the time but
            # subscribed only on the video's path: the robot's PUB filters per connection,
            # so a standby path carries heartbeats, no video, and a switch needs no
            # handshake (``switch_video``).
            self.video_sockets = tuple(
                client(zmq.SUB, path, cfg.video_port, max_msg=VIDEO_MAX_MESSAGE_BYTES,
                       hwm=VIDEO_HWM, poll=False, dscp=cfg.dscp_video, subscribe=i == 0)
                for i, path in enumerate(self.paths))
            """Each path's video SUB (only ``video_socket`` is subscribed)."""
            if not observer:
                for path in self.paths:
                    self._commands.append(client(
                        zmq.PUSH, path, cfg.command_port, max_msg=cfg.max_message_bytes,
                        hwm=COMMAND_SNDHWM, poll=False))
                    self._controls.append(client(
                        zmq.DEALER, path, cfg.control_port, max_msg=cfg.max_message_bytes,
                        hwm=CONTROL_HWM, poll=True))
        except BaseException:
            self.close()
            raise
        self._telemetry = self._telemetries[0]
        self._command = self._commands[0] if self._commands else None
        self._path_of = {s: i for group in (self._controls, self._telemetries)
                         for i, s in enumerate(group)}

    @property
    def _control(self) -> zmq.Socket[Any] | None:
        """The control socket of the path that last heard from the robot."""
        if not self._controls:
            return None
        if len(self._controls) == 1:
            return self._controls[0]
        return self._controls[max(range(len(self._controls)), key=self._heard_ns.__getitem__)]

    def send_command(self, cmd: Command) -> bool:
        """Send without blocking, on every path; False (and counted) when no path took it."""
        if cmd.session != self.session:
            cmd = dataclasses.replace(cmd, session=self.session)
        first = self._surgeon(self._command)
        if len(self._commands) == 1:
            try:
                first.send(encode(cmd), zmq.NOBLOCK)
            except zmq.Again:
                self.counters["command_send_drops"] += 1
                return False
            return True
        payload = encode(cmd)
        sent = False
        for i, sock in enumerate(self._commands):
            try:
                sock.send(payload, zmq.NOBLOCK)
                sent = True
            except zmq.Again:  # this path is down or backed up: the others carry it
                self.counters[f"command_send_drops_{self.paths[i].name}"] += 1
        if not sent:
            self.counters["command_send_drops"] += 1
        return sent

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

    def send_request(self, op: str, value: float | None = None,
                     handoff: int | None = None) -> int:
        """Send a control request without waiting (a ``request_command`` may wait seconds
        for its grant, and the caller's telemetry must keep flowing meanwhile): its
        ``ControlReply`` comes out of ``poll()``; the caller times it out and then calls
        ``forget_request``. Returns the request id; raises ``LinkTimeout`` if not sent."""
        control = self._surgeon(self._control)
        self._req_id += 1
        req_id = self._req_id
        payload = encode(ControlRequest(req_id=req_id, op=op, value=value, session=self.session,
                                        handoff=handoff))
        decode(payload)
        if not self._send(control, [payload], "request"):
            raise LinkTimeout(f"control request {op!r}: link down, not sent")
        self._open_requests.add(req_id)
        return req_id

    def forget_request(self, req_id: int) -> None:
        """The caller gave up on ``req_id``: a reply that still comes is late (dropped)."""
        self._open_requests.discard(req_id)

    def send_keyframe_request(self, req: KeyframeRequest) -> bool:
        return self._send(self._surgeon(self._control), [encode(req)], "keyframe_request")

    def send_ping(self, ping: Ping) -> bool:
        """Ping the robot on every path: each pong measures its own path (``path_health``),
        the first one the caller's clock sync; and the robot learns each path is this
        session's (``transport.session_guard``)."""
        if ping.session != self.session:
            ping = dataclasses.replace(ping, session=self.session)
        self._surgeon(self._control)
        payload = encode(ping)
        sent = [self._send(sock, [payload], "ping") for sock in self._controls]
        return any(sent)

    def poll(self, timeout_ms: int) -> list[Inbound]:
        """Telemetry, safety events, pings (already answered) and pongs that arrived."""
        out = list(self._buffered)
        self._buffered.clear()
        ready = dict(self._poller.poll(0 if out else timeout_ms))
        for sock in self._controls:
            if sock in ready:
                out.extend(self._drain_control(sock, awaiting=None))
        for sock in self._telemetries:
            if sock in ready:
                items = self._drain(sock, "telemetry", (Telemetry, SafetyEvent, Vitals))
                out.extend(self._first_copies(sock, items) if self._dual else items)
        return out

    @property
    def _dual(self) -> bool:
        return len(self.paths) > 1

    def path_health(self, now_ns: int, live_ns: int) -> list[PathView]:
        """Each path as this console sees it: heard from within ``live_ns``, its RTT."""
        return [PathView(p.name, now_ns - heard <= live_ns if heard else False,
                         None if rtt is None else rtt // 1000)
                for p, heard, rtt in zip(self.paths, self._heard_ns, self._rtt_ns, strict=True)]

    @property
    def video_socket(self) -> zmq.Socket[Any]:
        """The video SUB of the video's path (``switch_video`` changes it)."""
        return self.video_sockets[self.video_path]

    def switch_video(self, index: int) -> None:
        """Take video by path ``index`` from now on (the video thread calls this: it owns
        the video sockets, and reads ``video_socket`` again after it); the caller asks for
        a keyframe, the new path's stream starts mid-GOP. No connect: the new path's SUB
        is connected already, it only subscribes (and the old one unsubscribes)."""
        if index == self.video_path or not 0 <= index < len(self.paths):
            return
        self.drain_standby_video()  # the new path's queue: old news
        self.video_sockets[index].setsockopt(zmq.SUBSCRIBE, b"")
        self.video_socket.setsockopt(zmq.UNSUBSCRIBE, b"")
        log.info("video now by path %s (was %s)", self.paths[index].name,
                 self.paths[self.video_path].name)
        self.video_path = index
        self.counters["video_path_switches"] += 1

    def drain_standby_video(self) -> int:
        """Discard what the standby paths' video SUBs received (the frames in flight when
        they were unsubscribed); the video thread calls this every turn. A standby queue
        left full would stop its connection reading: the robot's PINGs unanswered, the
        robot would drop it, and the standby would need a new handshake after all."""
        n = 0
        for i, sock in enumerate(self.video_sockets):
            while i != self.video_path:
                try:
                    sock.recv(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                n += 1
        self.counters["video_standby_discards"] += n
        return n

    def resubscribe_video(self) -> None:
        """Send the video path's subscription again: its video is silent, and the SUBSCRIBE
        may have been lost (a lossy path's model, the HIL fault proxy, drops whole messages
        with TCP up; with no PUB heartbeat and no reconnect nothing else re-sends it).
        SUB then UNSUB: libzmq's SUB sends every subscribe (its count goes 1 -> 2) and no
        cancel (2 -> 1), so a robot that had the subscription keeps it: no gap."""
        sock = self.video_socket
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.UNSUBSCRIBE, b"")
        self.counters["video_resubscribes"] += 1

    def _first_copies(self, sock: zmq.Socket[Any], items: list[Inbound]) -> list[Inbound]:
        """Telemetry and events from every path, each kept once (by type and seq)."""
        out = []
        self._heard_ns[self._path_of[sock]] = time.monotonic_ns()
        for item in items:
            msg = item.msg
            mark = (msg.TYPE, msg.seq) if isinstance(msg, Telemetry | SafetyEvent) else None
            if mark is not None and mark in self._seen:
                self.counters["telemetry_duplicates"] += 1
                continue
            if mark is not None:
                self._seen.append(mark)
            out.append(item)
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
        path = self._path_of.get(control, 0)
        items = self._drain(control, "control", (ControlReply, Ping, Pong))
        if items:
            self._heard_ns[path] = items[-1].recv_ns
        for item in items:
            msg = item.msg
            if isinstance(msg, Pong):
                # This path's own round trip, less the robot's turnaround.
                self._rtt_ns[path] = (item.recv_ns - msg.t1_ns) - (msg.t3_ns - msg.t2_ns)
            if isinstance(msg, ControlReply) and msg.req_id in self._open_requests:
                self._open_requests.discard(msg.req_id)  # a send_request's: to the poller
                if msg.session is not None:
                    self.session = msg.session
                out.append(item)
                continue
            if isinstance(msg, ControlReply) and msg.req_id != awaiting:
                self.counters["late_reply"] += 1
                log.info("dropped a late reply to control request %d", msg.req_id)
                continue
            out.append(item)
        return out

