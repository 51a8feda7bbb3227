"""Socket construction with the options of a safety link, in one place.

Every socket: CurveZMQ, LINGER 0 (closing never waits to flush stale
commands), a maximum message size (a peer cannot make us allocate unbounded
memory), bounded high-water marks, and ZMTP heartbeats so that a dead peer is
noticed in ``heartbeat_timeout_ms`` rather than by TCP after minutes. The console's
subscribers and control DEALER, and the robot's publishers, are the exception: they send
no PINGs (the robot's ROUTER PINGs and their TTL still drop a silent robot) and use TCP
keepalive (``_common`` says why: a libzmq abort).

Server sockets additionally set ``ZAP_ENFORCE_DOMAIN``: without it libzmq
lets a CURVE client in when no ZAP handler answers, i.e. a robot whose
authenticator is not running would accept any key. Client sockets set
``IMMEDIATE`` so that nothing is queued for a connection that is not up:
after an outage there is no backlog to replay.
"""

from __future__ import annotations

from typing import Any, Literal

import zmq

from telesurgery.errors import LinkError
from transport.keys import ClientKeys, ServerKeys

DEFAULT_HWM = 1000
HANDSHAKE_IVL_MS = 2000
"""A peer that does not finish the CURVE handshake in this time is dropped."""
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1000


NO_ZMTP_HEARTBEAT = frozenset({zmq.SUB, zmq.DEALER, zmq.PUB})
"""Sockets with no ZMTP heartbeat of their own (see ``_common``), TCP keepalive instead:
the console's subscribers and control DEALER (their input can stop: a full receive
queue), and the robot's publishers (telemetry, video, telestration: their PINGs are what
a stopped subscriber answers, after its queue drains, on a connection already gone,
aborting the console). A silent robot is still dropped by the console's DEALER in
``heartbeat_timeout_ms``: the robot's ROUTER PINGs carry that TTL (``HEARTBEAT_TTL``;
re-armed by each PING only, cancelled by any message: the console's own pings and path
liveness judge a robot that hung just after a data message). A subscriber's robot that
hangs is judged by the console's telemetry and picture age, as before. Not the console's
command PUSH (its input never stops: it receives only ZMTP commands) nor the robot's
command PULL and control ROUTER (their heartbeats are how the robot counts and drops a
silent console, ``command_disconnects``, and they are drained every period)."""
DEALER_RCVHWM = 100_000
"""The console's control DEALER also gets a receive queue a stall cannot fill (its input
stops less often). Its traffic is pings and replies (~100 B at ~20/s), so this bound is
~80 min of stall and a few MB, not a limit a healthy console meets."""
KEEPALIVE_IDLE_S = 1
KEEPALIVE_INTVL_S = 1
KEEPALIVE_CNT = 3
"""TCP keepalive of a socket without ZMTP heartbeats: a dead host is dropped after ~4 s."""


def _common(sock: zmq.Socket[Any], kind: int, max_msg: int, hwm: int,  # noqa: PLR0917
            heartbeat_ivl_ms: int, heartbeat_timeout_ms: int, tos: int = 0) -> None:
    if tos:  # before bind/connect: libzmq applies it to each connection it makes
        sock.setsockopt(zmq.TOS, tos)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, DEALER_RCVHWM if kind == zmq.DEALER else hwm)
    if kind in NO_ZMTP_HEARTBEAT:
        # libzmq 4.3.5 aborts the whole process when an engine whose input stopped
        # (receive queue full) and whose connection then failed writes: the failure is
        # only recorded (``_io_error``, the engine waits for the queue to drain), and the
        # next write asserts ("Assertion failed: !_io_error", stream_engine_base.cpp:310;
        # zeromq/libzmq#3937 and #4767 for its ``_input_stopped`` twin). Two writers
        # reach it: this side's PING timer, and the PONG answering a peer's PING that
        # was read before input stopped and is processed once the queue drains (a
        # subscriber stalled 1 s with 4 queued messages aborts on every run while its
        # publisher pings: tests/unit/test_socket_heartbeat.py). So neither end of a
        # stoppable receiver pings; TCP keepalive drops a dead host.
        heartbeat_ivl_ms = 0
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTVL_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_CNT)
    sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ivl_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, heartbeat_timeout_ms)
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)


def server_socket(ctx: zmq.Context[Any], kind: int, port: int, host: str, keys: ServerKeys,  # noqa: PLR0917
                  domain: Literal["surgeon", "observer"], max_msg: int, *,
                  hwm: int = DEFAULT_HWM, heartbeat_ivl_ms: int = 100,
                  heartbeat_timeout_ms: int = 300, tos: int = 0,
                  more_hosts: tuple[str, ...] = ()) -> zmq.Socket[Any]:
    """A bound CURVE server socket in ZAP ``domain``; ``port`` 0 binds a random port.

    ``tos``: the IP TOS byte of its connections (DSCP << 2). ``more_hosts``: further
    addresses (other network paths) bound on the same port as the first."""
    sock: zmq.Socket[Any] = ctx.socket(kind)
    try:
        _common(sock, kind, max_msg, hwm, heartbeat_ivl_ms, heartbeat_timeout_ms, tos)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        sock.bind(f"tcp://{host}:{port or '*'}")
        for more in more_hosts:
            host, port = more, port or bound_port(sock)
            sock.bind(f"tcp://{host}:{port}")
    except zmq.ZMQError as err:
        sock.close(0)
        if err.errno == zmq.EADDRINUSE:
            raise PortInUse(host, port) from None
        raise
    return sock


class PortInUse(LinkError):
    """A server port is taken: one line that names it, the config key, and the fix."""

    def __init__(self, host: str, port: int, key: str = "") -> None:
        self.host, self.port, self.key = host, port, key
        where = f"{host}:{port}" + (f" ({key})" if key else "")
        super().__init__(f"{where} is already in use: another robot node is probably "
                         "running; stop it, or give this one free ports in the [link] "
                         "section of its config")


def client_socket(ctx: zmq.Context[Any], kind: int, endpoint: str, keys: ClientKeys,
                  max_msg: int, *, hwm: int = DEFAULT_HWM, heartbeat_ivl_ms: int = 100,
                  heartbeat_timeout_ms: int = 300, tos: int = 0) -> zmq.Socket[Any]:
    """A CURVE client socket connected to ``endpoint``, verifying the robot's public key."""
    sock: zmq.Socket[Any] = ctx.socket(kind)
    try:
        _common(sock, kind, max_msg, hwm, heartbeat_ivl_ms, heartbeat_timeout_ms, tos)
        sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sock.connect(endpoint)
    except zmq.ZMQError:
        sock.close(0)
        raise
    return sock


def bound_port(sock: zmq.Socket[Any]) -> int:
    """The TCP port a bound socket actually listens on (after binding port 0)."""
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return int(endpoint.rsplit(":", 1)[1])
