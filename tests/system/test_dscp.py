"""DSCP marking on the wire: packets captured on loopback with a raw AF_PACKET socket.

Commands and control leave marked EF (46), video AF41 (34): the TOS byte of each
captured IPv4 packet of a channel's connection is read, in both directions. Needs
CAP_NET_RAW (the rig runs as root); skipped without it.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from transport.config import DSCP_AF41, DSCP_EF, LinkConfig
from transport.console_link import ConsoleLink
from transport.keys import ClientKeys, ServerKeys, init_keys
from transport.link import RobotLink
from transport.schema import Command, Ping, VideoFrameHeader, encode

ETH_P_ALL = 0x0003
WAIT_S = 10.0


class Capture:
    """Every IPv4/TCP packet with a payload on ``lo``: (src port, dst port) -> TOS bytes."""

    def __init__(self, ports: set[int]) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.05)
        self.ports = ports
        self.tos: dict[tuple[int, int], set[int]] = defaultdict(set)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, meta = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            if meta[2] == socket.PACKET_OUTGOING:
                continue  # each loopback packet is seen twice: keep the incoming copy
            if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
                continue
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            total = struct.unpack("!H", ip[2:4])[0]
            sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
            tcp_len = (ip[ihl + 12] >> 4) * 4
            if total - ihl - tcp_len <= 0 or not {sport, dport} & self.ports:
                continue
            self.tos[(sport, dport)].add(ip[1])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.sock.close()

    def seen(self, port: int) -> tuple[set[int], set[int]]:
        """TOS bytes of payload packets to ``port`` and from it."""
        to = {t for (s, d), tos in self.tos.items() if d == port for t in tos}
        frm = {t for (s, d), tos in self.tos.items() if s == port for t in tos}
        return to, frm


@pytest.fixture
def capture_ok() -> None:
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)).close()
    except PermissionError:
        pytest.skip("no CAP_NET_RAW: cannot capture packets")


@pytest.fixture
def links(tmp_path: Path, capture_ok: None) -> Iterator[tuple[RobotLink, ConsoleLink]]:
    init_keys(tmp_path / "keys")
    keys = tmp_path / "keys"
    ctx: zmq.Context[Any] = zmq.Context()
    cfg = LinkConfig(command_port=0, control_port=0, telemetry_port=0, video_port=0,
                     keys_dir=keys)
    with RobotLink(cfg, ServerKeys.load(keys), ctx) as robot:
        ccfg = LinkConfig(**{f"{ch}_port": n for ch, n in robot.endpoints.items()})
        with ConsoleLink(ccfg, ClientKeys.load_surgeon(keys), ctx) as console:
            yield robot, console
    ctx.destroy(linger=0)


def test_channels_are_marked_on_the_wire(links: tuple[RobotLink, ConsoleLink]) -> None:
    robot, console = links
    ports = robot.endpoints
    cap = Capture(set(ports.values()))
    try:
        deadline = time.monotonic() + WAIT_S
        seq = 0
        header = VideoFrameHeader(frame_id=1, capture_ns=1, send_ns=1, keyframe=True,
                                  width=8, height=8, payload_len=4)
        assert robot.video_socket is not None
        while time.monotonic() < deadline:
            seq += 1
            console.send_command(Command(seq=seq, t_send_ns=time.monotonic_ns(),
                                         position=(0.3, 0.0, 0.2),
                                         orientation=(1.0, 0.0, 0.0, 0.0), grip=0.0,
                                         clutch=False, operator_present=True))
            console.send_ping(Ping(seq=seq, t1_ns=time.monotonic_ns()))
            robot.video_socket.send_multipart([encode(header), b"\0\0\0\1"], zmq.NOBLOCK)
            robot.poll(5)
            console.poll(5)
            # Read the video as the console's receiver does: a SUB attaches its connection
            # and sends its subscription only when its own thread calls into it (the robot's
            # PUB sends no heartbeats that would otherwise show on the wire).
            while console.video_socket.poll(0):
                console.video_socket.recv_multipart()
            if (all(all(cap.seen(p)) for p in (ports["command"], ports["control"]))
                    and cap.seen(ports["video"])[1]):
                break
    finally:
        cap.close()
    ef, af41 = DSCP_EF << 2, DSCP_AF41 << 2
    # Console -> robot and robot -> console (the robot's accepted connections too).
    assert cap.seen(ports["command"]) == ({ef}, {ef})
    assert cap.seen(ports["control"]) == ({ef}, {ef})
    to_video, from_video = cap.seen(ports["video"])
    assert from_video == {af41} and to_video <= {af41}
