"""``telesurgery bench link --paths 2``, video part: a video path switch, switch to picture.

Real CurveZMQ sockets on loopback, a robot PUB publishing 5 kB stand-in frames every
millisecond (so that the figure is the switch's own, not a frame interval): per trial, the
time from the switch to the first frame by the new path, the way the console switches now
(subscribe on a connected standby SUB, ``ConsoleLink.switch_video``) and the way it did
before (one SUB: disconnect, connect, a new TCP connection and CURVE handshake). The
picture gap in the console adds the keyframe's wait (the HIL row prints that)."""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import zmq

from transport.config import LinkConfig, LinkPath
from transport.console_link import ConsoleLink, endpoint
from transport.keys import ClientKeys, ServerKeys
from transport.link import RobotLink

PATHS = (LinkPath("A", "127.0.0.2"), LinkPath("B", "127.0.0.3"))
FRAME = b"\x00" * 5000
WAIT_NS = 5_000_000_000


def _first_frame(pub: zmq.Socket[Any], console: ConsoleLink, sock: zmq.Socket[Any],
                 t0_ns: int) -> float | None:
    """Publish until ``sock`` receives; ms from ``t0_ns`` (None: nothing within 5 s)."""
    while time.monotonic_ns() - t0_ns < WAIT_NS:
        pub.send_multipart([b"frame", FRAME])
        if sock.poll(1):
            while sock.poll(0):
                sock.recv_multipart()
            return (time.monotonic_ns() - t0_ns) / 1e6
        console.drain_standby_video()
    return None


def run(stack: ExitStack, keys: Path, trials: int) -> dict[str, Any]:
    ctx: zmq.Context[Any] = zmq.Context()
    stack.callback(ctx.destroy, 0)
    cfg = LinkConfig(command_port=0, control_port=0, telemetry_port=0, video_port=0,
                     keys_dir=keys, paths=PATHS)
    robot = stack.enter_context(RobotLink(cfg, ServerKeys.load(keys), ctx, command=False))
    ports = robot.endpoints
    console = ConsoleLink(LinkConfig(control_port=ports["control"],
                                     telemetry_port=ports["telemetry"],
                                     video_port=ports["video"], paths=PATHS),
                          ClientKeys.load_surgeon(keys))
    stack.callback(console.close)
    pub = robot.video_socket
    assert pub is not None
    _first_frame(pub, console, console.video_socket, time.monotonic_ns())
    time.sleep(0.5)  # the standby path's handshake
    standby: list[float | None] = []
    for _ in range(trials):
        t0 = time.monotonic_ns()
        console.switch_video(1 - console.video_path)
        standby.append(_first_frame(pub, console, console.video_socket, t0))
        time.sleep(0.05)
    sock, here, reconnect = console.video_socket, console.video_path, []
    for _ in range(trials):
        t0 = time.monotonic_ns()
        sock.disconnect(endpoint(PATHS[here], ports["video"]))
        here = 1 - here
        sock.connect(endpoint(PATHS[here], ports["video"]))
        reconnect.append(_first_frame(pub, console, sock, t0))
        time.sleep(0.05)
    return {"standby": _figures(standby), "reconnect": _figures(reconnect)}


def _figures(ms: list[float | None]) -> dict[str, float]:
    got = sorted(m for m in ms if m is not None)
    if not got:
        return {"n": 0, "missed": len(ms)}
    return {"n": len(got), "missed": len(ms) - len(got), "p50_ms": statistics.median(got),
            "max_ms": got[-1]}


def report(r: dict[str, Any]) -> list[str]:
    lines = ["  video path switch -> first frame by the new path (1 kHz publisher):"]
    for key, label in (("standby", "subscribe a connected standby"),
                       ("reconnect", "disconnect + connect (before)")):
        f = r[key]
        if not f.get("n"):
            lines.append(f"    {label:30}: no frame in {f['missed']} trials")
            continue
        lines.append(f"    {label:30}: p50 {f['p50_ms']:6.2f}  max {f['max_ms']:6.2f} ms "
                     f"({f['n']:.0f} trials, {f['missed']:.0f} without a frame)")
    return lines
