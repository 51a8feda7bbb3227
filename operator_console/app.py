"""``telesurgery console``: the surgeon's process.

Threads: the paced command thread, the session thread (control requests,
telemetry, clock) and, on the main thread because GUI toolkits want it, the
video loop: receive, decode, HUD, display, picture freshness.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import zmq

from operator_console.command_loop import (
    CommandThread,
    console_context,
    keep_gil_holders_running,
    thread_priorities,
)
from operator_console.config import ConsoleConfig
from operator_console.connection import ConnectionWatch, VideoPathSwitch
from operator_console.devices import open_device
from operator_console.session import HANDOFF_KEYS, ConsoleShared, SessionThread
from operator_console.sound import SoundIntercom, start_intercom
from operator_console.status_view import StatusView
from operator_console.teleop import TeleopMapper
from operator_console.telestration import StrokeLayer
from operator_console.video.decoder import H264Decoder, Picture, as_bgr
from operator_console.video.display import Display, screen_available
from operator_console.video.freshness import FreshnessMonitor
from operator_console.video.hud import Image
from operator_console.video.receiver import VideoReceiver
from operator_console.video.stages import VideoStages
from operator_console.view import HudState, SurgeonView
from operator_console.vitals_view import AlarmDraws, vitals_strip
from telesurgery.config import load
from telesurgery.errors import DeviceError, LinkTimeout, TelesurgeryError
from telesurgery.gcpolicy import PAUSES as GC_PAUSES
from telesurgery.gcpolicy import settle
from telesurgery.helptext import plain_help
from telesurgery.pacer import lift_normal_threads
from telesurgery.threadcpu import thread_cpu_seconds
from transport.keys import SURGEON_USER, ClientKeys
from transport.link import ConsoleLink
from transport.paths import describe as describe_paths

log = logging.getLogger(__name__)

HUD_REDRAW_NS = 100_000_000
"""The HUD redraws on its own clock (10 Hz) whether or not a picture arrives, so its
ages grow and a telemetry stop shows even while video still flows (or never did)."""
BLANK_SHAPE = (360, 640, 3)
"""What the HUD is drawn on before any picture arrived."""
EXIT_NEVER_CONNECTED = 3


class ConsoleApp:
    def __init__(self, cfg: ConsoleConfig, summary_path: Path | None = None) -> None:
        self.cfg = cfg
        self.summary_path = summary_path
        self.shared = ConsoleShared()
        self._halt = threading.Event()
        self.g2g_us: list[int] = []
        self.receiver: VideoReceiver | None = None
        self.watch: ConnectionWatch | None = None
        self.last_hud: HudState | None = None
        self.alarm_draws = AlarmDraws()
        self.intercom: SoundIntercom | None = None
        self.stages = VideoStages()

    def stop(self) -> None:
        self._halt.set()

    def run(self, seconds: float | None) -> int:
        cfg = self.cfg
        keys = ClientKeys.load_surgeon(cfg.link.keys_dir, cfg.session.surgeon)
        period_ns = int(1e9 / cfg.loop.rate_hz)
        with ExitStack() as stack:
            device = open_device(cfg.device)
            stack.callback(device.close)
            ctx = console_context(cfg.loop.realtime)
            stack.callback(ctx.term)  # after the link's sockets are closed
            link = stack.enter_context(ConsoleLink(cfg.link, keys, ctx))
            mapper = TeleopMapper(replace(cfg.teleop, rate_hz=cfg.loop.rate_hz))
            session = SessionThread(link, cfg.session, self.shared, period_ns)
            switch = cfg.loop.gil_switch_ms
            commands = CommandThread(link, device, mapper, self.shared, period_ns=period_ns,
                                     realtime=cfg.loop.realtime,
                                     gil_switch_s=None if switch is None else switch / 1000)
            settle("console")  # before the command thread: its sends must not wait on it
            for t in (commands, session):
                t.start()
                stack.callback(t.join, 2.0)
                stack.callback(t.stop)
            # Audio: own sockets, threads and bounded queues, never the commands' (off
            # without a sound device: one notice, the console runs on).
            self.intercom = start_intercom(cfg.intercom, cfg.link.host, keys, SURGEON_USER)
            if self.intercom is not None:
                stack.callback(self.intercom.close)
            if cfg.loop.realtime:
                lift_normal_threads()  # any GIL holder left at normal priority
            keep_gil_holders_running(cfg.loop.realtime)  # this thread: decode, HUD
            self.watch = ConnectionWatch(link.video_socket,
                                         f"{cfg.link.host}:{cfg.link.video_port}")
            stack.callback(self.watch.close)
            self._video_loop(link, seconds)
            self._finish(session, link)
            self._write_summary(commands, link)
        if self.shared.telemetry is None:
            problem = self.watch.problem if self.watch is not None else ""
            log.error("never connected: %s", problem or "no telemetry from the robot")
            return EXIT_NEVER_CONNECTED
        return 0

    def _finish(self, session: SessionThread, link: ConsoleLink) -> None:
        """End the session deliberately: disengage rather than let the robot time out.

        Also when the console's own bookkeeping says it is not engaged but the robot's
        last telemetry says it follows or holds for this console: a stop the robot
        judges (command timeout, then ``hold_escalated``) leaves it in fault.
        """
        session.stop()
        session.join(2.0)
        tlm = self.shared.telemetry
        robot_engaged = tlm is not None and tlm.state in ("following", "hold")
        if session.is_alive() or not (self.shared.engaged or robot_engaged):
            return
        # The session thread is gone, so the control socket is this thread's now.
        try:
            link.request("disengage")
        except LinkTimeout as err:
            log.warning("could not disengage at the end of the session: %s", err)
        else:
            self.shared.engaged = False
            log.info("session over: disengaged")

    def _video_loop(self, link: ConsoleLink, seconds: float | None) -> None:
        cfg = self.cfg.display
        sh = self.shared
        end = None if seconds is None else time.monotonic_ns() + int(seconds * 1e9)
        fresh = FreshnessMonitor(cfg.stale_ms)
        view = SurgeonView(cfg.stale_ms, cfg.telemetry_stale_ms)
        headless = cfg.headless if cfg.headless is not None else not screen_available()
        display = Display(headless, cfg.out_dir, cfg.every_n) if cfg.enabled else None
        receiver = VideoReceiver(link.video_socket, H264Decoder()) if cfg.enabled else None
        status = StatusView(sys.stderr) if headless and cfg.status_view else None
        self.receiver = receiver
        # Dual path: video by one path, moved (with a keyframe request) when it fails.
        def on_video_switch() -> None:  # the path's own SUB, connected in advance
            if receiver is not None:
                receiver.use_socket(link.video_socket)
                receiver.on_path_switch()

        video_path = VideoPathSwitch(
            link, None if receiver is None else lambda: receiver.stats.received,
            on_video_switch)
        g2g_ms: float | None = None
        fps = 0.0
        last_shown_ns: int | None = None
        strokes = self._strokes(link)
        shown_id = 0
        canvas: Image | Picture = np.zeros(BLANK_SHAPE, np.uint8)
        """The newest picture without its HUD, for redraws between pictures (the display
        never draws on the picture it is given; only the mentor's strokes need a copy)."""
        next_redraw = 0
        while not self._halt.is_set() and (end is None or time.monotonic_ns() < end):
            # Dual path: short waits once a frame is overdue (a gone path noticed sooner).
            frame = receiver.poll(video_path.wait_ms(time.monotonic_ns())) \
                if receiver is not None else None
            if receiver is None:
                self._halt.wait(0.02)
            now = time.monotonic_ns()
            if receiver is not None:
                video_path.poll(now)
            if receiver is not None and sh.offset_ns is not None:
                receiver.offset_ns = sh.offset_ns
            hud = self._hud(view, now, g2g_ms, fps)
            if frame is not None and display is not None:
                # The HUD shows the age of the frame it is drawn on, not of the last one.
                age_ms = (now - frame.capture_local_ns) / 1e6
                if last_shown_ns is not None:
                    fps = 0.9 * fps + 0.1 * 1e9 / max(1, now - last_shown_ns) if fps else (
                        1e9 / max(1, now - last_shown_ns))
                last_shown_ns = now
                # Still YUV: converted only if the display draws it (headless: never).
                canvas, shown_id = frame.picture, frame.frame_id
                picture: Image | Picture = canvas
                if strokes is not None:  # the mentor's drawings, under the HUD
                    strokes.poll(now)
                    picture = drawn = as_bgr(canvas).copy()
                    strokes.render(drawn, shown_id, now)
                display.show(picture, replace(hud, video_age_ms=age_ms, fps=fps or None))
                self.alarm_draws.on_drawn(hud.vitals, time.monotonic_ns())
                next_redraw = now + HUD_REDRAW_NS
                shown = time.monotonic_ns()
                fresh.on_displayed(frame.capture_local_ns, shown)
                self.stages.on_shown(frame, shown)
                video_path.on_displayed(shown, frame)
                g2g = frame.g2g_ns(shown) // 1000
                g2g_ms = g2g / 1000
                if len(self.g2g_us) < 1_000_000:
                    self.g2g_us.append(g2g)
            elif display is not None and now >= next_redraw:
                # No new picture: the same one with today's HUD (ages grown, state re-judged).
                redraw = canvas
                if strokes is not None:
                    strokes.poll(now)
                    redraw = as_bgr(canvas).copy()
                    strokes.render(redraw, shown_id, now)
                display.show(redraw, hud)
                self.alarm_draws.on_drawn(hud.vitals, time.monotonic_ns())
                next_redraw = now + HUD_REDRAW_NS
            if display is not None and (action := HANDOFF_KEYS.get(display.last_key & 0xFF)):
                display.last_key = -1
                sh.handoff_action = action  # G grants, R asks, T takes over (a mentor)
            sh.video_age_us = fresh.age_us(now)
            sh.video_stale = fresh.stale(now) if cfg.enabled else False
            if receiver is not None and (kfr := receiver.take_keyframe_request(now)):
                sh.keyframe_requests.append(kfr)
                self.stages.on_keyframe_request(kfr.reason)
                video_path.on_keyframe_requested(now)  # the switch's split
            if status is not None:
                status.update(hud, now)
        if display is not None:
            display.close()
        if strokes is not None:
            strokes.close()
        if status is not None:
            status.close()

    def _strokes(self, link: ConsoleLink) -> StrokeLayer | None:
        port = self.cfg.telestration.strokes_port
        if port is None or not self.cfg.display.enabled:
            return None
        keys = ClientKeys.load_surgeon(self.cfg.link.keys_dir)
        return StrokeLayer.connect(zmq.Context.instance(), f"tcp://{self.cfg.link.host}:{port}",
                                   keys)

    def _hud(self, view: SurgeonView, now: int, g2g_ms: float | None, fps: float) -> HudState:
        """What both displays show now (the picture's age as of the newest picture)."""
        sh = self.shared
        out = sh.last_output
        connection = self.watch.poll() if self.watch is not None else ""
        hud = view.build(
            tlm=sh.telemetry, tlm_recv_ns=sh.telemetry_ns, now_ns=now, message=sh.message,
            message_ns=sh.message_ns, teleop_why=out.why if out and not out.valid else "",
            clutch=bool(out and out.clutch), operator_present=bool(out and out.operator_present),
            scale=sh.scale, video_age_ms=None if sh.video_age_us is None
            else sh.video_age_us / 1000, g2g_ms=g2g_ms, fps=fps or None,
            connection=connection)
        hud = replace(hud, vitals=vitals_strip(sh.vitals, sh.vitals_ns, now))
        if sh.telemetry is not None and sh.telemetry.paths:  # dual path: "A ok 1.2 ms / B down"
            hud = replace(hud, paths=describe_paths(sh.telemetry.paths))
        self.last_hud = hud
        return hud

    def _write_summary(self, commands: CommandThread, link: ConsoleLink) -> None:
        if self.summary_path is None:
            return
        g2g = np.array(self.g2g_us or [0], dtype=float) / 1000
        rx = self.receiver.stats if self.receiver is not None else None
        summary: dict[str, Any] = {
            "commands_sent": commands.sent,
            "device_errors": commands.device_errors,
            "command_period": asdict(commands.pacer.stats()),
            "command_send_gaps": commands.send_gaps.summary(),
            "command_late_split": commands.late.summary(),
            "video_stages": self.stages.summary(),
            "link_counters": dict(link.counters),
            "g2g_ms": {"n": len(self.g2g_us), "p50": float(np.percentile(g2g, 50)),
                       "p99": float(np.percentile(g2g, 99)), "max": float(g2g.max())},
            "video": asdict(rx) if rx is not None else None,
            "trips_seen": self.shared.trips,
            "engagements": self.shared.engagements,
            "events": [e.code for e in self.shared.events],
            "final_state": self.shared.telemetry.state if self.shared.telemetry else None,
            "vitals_alarms_drawn": self.alarm_draws.first_drawn,
            "thread_cpu_s": {k: round(v, 2) for k, v in thread_cpu_seconds().items()},
            "gc": GC_PAUSES.summary(),
            "thread_fifo_priority": thread_priorities(),
        }
        self.summary_path.parent.mkdir(parents=True, exist_ok=True)
        self.summary_path.write_text(json.dumps(summary, indent=2, default=str))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery console", description=plain_help(__doc__))
    p.add_argument("--config", type=Path, help="console config TOML (default: simulated rig)")
    p.add_argument("--seconds", type=float, help="stop after this long")
    p.add_argument("--summary", type=Path, help="write a JSON run summary here at exit")
    p.add_argument("--headless", action="store_true", help="no window; HUD to files")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = load(ConsoleConfig, args.config)
        if args.headless:
            cfg = replace(cfg, display=replace(cfg.display, headless=True))
        app = ConsoleApp(cfg, args.summary)

        def _on_signal(signum: int, frame: FrameType | None) -> None:
            app.stop()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        return app.run(args.seconds)
    except (DeviceError, TelesurgeryError) as err:
        log.error("console cannot start: %s", err)
        return 2
