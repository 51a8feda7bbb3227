"""``telesurgery watch``: a watch-only console fed by a Zenoh router (robot_side.fanout).

It reuses the console's decoder, display and HUD; it has no command, control or
clock channel and no key that could take command: the router only lets it read.
Figures follow the console's rule: every one carries its age, and telemetry
that stops turns into "robot state unknown". Picture age here is the time since
the last decoded picture arrived (the robot's capture stamp is another clock).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import zenoh
import zmq

from operator_console.telestration import StrokeLayer, StrokePad
from operator_console.video.decoder import H264Decoder
from operator_console.video.display import WINDOW, Display, screen_available
from operator_console.video.hud import Image
from operator_console.view import SurgeonView
from operator_console.vitals_view import vitals_strip
from robot_side.fanout.watcher import Watcher
from robot_side.fanout.zconf import watcher_config
from telesurgery.errors import TelesurgeryError, VideoError
from transport.keys import ClientKeys
from transport.schema import Telemetry, Vitals

log = logging.getLogger(__name__)
STALE_MS = 250.0
REDRAW_NS = 100_000_000


def watch(w: Watcher, display: Display, seconds: float | None,
          pad: StrokePad | None = None) -> int:
    """Show the robot's picture with the HUD until ``seconds`` pass (or the window's q).

    Without new pictures the last one is shown again with its growing age, so a
    frozen stream turns into the stale-picture banner instead of looking live."""
    view = SurgeonView(STALE_MS)
    decoder = H264Decoder()
    tlm: Telemetry | None = None
    tlm_ns: int | None = None
    synced = False
    last: Image | None = None
    last_id = 0
    strokes = StrokeLayer(None)  # the mentor's drawings, relayed by the robot
    last_pic_ns = last_show_ns = 0
    vitals: Vitals | None = None
    vitals_ns: int | None = None
    shown = 0
    end = None if seconds is None else time.monotonic() + seconds
    while end is None or time.monotonic() < end:
        for msg in w.state():
            if isinstance(msg, Telemetry):
                tlm, tlm_ns = msg, w.last_state_ns
            elif isinstance(msg, Vitals):
                vitals, vitals_ns = msg, w.last_state_ns
        for stroke in w.strokes():
            strokes.add(stroke, time.monotonic_ns())
        fresh = False
        for frame in w.frames():
            synced |= frame.header.keyframe
            if not synced:
                continue
            try:
                image = decoder.decode(frame.payload)
            except VideoError as err:
                log.warning("watch: %s; waiting for the next keyframe", err)
                synced = False
                continue
            if image is not None:
                last, last_pic_ns, fresh = image, frame.recv_ns, True
                last_id = frame.header.frame_id
        now = time.monotonic_ns()
        if last is not None and (fresh or now - last_show_ns > REDRAW_NS):
            count = None if tlm is None else tlm.observers
            hud = view.build(tlm=tlm, tlm_recv_ns=tlm_ns, now_ns=now,
                             message="observer: watch only" + (
                                 "" if count is None else f" ({count} watching)"),
                             message_ns=now, teleop_why="", clutch=False,
                             operator_present=False, scale=0.0 if tlm is None else tlm.scale,
                             video_age_ms=(now - last_pic_ns) / 1e6)
            hud = replace(hud, vitals=vitals_strip(vitals, vitals_ns, now))
            if pad is not None:  # a stroke drawn now is tied to the picture on screen now
                pad.frame_id = last_id
                pad.set_image_size(last.shape[1], last.shape[0])
            shot = last.copy()
            strokes.render(shot, last_id, now)
            display.show(shot, hud)
            last_show_ns = now
            shown += 1
            if display.last_key in (ord("q"), 27):
                return shown
        time.sleep(0.005)
    return shown


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="telesurgery watch",
                                 description="watch a robot through a Zenoh router (observer)")
    ap.add_argument("--connect", action="append", required=True,
                    help="router endpoint, e.g. tls/router.site-a:7447 (repeatable)")
    ap.add_argument("--robot", default="robot1", help="the robot's key chunk")
    ap.add_argument("--ca", type=Path)
    ap.add_argument("--cert", type=Path)
    ap.add_argument("--key", type=Path)
    ap.add_argument("--headless", action="store_true")
    ap.add_argument("--out", type=Path, help="headless: write frames with the HUD here")
    ap.add_argument("--every", type=int, default=30, help="headless: every Nth frame")
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--draw", metavar="ENDPOINT",
                    help="draw with the mouse: the robot's telestration draw socket "
                         "(tcp://robot:47104); needs --keys and --name, and the draw right")
    ap.add_argument("--keys", type=Path, help="the CurveZMQ keys folder (with --draw)")
    ap.add_argument("--name", help="this observer's key name (with --draw; also the name "
                                   "the robot's supervision page lists among the watchers)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    zenoh.init_log_from_env_or("error")
    headless = args.headless or not screen_available()
    try:
        w = Watcher.open(watcher_config(tuple(args.connect), args.ca, args.cert, args.key),
                         args.robot, args.name)
    except (zenoh.ZError, ValueError) as err:
        print(f"telesurgery watch: {err}", file=sys.stderr)
        return 2
    pad = None
    try:
        if args.draw:
            if args.keys is None or args.name is None:
                raise ValueError("--draw needs --keys and --name")
            pad = StrokePad(zmq.Context.instance(), args.draw,
                            ClientKeys.load_observer(args.keys, args.name))
        with Display(headless, args.out, args.every if args.out else 0) as display:
            if pad is not None and not headless:
                cv2.setMouseCallback(WINDOW, pad.on_mouse)
            shown = watch(w, display, args.seconds, pad)
        log.info("watch: %d pictures shown", shown)
    except KeyboardInterrupt:
        pass
    except (TelesurgeryError, ValueError) as err:
        print(f"telesurgery watch: {err}", file=sys.stderr)
        return 2
    finally:
        if pad is not None:
            pad.close()
        w.close()
    return 0
