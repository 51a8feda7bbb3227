"""Reading a session back: ``telesurgery replay SESSION`` and ``telesurgery export SESSION``.

Both walk the recording in time order, keep the newest supervisor status and link
figures, and draw the surgeon's HUD (``operator_console.video.hud``) over every
recorded frame: ``replay`` shows it at the recorded pace (a window with a screen,
PNGs with ``--out`` without one) and prints the timeline of safety events;
``export --mp4`` writes the video with the HUD burnt in.

``replay --drive`` instead runs a console whose scripted device plays the recorded
master motion (``robot_side.recording.drive``): the session re-run on a robot.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from operator_console.video.hud import HudState, Image

log = logging.getLogger(__name__)


@dataclass
class _Now:
    status: dict[str, str] = field(default_factory=dict)
    link: dict[str, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


def _values(msg: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.status[0].values} if msg.status else {}


def _num(text: str | None, scale: float = 1.0) -> float | None:
    try:
        return None if text in (None, "", "None") else float(text) * scale  # type: ignore[arg-type]
    except ValueError:
        return None


def hud_from(now: _Now) -> HudState:
    st, lk = now.status, now.link
    return HudState(
        state=st.get("state", "unknown"), reason=st.get("reason", ""),
        rtt_ms=_num(lk.get("rtt_us"), 1e-3), latency_ms=_num(lk.get("latency_us"), 1e-3),
        g2g_ms=None, video_age_ms=_num(lk.get("video_age_us"), 1e-3),
        loss=_num(lk.get("loss")) or 0.0, jitter_ms=_num(lk.get("jitter_us"), 1e-3),
        scale=_num(st.get("scale")) or 0.0, clutch=False, operator_present=True,
        warnings=tuple(now.events[-3:]), encoder="replay")


def frames(session: Path) -> Iterator[tuple[int, Image, _Now]]:
    """(log time ns, decoded BGR frame, what was known then) for every recorded frame."""
    from rosbags.highlevel import AnyReader

    from robot_side.recording.bag import typestore

    now = _Now()
    codec = av.CodecContext.create("h264", "r")
    t0: int | None = None
    with AnyReader([session], default_typestore=typestore()) as reader:
        for conn, t, raw in reader.messages():
            t0 = t if t0 is None else t0
            msg: Any = reader.deserialize(raw, conn.msgtype)
            if conn.topic == "/supervisor/status":
                now.status = _values(msg)
            elif conn.topic == "/link/stats":
                now.link = _values(msg)
            elif conn.topic == "/supervisor/events":
                v = _values(msg)
                line = (f"{(t - t0) / 1e9:8.3f} s  {v.get('from')} -> {v.get('to')}: "
                        f"{v.get('code')} ({v.get('why')})")
                now.events.append(line)
            elif conn.topic == "/video/compressed":
                for frame in codec.decode(av.Packet(bytes(msg.data))):
                    yield t, np.ascontiguousarray(frame.to_ndarray(format="bgr24")), now


def export_mp4(session: Path, out: Path) -> int:
    """Write the video with the HUD burnt in; returns the number of frames."""
    from operator_console.video.hud import render_hud

    n = 0
    first: int | None = None
    with av.open(str(out), "w") as container:
        stream: Any = None
        for t, image, now in frames(session):
            if stream is None:
                stream = container.add_stream("libx264", rate=30)
                stream.width, stream.height = image.shape[1], image.shape[0]
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = Fraction(1, 1000)
                first = t
            render_hud(image, hud_from(now))
            vf = av.VideoFrame.from_ndarray(image, format="bgr24")
            vf.pts = (t - (first or t)) // 1_000_000  # recorded timing, in ms
            vf.time_base = Fraction(1, 1000)
            container.mux(stream.encode(vf))
            n += 1
        if stream is not None:
            container.mux(stream.encode(None))
    return n


def replay(session: Path, speed: float, out_dir: Path | None) -> int:
    from operator_console.video.display import Display, screen_available

    headless = out_dir is not None or not screen_available()
    printed = 0
    start_wall: float | None = None
    first: int | None = None
    with Display(headless, out_dir, every_n=1 if out_dir else 0) as display:
        for t, image, now in frames(session):
            for line in now.events[printed:]:
                sys.stdout.write(line + "\n")
            printed = len(now.events)
            if first is None or start_wall is None:
                first, start_wall = t, time.monotonic()
            elif not headless or out_dir is None:
                delay = (t - first) / 1e9 / speed - (time.monotonic() - start_wall)
                if delay > 0:
                    time.sleep(delay)
            display.show(image, hud_from(now))
        return display.shown


def main_export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery export",
                                description="Export a recorded session's video with the HUD.")
    p.add_argument("session", type=Path, help="the session's rosbag2 folder")
    p.add_argument("--mp4", action="store_true", required=True, help="write an MP4 file")
    p.add_argument("--out", type=Path, help="output file (default: SESSION.mp4)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    out = args.out or args.session.with_suffix(".mp4")
    try:
        n = export_mp4(args.session, out)
    except (OSError, av.FFmpegError, ValueError) as err:
        sys.stderr.write(f"telesurgery export: {err}\n")
        return 1
    sys.stdout.write(f"{out}: {n} frames with the HUD\n")
    return 0 if n else 1


def main_replay(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery replay",
                                description="Play a recorded session into the surgeon's HUD.")
    p.add_argument("session", type=Path, help="the session's rosbag2 folder")
    p.add_argument("--speed", type=float, default=1.0, help="playback speed (default 1)")
    p.add_argument("--out", type=Path, help="write every HUD frame as PNG here (no window)")
    p.add_argument("--drive", action="store_true",
                   help="run a console whose master is the recorded surgeon's motion")
    p.add_argument("--config", type=Path,
                   help="with --drive: the console config TOML (default: simulated rig)")
    p.add_argument("--seconds", type=float,
                   help="with --drive: stop after this long (default: the recording's length)")
    p.add_argument("--headless", action="store_true", help="with --drive: no window")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.speed > 0:
        sys.stderr.write("telesurgery replay: --speed must be > 0\n")
        return 2
    if args.drive:
        return _drive(args)
    try:
        n = replay(args.session, args.speed, args.out)
    except (OSError, av.FFmpegError, ValueError) as err:
        sys.stderr.write(f"telesurgery replay: {err}\n")
        return 1
    sys.stdout.write(f"{n} frames replayed\n")
    return 0 if n else 1


def _drive(args: argparse.Namespace) -> int:
    from robot_side.recording.drive import drive
    from telesurgery.errors import TelesurgeryError

    try:
        return drive(args.session, args.config, args.seconds, args.headless)
    except (TelesurgeryError, OSError) as err:
        sys.stderr.write(f"telesurgery replay: {err}\n")
        return 2
