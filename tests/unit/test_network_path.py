"""The robot's command path with real CurveZMQ links: the session and the gate's history.

``NetworkThread`` runs as in the node (it admits control requests and grants the
session); real ``ConsoleLink``s holding the surgeon key talk to it. ``ControlStandIn``
stands in for the node's control thread with what of it these tests are about: it
owns the real ``CommandPort`` (binds it behind the network thread's authenticator,
waits on it, judges every command with its ``CommandIntake``), hands each period's
requests to ``CommandPort.on_requests`` before answering them, as
``ControlLoop._take_requests`` does, and answers every request with ok (what the
supervisor says is not what these tests are about).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from robot_side.command_port import CommandPort
from robot_side.netio import Mailbox, NetworkThread
from telesurgery.errors import LinkTimeout
from transport.config import LinkConfig
from transport.keys import ClientKeys, ServerKeys, init_keys
from transport.link import ConsoleLink
from transport.schema import Command, ControlReply, LinkReport, Pose, Telemetry

MS = 1_000_000
WAIT_S = 10.0
HEARTBEAT_IVL_MS, HEARTBEAT_TIMEOUT_MS = 1000, 20_000
"""These tests are about who may use a live connection, not about ZMTP heartbeats: on a
machine loaded enough to starve a 300 ms heartbeat the holder's connection would drop,
and the takeover rule (rightly) let the second console in."""


def pump_until(pred: Callable[[], bool], what: str, pump: Callable[[], object]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        pump()
        if pred():
            return
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


class ControlStandIn(threading.Thread):
    """The control thread's part of the command path (see the module doc)."""

    def __init__(self, ctx: zmq.Context[Any], cfg: LinkConfig, keys: ServerKeys,
                 mb: Mailbox) -> None:
        super().__init__(daemon=True)
        self.ctx, self.cfg, self.keys, self.mb = ctx, cfg, keys, mb
        self.seen: list[tuple[int, str]] = []
        self.halt = threading.Event()
        self.ready = threading.Event()
        self.port: CommandPort | None = None

    def run(self) -> None:
        mb = self.mb
        with CommandPort(self.ctx, self.cfg, self.keys, age_limit_ns=100 * MS,
                         loss_window_ns=1000 * MS, alerts=mb.alerts) as port:
            port.offset_ns = lambda: mb.clock.offset_ns
            self.port = port
            self.ready.set()
            while not self.halt.is_set():
                port.wait_until(time.monotonic_ns() + 2 * MS)
                mb.command = port.sample
                requests = mb.take_requests()
                port.on_requests(requests)
                for r in requests:
                    self.seen.append((r.req.req_id, r.req.op))
                    mb.replies.append((r.peer, ControlReply(
                        req_id=r.req.req_id, ok=True, state="ready", reason=r.req.op)))


Net = tuple[NetworkThread, ControlStandIn, Path]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    keys = tmp_path / "keys"
    init_keys(keys)
    cfg = LinkConfig(command_port=0, control_port=0, telemetry_port=0, video_port=0,
                     keys_dir=keys, control_timeout_ms=2000,
                     heartbeat_ivl_ms=HEARTBEAT_IVL_MS, heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS)
    mb = Mailbox()
    ctx: zmq.Context[Any] = zmq.Context()
    thread = NetworkThread(cfg, ServerKeys.load(keys), mb, telemetry_hz=10.0, ctx=ctx)
    thread.start()
    assert thread.ready.wait(10.0) and thread.link is not None, thread.error
    control = ControlStandIn(ctx, cfg, ServerKeys.load(keys), mb)
    control.start()
    assert control.ready.wait(10.0)
    yield thread, control, keys
    control.halt.set()
    control.join(5.0)
    thread.stop()
    thread.join(5.0)
    ctx.destroy(linger=0)


def console(net: Net) -> ConsoleLink:
    thread, control, keys = net
    assert thread.link is not None and control.port is not None
    ports = {f"{name}_port": port for name, port in thread.link.endpoints.items()}
    return ConsoleLink(LinkConfig(**ports, command_port=control.port.port,
                                  control_timeout_ms=2000, heartbeat_ivl_ms=HEARTBEAT_IVL_MS,
                                  heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS),
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


def intake_count(control: ControlStandIn, verdict: str) -> int:
    assert control.port is not None
    return control.port.intake.counters[verdict]


def test_the_gate_history_resets_only_on_arm(net: Net) -> None:
    """Issue 12.10(b): after an engage through the network path an older seq is a replay."""
    thread, control, _ = net
    mb = thread.mailbox
    with console(net) as link:
        assert request(link, "arm").ok and link.session is not None
        seqs = iter(range(1000, 10**6))
        newest = 0

        def send() -> None:
            nonlocal newest
            newest = next(seqs)
            link.send_command(command(newest))
            link.poll(1)  # answers the robot's pings: its clock offset makes commands fresh

        pump_until(lambda: mb.command is not None and mb.command.cmd.seq > 1010,
                   "fresh commands", send)
        for op in ("engage", "set_scale", "disengage", "clear_fault", "disarm"):
            send()
            pump_until(lambda: mb.command is not None and mb.command.cmd.seq == newest,
                       "the newest command", lambda: link.poll(1))
            assert request(link, op).ok, op
            replays = intake_count(control, "replay")
            link.send_command(command(1005, x=0.5))  # older than anything accepted
            pump_until(lambda r=replays: intake_count(control, "replay") == r + 1,  # type: ignore[misc]
                       f"the replay after {op}", lambda: link.poll(1))
            assert mb.command is not None and mb.command.cmd.seq == newest, op
        # An arm with the session's token (a ROS "enable" sent twice) keeps the session
        # and its history: the old seq is still a replay.
        assert request(link, "arm").ok
        replays = intake_count(control, "replay")
        link.send_command(command(1005, x=0.5))
        pump_until(lambda: intake_count(control, "replay") == replays + 1,
                   "the replay after a repeated arm", lambda: link.poll(1))
        # Arm from a new run of the console (no token yet), and only that, starts the
        # history again.
        link.session = None
        assert request(link, "arm").ok and link.session is not None
        pump_until(lambda: mb.command is not None and mb.command.cmd.seq < 100,
                   "a new session's low seq to be fresh",
                   lambda: (link.send_command(command(7)), link.poll(1)))


def test_the_granted_token_is_in_force_before_the_reply_leaves(net: Net) -> None:
    """Granted in the network thread, enforced in the control thread: the first command
    with the new token, sent the moment the reply arrives, is fresh; from then on a
    command of the old session, or with no token, is not."""
    thread, control, _ = net
    mb = thread.mailbox
    with console(net) as link:
        assert request(link, "arm").ok
        old = link.session
        seqs = iter(range(1, 10**6))
        pump_until(lambda: mb.command is not None, "the first session's commands",
                   lambda: (link.send_command(command(next(seqs))), link.poll(1)))
        link.session = None  # a new run of the same console (no token yet): a new token
        reply = request(link, "arm")
        assert reply.ok and reply.session is not None and reply.session != old
        assert link.session == reply.session
        fresh = intake_count(control, "fresh")
        link.send_command(command(1))  # at once, once: a new run restarts its sequence
        pump_until(lambda: mb.command is not None and mb.command.cmd.seq == 1,
                   "the new session's first command", lambda: link.poll(1))
        assert mb.command is not None and mb.command.cmd.session == reply.session
        assert intake_count(control, "fresh") == fresh + 1
        for stale_token in (old, None):  # a replaying console, or one without a session
            foreign = intake_count(control, "foreign")
            link.session = stale_token
            link.send_command(command(10))
            link.session = reply.session
            pump_until(lambda f=foreign: intake_count(control, "foreign") == f + 1,  # type: ignore[misc]
                       f"the command with token {stale_token} refused", lambda: link.poll(1))
            assert mb.command is not None and mb.command.cmd.seq == 1
        assert intake_count(control, "fresh") == fresh + 1
        assert "command_foreign_session" in [a.code for a in mb.alerts]


def test_a_second_surgeon_console_neither_commands_nor_takes_the_pings(net: Net) -> None:
    thread, control, _ = net
    mb = thread.mailbox
    with console(net) as legit, console(net) as second:
        assert request(legit, "arm").ok
        assert thread.link is not None
        holder = thread.link.console_peer
        seqs = iter(range(1, 10**6))
        pump_until(lambda: mb.command is not None, "the holder's commands",
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
        assert [op for _, op in control.seen] == ["arm"], "only the holder's request"
        assert thread.link.console_peer == holder
        assert thread.clock.accepted > pongs, "the holder's pongs still measure the link"
        assert intake_count(control, "foreign") >= 5
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
    with console(net) as third:
        reply = request(third, "arm")
        assert reply.ok and reply.session is not None
        assert "session_takeover" in [a.code for a in mb.alerts]


def test_in_an_e_stop_a_second_console_is_told_latched_not_session_busy(net: Net) -> None:
    """The reply names the reason that stands whoever asks: in an e-stop no console may
    arm, engage or clear (only the local socket clears it). The guard's refusal is still
    audited as ``session_busy``; an op the latch does not refuse keeps that reason."""
    thread, control, _ = net
    mb = thread.mailbox
    with console(net) as legit, console(net) as second:
        assert request(legit, "arm").ok
        mb.telemetry = Telemetry(seq=1, t_ns=time.monotonic_ns(), state="estop",
                                 reason="estop_local", measured_js=(0.0,),
                                 setpoint_js=(0.0,), measured_cp=Pose(), setpoint_cp=Pose(),
                                 link=LinkReport(), scale=1.0, estop=True)
        for op in ("clear_fault", "engage", "arm"):
            reply = request(second, op)
            assert (reply.ok, reply.state, reply.reason) == (False, "estop", "latched"), op
        scale = request(second, "set_scale")
        assert (scale.ok, scale.reason) == (False, "session_busy")
    assert [op for _, op in control.seen] == ["arm"], "only the holder's request"
    assert "session_busy" in [a.code for a in mb.alerts]
