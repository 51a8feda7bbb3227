"""The command socket the control thread waits on: real CurveZMQ sockets, real clock.

The control loop waits for each period *on this socket*; these tests hold it to
what the loop relies on: it returns at its deadline whether or not a command
came, and it takes, gates and counts commands as they arrive.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zmq

from robot_side.command_port import CommandPort
from robot_side.pathfigures import PathRecorder
from transport.config import LinkConfig
from transport.keys import ClientKeys, ServerKeys, init_keys
from transport.link import ConsoleLink, RobotLink
from transport.schema import Command, encode
from transport.sockets import client_socket

WAIT_S = 20.0


def command(seq: int, t_send_ns: int | None = None) -> Command:
    now = time.monotonic_ns()
    return Command(seq=seq, t_send_ns=now if t_send_ns is None else t_send_ns,
                   position=(0.3, 0.0, 0.2), orientation=(1.0, 0.0, 0.0, 0.0), grip=0.0,
                   clutch=False, operator_present=True, t_sample_ns=now - 50_000)


def send_until_delivered(p: CommandPort, send: Callable[[Command], object]) -> int:
    """Send fresh commands until the CURVE session (set up in the background) delivers
    one to the port; returns the last sequence number sent."""
    deadline = time.monotonic() + WAIT_S
    seq = 0
    while p.sample is None and time.monotonic() < deadline:
        seq += 1
        send(command(seq))
        p.wait_until(time.monotonic_ns() + 5_000_000)
    assert p.sample is not None, "no command through the CURVE session"
    return seq


def pushing(sock: zmq.Socket[Any]) -> Callable[[Command], object]:
    """Send on a bare PUSH socket, dropping a command while it has no session yet."""
    def send(cmd: Command) -> None:
        with contextlib.suppress(zmq.Again):
            sock.send(encode(cmd), zmq.NOBLOCK)
    return send


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    init_keys(tmp_path / "keys", observers=["alice"])
    return tmp_path / "keys"


@pytest.fixture
def port(keys: Path) -> Iterator[tuple[CommandPort, LinkConfig]]:
    ctx: zmq.Context[Any] = zmq.Context()
    cfg = LinkConfig(host="127.0.0.1", command_port=0, control_port=0, telemetry_port=0,
                     video_port=0, keys_dir=keys)
    server = ServerKeys.load(keys)
    # The link (as the network thread runs it) starts the authenticator; no command socket.
    with RobotLink(cfg, server, ctx, video=False, command=False) as link:
        assert "command" not in link.endpoints
        p = CommandPort(ctx, cfg, server, age_limit_ns=200_000_000, loss_window_ns=10**9)
        p.offset_ns = lambda: 0  # one machine, one monotonic clock
        try:
            yield p, LinkConfig(host="127.0.0.1", command_port=p.port,
                                **{f"{c}_port": n for c, n in link.endpoints.items()},
                                keys_dir=keys)
        finally:
            p.close()
    ctx.destroy(linger=0)


def test_returns_at_its_deadline_with_no_command(port: tuple[CommandPort, LinkConfig]) -> None:
    p, _ = port
    for _ in range(5):
        until = time.monotonic_ns() + 3_000_000
        p.wait_until(until)
        # Never before the deadline, and it came back (a wait on arrivals would hang here).
        assert time.monotonic_ns() >= until
    assert p.sample is None and p.counters["command_received"] == 0


def test_takes_gates_and_counts_commands_as_they_arrive(
        port: tuple[CommandPort, LinkConfig], keys: Path) -> None:
    p, cfg = port
    arrivals: list[int] = []
    p.on_arrival = arrivals.append
    with ConsoleLink(cfg, ClientKeys.load_surgeon(keys)) as console:
        send_until_delivered(p, console.send_command)
        assert p.sample is not None
        first = p.sample.cmd.seq
        assert console.send_command(command(first + 1))
        end = time.monotonic() + WAIT_S
        while p.sample.cmd.seq != first + 1 and time.monotonic() < end:
            p.wait_until(time.monotonic_ns() + 5_000_000)
        assert p.sample.cmd.seq == first + 1
        # A replayed (older) command is taken but never becomes the sample.
        assert console.send_command(command(first))
        received = p.counters["command_received"]
        end = time.monotonic() + WAIT_S
        while p.counters["command_received"] == received and time.monotonic() < end:
            p.wait_until(time.monotonic_ns() + 5_000_000)
        assert p.sample.cmd.seq == first + 1
        assert p.gate.counters["replay"] == 1
    # Only fresh commands reach the phase lock and the latency figure (transport.intake).
    fresh = p.intake.counters["fresh"]
    assert p.counters["command_received"] == fresh + 1 >= 3
    assert len(arrivals) == fresh == p.latency.percentiles()["n"]
    # After arming (a new session), the console's restarted sequence is fresh again.
    p.reset()
    assert p.gate.last_seq is None and p.sample is None


def test_an_observer_key_never_commands(port: tuple[CommandPort, LinkConfig],
                                        keys: Path) -> None:
    p, cfg = port
    ctx: zmq.Context[Any] = zmq.Context()
    sock = client_socket(ctx, zmq.PUSH, f"tcp://127.0.0.1:{cfg.command_port}",
                         ClientKeys.load_observer(keys, "alice"), 65536)
    try:
        send = pushing(sock)  # no session to send on: good
        end = time.monotonic() + 2.0
        seq = 0
        while time.monotonic() < end:
            seq += 1
            send(command(seq))
            p.wait_until(time.monotonic_ns() + 5_000_000)
        assert p.sample is None and p.counters["command_received"] == 0
    finally:
        sock.close(0)
        ctx.term()


def test_path_is_recorded_once_per_command_with_the_robots_offset() -> None:
    rec = PathRecorder()
    cmd = command(7)
    assert cmd.t_sample_ns is not None
    rec.record(cmd, None, cmd.t_sample_ns + 1_000_000)
    assert rec.unmapped == 1 and rec.ring.n == 0  # no clock offset yet: not measurable
    rec.record(command(8), 0, time.monotonic_ns())
    later = command(9)
    assert later.t_sample_ns is not None
    rec.record(later, 2_000, later.t_sample_ns + 2_000 + 700_000,
               recv_ns=later.t_sample_ns + 2_000 + 400_000)
    rec.record(later, 2_000, later.t_sample_ns + 2_000 + 900_000)  # same command: once
    assert rec.ring.n == 2
    assert rec.ring.percentiles()["max_us"] >= 700
    assert rec.robot.percentiles()["max_us"] == 300  # receive -> written


def test_path_figures_are_kept_apart_per_command_session() -> None:
    """``bench path --ros``: the console's session and the ROS commander's, one ring."""
    rec = PathRecorder()
    for seq, (session, us) in enumerate([(11, 100), (11, 200), (22, 5000), (22, 7000),
                                         (22, 9000)], 1):
        cmd = replace(command(seq), session=session, t_sample_ns=1_000_000_000)
        rec.record(cmd, 0, 1_000_000_000 + us * 1000)
    first, second = rec.by_session()
    assert first["n"] == 2 and first["max_us"] == 200
    assert second["n"] == 3 and second["p50_us"] == 7000 and second["max_us"] == 9000
    assert rec.ring.percentiles()["n"] == 5


def test_libzmq_io_thread_takes_its_priority_from_the_context() -> None:
    """Set by context options, not inherited: this (normal-priority) thread creates it."""
    from robot_side.command_port import IO_THREAD_PRIORITY, link_context
    from telesurgery.pacer import realtime_permitted

    if not realtime_permitted(IO_THREAD_PRIORITY):
        pytest.skip("SCHED_FIFO is not permitted here")
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    before = set(os.listdir("/proc/self/task"))
    ctx = link_context(True)
    sock = ctx.socket(zmq.PUSH)  # the I/O thread starts with the first socket
    try:
        io: list[int] = []
        deadline = time.monotonic() + 5.0
        while not io and time.monotonic() < deadline:  # it names itself once running
            time.sleep(0.01)
            new = set(os.listdir("/proc/self/task")) - before
            io = [int(t) for t in new
                  if Path(f"/proc/self/task/{t}/comm").read_text().startswith("ZMQbg/IO")]
        assert io, "no libzmq I/O thread found"
        assert all(os.sched_getscheduler(t) == os.SCHED_FIFO for t in io)
        assert all(os.sched_getparam(t).sched_priority == IO_THREAD_PRIORITY for t in io)
    finally:
        sock.close(0)
        ctx.term()


def test_a_revoked_session_commands_no_more(keys: Path) -> None:
    """Issue 12.7: after a reload removed the surgeon key, the live session's commands
    are refused one by one (fails without the port's ``key_allowed`` hook-up)."""
    ctx: zmq.Context[Any] = zmq.Context()
    cfg = LinkConfig(host="127.0.0.1", command_port=0, control_port=0, telemetry_port=0,
                     video_port=0, keys_dir=keys)
    server = ServerKeys.load(keys)
    with RobotLink(cfg, server, ctx, video=False, command=False) as link:
        p = CommandPort(ctx, cfg, server, age_limit_ns=200_000_000, loss_window_ns=10**9)
        p.offset_ns = lambda: 0
        p.key_allowed = link.auth.allows  # as RobotNode.run wires it
        console_cfg = LinkConfig(host="127.0.0.1", command_port=p.port,
                                 **{f"{c}_port": n for c, n in link.endpoints.items()},
                                 keys_dir=keys)
        try:
            with ConsoleLink(console_cfg, ClientKeys.load_surgeon(keys)) as console:
                seq = send_until_delivered(p, console.send_command)
                assert p.sample is not None
                (keys / "robot" / "authorized" / "surgeon" / "surgeon.key").unlink()
                assert link.auth.reload().revoked == ("surgeon",)
                accepted = p.sample.cmd.seq
                errors = p.counters["command_schema_error"]
                end = time.monotonic() + 2.0
                while time.monotonic() < end:
                    seq += 1
                    console.send_command(command(seq))
                    p.wait_until(time.monotonic_ns() + 5_000_000)
                assert p.sample.cmd.seq == accepted
                assert p.counters["command_schema_error"] > errors
        finally:
            p.close()
    ctx.destroy(linger=0)


def test_a_multipart_message_is_refused_whole_and_the_drain_goes_on(
        port: tuple[CommandPort, LinkConfig], keys: Path) -> None:
    """The drain reads one frame at a time (no ``recv_multipart``): a message of several
    parts is still one bad message, none of its parts is judged as a command, and every
    command queued behind it is taken in order in the same drain."""
    p, cfg = port
    ctx: zmq.Context[Any] = zmq.Context()
    sock = client_socket(ctx, zmq.PUSH, f"tcp://127.0.0.1:{cfg.command_port}",
                         ClientKeys.load_surgeon(keys), 65536)
    try:
        seq = send_until_delivered(p, pushing(sock))  # the session is up
        assert p.sample is not None
        received, errors = p.counters["command_received"], p.counters["command_schema_error"]
        # Two valid commands as the parts of one message, then two good ones behind it.
        sock.send_multipart([encode(command(seq + 1)), encode(command(seq + 2))])
        sock.send(encode(command(seq + 3)))
        sock.send(encode(command(seq + 4)))
        end = time.monotonic() + WAIT_S
        while p.sample.cmd.seq != seq + 4 and time.monotonic() < end:
            p.wait_until(time.monotonic_ns() + 5_000_000)
        assert p.sample.cmd.seq == seq + 4
        assert p.counters["command_schema_error"] == errors + 1
        assert p.counters["command_received"] == received + 2  # seq+3, seq+4; no part
        assert p.gate.counters["replay"] == 0
    finally:
        sock.close(0)
        ctx.term()


def test_commands_queued_between_waits_or_during_one_are_taken_before_its_deadline(
        port: tuple[CommandPort, LinkConfig], keys: Path) -> None:
    """The wait drains only when the socket's descriptor signals (a quiet wait ends
    without a drain): a command queued while the loop was busy in its period, and one
    that arrives during the wait, are each taken on arrival, never left for the next
    period (fails when the wait ignores the descriptor's signal)."""
    p, cfg = port
    taken: list[int] = []
    p.on_arrival = taken.append
    with ConsoleLink(cfg, ClientKeys.load_surgeon(keys)) as console:
        seq = send_until_delivered(p, console.send_command)
        assert p.sample is not None
        for _ in range(3):  # quiet waits: settled, nothing to take
            p.wait_until(time.monotonic_ns() + 2_000_000)
        # Queued while the loop is "in its period" (not waiting on the socket).
        seq += 1
        assert console.send_command(command(seq))
        time.sleep(0.02)  # well inside the 200 ms age limit: fresh when taken
        until = time.monotonic_ns() + 3_000_000_000
        p.wait_until(until)
        assert p.sample.cmd.seq == seq and taken[-1] < until
        # Arriving during a wait: sent from another thread once the wait has begun.
        seq += 1
        sent = seq
        sender = threading.Timer(0.2, lambda: console.send_command(command(sent)))
        until = time.monotonic_ns() + 3_000_000_000
        sender.start()
        p.wait_until(until)
        sender.join()
        assert p.sample.cmd.seq == seq and taken[-1] < until


@pytest.mark.parametrize("flag", ["clutch", "operator_absent"])
def test_a_clutch_or_deadman_release_superseded_in_one_drain_still_reaches_the_core(
        port: tuple[CommandPort, LinkConfig], keys: Path, flag: str) -> None:
    """A one-command clutch press (or released deadman) followed by a normal command in
    the same drain: the sample the core gets is still clutched (operator absent). Without
    it the hand's move while clutched reached the core as a jump (soak: setpoint_jump)."""
    from dataclasses import replace

    p, cfg = port
    pressed = {"clutch": {"clutch": True}, "operator_absent": {"operator_present": False}}[flag]
    with ConsoleLink(cfg, ClientKeys.load_surgeon(keys)) as console:
        seq = send_until_delivered(p, console.send_command)
        for _ in range(50):  # until both land in one drain (the port counts it)
            superseded = p.counters["command_superseded"]
            seq += 2
            assert console.send_command(replace(command(seq - 1), **pressed))
            assert console.send_command(command(seq))
            time.sleep(0.05)  # both queued before the port looks
            p.wait_until(time.monotonic_ns() + 1_000_000)
            if p.counters["command_superseded"] > superseded:
                break
        assert p.counters["command_superseded"] > superseded, "never two in one drain"
        assert p.sample is not None and p.sample.cmd.seq == seq  # the newest, ...
        assert p.sample.cmd.clutch is (flag == "clutch")  # ... still clutched
        assert p.sample.cmd.operator_present is (flag != "operator_absent")
        assert p.counters["command_flags_kept"] >= 1
        # The next drain with a normal command alone: released again.
        seq += 1
        assert console.send_command(command(seq))
        end = time.monotonic() + WAIT_S
        while p.sample.cmd.seq != seq and time.monotonic() < end:
            p.wait_until(time.monotonic_ns() + 5_000_000)
        assert not p.sample.cmd.clutch and p.sample.cmd.operator_present


def test_a_burst_is_taken_up_to_the_deadline_and_the_rest_in_the_next_wait(
        port: tuple[CommandPort, LinkConfig], keys: Path) -> None:
    """A burst queued while the loop worked is judged up to the period's deadline, not
    past it (round 6: a burst taken whole started late periods); what is left is
    taken at the start of the next wait, every command judged (fails without the stop)."""
    p, cfg = port
    with ConsoleLink(cfg, ClientKeys.load_surgeon(keys)) as console:
        seq = send_until_delivered(p, console.send_command)
        p.wait_until(time.monotonic_ns() + 2_000_000)  # settled
        received = p.counters["command_received"]
        for _ in range(5):
            seq += 1
            assert console.send_command(command(seq))
        time.sleep(0.05)  # all five queued, fresh (200 ms age limit)
        p.take(stop_ns=time.monotonic_ns())  # the deadline has come: one, then stop
        assert p.counters["command_received"] == received + 1
        assert p.sample is not None and p.sample.cmd.seq == seq - 4
        end = time.monotonic() + WAIT_S  # the next periods' waits: the rest (as it lands)
        while p.counters["command_received"] < received + 5 and time.monotonic() < end:
            p.wait_until(time.monotonic_ns() + 2_000_000)
        assert p.counters["command_received"] == received + 5
        assert p.sample.cmd.seq == seq


def _queued(p: CommandPort, console: ConsoleLink, seqs: range) -> None:
    """Send ``seqs``; most reach the port's queue before it looks (not all need to)."""
    for seq in seqs:
        assert console.send_command(command(seq))
    time.sleep(0.02)  # with the waits, well inside the 200 ms age limit


def _wait_then_take(p: CommandPort, wait_ns: int) -> tuple[int, int]:
    """One period as the node runs it, with a guard covering the whole wait: the wait
    must take nothing; the period's first take then does. Returns (the wait's thread
    CPU, its deadline)."""
    received = p.counters["command_received"]
    cpu0 = time.thread_time_ns()
    until = time.monotonic_ns() + wait_ns
    p.wait_until(until)
    cpu = time.thread_time_ns() - cpu0
    assert time.monotonic_ns() >= until  # it still returns at its deadline ...
    assert p.counters["command_received"] == received  # ... taking nothing in the guard
    return cpu, until


def test_a_command_inside_the_take_guard_is_left_for_the_periods_first_take(
        port: tuple[CommandPort, LinkConfig], keys: Path) -> None:
    """Issue 11, round 7: the wait stops taking ``take_guard_ns`` before its deadline; a
    command signalled inside the guard stays queued (a take there ran past the deadline)
    and the wait sleeps the rest rather than spinning on the signalled descriptor; the
    period's first act takes it, stamped then (only ever older), while the phase lock
    is told when it arrived, not a whole period early. Fails without the guard (taken by
    the wait) and without the sleep (CPU of a spin for the whole wait)."""
    p, cfg = port
    arrivals: list[int] = []
    with ConsoleLink(cfg, ClientKeys.load_surgeon(keys)) as console:
        seq = send_until_delivered(p, console.send_command)
        p.wait_until(time.monotonic_ns() + 2_000_000)  # settled
        p.on_arrival = arrivals.append
        wait_ns = 100_000_000
        p.take_guard_ns = 2 * wait_ns  # the whole wait inside the guard: no race to win
        _queued(p, console, range(seq + 1, seq + 2))
        end = time.monotonic() + WAIT_S
        while p.sample.cmd.seq != seq + 1 and time.monotonic() < end:
            start = time.monotonic_ns()
            cpu, until = _wait_then_take(p, wait_ns)
            if p.settled:
                continue  # it had not landed yet: the next period
            assert cpu < wait_ns // 20, f"the wait spun: {cpu / 1e6:.1f} ms CPU in 100 ms"
            p.take(arrived_by_ns=until)  # the period's first act
            assert p.sample.cmd.seq == seq + 1 and p.sample.recv_ns >= until
            assert start <= arrivals[-1] <= until  # when it signalled, for the lock
        assert p.sample.cmd.seq == seq + 1


def test_a_wait_with_nothing_queued_inside_its_guard_still_returns_at_its_deadline(
        port: tuple[CommandPort, LinkConfig]) -> None:
    p, _ = port
    p.take_guard_ns = 10_000_000
    for _ in range(3):
        until = time.monotonic_ns() + 3_000_000
        p.wait_until(until)
        assert time.monotonic_ns() >= until
        if not p.settled:  # a new port has never looked: the period's take does
            p.take(arrived_by_ns=until)
        assert p.settled and p.sample is None


def test_commands_split_between_the_wait_and_the_period_are_all_judged_in_order(
        port: tuple[CommandPort, LinkConfig], keys: Path) -> None:
    """Some commands taken by the wait, the rest (inside the guard) by the period's first
    take: every one judged, in order, once; the newest is the sample."""
    p, cfg = port
    with ConsoleLink(cfg, ClientKeys.load_surgeon(keys)) as console:
        seq = send_until_delivered(p, console.send_command)
        p.wait_until(time.monotonic_ns() + 2_000_000)
        fresh = p.intake.counters["fresh"]
        _queued(p, console, range(seq + 1, seq + 4))
        p.take_guard_ns = 0
        end = time.monotonic() + WAIT_S
        while p.sample.cmd.seq != seq + 3 and time.monotonic() < end:
            p.wait_until(time.monotonic_ns() + 2_000_000)  # the waits take these three
        assert p.sample.cmd.seq == seq + 3
        p.take_guard_ns = 1_000_000_000
        _queued(p, console, range(seq + 4, seq + 7))
        end = time.monotonic() + WAIT_S
        while p.sample.cmd.seq != seq + 6 and time.monotonic() < end:
            _, until = _wait_then_take(p, 2_000_000)  # these three wait for the period
            p.take(arrived_by_ns=until)
        assert p.sample.cmd.seq == seq + 6
        assert p.intake.counters["fresh"] == fresh + 6
        assert p.gate.counters["replay"] == p.gate.counters.get("duplicate", 0) == 0


def test_the_node_uses_a_command_taken_at_the_period_start_in_that_period(
        port: tuple[CommandPort, LinkConfig], keys: Path) -> None:
    """``ControlLoop._wait_period`` (the real one, on a loop holding only what it reads):
    a command left by the wait's guard is taken after the tick and is the period's
    command. Fails when the node does not take it (it would wait a whole period)."""
    from robot_side.control_loop import ControlLoop
    from robot_side.gilwindow import ControlWindow
    from robot_side.lateperiods import LatePeriods
    from robot_side.netio import Mailbox
    from telesurgery.pacer import Pacer, PhaseLock

    p, cfg = port
    period = 20_000_000
    node = ControlLoop.__new__(ControlLoop)
    node.port, node._sched, node.mailbox = p, None, Mailbox()
    node.pacer, node.phase = Pacer(period), PhaseLock(period, 50_000)
    node.late, node.window = LatePeriods(period), ControlWindow(period)
    with ConsoleLink(cfg, ClientKeys.load_surgeon(keys)) as console:
        seq = send_until_delivered(p, console.send_command)
        p.wait_until(time.monotonic_ns() + 2_000_000)
        p.take_guard_ns = 2 * period  # every arrival is left for the period
        node.pacer.restart()
        _queued(p, console, range(seq + 1, seq + 2))
        end = time.monotonic() + WAIT_S
        command = None
        while (command is None or command.cmd.seq != seq + 1) and time.monotonic() < end:
            tick = node._wait_period()
            command = node.mailbox.command
        assert command is not None and command.cmd.seq == seq + 1
        assert command.recv_ns >= tick.actual_ns  # stamped in the period: never fresher
