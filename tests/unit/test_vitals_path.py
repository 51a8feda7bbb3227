"""Vitals over real sockets: simulated HL7 monitor -> vitals process -> robot relay ->
the robot's network thread -> a surgeon console (CurveZMQ telemetry) and a local observer.

Nothing here touches the control loop: the mailbox's command side stays empty."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from robot_side.netio import Mailbox, NetworkThread
from robot_side.observe import ObserverClient
from robot_side.vitals.config import VitalsConfig
from robot_side.vitals.monitor_sim import send_hl7
from robot_side.vitals.patient import Script
from robot_side.vitals.process import VitalsPaths, VitalsProcess
from robot_side.vitals.relay import SILENT_AFTER_NS, VitalsRelay
from transport.config import LinkConfig
from transport.keys import ClientKeys, ServerKeys, init_keys
from transport.link import ConsoleLink
from transport.schema import Vitals, encode

WAIT_S = 15.0


class Robot:
    def __init__(self, tmp: Path) -> None:
        keys = tmp / "keys"
        init_keys(keys)
        self.keys = keys
        self.cfg = LinkConfig(command_port=0, control_port=0, telemetry_port=0, video_port=0,
                              keys_dir=keys)
        self.mb = Mailbox()
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.observe = tmp / "observe.sock"
        self.net = NetworkThread(self.cfg, ServerKeys.load(keys), self.mb, telemetry_hz=10.0,
                                 observe_path=self.observe, ctx=self.ctx)
        self.paths = VitalsPaths(socket=tmp / "vitals.sock", status=tmp / "vitals.json")
        self.relay = VitalsRelay(self.paths.socket, self.mb, self.ctx)

    def start(self) -> None:
        self.net.start()
        assert self.net.ready.wait(10.0) and self.net.link is not None, self.net.error
        self.relay.start()
        assert self.relay.ready.wait(5.0) and self.relay.error is None

    def console(self) -> ConsoleLink:
        assert self.net.link is not None
        ports = {f"{n}_port": p for n, p in self.net.link.endpoints.items()}
        return ConsoleLink(LinkConfig(**{"command_port": 1, **ports}),
                           ClientKeys.load_surgeon(self.keys))

    def stop(self) -> None:
        self.relay.stop()
        self.relay.join(5.0)
        self.net.stop()
        self.net.join(5.0)
        self.ctx.destroy(linger=0)


@pytest.fixture
def robot(tmp_path: Path) -> Iterator[Robot]:
    r = Robot(tmp_path)
    r.start()
    yield r
    r.stop()


def collect(until: Callable[[Vitals], bool], *, console: ConsoleLink,
            observer: ObserverClient, what: str) -> tuple[Vitals, Vitals]:
    """Poll both subscribers until each has seen a Vitals for which ``until`` holds."""
    got: dict[str, Vitals] = {}
    deadline = time.monotonic() + WAIT_S
    while len(got) < 2:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; got {sorted(got)}")
        for item in console.poll(20):
            if isinstance(item.msg, Vitals) and until(item.msg):
                got.setdefault("console", item.msg)
        msg = observer.recv(20)
        if isinstance(msg, Vitals) and until(msg):
            got.setdefault("observer", msg)
    return got["console"], got["observer"]


def alarm_codes(v: Vitals) -> set[str]:
    return {a.code for a in v.alarms}


def test_a_monitor_alarm_reaches_the_console_and_observers_and_is_audited(
        robot: Robot) -> None:
    proc = VitalsProcess(VitalsConfig(enabled=True, port=0, publish_ms=100), robot.paths)
    proc.start()
    console = robot.console()
    observer = ObserverClient(robot.observe)
    events = io.StringIO()
    try:
        deadline = time.monotonic() + WAIT_S
        while not robot.paths.status.exists():
            assert time.monotonic() < deadline and proc.alive(), "vitals process did not start"
            time.sleep(0.05)
        port = json.loads(robot.paths.status.read_text())["port"]
        script = Script(stable_s=0.3, desat_s=0.6, tachy_after_s=0.3)
        sim = threading.Thread(target=lambda: asyncio.run(send_hl7(
            "127.0.0.1", port, 2.0, script=script, events=events)), daemon=True)
        sim.start()
        c, o = collect(lambda v: "HR_HIGH" in alarm_codes(v), console=console,
                       observer=observer, what="the tachycardia alarm")
        for v in (c, o):
            assert v.monitor == "ok" and v.source == "hl7"
            assert {x.name: x.value for x in v.values}["hr"] == 138.0
            assert {a.code: a.priority for a in v.alarms} == {"HR_HIGH": "high",
                                                              "SPO2_LOW": "medium"}
        sim.join(10.0)
        # The monitor hangs up: NO MONITOR, every value stale, on both sides.
        c, o = collect(lambda v: v.monitor == "gone", console=console, observer=observer,
                       what="the monitor gone")
        assert all(x.status == "stale" for x in c.values) and c.values
        # The high alarm is an audit record (the audit thread writes Mailbox.alerts); the
        # medium one is not. And nothing reached the control loop's inputs.
        alerts = [(a.code, a.detail) for a in robot.mb.alerts]
        assert sum(code == "vitals_alarm" and "HR_HIGH" in d for code, d in alerts) == 1
        assert not any("SPO2_LOW" in d for _, d in alerts)
        assert ("vitals_monitor" in {code for code, _ in alerts})
        assert not robot.mb.requests and robot.mb.command is None
        onsets = [json.loads(line)["alarm"] for line in events.getvalue().splitlines()]
        assert onsets == ["SPO2_LOW", "HR_HIGH"]
    finally:
        proc.stop()
        console.close()
        observer.close()


def test_a_silent_vitals_process_reads_no_monitor_and_bad_input_is_dropped(
        robot: Robot) -> None:
    """Not the real process: a socket that speaks for it, then stops (as a crash would)."""
    push = robot.ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(f"ipc://{robot.paths.socket}")
    observer = ObserverClient(robot.observe)
    try:
        push.send(b"\x93not a vitals message")
        from transport.schema import VitalValue

        ok = encode(Vitals(seq=1, t_ns=0, source="hl7", monitor="ok",
                           values=(VitalValue("hr", 72.0, "/min", 0, 5000),)))
        deadline = time.monotonic() + WAIT_S
        seen: list[Vitals] = []
        while not any(v.monitor == "ok" for v in seen):  # resent until the feed's
            assert time.monotonic() < deadline         # subscription is up
            push.send(ok)
            msg = observer.recv(100)
            if isinstance(msg, Vitals):
                seen.append(msg)
        while not any(v.monitor == "gone" for v in seen):  # then silence
            assert time.monotonic() < deadline + SILENT_AFTER_NS / 1e9, seen[-3:]
            msg = observer.recv(50)
            if isinstance(msg, Vitals):
                seen.append(msg)
        gone = next(v for v in seen if v.monitor == "gone")
        assert gone.detail == "vitals process silent"
        assert gone.values[0].status == "stale"
        assert robot.relay.counters["invalid"] == 1 and robot.relay.is_alive()
    finally:
        push.close(0)
        observer.close()


class CountingMailbox:
    """The relay's side of the robot's Mailbox, stamping each hand-over."""

    def __init__(self) -> None:
        import collections

        self.relay: VitalsRelay | None = None
        self.alerts: collections.deque[Any] = collections.deque(maxlen=256)
        self.handed: list[tuple[int, Vitals]] = []

    @property
    def vitals(self) -> Vitals | None:
        return self.handed[-1][1] if self.handed else None

    @vitals.setter
    def vitals(self, msg: Vitals | None) -> None:
        assert msg is not None and self.relay is not None
        self.handed.append((self.relay.handed_ns, msg))  # the relay's own clock reading


def test_a_flood_of_vitals_is_coalesced_to_the_newest(tmp_path: Path) -> None:
    from robot_side.vitals.relay import MIN_GAP_NS

    mb = CountingMailbox()
    ctx: zmq.Context[Any] = zmq.Context()
    relay = VitalsRelay(tmp_path / "vitals.sock", mb, ctx)  # type: ignore[arg-type]
    mb.relay = relay
    relay.start()
    assert relay.ready.wait(5.0)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(f"ipc://{tmp_path}/vitals.sock")
    try:
        for seq in range(1, 301):
            push.send(encode(Vitals(seq=seq, t_ns=0, source="hl7", monitor="ok")))
        deadline = time.monotonic() + WAIT_S
        while not (mb.handed and mb.handed[-1][1].seq == 300):
            assert time.monotonic() < deadline, mb.handed[-1:]
            time.sleep(0.01)
        gaps = [b[0] - a[0] for a, b in zip(mb.handed, mb.handed[1:], strict=False)]
        assert all(g >= MIN_GAP_NS for g in gaps), gaps
        assert relay.counters["received"] > relay.counters["relayed"] == len(mb.handed)
    finally:
        relay.stop()
        relay.join(5.0)
        push.close(0)
        ctx.destroy(linger=0)
