"""The session recorder: its own process, observing the robot; never part of its safety.

It subscribes to the observer feed (telemetry, audited safety events) and to the
video mirror (every H.264 access unit), and writes one rosbag2/MCAP folder per
robot-node run. A disk that fills, a folder that vanishes or any write error stops
the recording with an alarm (an ERROR line and the status file the supervision page
shows and the node's network thread puts into telemetry for the surgeon's HUD,
``robot_side.recording.health``); the robot is not told to do anything: safety does
not depend on a recording. The feed carries telemetry, audited safety events and the
surgeon's commands as received (``CommandBatch``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from robot_side.childproc import ChildProcess
from robot_side.observe import ObserverClient
from robot_side.recording.bag import SessionBag
from robot_side.recording.config import RecordConfig
from robot_side.recording.health import recording_status_path
from telesurgery.errors import SchemaError
from telesurgery.ratelog import RateLimitedLog
from transport.schema import (
    CommandBatch,
    SafetyEvent,
    Telemetry,
    VideoFrameHeader,
    Vitals,
    decode,
)

log = logging.getLogger(__name__)
ratelog = RateLimitedLog(log)

CHECK_PERIOD_NS = 1_000_000_000
VIDEO_RCVHWM = 600
"""Frames queued for us while the disk is slow (20 s at 30 fps): none is lost to a stall."""


@dataclass(frozen=True)
class RecorderPaths:
    observe: Path
    video: Path | None
    status: Path
    """JSON the page reads: recording / stopped / failed, why, where, how much."""

    @classmethod
    def from_robot(cls, robot_cfg: object) -> RecorderPaths:
        from robot_side.config import RobotConfig

        if not isinstance(robot_cfg, RobotConfig):
            raise TypeError("expected a RobotConfig")
        return cls(observe=robot_cfg.observe.socket,
                   video=robot_cfg.observe.video_path if robot_cfg.record.video else None,
                   status=recording_status_path(robot_cfg))


class Recorder:
    def __init__(self, cfg: RecordConfig, paths: RecorderPaths,
                 joint_names: tuple[str, ...]) -> None:
        self.cfg = cfg
        self.paths = paths
        self.joint_names = joint_names
        stamp = time.strftime("%Y%m%d-%H%M%S")  # wall-clock ok: a folder name
        cfg.folder.mkdir(parents=True, exist_ok=True)
        self.folder_ino = cfg.folder.stat().st_ino
        self.session = cfg.folder / f"session-{stamp}-{os.getpid()}"
        self.bag: SessionBag | None = SessionBag(self.session, joint_names)
        self.state, self.why = "recording", ""
        self.bad_video = 0
        self._video_started = False
        self.skipped_before_keyframe = 0
        self.video_gaps = 0
        self._last_frame_id: int | None = None
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._video: Any = None
        if paths.video is not None:
            self._video = self._ctx.socket(zmq.XSUB)
            self._video.setsockopt(zmq.LINGER, 0)
            self._video.setsockopt(zmq.RCVHWM, VIDEO_RCVHWM)
            self._video.connect(f"ipc://{paths.video}")
            self._video.send(b"\x01")  # subscribe: the video process answers with a keyframe
        self._feed = ObserverClient(paths.observe, self._ctx)
        self._next_check = 0
        self._next_status = 0
        self._counts = {"messages": 0, "video_frames": 0, "commands": 0, "commands_lost": 0}
        log.info("recording this session to %s", self.session)

    # ------------------------------------------------------------ loop
    def run(self, keep_going: Any) -> None:
        poller = zmq.Poller()
        poller.register(self._feed.socket, zmq.POLLIN)
        if self._video is not None:
            poller.register(self._video, zmq.POLLIN)
        while keep_going():
            events = dict(poller.poll(100))
            if self.bag is None:
                self._drain(events)
                self._write_status()  # still alive, still stopped: the alarm stays current
                continue
            try:
                if self._feed.socket in events:
                    self._on_feed()
                if self._video is not None and self._video in events:
                    self._on_video()
                self._check_disk()
            except OSError as err:
                self._fail(f"write failed: {err}")
            self._write_status()

    def _drain(self, events: dict[Any, int]) -> None:
        """Stopped: keep the sockets empty so nothing queues up anywhere."""
        if self._feed.socket in events:
            self._feed.recv(0)
        if self._video is not None and self._video in events:
            self._video.recv_multipart()

    def _on_feed(self) -> None:
        msg = self._feed.recv(0)
        if self.bag is None:
            return
        if isinstance(msg, Telemetry):
            self.bag.telemetry(msg)
        elif isinstance(msg, SafetyEvent):
            self.bag.event(msg)
        elif isinstance(msg, Vitals):
            self.bag.vitals(msg)
        elif isinstance(msg, CommandBatch):
            self.bag.commands_received(msg)

    def _on_video(self) -> None:
        parts = self._video.recv_multipart()
        try:
            if len(parts) != 2:
                raise SchemaError("video", f"expected 2 frames, got {len(parts)}")
            header = decode(parts[0])
            if not isinstance(header, VideoFrameHeader):
                raise SchemaError("video", f"expected a video header, got {header.TYPE}")
            if header.payload_len != len(parts[1]):
                raise SchemaError("video.payload_len", "does not match the payload")
        except SchemaError as err:
            self.bad_video += 1
            ratelog(logging.WARNING, "video", "recorder: bad video message (%s)", err)
            return
        if not self._video_started and not header.keyframe:
            self.skipped_before_keyframe += 1  # undecodable without the keyframe: not kept
            return
        self._video_started = True
        if self._last_frame_id is not None and header.frame_id > self._last_frame_id + 1:
            # Frames the mirror never gave us (its high-water mark, a stall here): the
            # file's gaps, counted so the recording cost is measured, not assumed.
            self.video_gaps += header.frame_id - self._last_frame_id - 1
        self._last_frame_id = header.frame_id
        if self.bag is not None:
            self.bag.video(header, parts[1])

    def _check_disk(self) -> None:
        now = time.monotonic_ns()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_PERIOD_NS
        try:
            st = self.cfg.folder.stat()
            if st.st_ino != self.folder_ino or not self.session.is_dir():
                raise FileNotFoundError("the recording folder was removed or replaced")
            free_mb = shutil.disk_usage(self.session).free / 1e6
        except OSError as err:
            self._fail(f"recording folder gone: {err}")
            return
        if free_mb < self.cfg.min_free_mb:
            self._fail(f"disk nearly full ({free_mb:.0f} MB free, "
                       f"minimum {self.cfg.min_free_mb:.0f} MB)")

    def _fail(self, why: str) -> None:
        if self.bag is None:
            return
        log.error("RECORDING STOPPED: %s; %s keeps what was written so far; the robot "
                  "is not affected", why, self.session)
        bag, self.bag = self.bag, None
        try:
            bag.close()
        except Exception as err:  # the folder may be gone or full: say so, keep failing safe
            log.warning("recording: closing %s after the failure also failed: %s",
                        self.session, err)
        self.state, self.why = "failed", why
        self._write_status(force=True)

    def _write_status(self, force: bool = False) -> None:
        now = time.monotonic_ns()
        if not force and now < self._next_status:
            return
        self._next_status = now + CHECK_PERIOD_NS
        if self.bag is not None:
            self._counts = {"messages": self.bag.messages,
                            "video_frames": self.bag.video_frames,
                            "commands": self.bag.commands,
                            "commands_lost": self.bag.commands_lost,
                            "video_frames_missing": self.video_gaps}
        body = {"state": self.state, "why": self.why, "path": str(self.session),
                **self._counts, "t_ns": now}
        tmp = self.paths.status.with_name(self.paths.status.name + ".new")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(body))
            os.replace(tmp, self.paths.status)

    def close(self) -> None:
        if self.bag is not None:
            self._write_status(force=True)  # the final counts
            try:
                self.bag.close()
                self.state, self.why = "stopped", "the robot node stopped"
            except OSError as err:
                self.state, self.why = "failed", f"closing failed: {err}"
            self.bag = None
            log.info("recording closed: %s", self.session)
        self._write_status(force=True)
        self._feed.close()
        if self._video is not None:
            self._video.close(0)
        self._ctx.term()


def _child_main(cfg: RecordConfig, paths: RecorderPaths, joint_names: tuple[str, ...],
                parent_pid: int, log_level: int) -> None:
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = {"now": False}

    def on_term(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        rec = Recorder(cfg, paths, joint_names)
    except Exception as err:  # a recording that cannot start never stops the robot
        log.error("RECORDING NOT STARTED: %s", err)
        with contextlib.suppress(OSError):
            paths.status.write_text(json.dumps({"state": "failed", "why": str(err),
                                                "t_ns": time.monotonic_ns()}))
        return
    try:
        rec.run(lambda: not stop["now"] and os.getppid() == parent_pid)
    finally:
        rec.close()


class RecorderProcess(ChildProcess):
    """The recorder's process: on SIGTERM it closes the bag (metadata.yaml) and exits; a
    recorder killed after the wait leaves a bag without its metadata."""

    def __init__(self, cfg: RecordConfig, paths: RecorderPaths,
                 joint_names: tuple[str, ...]) -> None:
        super().__init__(_child_main, "robot-recorder", cfg, paths, joint_names,
                         stop_timeout_s=10.0)

