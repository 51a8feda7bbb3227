"""``telesurgery bench link --paths 2``, video part: a video path switch, switch to picture.

Real CurveZMQ sockets on loopback, a robot PUB publishing 5 kB stand-in frames every
millisecond (so that the figure is the switch's own, not a frame interval): per trial, the
time from the switch to the first frame by the new path, the way the console switches now
(subscribe on a connected standby SUB, ``ConsoleLink.switch_video``) and the way it did
before (one SUB: disconnect, connect, a new TCP connection and CURVE handshake). The
picture gap in the console adds the keyframe's wait: ``pictures`` measures it with the
real pipeline (the robot's video process with its encoder and synthetic camera at 30 fps,
the console's receiver, decoder and ``VideoPathSwitch``), printing where each switch's
picture gap went after the switch (keyframe requested -> captured -> encoded and sent ->
received -> decoded -> shown; the request goes straight to the video process, as the
node's control thread passes it on). Detection of a gone path needs a dead path and
the paths' telemetry: the HIL row prints that part."""

from __future__ import annotations

import os
import socket
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import zmq

from operator_console.connection import SPLIT_STEPS, VideoPathSwitch
from operator_console.video.decoder import H264Decoder
from operator_console.video.receiver import VideoReceiver
from robot_side.video.config import VideoConfig
from robot_side.video_process import VideoProcess
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


PICTURE = VideoConfig(width=640, height=360)
"""As the HIL rig's robot sends (``SMALL_VIDEO``), at the default 30 fps."""
FIRST_PICTURE_NS = 30_000_000_000


def _free_port(hosts: tuple[str, ...]) -> int:
    """A port free on every host now (the video process binds it on each path)."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise OSError("no port free on every path")


def pictures(keys: Path, trials: int) -> dict[str, Any]:
    """``trials`` switches with the real video pipeline; each one's split (ms per step).
    Everything it started is stopped when it returns (the encoder would load the
    measurements that follow)."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    with ExitStack() as stack:
        # As the console's video loop runs, at normal priority; and the video process
        # would inherit a real-time policy of this thread (the failover part's sender).
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        stack.callback(os.sched_setscheduler, 0, policy, param)
        return _pictures(stack, keys, trials)


def _pictures(stack: ExitStack, keys: Path, trials: int) -> dict[str, Any]:
    ctx: zmq.Context[Any] = zmq.Context()
    stack.callback(ctx.destroy, 0)
    port = _free_port(tuple(p.robot for p in PATHS))
    cfg = LinkConfig(command_port=0, control_port=0, telemetry_port=0, video_port=port,
                     keys_dir=keys, paths=PATHS)
    robot = stack.enter_context(RobotLink(cfg, ServerKeys.load(keys), ctx, video=False,
                                          command=False))
    video = VideoProcess(PICTURE, cfg, keys, control_dir=keys)
    video.start()
    stack.callback(video.stop)
    line = video.control(ctx)
    stack.callback(line.close)
    console = ConsoleLink(LinkConfig(control_port=robot.endpoints["control"],
                                     telemetry_port=robot.endpoints["telemetry"],
                                     video_port=port, paths=PATHS),
                          ClientKeys.load_surgeon(keys))
    stack.callback(console.close)
    receiver = VideoReceiver(console.video_socket, H264Decoder())

    def on_switch() -> None:
        receiver.use_socket(console.video_socket)
        receiver.on_path_switch()

    switch = VideoPathSwitch(console, lambda: receiver.stats.received, on_switch)

    def video_loop(until_ns: int, pictures: int = 1_000_000, move_at_ns: int = 0) -> None:
        """The console's video loop as ``operator_console.app`` runs it (no telemetry
        here: no path is live, so ``switch`` never moves the video by itself: it is
        moved at ``move_at_ns``, in the loop's turn, as a failover would)."""
        while time.monotonic_ns() < until_ns and pictures > 0:
            frame = receiver.poll(switch.wait_ms(time.monotonic_ns()))
            now = time.monotonic_ns()
            switch.poll(now)
            if move_at_ns and now >= move_at_ns:
                switch.move_to(1 - console.video_path, now)
                move_at_ns = 0
            if frame is not None:
                pictures -= 1
                switch.on_displayed(time.monotonic_ns(), frame)
            if kfr := receiver.take_keyframe_request(now):
                line.request_keyframe(kfr.reason)
                switch.on_keyframe_requested(now)

    video_loop(time.monotonic_ns() + FIRST_PICTURE_NS, pictures=1)
    for _ in range(trials):
        start = time.monotonic_ns()
        video_loop(start + 1_500_000_000, move_at_ns=start + 1_000_000_000)
    steps = {step: sorted(v for s in switch.splits if (v := s[step]) is not None)
             for step in SPLIT_STEPS[1:]}
    return {"encoder": video.describe(), "switches": len(switch.splits), "trials": trials,
            "median_ms": {k: statistics.median(v) for k, v in steps.items() if v},
            "max_ms": {k: v[-1] for k, v in steps.items() if v},
            "after_switch_ms": sorted(sum(v or 0.0 for k, v in s.items() if k != "switch")
                                      for s in switch.splits)}


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
    p = r.get("pictures")
    if p:
        lines.append(f"  video path switch -> first picture shown, real pipeline "
                     f"({p['encoder'].split(' (')[0]}, "
                     f"{PICTURE.width}x{PICTURE.height} at {PICTURE.fps:.0f} fps): "
                     f"{p['switches']}/{p['trials']} switches showed a picture")
        after = p["after_switch_ms"]
        if after:
            lines.append(f"    switch -> shown: median {statistics.median(after):.1f}  "
                         f"max {after[-1]:.1f} ms (detection not included: HIL row)")
        lines.append("    each step from the one before, median (max): " + ", ".join(
            f"{k} {p['median_ms'][k]:.1f} ({p['max_ms'][k]:.1f})" for k in p["median_ms"]))
    return lines
