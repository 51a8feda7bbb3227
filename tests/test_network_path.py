"""The robot's network thread with real CurveZMQ links: the session and the gate's history.

``NetworkThread`` runs as in the node; two real ``ConsoleLink``s holding the surgeon
key talk to it. The control thread is not here: ``Responder`` stands in for it and
answers every control request it is handed with ok (what the supervisor says is not
what these tests are about; the network thread's admission is).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from robot_side.netio import Mailbox, NetworkThread
from telesurgery.errors import LinkTimeout
from transport.config import LinkConfig
from transport.keys import ClientKeys, ServerKeys, init_keys
from transport.link import ConsoleLink
from transport.schema import Command, ControlReply

MS = 1_000_000
WAIT_S = 10.0


def wait_until(pred: Callable[[], bool], what: str, pump: Callable[[], object]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        pump()
        if pred():
            return
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


class Responder(threading.Thread):
    """Stand-in for the control thread: answers each admitted request with ok."""

    def __init__(self, mb: Mailbox) -> None:
        super().__init__(daemon=True)
        self.mb = mb
        self.seen: list[tuple[int, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.002):
            for r in self.mb.take_requests():
                self.seen.append((r.req.req_id, r.req.op))
                self.mb.replies.append((r.peer, ControlReply(
                    req_id=r.req.req_id, ok=True, state="ready", reason=r.req.op)))


@pytest.fixture
def net(tmp_path: Path) -> Iterator[tuple[NetworkThread, Responder, Path]]:
    keys = tmp_path / "keys"
    init_keys(keys)
    cfg = LinkConfig(command_port=0, control_port=0, telemetry_port=0, video_port=0,
                     keys_dir=keys, control_timeout_ms=2000)
    mb = Mailbox()
    thread = NetworkThread(cfg, ServerKeys.load(keys), mb, age_limit_ns=100 * MS,
                           loss_window_ns=1000 * MS, telemetry_hz=10.0)
    thread.start()
    assert thread.ready.wait(10.0) and thread.link is not None, thread.error
    responder = Responder(mb)
    responder.start()
    yield thread, responder, keys
    responder.halt.set()
    thread.stop()
    thread.join(5.0)


def console(thread: NetworkThread, keys: Path) -> ConsoleLink:
    assert thread.link is not None
    ports = {f"{name}_port": port for name, port in thread.link.endpoints.items()}
    return ConsoleLink(LinkConfig(**ports, control_timeout_ms=2000),
                       ClientKeys.load_surgeon(keys))


def request(link: ConsoleLink, op: str) -> ControlReply:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return link.request(op, timeout_ms=1000)
        except LinkTimeout:
            if time.monotonic() > deadline:
                raise


def command(seq: int, x: float = 0.3) -> Command:
    return Command(seq=seq, t_send_ns=time.monotonic_ns(), position=(x, 0.0, 0.2),
                   orientation=(1.0, 0.0, 0.0, 0.0), grip=0.0, clutch=False,
                   operator_present=True)


def test_the_gate_history_resets_only_on_arm(net: tuple[NetworkThread, Responder, Path]
                                             ) -> None:
    """Issue 12.10(b): after an engage through the network path an older seq is a replay."""
    thread, _, keys = net
    mb = thread.mailbox
    with console(thread, keys) as link:
        assert request(link, "arm").ok and link.session is not None
        seqs = iter(range(1000, 10**6))
        newest = 0

        def send() -> None:
            nonlocal newest
            newest = next(seqs)
            link.send_command(command(newest))
            link.poll(1)  # answers the robot's pings: its clock offset makes commands fresh

        wait_until(lambda: mb.command is not None and mb.command.cmd.seq > 1010,
                   "fresh commands", send)
        for op in ("engage", "set_scale", "disengage", "clear_fault", "disarm"):
            send()
            wait_until(lambda: mb.command is not None and mb.command.cmd.seq == newest,
                       "the newest command", lambda: link.poll(1))
            assert request(link, op).ok, op
            replays = thread.intake.counters["replay"]
            link.send_command(command(1005, x=0.5))  # older than anything accepted
            wait_until(lambda r=replays: thread.intake.counters["replay"] == r + 1,  # type: ignore[misc]
                       f"the replay after {op}", lambda: link.poll(1))
            assert mb.command is not None and mb.command.cmd.seq == newest, op
        # Arm, and only arm, starts the history again.
        assert request(link, "arm").ok
        wait_until(lambda: mb.command is not None and mb.command.cmd.seq < 100,
                   "a new session's low seq to be fresh",
                   lambda: (link.send_command(command(7)), link.poll(1)))


def test_a_second_surgeon_console_neither_commands_nor_takes_the_pings(
        net: tuple[NetworkThread, Responder, Path]) -> None:
    thread, responder, keys = net
    mb = thread.mailbox
    with console(thread, keys) as legit, console(thread, keys) as second:
        assert request(legit, "arm").ok
        assert thread.link is not None
        holder = thread.link.console_peer
        seqs = iter(range(1, 10**6))
        wait_until(lambda: mb.command is not None, "the holder's commands",
                   lambda: (legit.send_command(command(next(seqs))), legit.poll(1)))
        pongs = thread.clock.accepted
        for op in ("arm", "engage", "set_scale", "clear_fault", "disarm"):
            reply = request(second, op)
            assert not reply.ok and reply.reason == "session_busy", op
            assert reply.session is None
            second.send_command(command(10**9 + next(seqs), x=0.5))
            for _ in range(20):  # pings and pongs of its own
                second.poll(5)
                legit.send_command(command(next(seqs)))
                legit.poll(5)
        assert [op for _, op in responder.seen] == ["arm"], "only the holder's request"
        assert thread.link.console_peer == holder
        assert thread.clock.accepted > pongs, "the holder's pongs still measure the link"
        assert thread.intake.counters["foreign"] >= 5
        assert mb.command is not None and mb.command.cmd.seq < 10**9
        codes = [a.code for a in mb.alerts]
        assert "session_busy" in codes and "command_foreign_session" in codes
        # A replayed request id of the holder's session is refused too.
        assert request(legit, "engage").ok
        assert request(legit, "disengage").ok
        legit._req_id -= 2  # the same engage again (same id), as a replaying console would
        replay = request(legit, "engage")
        assert not replay.ok and replay.reason == "request_replayed"
        assert "request_replayed" in [a.code for a in mb.alerts]
    # Both gone: the next console takes over, audited.
    with console(thread, keys) as third:
        reply = request(third, "arm")
        assert reply.ok and reply.session is not None
        assert "session_takeover" in [a.code for a in mb.alerts]
