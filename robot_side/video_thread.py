"""The robot node's video thread: newest captured frame -> H.264 -> video socket.

It owns the video PUB socket (nothing else touches it) and never blocks the
control loop: PyAV and OpenCV release the GIL while they encode and convert.
A source or encoder that fails leaves the surgeon without fresh video, which
the watchdog turns into a hold; the thread logs why.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict
from typing import Any

import zmq

from robot_side.netio import Mailbox
from robot_side.video.capture import ThreadedSource, open_source
from robot_side.video.config import VideoConfig
from robot_side.video.encoder import EncoderChoice, H264Encoder, select_encoder
from robot_side.video.sender import VideoSender
from telesurgery.errors import VideoError

log = logging.getLogger(__name__)


class VideoThread(threading.Thread):
    def __init__(self, cfg: VideoConfig, socket: zmq.Socket[bytes], mailbox: Mailbox) -> None:
        super().__init__(name="robot-video", daemon=True)
        self.cfg = cfg
        self.socket = socket
        self.mailbox = mailbox
        self._halt = threading.Event()
        self.choice: EncoderChoice | None = None
        self.sender: VideoSender | None = None
        self.error: str | None = None

    def describe(self) -> str:
        if self.choice is not None:
            return self.choice.describe()
        return f"not running: {self.error}" if self.error else "starting"

    def stop(self) -> None:
        self._halt.set()
        self.join(3.0)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"encoder": self.describe()}
        if self.sender is not None:
            out.update(asdict(self.sender.stats))
        return out

    def run(self) -> None:
        source: ThreadedSource | None = None
        try:
            self.choice = select_encoder(self.cfg)
            log.info("video encoder: %s", self.choice.describe())
            self.sender = VideoSender(self.socket, H264Encoder(self.cfg, self.choice))
            source = open_source(self.cfg)
            source.start()
            self._loop(source, self.sender)
        except VideoError as err:
            self.error = str(err)
            log.error("video stopped: %s; the surgeon's picture will go stale and the arm "
                      "will hold", err)
        finally:
            if source is not None:
                source.stop()

    def _loop(self, source: ThreadedSource, sender: VideoSender) -> None:
        last_id: int | None = None
        last_seq: int | None = None
        while not self._halt.is_set():
            frame = source.wait_newer(last_id, timeout_s=0.2)
            if self.mailbox.keyframe_requested.is_set():
                self.mailbox.keyframe_requested.clear()
                sender.request_keyframe(self.mailbox.keyframe_reason)
            sample = self.mailbox.command
            if sample is not None and sample.cmd.seq != last_seq:
                last_seq = sample.cmd.seq
                sender.report_video_age(sample.cmd.video_age_us)
            if frame is not None:
                last_id = frame.frame_id
                sender.send(frame)
