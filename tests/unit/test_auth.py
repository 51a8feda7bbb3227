"""The ZAP authenticator on real CURVE sockets: it fails closed and names its users."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from telesurgery.errors import AuthError
from transport.auth import KEY_PROPERTY, start_authenticator
from transport.keys import ClientKeys, ServerKeys, install_public_key
from transport.sockets import bound_port, client_socket, server_socket

WAIT_MS = 3000
"""Generous: the machine is shared. A refused session never comes up however long we wait."""
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_SUCCEEDED)


class Server:
    """A CURVE PULL server, its monitor, and the clients that tried it (kept alive)."""

    def __init__(self, ctx: zmq.Context[Any], server_keys: ServerKeys, domain: Any) -> None:
        self.ctx = ctx
        self.sock = server_socket(ctx, zmq.PULL, 0, "127.0.0.1", server_keys, domain, 65536)
        self.monitor = self.sock.get_monitor_socket(HANDSHAKE_EVENTS)
        self.clients: list[zmq.Socket[Any]] = []

    def push(self, client: ClientKeys | None, timeout_ms: int = WAIT_MS) -> bool:
        """Connect (plaintext when ``client`` is None) and send once; False if never sent."""
        endpoint = f"tcp://127.0.0.1:{bound_port(self.sock)}"
        if client is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.connect(endpoint)
        else:
            sock = client_socket(self.ctx, zmq.PUSH, endpoint, client, 65536)
        self.clients.append(sock)
        sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
        try:
            sock.send(b"hello")
        except zmq.Again:
            return False
        return True

    def handshake_failed(self) -> bool:
        if not self.monitor.poll(WAIT_MS):
            raise TimeoutError("no handshake event")
        return recv_monitor_message(self.monitor)["event"] != zmq.EVENT_HANDSHAKE_SUCCEEDED


def stranger(keys: Path) -> ClientKeys:
    public, secret = zmq.curve_keypair()
    return ClientKeys(public, secret, ServerKeys.load(keys).public)


def test_no_authenticator_means_no_session(ctx: zmq.Context[Any], keys: Path) -> None:
    """ZAP_ENFORCE_DOMAIN: without it libzmq admits any CURVE key when no handler runs."""
    server = Server(ctx, ServerKeys.load(keys), "surgeon")
    assert not server.push(ClientKeys.load_surgeon(keys), timeout_ms=500)
    assert server.handshake_failed()
    assert not server.sock.poll(200)


def test_authorised_surgeon_gets_a_session_with_user_id(ctx: zmq.Context[Any],
                                                        keys: Path) -> None:
    with start_authenticator(ctx, ServerKeys.load(keys)) as auth:
        server = Server(ctx, ServerKeys.load(keys), "surgeon")
        assert server.push(ClientKeys.load_surgeon(keys))
        frame = server.sock.recv(copy=False)
        assert frame.bytes == b"hello"
        assert frame.get("User-Id") == "surgeon"
        assert auth.counters["accepted"] == 1


@pytest.mark.parametrize("case", [
    ("stranger", "surgeon", "rejected:unknown key"),
    ("stranger", "observer", "rejected:unknown key"),
    ("alice", "surgeon", "rejected:observer:alice may not command"),
    ("surgeon", "nosuchdomain", "rejected:unknown domain"),
])
def test_rejections(ctx: zmq.Context[Any], keys: Path, case: tuple[str, str, str],
                    caplog: pytest.LogCaptureFixture) -> None:
    who, domain, reason = case
    client = {"stranger": stranger(keys), "alice": ClientKeys.load_observer(keys, "alice"),
              "surgeon": ClientKeys.load_surgeon(keys)}[who]
    with caplog.at_level(logging.WARNING), start_authenticator(ctx, ServerKeys.load(keys)) as auth:
        server = Server(ctx, ServerKeys.load(keys), domain)
        assert not server.push(client, timeout_ms=500)
        assert server.handshake_failed()
        assert not server.sock.poll(200)
    assert auth.counters[reason] >= 1
    assert "rejected peer" in caplog.text


def test_plaintext_peer_gets_no_session(ctx: zmq.Context[Any], keys: Path) -> None:
    with start_authenticator(ctx, ServerKeys.load(keys)):
        server = Server(ctx, ServerKeys.load(keys), "surgeon")
        assert not server.push(None, timeout_ms=500)
        assert server.handshake_failed()
        assert not server.sock.poll(200)


def test_observer_domain_admits_observers_and_surgeon(ctx: zmq.Context[Any], keys: Path) -> None:
    with start_authenticator(ctx, ServerKeys.load(keys)):
        server = Server(ctx, ServerKeys.load(keys), "observer")
        assert server.push(ClientKeys.load_observer(keys, "alice"))
        assert server.push(ClientKeys.load_surgeon(keys))
        users = {server.sock.recv(copy=False).get("User-Id") for _ in range(2)}
        assert users == {"observer:alice", "surgeon"}


def test_reload_admits_new_key_and_fails_closed_without_folder(ctx: zmq.Context[Any],
                                                              keys: Path) -> None:
    newcomer = stranger(keys)
    pub_file = keys / "newcomer.key"
    pub_file.write_text(f'curve\n    public-key = "{newcomer.public.decode()}"\n')
    server_keys = ServerKeys.load(keys)
    with start_authenticator(ctx, server_keys) as auth:
        server = Server(ctx, server_keys, "observer")
        assert not server.push(newcomer, timeout_ms=500)
        install_public_key(keys, pub_file, "observer")
        auth.reload()
        assert server.push(newcomer)
        assert server.sock.recv(copy=False).get("User-Id") == "observer:newcomer"

        shutil.rmtree(keys / "robot/authorized")
        auth.reload()
        with pytest.raises(AuthError):
            ServerKeys.load(keys)  # a restart would refuse; the running robot admits no one
        server = Server(ctx, server_keys, "surgeon")
        assert not server.push(ClientKeys.load_surgeon(keys), timeout_ms=500)
        assert server.handshake_failed()


def test_second_authenticator_in_one_context_is_refused(ctx: zmq.Context[Any],
                                                        keys: Path) -> None:
    with start_authenticator(ctx, ServerKeys.load(keys)), pytest.raises(AuthError):
        start_authenticator(ctx, ServerKeys.load(keys))


def test_reload_revokes_a_live_surgeon_session_message_by_message(ctx: zmq.Context[Any],
                                                                  keys: Path) -> None:
    """Issue 12.7: a deleted surgeon key kept its session until restart."""
    server_keys = ServerKeys.load(keys)
    with start_authenticator(ctx, server_keys) as auth:
        server = Server(ctx, server_keys, "surgeon")
        assert server.push(ClientKeys.load_surgeon(keys))
        frame = server.sock.recv(copy=False)
        key = frame.get(KEY_PROPERTY)
        assert key == ClientKeys.load_surgeon(keys).public.decode()
        assert auth.allows(key) and not auth.revoked.is_set()

        unrelated = auth.reload()  # nothing removed: nothing revoked
        assert unrelated.revoked == () and auth.allows(key)

        (keys / "robot/authorized/surgeon/surgeon.key").unlink()
        result = auth.reload()
        assert result.revoked == ("surgeon",) and "revoked live sessions" in result.describe()
        assert auth.revoked.is_set()
        assert not auth.allows(key)  # what RobotLink asks about every message
        assert not server.push(ClientKeys.load_surgeon(keys), timeout_ms=500)  # no new one


def test_robot_link_drops_messages_of_a_revoked_session(keys: Path) -> None:
    from transport.config import LinkConfig
    from transport.link import ConsoleLink, RobotLink
    from transport.schema import Command

    cfg = LinkConfig(host="127.0.0.1", keys_dir=keys, command_port=0, control_port=0,
                     telemetry_port=0, video_port=0)
    robot = RobotLink(cfg, ServerKeys.load(keys))
    try:
        ports = robot.endpoints
        console_cfg = LinkConfig(host="127.0.0.1", keys_dir=keys,
                                 command_port=ports["command"], control_port=ports["control"],
                                 telemetry_port=ports["telemetry"], video_port=ports["video"])
        console = ConsoleLink(console_cfg, ClientKeys.load_surgeon(keys))
        try:
            def send_and_poll(seq: int) -> list[object]:
                """Send (again, while the session comes up) until the robot reads one."""
                deadline = time.monotonic() + 5
                got: list[object] = []
                while not got and time.monotonic() < deadline:
                    console.send_command(Command(
                        seq=seq, t_send_ns=time.monotonic_ns(), position=(0.0, 0.0, 0.1),
                        orientation=(1.0, 0.0, 0.0, 0.0), grip=0.0, clutch=False,
                        operator_present=True))
                    got = [i.msg for i in robot.poll(100)]
                return got

            assert send_and_poll(1)
            (keys / "robot/authorized/surgeon/surgeon.key").unlink()
            robot.auth.reload()
            assert send_and_poll(2) == []
            assert robot.counters["command_schema_error"] >= 1
        finally:
            console.close()
    finally:
        robot.close()
