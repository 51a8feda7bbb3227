"""Dual path video: every path's video SUB is connected in advance, only the video's path is
subscribed (real CurveZMQ sockets on loopback; bytes counted by the kernel, ``ss``).

The robot's PUB filters per connection, so the standby path carries heartbeats and no
video, and a switch is a subscribe and an unsubscribe on connections that exist: no new
TCP connection, no CURVE handshake (issue 16: the picture gap at a switch)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from transport.config import LinkConfig, LinkPath
from transport.console_link import ConsoleLink
from transport.keys import ClientKeys, ServerKeys
from transport.link import RobotLink

PATHS = (LinkPath("A", "127.0.0.2"), LinkPath("B", "127.0.0.3"))
FRAME = b"\x00" * 10_000
"""A stand-in for an encoded picture: the link does not look inside."""
HEARTBEATS_MAX = 20_000
"""Bytes a standby connection may receive in these tests: ZMTP PINGs (~40 B every
100 ms, CURVE-boxed), far below one frame."""

pytestmark = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")


def video_connections(port: int) -> dict[str, tuple[int, int]]:
    """The console's TCP connections to the robot's video port, by robot address:
    (local port, bytes received), as the kernel counts them."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    found: dict[str, tuple[int, int]] = {}
    lines = out.splitlines()
    for head, info in zip(lines[::2], lines[1::2], strict=False):
        local, peer = head.split()[-2:]
        got = re.search(r"bytes_received:(\d+)", info)
        found[peer.rsplit(":", 1)[0]] = (int(local.rsplit(":", 1)[1]),
                                         int(got.group(1)) if got else 0)
    return found


@pytest.fixture
def links(keys: Path) -> Iterator[tuple[RobotLink, ConsoleLink]]:
    ctx: zmq.Context[Any] = zmq.Context()
    cfg = LinkConfig(command_port=0, control_port=0, telemetry_port=0, video_port=0,
                     keys_dir=keys, paths=PATHS)
    with RobotLink(cfg, ServerKeys.load(keys), ctx, command=False) as robot:
        ports = robot.endpoints
        console = ConsoleLink(LinkConfig(control_port=ports["control"],
                                         telemetry_port=ports["telemetry"],
                                         video_port=ports["video"], paths=PATHS),
                              ClientKeys.load_surgeon(keys))
        try:
            yield robot, console
        finally:
            console.close()
    ctx.destroy(linger=0)


def publish_until(robot: RobotLink, console: ConsoleLink, frames: int = 1) -> int:
    """Publish frames until the console's video socket has received ``frames`` of them,
    draining the standby paths as the video thread does; how many it got."""
    assert robot.video_socket is not None
    sock = console.video_socket
    got, deadline = 0, time.monotonic() + 20.0
    while got < frames:
        assert time.monotonic() < deadline, f"only {got} of {frames} frames arrived"
        robot.video_socket.send_multipart([b"frame", FRAME])
        while sock.poll(5):
            sock.recv_multipart()
            got += 1
        console.drain_standby_video()
    return got


def both_connected(port: int) -> dict[str, tuple[int, int]]:
    deadline = time.monotonic() + 20.0
    while len(conns := video_connections(port)) < 2:
        assert time.monotonic() < deadline, f"the video connections: {conns}"
        time.sleep(0.05)
    return conns


def test_the_standby_path_is_connected_and_carries_no_video(
        links: tuple[RobotLink, ConsoleLink]) -> None:
    robot, console = links
    port = robot.endpoints["video"]
    publish_until(robot, console)  # path A subscribed and flowing
    before = both_connected(port)  # path B: connected (handshake done), not subscribed
    standby = console.video_sockets[1]
    # Touched as the video thread touches it: a SUB sends its subscriptions when its own
    # thread processes the new connection (libzmq), so an untouched one never would.
    assert standby.poll(0) == 0
    publish_until(robot, console, 200)  # 2 MB by path A
    after = video_connections(port)
    assert standby.poll(0) == 0
    got_a = after["127.0.0.2"][1] - before["127.0.0.2"][1]
    got_b = after["127.0.0.3"][1] - before["127.0.0.3"][1]
    print(f"\n200 frames of {len(FRAME)} B: path A received {got_a} B, standby B {got_b} B")
    assert got_a >= 200 * len(FRAME)
    assert got_b < HEARTBEATS_MAX, "the robot published video on the unsubscribed path"
    assert console.counters["video_standby_discards"] == 0


def test_a_switch_subscribes_the_connected_standby_without_a_new_connection(
        links: tuple[RobotLink, ConsoleLink]) -> None:
    robot, console = links
    assert robot.video_socket is not None
    port = robot.endpoints["video"]
    first = console.video_socket
    publish_until(robot, console)
    before = both_connected(port)
    for _ in range(3):  # left unread on path A
        robot.video_socket.send_multipart([b"stale", FRAME])
    assert first.poll(5_000)
    console.switch_video(1)
    assert console.video_socket is console.video_sockets[1]
    publish_until(robot, console, 100)  # by path B; what A has queued is drained
    assert console.counters["video_standby_discards"] >= 1
    settled = video_connections(port)
    publish_until(robot, console, 100)
    after = video_connections(port)
    assert {a: c[0] for a, c in after.items()} == {a: c[0] for a, c in before.items()}, (
        "a switch opened a new connection, or the standby one was dropped")
    assert after["127.0.0.2"][1] - settled["127.0.0.2"][1] < HEARTBEATS_MAX, (
        "the old path still carries video after the switch")
