"""A keyframe request is served at once with the newest picture, not at the next capture.

The video process's real encoder loop (``robot_side.video_process._loop``) with a real
synthetic camera at 2 fps and its real control socket; the sender is a recording
stand-in (what is under test is when the loop asks for a frame, not the encoding). A
request that comes just after a frame was sent is answered by that same picture again
(forced to a keyframe by the sender), half a second before the next capture; before,
the loop waited for that capture (up to a frame interval, at 30 fps the largest part
of a video path switch's picture gap after detection)."""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from robot_side.video.capture import open_source
from robot_side.video.config import VideoConfig
from robot_side.video_process import VideoControl, _loop

SLOW = VideoConfig(width=64, height=48, fps=2.0)


@dataclass
class Stats:
    sent: int = 0


class RecordingSender:
    """Stand-in for ``VideoSender``: records each frame it is given and whether a
    keyframe was due (the real one forces the encoder then)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bool]] = []
        self.stats = Stats()
        self._due = False

    def request_keyframe(self, reason: str = "") -> None:
        self._due = True

    def report_video_age(self, age_us: int | None) -> None:
        pass

    def send(self, frame: Any) -> bool:
        self.sent.append((frame.frame_id, self._due))
        self._due = False
        return True

    def report(self) -> dict[str, Any]:
        return {"sent": len(self.sent)}


def wait_for(what: str, probe: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def test_a_keyframe_request_is_answered_with_the_newest_picture_now(tmp_path: Path) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    control = ctx.socket(zmq.PULL)
    control.bind(f"ipc://{tmp_path}/video-control.sock")
    line = VideoControl(ctx, tmp_path / "video-control.sock")
    inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
    outbox: queue.Queue[tuple[str, Any]] = queue.Queue()
    sender = RecordingSender()
    source = open_source(SLOW)
    source.start()
    loop = threading.Thread(target=_loop, args=(source, sender, control, inbox, outbox),
                            kwargs={"parent_pid": os.getppid()}, daemon=True)
    loop.start()
    try:
        wait_for("a first frame", lambda: len(sender.sent) >= 1)
        first = len(sender.sent)
        line.request_keyframe("path switch")  # just after a send: the next capture is 0.5 s off
        wait_for("the keyframe", lambda: len(sender.sent) > first)
        picture, due = sender.sent[first]
        assert due, sender.sent
        assert picture == sender.sent[first - 1][0], (
            f"the keyframe waited for the next capture: {sender.sent}")
        wait_for("the next capture", lambda: len(sender.sent) > first + 1)
        assert sender.sent[first + 1] == (picture + 1, False)  # once, then the stream goes on
    finally:
        inbox.put(("stop", None))
        loop.join(5.0)
        source.stop()
        line.close()
        control.close(0)
        ctx.term()
