"""RobotLink and ConsoleLink over real CurveZMQ sockets on loopback."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from telesurgery.errors import AuthError, ConfigError, LinkError, LinkTimeout, SchemaError
from transport.config import LinkConfig
from transport.keys import ClientKeys, ServerKeys
from transport.link import ConsoleLink, Inbound, RobotLink
from transport.schema import (
    Command,
    ControlReply,
    ControlRequest,
    KeyframeRequest,
    LinkReport,
    Ping,
    Pong,
    Pose,
    SafetyEvent,
    Telemetry,
    encode,
)
from transport.sockets import client_socket

WAIT_S = 5.0
"""Upper bound for anything to arrive on a busy machine; tests assert on logic, not speed."""
INTRUDER_SEQ = 10**9


def command(seq: int) -> Command:
    return Command(seq=seq, t_send_ns=time.monotonic_ns(), position=(0.3, 0.0, 0.2),
                   orientation=(1.0, 0.0, 0.0, 0.0), grip=0.0, clutch=False,
                   operator_present=True)


@pytest.fixture
def robot(keys: Path) -> Iterator[RobotLink]:
    cfg = LinkConfig(command_port=0, control_port=0, telemetry_port=0, video_port=0,
                     keys_dir=keys)
    with RobotLink(cfg, ServerKeys.load(keys)) as link:
        yield link


def console_cfg(robot: RobotLink, **kw: Any) -> LinkConfig:
    ports = {f"{name}_port": port for name, port in robot.endpoints.items()}
    return LinkConfig(**ports, **kw)


@pytest.fixture
def console(robot: RobotLink, keys: Path) -> Iterator[ConsoleLink]:
    with ConsoleLink(console_cfg(robot), ClientKeys.load_surgeon(keys)) as link:
        yield link


def poll_until(link: RobotLink | ConsoleLink, want: type, step: Any = None) -> Inbound:
    """Poll (calling ``step`` each round, e.g. to send) until a ``want`` arrives."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if step is not None:
            step()
        for item in link.poll(10):
            if isinstance(item.msg, want):
                return item
    raise TimeoutError(f"no {want.__name__} within {WAIT_S} s")


def connect(robot: RobotLink, console: ConsoleLink) -> int:
    """Send commands until one is delivered (the CURVE handshake takes a moment), then
    ping until the control socket's own handshake is done too."""
    seq = iter(range(1, 10**6))
    item = poll_until(robot, Command, lambda: console.send_command(command(next(seq))))
    pings = iter(range(1, 10**6))
    poll_until(robot, Ping, lambda: console.send_ping(Ping(seq=next(pings), t1_ns=0)))
    return int(item.msg.seq)


def test_surgeon_commands_are_delivered(robot: RobotLink, console: ConsoleLink) -> None:
    first = connect(robot, console)
    for seq in range(first + 1, first + 6):
        assert console.send_command(command(seq))
        item = poll_until(robot, Command)
        assert item.msg.seq == seq and item.user == "surgeon"
    assert robot.counters["command_received"] >= 6
    arrivals = robot.command_arrivals()
    assert [a.seq for a in arrivals][-5:] == list(range(first + 1, first + 6))


def test_intruders_never_deliver_commands(robot: RobotLink, console: ConsoleLink, keys: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    cfg = console_cfg(robot)
    public, secret = zmq.curve_keypair()
    stranger = ClientKeys(public, secret, ServerKeys.load(keys).public)
    observer = ClientKeys.load_observer(keys, "alice")
    ctx: zmq.Context[Any] = zmq.Context()
    endpoint = f"tcp://127.0.0.1:{cfg.command_port}"
    intruders = [client_socket(ctx, zmq.PUSH, endpoint, k, 65536) for k in (stranger, observer)]
    plain = ctx.socket(zmq.PUSH)
    plain.connect(endpoint)
    intruders.append(plain)
    observer_control = ConsoleLink(cfg, observer, ctx=ctx)  # an observer posing as a surgeon
    try:
        with caplog.at_level(logging.WARNING):
            delivered: list[int] = []
            for i in range(200):
                for sock in intruders:
                    with contextlib.suppress(zmq.Again):  # no session to send on: good
                        sock.send(encode(command(INTRUDER_SEQ + i)), zmq.NOBLOCK)
                observer_control.send_command(command(INTRUDER_SEQ + i))
                console.send_command(command(i + 1))
                delivered += [it.msg.seq for it in robot.poll(5) if isinstance(it.msg, Command)]
                delivered += [a.seq for a in robot.command_arrivals()]
            with pytest.raises(LinkTimeout):
                observer_control.request("engage", timeout_ms=300)
            robot.poll(200)
        assert not [s for s in delivered if s >= INTRUDER_SEQ]
        assert [s for s in delivered if s < INTRUDER_SEQ], "the surgeon got nothing through"
        assert robot.auth.counters["rejected:unknown key"] >= 1
        assert robot.auth.counters["rejected:observer:alice may not command"] >= 1
        assert robot.counters["handshake_failed"] >= 3
        assert "rejected peer" in caplog.text and "no session for a peer on command" in caplog.text
    finally:
        observer_control.close()
        for sock in intruders:
            sock.close(0)
        ctx.term()


def test_stalled_receiver_gets_newest_command(robot: RobotLink, console: ConsoleLink) -> None:
    connect(robot, console)
    robot.command_arrivals()
    sent: list[int] = []

    def stream() -> None:  # the console link is used by this thread only while it runs
        next_t = time.monotonic()
        for seq in range(1000, 1500):
            if console.send_command(command(seq)):
                sent.append(seq)
            next_t += 0.001
            time.sleep(max(0.0, next_t - time.monotonic()))

    sender = threading.Thread(target=stream)
    sender.start()
    time.sleep(0.5)  # the robot's loop stalls while the console keeps sending at 1 kHz
    sender.join()
    time.sleep(0.2)
    items = [it for it in robot.poll(100) if isinstance(it.msg, Command)]
    assert len(items) == 1, "one command per poll: the newest"
    assert items[0].msg.seq == sent[-1]
    assert [a.seq for a in robot.command_arrivals()] == sent  # per-message accounting kept
    assert robot.counters["command_superseded"] >= len(sent) - 1


def test_malformed_commands_are_counted_and_link_survives(
        robot: RobotLink, console: ConsoleLink, keys: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    first = connect(robot, console)
    raw = client_socket(zmq.Context.instance(), zmq.PUSH,
                        f"tcp://127.0.0.1:{robot.endpoints['command']}",
                        ClientKeys.load_surgeon(keys), 65536)
    try:
        raw.setsockopt(zmq.SNDTIMEO, int(WAIT_S * 1000))
        raw.send(b"\xc1 not msgpack")
        raw.send(encode(Ping(seq=1, t1_ns=0)))
        raw.send_multipart([encode(command(first + 1)), b"extra"])
        raw.send(encode(command(first + 1))[:-3])
        with caplog.at_level(logging.WARNING):
            deadline = time.monotonic() + WAIT_S
            while robot.counters["command_schema_error"] < 4 and time.monotonic() < deadline:
                assert not [it for it in robot.poll(50) if isinstance(it.msg, Command)]
        assert robot.counters["command_schema_error"] == 4
        assert "dropped bad command message" in caplog.text
        assert console.send_command(command(first + 2))
        assert poll_until(robot, Command).msg.seq == first + 2
    finally:
        raw.close(0)


def test_oversized_message_is_refused(robot: RobotLink, console: ConsoleLink, keys: Path) -> None:
    """MAXMSGSIZE: the robot drops the connection instead of buffering a huge message."""
    first = connect(robot, console)
    raw = client_socket(zmq.Context.instance(), zmq.PUSH,
                        f"tcp://127.0.0.1:{robot.endpoints['command']}",
                        ClientKeys.load_surgeon(keys), 10**6)
    try:
        raw.setsockopt(zmq.SNDTIMEO, int(WAIT_S * 1000))
        raw.send(b"\x00" * 100_000)
        deadline = time.monotonic() + WAIT_S
        while robot.counters["command_disconnects"] < 1:
            assert not [i for i in robot.poll(20) if isinstance(i.msg, Command)]
            assert time.monotonic() < deadline
        assert robot.counters["command_schema_error"] == 0  # never even reached the decoder
        assert console.send_command(command(first + 1))
        assert poll_until(robot, Command).msg.seq == first + 1
    finally:
        raw.close(0)


def test_control_request_reply_and_late_reply_ignored(robot: RobotLink,
                                                      console: ConsoleLink) -> None:
    connect(robot, console)
    with pytest.raises(LinkTimeout, match="arm"):
        console.request("arm", timeout_ms=200)  # the robot is not polling
    late = poll_until(robot, ControlRequest)
    assert late.msg.op == "arm" and late.user == "surgeon"
    assert robot.reply(late.peer, ControlReply(req_id=late.msg.req_id, ok=True, state="ready",
                                               reason="armed"))

    def serve() -> None:  # the robot link belongs to this thread until joined
        item = poll_until(robot, ControlRequest)
        robot.reply(item.peer, ControlReply(req_id=item.msg.req_id, ok=True,
                                            state="following", reason="engaged"))

    server = threading.Thread(target=serve)
    server.start()
    reply = console.request("engage", timeout_ms=int(WAIT_S * 1000))
    server.join()
    assert reply.reason == "engaged" and reply.req_id == late.msg.req_id + 1
    assert console.counters["late_reply"] == 1


def test_bad_control_request_is_a_schema_error(console: ConsoleLink) -> None:
    with pytest.raises(SchemaError, match="op"):
        console.request("fly")


def test_pings_are_answered_both_ways(robot: RobotLink, console: ConsoleLink) -> None:
    # The console is unknown until it speaks.
    assert not robot.send_ping(Ping(seq=1, t1_ns=time.monotonic_ns()))
    t1 = time.monotonic_ns()
    ping = poll_until(robot, Ping, lambda: console.send_ping(Ping(seq=1, t1_ns=t1)))
    assert robot.console_peer == ping.peer
    pong = poll_until(console, Pong)
    assert pong.msg.t1_ns == t1 and t1 <= pong.msg.t2_ns <= pong.msg.t3_ns <= pong.recv_ns

    assert robot.send_ping(Ping(seq=2, t1_ns=time.monotonic_ns()))
    assert poll_until(console, Ping).user == "robot"
    back = poll_until(robot, Pong)
    assert back.msg.t2_ns <= back.msg.t3_ns <= back.recv_ns


def test_keyframe_request_reaches_robot(robot: RobotLink, console: ConsoleLink) -> None:
    req = KeyframeRequest(seq=1, last_frame_id=41, reason="gap")
    assert poll_until(robot, KeyframeRequest, lambda: console.send_keyframe_request(req)).msg == req


def telemetry(seq: int) -> Telemetry:
    return Telemetry(seq=seq, t_ns=0, state="ready", reason="", measured_js=(0.0,),
                     setpoint_js=(0.0,), measured_cp=Pose(), setpoint_cp=Pose(),
                     link=LinkReport(), scale=1.0, estop=False)


def test_observer_watches_but_cannot_command(robot: RobotLink, keys: Path) -> None:
    cfg = console_cfg(robot)
    with ConsoleLink(cfg, ClientKeys.load_observer(keys, "alice"), observer=True) as watcher:
        got = poll_until(watcher, Telemetry, lambda: robot.publish_telemetry(telemetry(1)))
        assert got.msg.state == "ready"
        event = SafetyEvent(seq=1, t_ns=0, code="test", state_from="ready", state_to="hold")
        assert poll_until(watcher, SafetyEvent, lambda: robot.publish_event(event)).msg == event
        with pytest.raises(AuthError):
            watcher.send_command(command(1))
        with pytest.raises(AuthError):
            watcher.request("engage")


def test_unknown_key_gets_no_telemetry(robot: RobotLink, keys: Path) -> None:
    public, secret = zmq.curve_keypair()
    stranger = ClientKeys(public, secret, ServerKeys.load(keys).public)
    with ConsoleLink(console_cfg(robot), stranger, observer=True) as watcher:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            robot.publish_telemetry(telemetry(1))
            assert not watcher.poll(20)
            robot.poll(0)
    assert robot.auth.counters["rejected:unknown key"] >= 1


def test_console_refuses_a_fake_robot(robot: RobotLink, keys: Path) -> None:
    """Mutual authentication: a console expecting another server key gets no session."""
    real = ClientKeys.load_surgeon(keys)
    wrong_server = ClientKeys(real.public, real.secret, zmq.curve_keypair()[0])
    with ConsoleLink(console_cfg(robot), wrong_server) as fooled:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            fooled.send_command(command(1))
            assert not [i for i in robot.poll(20) if isinstance(i.msg, Command)]
        assert fooled.counters["command_send_drops"] > 0


def test_config_rejects_bad_ports() -> None:
    with pytest.raises(ConfigError, match="command_port"):
        LinkConfig(command_port=70000)
    with pytest.raises(ConfigError, match="distinct"):
        dataclasses.replace(LinkConfig(), control_port=47100)


class FreezableProxy:
    """A TCP forwarder that can go silent without closing, like a cut cable."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._accept)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            if self.frozen.is_set():
                time.sleep(0.01)
                continue
            try:
                down, _ = self.listener.accept()
            except TimeoutError:
                continue
            up = socket.create_connection(("127.0.0.1", self.target_port))
            for src, dst in ((down, up), (up, down)):
                t = threading.Thread(target=self._pump, args=(src, dst))
                t.start()
                self.threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.05)
        with contextlib.suppress(OSError):
            while not self.stopped.is_set():
                if self.frozen.is_set():
                    time.sleep(0.01)
                    continue
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                dst.sendall(data)
        src.close()
        dst.close()

    def close(self) -> None:
        self.stopped.set()
        for t in self.threads:
            t.join()
        self.listener.close()


def test_heartbeat_notices_silent_peer_and_no_backlog_is_replayed(robot: RobotLink,
                                                                 keys: Path) -> None:
    proxy = FreezableProxy(robot.endpoints["command"])
    cfg = dataclasses.replace(console_cfg(robot), command_port=proxy.port)
    try:
        with ConsoleLink(cfg, ClientKeys.load_surgeon(keys)) as console:
            connect(robot, console)
            proxy.frozen.set()
            # TCP alone would not notice for minutes; the heartbeat times out in ~300 ms and
            # then the console refuses to queue (IMMEDIATE) instead of building a backlog.
            deadline = time.monotonic() + WAIT_S
            outage_seq = 10_000
            while console.send_command(command(outage_seq)):
                outage_seq += 1
                robot.poll(1)
                assert time.monotonic() < deadline, "the console never noticed the dead link"
            while robot.counters["command_disconnects"] < 1:
                robot.poll(10)
                assert time.monotonic() < deadline, "the robot never noticed the dead link"
            robot.command_arrivals()
            proxy.frozen.clear()
            fresh = iter(range(50_000, 10**6))
            poll_until(robot, Command, lambda: console.send_command(command(next(fresh))))
            robot.poll(200)
            late = [a.seq for a in robot.command_arrivals() if a.seq < 50_000]
            assert late == [], "commands from the outage were replayed after it"
    finally:
        proxy.close()


def test_reply_to_a_gone_console_fails_loudly(robot: RobotLink) -> None:
    reply = ControlReply(req_id=1, ok=True, state="ready", reason="armed")
    assert not robot.reply(b"nobody", reply)
    assert robot.counters["reply_send_failed"] == 1


@pytest.mark.slow
def test_two_process_selftest_passes() -> None:
    """The real subprocess self-test: intruders get nothing, the surgeon gets everything."""
    from transport.selftest import check, run_selftest
    result = run_selftest(count=500)
    assert check(result, 500) == []
    assert result["intruders_delivered"] == 0 and result["delivered"] == result["sent"]


@pytest.mark.slow
def test_link_bench_reports_both_paths() -> None:
    from telesurgery.bench.link import run
    r = run(seconds=0.5)
    assert r["delivered"] == r["sent"] > 0 and r["baseline_delivered"] == r["baseline_sent"] > 0
    assert r["ratio_p99"] == r["p99_us"] / r["baseline_p99_us"]
    assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"]


def test_a_taken_port_is_one_sentence_naming_it(robot: RobotLink, keys: Path) -> None:
    """Issue 19.2: a second robot on the same ports says which port and what to do."""
    taken = robot.endpoints["control"]
    cfg = LinkConfig(command_port=0, control_port=taken, telemetry_port=0, video_port=0,
                     keys_dir=keys)
    with pytest.raises(LinkError) as err:
        RobotLink(cfg, ServerKeys.load(keys))
    msg = str(err.value)
    assert f"127.0.0.1:{taken} (link.control_port) is already in use" in msg
    assert "[link]" in msg and "\n" not in msg


def _selftest(seconds: float) -> tuple[subprocess.Popen[str], psutil.Process]:
    """``telesurgery selftest`` as a real process, once its robot-side child runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "telesurgery.cli", "selftest", "--count",
         str(int(seconds * 1000))], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        # Connected to its child: the schedule follows and both are streaming.
        if any(c.status == psutil.CONN_ESTABLISHED for c in parent.net_connections("tcp")):
            time.sleep(1.0)
            return proc, parent
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the self-test never connected to its robot-side child")


def _no_descendants_left(children: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(children, timeout=10.0)
    orphans = [c.cmdline() for c in alive]
    for child in alive:  # a red run must not leave them behind either
        child.kill()
    assert orphans == [], f"orphaned: {orphans}"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "ctrl-c", "sigkill"])
def test_selftest_stops_in_one_line_and_leaves_no_child(how: str) -> None:
    """Issue 19.2: Ctrl-C or SIGTERM: one line, no traceback; any kill: no orphan, ever."""
    proc, parent = _selftest(60.0)
    children = parent.children(recursive=True)
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # a terminal signals the whole foreground group
    else:
        proc.kill()
    out, _ = proc.communicate(timeout=30)
    _no_descendants_left(children)
    if how == "sigkill":
        return
    assert proc.returncode == 130
    assert "Traceback" not in out and "Error" not in out, out
    said = "SIGTERM" if how == "sigterm" else "Ctrl-C"
    last = out.strip().splitlines()[-1]
    assert last == f"selftest interrupted ({said}); the robot-side process is stopped"
