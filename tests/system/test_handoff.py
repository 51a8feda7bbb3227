"""Handoff between surgeon consoles on a real robot node (virtual arm), real CurveZMQ consoles.

Every frame the control loop hands to the arm is recorded where it is written
(``Manipulator.write`` of the virtual backend, wrapped: the real backend still
gets every frame), so "nothing from the old console executes after the grant"
is checked on what reached the arm, not on what the robot says about itself.
The old console keeps waving its master after it lost command; the new one
holds still and then moves: only the new one's motion may show in the frames.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import Surgeon, wave_x

from hil_tests.rig import SIM_FRAME_ROTATION, free_ports, toml_text
from robot_side.config import load_robot_config
from robot_side.manipulator.base import Frame, Targets
from robot_side.node import RobotNode
from safety.audit import read_records
from telesurgery.errors import LinkTimeout
from telesurgery.pacer import HELPER_PRIORITY, realtime_permitted
from transport.config import LinkConfig
from transport.keys import ClientKeys, add_observer, add_surgeon, init_keys
from transport.link import ConsoleLink
from transport.schema import ControlReply, ControlRequest, decode, encode
from transport.sockets import client_socket

WAIT_S = 15.0
MOVED_RAD = 1e-3
"""A joint target this far from the held pose is motion (the waves below are ~50x that)."""


def wait_for(pred: Callable[[], object], what: str | Callable[[], str],
             timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what if isinstance(what, str) else what()}")


@dataclass
class Rig:
    node: RobotNode
    keys: Path
    audit: Path
    link_cfg: LinkConfig
    written: list[tuple[int, tuple[Frame, ...]]]

    def surgeon(self, name: str | None = None) -> Surgeon:
        s = Surgeon(self.link_cfg, ClientKeys.load_surgeon(self.keys, name),
                    request_timeout_ms=2000)
        s.start()
        wait_for(lambda: s.tlm is not None, "telemetry")
        return s

    def targets_since(self, t_ns: int) -> list[tuple[int, tuple[float, ...]]]:
        return [(t, f.q) for t, frames in list(self.written) if t >= t_ns
                for f in frames if isinstance(f, Targets)]

    def first_motion(self, t_ns: int) -> int | None:
        """When the first target after ``t_ns`` moved away from the first one since."""
        targets = self.targets_since(t_ns)
        return next((t for t, q in targets if spread([targets[0][1], q]) > MOVED_RAD), None)

    def alerts(self) -> list[str]:
        return [str(r.fields.get("code")) for r in read_records(self.audit)
                if r.kind == "alert"]


def spread(qs: Sequence[tuple[float, ...]]) -> float:
    """The largest change of any joint target over ``qs``."""
    if not qs:
        return 0.0
    return max(max(q[j] for q in qs) - min(q[j] for q in qs) for j in range(len(qs[0])))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    keys = tmp_path / "keys"
    init_keys(keys)
    add_surgeon(keys, "bob")
    add_surgeon(keys, "mentor", mentor=True)
    add_observer(keys, "student")
    ports = dict(zip(("command", "control", "telemetry", "video"), free_ports(4), strict=True))
    conf = tmp_path / "robot.toml"
    conf.write_text(toml_text({
        "link": {"host": "127.0.0.1", "keys_dir": keys, "handoff_ms": 3000.0,
                 **{f"{c}_port": p for c, p in ports.items()}},
        "manipulator": {"backend": "virtual"},
        "page": {"enabled": False},
        "record": {"enabled": False},
        "control": {"rate_hz": 200.0, "realtime": False},
        "ros": {"backend": "none"},
        "video": {"width": 160, "height": 120, "fps": 5.0, "encoder": "libx264"},
        "safety.audit": {"path": tmp_path / "audit" / "robot.audit"},
        "safety.watchdog": {"require_video": False, "settle_ms": 100.0},
        "estop": {"socket": tmp_path / "estop.sock"},
        "observe": {"socket": tmp_path / "observe.sock"},
    }))
    cfg = load_robot_config(conf)
    node = RobotNode(cfg)
    written: list[tuple[int, tuple[Frame, ...]]] = []
    real_write = node.manipulator.write

    def write(frames: Sequence[Frame]) -> int:
        t = real_write(frames)
        written.append((time.monotonic_ns(), tuple(frames)))
        return t

    node.manipulator.write = write  # type: ignore[method-assign]
    runner = threading.Thread(target=node.run, daemon=True)
    runner.start()
    wait_for(lambda: node.port is not None, "the robot node")
    link_cfg = LinkConfig(host="127.0.0.1", keys_dir=keys, control_timeout_ms=2000,
                          **{f"{c}_port": p for c, p in ports.items()})
    yield Rig(node, keys, cfg.safety.audit.path, link_cfg, written)
    node.stop()
    runner.join(10.0)


def arm_and_engage(s: Surgeon) -> None:
    reply = s.ask("arm").result(5.0)
    assert reply is not None and reply.ok, reply
    s.engage()


def test_handoff_by_grant_old_console_never_moves_the_arm_again(rig: Rig) -> None:
    alice, bob = rig.surgeon(), rig.surgeon("bob")
    try:
        arm_and_engage(alice)
        alice.motion = wave_x
        alice.following(lambda: spread([q for _, q in rig.targets_since(0)]) > 10 * MOVED_RAD,
                        "alice moving the arm")
        assert alice.tlm is not None and alice.tlm.commander == "surgeon"
        asked = bob.ask("request_command", timeout_ms=5000)
        wait_for(lambda: alice.tlm is not None and alice.tlm.handoff_from == "bob",
                 "alice's HUD showing bob's request")
        assert alice.tlm is not None and alice.tlm.handoff_id is not None
        granted = alice.ask("grant", handoff=alice.tlm.handoff_id).result(5.0)
        assert granted is not None and granted.ok and granted.state == "ready", granted
        t_grant = time.monotonic_ns()
        got = asked.result(5.0)
        assert got is not None and got.ok and got.session is not None, got
        # Alice keeps waving; bob holds still: the arm must not move.
        time.sleep(0.5)
        assert rig.targets_since(t_grant) == [], "no motion between the grant and an engage"
        refused = alice.ask("engage").result(5.0)
        assert refused is not None and not refused.ok
        bob.engage()
        t_engaged = time.monotonic_ns()
        # Half a second of following (100 periods) with bob still and alice waving.
        bob.following(lambda: len(rig.targets_since(t_engaged)) >= 100, "bob following")
        still = [q for _, q in rig.targets_since(t_engaged)]
        assert spread(still) < MOVED_RAD, "alice's waving reached the arm"
        bob.motion = wave_x
        t_move = time.monotonic_ns()
        bob.following(lambda: rig.first_motion(t_move) is not None, "bob moving the arm")
        assert bob.tlm is not None and bob.tlm.commander == "bob"
        assert rig.node.port is not None
        assert rig.node.port.intake.counters["foreign"] > 0, "alice's commands counted"
        wait_for(lambda: {"handoff_requested", "handoff_granted"} <= set(rig.alerts()),
                 "the handoff in the audit")
    finally:
        alice.stop()
        bob.stop()


def test_mentor_takes_over_in_motion_and_must_engage_itself(rig: Rig) -> None:
    """Takeover in the middle of motion: the arm holds until the mentor engages; then
    it follows the mentor at once. Prints request -> the new surgeon's first motion."""
    bob, mentor = rig.surgeon("bob"), rig.surgeon("mentor")
    try:
        arm_and_engage(bob)
        bob.motion = mentor.motion = wave_x
        bob.following(lambda: spread([q for _, q in rig.targets_since(0)]) > 10 * MOVED_RAD,
                      "bob moving the arm")
        t_request = time.monotonic_ns()
        taken = mentor.ask("takeover").result(5.0)
        assert taken is not None and taken.ok and taken.session is not None, taken
        # A deliberate hold in the period that moved the session, not a watchdog trip later.
        assert taken.state == "ready", taken
        t_taken = time.monotonic_ns()
        assert mentor.tlm is not None
        t_engage = time.monotonic_ns()
        mentor.engage()  # as soon as the robot agrees: the link to the mentor settled
        held = [t for t, _ in rig.targets_since(t_taken) if t < t_engage]
        assert held == [], "the arm moved between the takeover and the mentor's engage"
        mentor.following(lambda: rig.first_motion(t_engage) is not None,
                         "the mentor moving the arm")
        first = rig.first_motion(t_engage)
        assert first is not None
        print(f"handoff request -> new surgeon's first executed motion (mentor takeover, "
              f"virtual arm, 200 Hz): {(first - t_request) / 1e6:.0f} ms "
              f"(takeover reply {(t_taken - t_request) / 1e6:.0f} ms)")
        wait_for(lambda: "handoff_takeover" in rig.alerts(), "the takeover in the audit")
        assert mentor.tlm is not None and mentor.tlm.commander == "mentor"
    finally:
        bob.stop()
        mentor.stop()


def test_plain_surgeon_takeover_and_observer_key_are_refused_and_audited(rig: Rig) -> None:
    alice, bob, mentor = rig.surgeon(), rig.surgeon("bob"), rig.surgeon("mentor")
    try:
        reply = alice.ask("arm").result(5.0)
        assert reply is not None and reply.ok
        refused = bob.ask("takeover").result(5.0)
        assert refused is not None and not refused.ok and refused.reason == "not_mentor"
        # Two requests: the first waits, the second is refused at once (first wins).
        first = bob.ask("request_command", timeout_ms=5000)
        wait_for(lambda: alice.tlm is not None and alice.tlm.handoff_from == "bob",
                 "bob's request pending")
        second = mentor.ask("request_command").result(5.0)
        assert second is not None and not second.ok and second.reason == "handoff_busy"
        assert alice.tlm is not None
        denied = alice.ask("deny", handoff=alice.tlm.handoff_id).result(5.0)
        assert denied is not None and denied.ok
        answer = first.result(5.0)
        assert answer is not None and not answer.ok and answer.reason == "handoff_denied"
        assert answer.session is None
        # An observer key on the control socket: refused at the handshake, audited.
        observer = ConsoleLink(rig.link_cfg, ClientKeys.load_observer(rig.keys, "student"))
        try:
            with pytest.raises(LinkTimeout):
                observer.request("request_command", timeout_ms=300)
            # Open until the robot saw its handshake (a loaded machine may take a while).
            wait_for(lambda: {"takeover_refused", "observer_command_refused", "handoff_refused",
                              "handoff_denied"} <= set(rig.alerts()),
                     lambda: f"the refusals in the audit (so far {rig.alerts()})")
        finally:
            observer.close()
        assert alice.tlm is not None and alice.tlm.commander == "surgeon"
    finally:
        alice.stop()
        bob.stop()
        mentor.stop()


def test_a_flood_of_refused_requests_cannot_trip_the_audit(rig: Rig) -> None:
    """The holder floods refused requests (engage with no command): the audit
    aggregates them per peer instead of queueing one record each."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = client_socket(ctx, zmq.DEALER, f"tcp://127.0.0.1:{rig.link_cfg.control_port}",
                         ClientKeys.load_surgeon(rig.keys), 16 * 1024, hwm=100_000)
    try:
        sock.send(encode(ControlRequest(req_id=1, op="arm")))
        token = None
        while token is None:
            assert sock.poll(5000)
            msg = decode(sock.recv())
            if isinstance(msg, ControlReply) and msg.req_id == 1:
                token = msg.session
        # Refused (engage with no command) and accepted (set_scale) requests alike.
        for i in range(2, 20_000):
            op, value = ("engage", None) if i % 2 else ("set_scale", 0.2)
            sock.send(encode(ControlRequest(req_id=i, op=op, value=value, session=token)))
        # Every request was answered: the flood went all the way through the loop.
        answered = 0
        while answered < 1000 and sock.poll(3000):
            sock.recv()
            answered += 1
        time.sleep(1.5)
        states = [r.fields.get("reason") for r in read_records(rig.audit)
                  if r.kind == "transition"]
        assert "audit_failure" not in states
        wait_for(lambda: {"control_refused_flood", "control_accepted_flood"}
                 <= set(rig.alerts()), "the aggregated records")
    finally:
        sock.close(0)
        ctx.destroy(0)


def test_a_scripted_mentor_console_takes_over_mid_motion(rig: Rig, tmp_path: Path) -> None:
    """The real console process (``telesurgery console``) with the mentor key and
    ``[session] takeover_after_s``: it takes command while alice moves the arm, the arm
    holds until its engage, then follows its scripted suturing. Prints the figure."""
    alice = rig.surgeon()
    try:
        arm_and_engage(alice)
        alice.motion = wave_x
        alice.following(lambda: spread([q for _, q in rig.targets_since(0)]) > 10 * MOVED_RAD,
                        "alice moving the arm")
        cfg = tmp_path / "mentor.toml"
        ports = {f"{c}_port": getattr(rig.link_cfg, f"{c}_port")
                 for c in ("command", "control", "telemetry", "video")}
        cfg.write_text(toml_text({
            "link": {"host": "127.0.0.1", "keys_dir": rig.keys, **ports},
            "loop": {"rate_hz": 200.0},
            "teleop": {"rate_hz": 200.0, "frame_rotation": list(SIM_FRAME_ROTATION)},
            "display": {"enabled": False, "status_view": False},
            "session": {"auto_engage": True, "surgeon": "mentor", "takeover_after_s": 1.0,
                        "reengage_after_s": 0.2},
        }))
        done = subprocess.run(
            [sys.executable, "-m", "telesurgery.cli", "console", "--config", str(cfg),
             "--seconds", "8", "--headless", "--summary", str(tmp_path / "mentor.json")],
            capture_output=True, text=True, timeout=90, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        if realtime_permitted(40):
            # What keeps the surgeon's commands punctual on a busy machine: the command
            # thread and libzmq's I/O thread (which encrypts every command) at SCHED_FIFO,
            # and the main thread (decode, HUD) too, so that it never sits preempted on
            # the GIL the command thread needs.
            fifo = json.loads((tmp_path / "mentor.json").read_text())["thread_fifo_priority"]
            assert fifo["console-command"] == 40 and fifo["ZMQbg/IO/0"] == 39, fifo
            assert fifo["MainThread"] == HELPER_PRIORITY, fifo
        records = list(read_records(rig.audit))
        seen = [(r.kind, r.fields.get("code") or r.fields.get("to")) for r in records
                if r.kind in ("alert", "transition")]
        t_takeover = next((int(str(r.fields["t_ns"])) for r in records if r.kind == "alert"
                           and r.fields.get("code") == "handoff_takeover"), None)
        assert t_takeover is not None, (seen, done.stderr[-2000:])
        t_engaged = next((int(str(r.fields["t_ns"])) for r in records
                          if r.kind == "transition" and r.fields.get("to") == "following"
                          and int(str(r.fields["t_ns"])) > t_takeover), None)
        assert t_engaged is not None, (seen, done.stderr[-2000:])
        # The network thread stamps the takeover when it admits it; the control thread
        # acts on it in its next period (its control record; the hold: a transition out
        # of following in that period). Alice is in command until then, so her last
        # frames may still be written. A loaded machine may have tripped alice's stream
        # before: the arm is then already held, and the takeover's period is the reference.
        t_taken = next(int(str(r.fields["t_ns"])) for r in records if r.kind == "control"
                       and r.fields.get("op") == "takeover" and r.fields.get("ok"))
        t_held = next((int(str(r.fields["t_ns"])) for r in records
                       if r.kind == "transition" and r.fields.get("from") in ("following", "hold")
                       and t_takeover <= int(str(r.fields["t_ns"])) <= t_taken), t_taken)
        assert t_held < t_engaged, (seen, t_held, t_engaged)
        held = [t for t, _ in rig.targets_since(t_held) if t < t_engaged]
        assert held == [], "the arm moved between the takeover and the mentor's engage"
        first = rig.first_motion(t_engaged)
        assert first is not None, ("the mentor's scripted motion never reached the arm",
                                   seen, len(rig.targets_since(t_engaged)),
                                   spread([q for _, q in rig.targets_since(t_engaged)]))
        print(f"handoff request -> new surgeon's first executed motion (scripted mentor "
              f"console process, takeover in motion): {(first - t_takeover) / 1e6:.0f} ms "
              f"(takeover -> engaged {(t_engaged - t_takeover) / 1e6:.0f} ms)")
    finally:
        alice.stop()


def test_a_waiting_command_request_keeps_the_requesters_hud_live(rig: Rig) -> None:
    """The console's own session thread asks for command: while its request waits for
    the grant, telemetry keeps reaching its shared state (the HUD), and the grant, when
    it comes, is taken from the same poll."""
    from operator_console.config import SessionConfig
    from operator_console.session import ConsoleShared, SessionThread

    alice = rig.surgeon()
    link = ConsoleLink(rig.link_cfg, ClientKeys.load_surgeon(rig.keys, "bob"))
    shared = ConsoleShared()
    bob = SessionThread(link, SessionConfig(auto_engage=False, surgeon="bob"), shared,
                        5_000_000)
    bob.start()
    try:
        reply = alice.ask("arm").result(5.0)
        assert reply is not None and reply.ok, reply
        wait_for(lambda: shared.telemetry is not None, "bob's telemetry")
        shared.handoff_action = "request_command"
        wait_for(lambda: alice.tlm is not None and alice.tlm.handoff_from == "bob",
                 "alice's HUD showing bob's request")
        assert alice.tlm is not None
        handoff = alice.tlm.handoff_id
        # Half a second of waiting (the robot's handoff_ms is 3 s): bob's telemetry keeps
        # arriving (50 Hz); a blocked session thread would let none through.
        stamps = []
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            stamps.append(shared.telemetry_ns)
            time.sleep(0.05)
        assert shared.message == "asking for command ...", shared.message
        assert len(set(stamps)) >= 4, f"bob's telemetry stalled while the request waited: " \
                                      f"{len(set(stamps))} distinct arrivals in 0.5 s"
        granted = alice.ask("grant", handoff=handoff).result(5.0)
        assert granted is not None and granted.ok, granted
        wait_for(lambda: shared.message == "in command: engage to move",
                 lambda: f"bob in command (HUD says {shared.message!r})")
        assert link.session is not None
        wait_for(lambda: shared.telemetry is not None and shared.telemetry.commander == "bob",
                 "the telemetry naming bob the commander")
    finally:
        bob.stop()
        bob.join(5.0)
        link.close()
        alice.stop()
