"""Dual path video: a subscription the path lost is sent again (issue 16, the HIL flake).

Real CurveZMQ sockets on loopback, path A through the real fault proxy
(``hil_tests.faultproxy``, ZMTP-aware: a "drop" blackout discards whole CURVE
messages while TCP stays up). A SUBSCRIBE is such a message: a switch to path A
during its blackout leaves the robot's PUB with A's connection unsubscribed while
the console believes it subscribed, and with no PUB heartbeat and no reconnect
nothing ever sends it again: no video by A, for good. The console re-sends the
video path's subscription while its video is silent (``VideoPathSwitch``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from hil_tests.faultproxy import FaultProxy
from operator_console.connection import VideoPathSwitch
from transport.config import LinkConfig, LinkPath
from transport.console_link import ConsoleLink
from transport.keys import ClientKeys, ServerKeys
from transport.link import RobotLink

ROBOT_PATHS = (LinkPath("A", "127.0.0.4"), LinkPath("B", "127.0.0.3"))
CONSOLE_PATHS = (LinkPath("A", "127.0.0.2"), LinkPath("B", "127.0.0.3"))
"""Path A of the console reaches the robot through the fault proxy on 127.0.0.2."""
FRAME = b"\x00" * 1000


@pytest.fixture
def rig(keys: Path) -> Iterator[tuple[RobotLink, ConsoleLink, FaultProxy]]:
    ctx: zmq.Context[Any] = zmq.Context()
    cfg = LinkConfig(command_port=0, control_port=0, telemetry_port=0, video_port=0,
                     keys_dir=keys, paths=ROBOT_PATHS)
    with RobotLink(cfg, ServerKeys.load(keys), ctx, command=False) as robot:
        port = robot.endpoints["video"]
        with FaultProxy(("127.0.0.2", port), ("127.0.0.4", port), "video A") as proxy:
            console = ConsoleLink(LinkConfig(control_port=robot.endpoints["control"],
                                             telemetry_port=robot.endpoints["telemetry"],
                                             video_port=port, paths=CONSOLE_PATHS),
                                  ClientKeys.load_surgeon(keys))
            try:
                yield robot, console, proxy
            finally:
                console.close()
    ctx.destroy(linger=0)


class Received:
    """The video loop's count of video messages (``VideoPathSwitch``'s ``received``)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        return self.n


RECEIVED = Received()

def frames_arrive(robot: RobotLink, console: ConsoleLink, seconds: float,
                  switch: VideoPathSwitch | None = None, want: int = 3) -> int:
    """Publish a frame every 10 ms for up to ``seconds``, reading the video's socket as the
    video loop does (standby drained, ``switch`` polled); how many frames arrived. No
    telemetry flows here, so no path is live and ``switch`` never moves the video."""
    assert robot.video_socket is not None
    got, end = 0, time.monotonic() + seconds
    while got < want and time.monotonic() < end:
        robot.video_socket.send_multipart([b"frame", FRAME])
        sock = console.video_socket
        while sock.poll(10):
            sock.recv_multipart()
            got += 1
            RECEIVED.n += 1
        if switch is None:
            console.drain_standby_video()
        else:
            switch.poll(time.monotonic_ns())  # drains the standby SUBs too
    return got


def test_a_subscribe_lost_in_a_blackout_is_sent_again(
        rig: tuple[RobotLink, ConsoleLink, FaultProxy]) -> None:
    robot, console, proxy = rig
    switch = VideoPathSwitch(console, RECEIVED)
    assert frames_arrive(robot, console, 20.0) >= 3, "no video by path A at the start"
    console.switch_video(1)
    assert frames_arrive(robot, console, 20.0) >= 3, "no video by path B"
    # Back to A while A drops every message: its SUBSCRIBE is lost, TCP stays up.
    proxy.blackout(None)
    console.switch_video(0)
    time.sleep(0.2)
    assert proxy.stats()["upstream"]["dropped"] >= 1, "the SUBSCRIBE was not dropped"
    proxy.end_blackout()
    assert frames_arrive(robot, console, 1.0, switch) >= 3, (
        "path A's lost subscription was never sent again: no video by the video's path")
    assert console.counters["video_resubscribes"] >= 1
