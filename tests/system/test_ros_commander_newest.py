"""The ROS commander sends only the newest servo setpoint of a wake-up, and its DDS read
cannot build a backlog (real DDS: the bridge and an independent participant on loopback).

A setpoint stream supersedes itself: of a burst of samples taken in one wake-up, one
command leaves, the newest, and the rest are counted as superseded. The link is a
recording stand-in (named so): what is checked is what the commander hands it; the
robot's side of the link is tested in test_ros_command.py.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, cast

import pytest
from cyclonedds.core import Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.topic import Topic
from helpers import wait_until

from robot_side.config import RobotConfig
from robot_side.kinematics import Kinematics
from robot_side.ros import msgs
from robot_side.ros.commander import RosCommander
from robot_side.ros.dds_backend import DdsBridge
from robot_side.ros.topics import SUBSCRIPTIONS
from transport.endpoint import Inbound
from transport.keys import add_commander, init_keys
from transport.link import ConsoleLink
from transport.schema import Command, ControlReply

BURST = 8
"""Within the reader's keep-last depth (10): every sample of the burst is taken."""


class RecordingLink:
    """Stand-in for the commander's ConsoleLink: records the commands handed to it."""

    def __init__(self) -> None:
        self.sent: list[Command] = []

    def send_command(self, cmd: Command) -> bool:
        self.sent.append(cmd)
        return True


@pytest.fixture(scope="module")
def dds(tmp_path_factory: pytest.TempPathFactory,
        ) -> Iterator[tuple[RobotConfig, DdsBridge, DataWriter[Any]]]:
    """One bridge and one writer for the module (DDS discovery takes seconds here)."""
    keys = tmp_path_factory.mktemp("commander") / "keys"
    init_keys(keys)
    add_commander(keys)
    domain, namespace = random.randint(1, 200), f"arm_{random.randrange(16**6):06x}"
    cfg = RobotConfig()
    cfg = replace(cfg, link=replace(cfg.link, keys_dir=keys),
                  ros=replace(cfg.ros, backend="dds", domain_id=domain, namespace=namespace,
                              command=True))
    bridge = DdsBridge(namespace, domain, command=True)  # loopback only, as in the node
    peer = DomainParticipant(domain)  # shares the bridge's (loopback) domain config
    spec = SUBSCRIPTIONS["servo_cp"]
    qos = Qos(Policy.Reliability.Reliable(max_blocking_time=100_000_000),
              Policy.History.KeepLast(100), Policy.Durability.Volatile,
              Policy.DataRepresentation(use_cdrv0_representation=True))
    writer = DataWriter(peer, Topic(peer, spec.dds_name(namespace), spec.msg_type), qos)
    try:
        wait_until(lambda: bool(writer.get_matched_subscriptions()), 20.0,
                   "the bridge's servo_cp subscription")
        yield cfg, bridge, writer
    finally:
        bridge.close()


@pytest.fixture
def setup(dds: tuple[RobotConfig, DdsBridge, DataWriter[Any]],
          ) -> tuple[DdsBridge, RosCommander, DataWriter[Any]]:
    cfg, bridge, writer = dds
    bridge.take("servo_cp")  # what an earlier test left
    return bridge, RosCommander(cfg, bridge, Kinematics.from_urdf()), writer


def pose(x: float) -> msgs.PoseStamped:
    return msgs.PoseStamped(header=msgs.Header(stamp=msgs.Time(sec=0, nanosec=0),
                                               frame_id="base"),
                            pose=msgs.Pose(position=msgs.Point(x=x, y=0.0, z=0.1),
                                           orientation=msgs.Quaternion(x=0.0, y=0.0, z=0.0,
                                                                       w=1.0)))


def burst(writer: DataWriter[Any], xs: list[float]) -> None:
    for x in xs:
        writer.write(pose(x))
    # Reliable: acknowledged = in the bridge's reader history, all before one wake-up.
    writer.wait_for_acks(5_000_000_000)


def test_a_burst_in_one_wake_up_sends_one_command_the_newest(
        setup: tuple[DdsBridge, RosCommander, DataWriter[Any]]) -> None:
    bridge, commander, writer = setup
    commander._mode = "hold"  # resumed: servo_cp is forwarded (what 'resume' sets)
    link = RecordingLink()
    xs = [0.001 * i for i in range(1, BURST + 1)]
    burst(writer, xs)
    bridge.wait_command(1.0)  # the WaitSet wakes for samples that are there
    commander._servo(cast(ConsoleLink, link))
    assert [c.position[0] for c in link.sent] == [xs[-1]], "not only the newest was sent"
    assert commander.counters["servo_cp"] == BURST
    assert commander.counters["superseded"] == BURST - 1
    assert commander.counters["commands_sent"] == 1
    # Nothing left behind: the next wake-up has nothing to send.
    commander._servo(cast(ConsoleLink, link))
    assert len(link.sent) == 1


def test_the_dds_read_keeps_the_last_depth_samples_no_backlog(
        setup: tuple[DdsBridge, RosCommander, DataWriter[Any]]) -> None:
    """A commander that does not take for a while finds at most ``depth`` samples, the
    newest among them: the read cannot fall behind the stream."""
    bridge, _, writer = setup
    depth = SUBSCRIPTIONS["servo_cp"].depth
    xs = [0.001 * i for i in range(1, 5 * depth + 1)]
    burst(writer, xs)
    t0 = time.monotonic()
    got = bridge.take("servo_cp")
    assert len(got) == depth
    assert [m.pose.position.x for m, _ in got] == xs[-depth:]
    assert bridge.take("servo_cp") == []
    assert time.monotonic() - t0 < 5.0  # sanity, not a timing figure


def test_wake_command_ends_the_wait(
        setup: tuple[DdsBridge, RosCommander, DataWriter[Any]]) -> None:
    """stop() must not wait out the commander's WaitSet (wake_command triggers it)."""
    bridge, _, _ = setup
    bridge.wake_command()
    t0 = time.monotonic()
    bridge.wait_command(30.0)
    assert time.monotonic() - t0 < 10.0


class SlowReplyLink(RecordingLink):
    """Stand-in for the commander's ConsoleLink whose robot answers a control request only
    after ``delay_s`` (a loaded machine): records the commands sent meanwhile."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_ns = int(delay_s * 1e9)
        self.answer_at: int | None = None

    def _reply(self) -> ControlReply:
        return ControlReply(req_id=1, ok=True, state="following", reason="already_armed")

    def request(self, op: str) -> ControlReply:  # the blocking form
        time.sleep(self.delay_ns / 1e9)
        return self._reply()

    def send_request(self, op: str) -> int:
        self.answer_at = time.monotonic_ns() + self.delay_ns
        return 1

    def forget_request(self, req_id: int) -> None:
        self.answer_at = None

    def poll(self, timeout_ms: int) -> list[Inbound]:
        time.sleep(min(timeout_ms, 5) / 1000)
        if self.answer_at is not None and time.monotonic_ns() >= self.answer_at:
            self.answer_at = None
            return [Inbound(self._reply(), time.monotonic_ns(), b"", "robot")]
        return []


def test_a_control_request_does_not_stop_the_hold_stream(
        setup: tuple[DdsBridge, RosCommander, DataWriter[Any]]) -> None:
    """A request (a repeated ``enable`` while following) is answered in 300 ms: the hold
    stream goes on meanwhile, so the robot's command timeout (50 ms) does not trip the arm
    the request was meant to keep."""
    _, commander, _ = setup
    commander._mode = "hold"
    commander._last = ((0.3, 0.0, 0.2), (1.0, 0.0, 0.0, 0.0))
    link = SlowReplyLink(0.3)
    reply = commander.waits.request(cast(ConsoleLink, link), "arm")
    assert reply is not None and reply.reason == "already_armed"
    # command_hz (500) for 0.3 s: ~150; a starved machine sends fewer, never none.
    assert len(link.sent) >= 5, f"{len(link.sent)} commands while waiting for the reply"


def test_the_loop_streams_the_hold_through_the_same_wait(
        setup: tuple[DdsBridge, RosCommander, DataWriter[Any]]) -> None:
    """The loop waits where a request's reply is awaited (``StreamingWaits``): with no
    ROS message arriving, the hold stream still goes on at command_hz."""
    _, commander, _ = setup
    commander._mode = "hold"
    commander._last = ((0.3, 0.0, 0.2), (1.0, 0.0, 0.0, 0.0))
    link = SlowReplyLink(0.0)
    loop = threading.Thread(target=commander._loop, args=(cast(ConsoleLink, link),))
    loop.start()
    try:
        wait_until(lambda: len(link.sent) >= 5, 10.0)
    finally:
        commander.stop()
        loop.join(5.0)
    assert not loop.is_alive()
    assert len(link.sent) >= 5, f"{len(link.sent)} hold commands from the loop"
