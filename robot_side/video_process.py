"""The robot's video sender in its own process: capture -> H.264 -> video socket.

Not a thread of the robot node: measured on this machine, rendering or encoding
720p30 in a thread of the control loop's process raised the loop's wake-up
error p99 from 120 us to 1.2-1.9 ms, because both hold the GIL for
milliseconds. In its own process the encoder cannot delay the arm, and a
crash in a codec cannot take the control loop with it.

The child binds the video port with the same CurveZMQ keys and authenticator
rules as the rest of the link. Keyframe requests and the surgeon's picture age
(rate feedback) reach it straight from the thread that learns them, over a
local ZeroMQ PULL socket in a private folder: one non-blocking send each, no
queue feeder thread in the control process. The encoder's name, errors and
counters come back through a bounded queue, and so does nothing else. A child
whose parent has died exits by itself.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from robot_side.video.config import VideoConfig
from robot_side.video.mirror import MirrorKeyframes, open_local_mirror
from telesurgery.gcpolicy import PAUSES as GC_PAUSES
from telesurgery.gcpolicy import settle
from transport.config import LinkConfig

log = logging.getLogger(__name__)

FINAL_PUT_S = 0.5
STOP_TIMEOUT_NS = 5_000_000_000
OUTBOX_SIZE = 64

AGE_REPORT_PERIOD_NS = 100_000_000
"""Rate control needs the picture age a few times a second, not per command."""
CONTROL_HWM = 64
WAIT_SLICE_S = 0.005
"""The encoder loop waits for the next capture in slices this long, so that a keyframe
request is served within one (with the newest picture, ``_loop``), not at the next
frame slot."""
_STARTED_NS = time.monotonic_ns()
"""In the child: when its module was imported, i.e. the process started (spawn)."""
RESEND_MAX_AGE_NS = 100_000_000
"""The newest picture is sent again as a keyframe only while it is this fresh (a stalled
camera's last picture is not news: the next capture will be the keyframe)."""


class VideoControl:
    """One thread's line to the video process: keyframe requests and picture age.

    A PUSH socket owned by the thread that uses it; sends never block (a full pipe
    drops and counts: the next request or age report supersedes it anyway).
    """

    def __init__(self, ctx: zmq.Context[Any], path: Path) -> None:
        self._sock: zmq.Socket[Any] = ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, CONTROL_HWM)
        self._sock.connect(f"ipc://{path}")
        self._last_age_ns = 0
        self.dropped = 0

    def _send(self, kind: str, value: Any) -> None:
        try:
            self._sock.send_json([kind, value], zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def request_keyframe(self, reason: str) -> None:
        self._send("keyframe", reason)

    def report_video_age(self, age_us: int | None) -> None:
        now = time.monotonic_ns()
        if age_us is not None and now - self._last_age_ns >= AGE_REPORT_PERIOD_NS:
            self._last_age_ns = now
            self._send("age", age_us)

    def close(self) -> None:
        self._sock.close(0)


class VideoProcess:
    def __init__(self, video: VideoConfig, link: LinkConfig, keys_dir: Path,
                 outbox_size: int = OUTBOX_SIZE, control_dir: Path | None = None,
                 *, local_socket: Path | None = None) -> None:
        ctx = mp.get_context("spawn")
        self._own_dir = control_dir is None
        folder = Path(tempfile.mkdtemp(prefix="ts-video-")) if control_dir is None else control_dir
        self.control_path = folder / "video-control.sock"
        """ipc PULL socket of the child (robot_side.video_process.VideoControl connects)."""
        self._inbox: mp.Queue[tuple[str, Any]] = ctx.Queue(maxsize=64)
        self._outbox: mp.Queue[tuple[str, Any]] = ctx.Queue(maxsize=outbox_size)
        self._proc = ctx.Process(
            target=_child_main, name="robot-video", daemon=True,
            args=(_ChildArgs(video, link, keys_dir, os.getpid(),
                             logging.getLogger().getEffectiveLevel(), self.control_path,
                             local_socket),
                  self._inbox, self._outbox))
        self.encoder = "starting"
        self.nice: int | None = None
        """The child's nice value as it starts encoding (None: not reported yet)."""
        self.realtime_priority: int | None = None
        """The child's SCHED_FIFO priority as it starts encoding, 0: normal scheduling
        (None: not reported yet)."""
        self.error: str | None = None
        self.stats: dict[str, Any] = {}
        self._stopped = False
        self.dropped_requests = 0
        self._last_age_ns = 0

    def start(self) -> None:
        self._proc.start()

    def control(self, ctx: zmq.Context[Any]) -> VideoControl:
        """A line for one thread (create one per thread that sends)."""
        return VideoControl(ctx, self.control_path)

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def exitcode(self) -> int | None:
        """None while running; negative: ended by that signal (e.g. terminated)."""
        return self._proc.exitcode

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self._inbox.put_nowait(item)
        except queue.Full:
            self.dropped_requests += 1

    def request_keyframe(self, reason: str) -> None:
        self._put(("keyframe", reason))

    def report_video_age(self, age_us: int | None) -> None:
        now = time.monotonic_ns()
        if age_us is not None and now - self._last_age_ns >= AGE_REPORT_PERIOD_NS:
            self._last_age_ns = now
            self._put(("age", age_us))

    def poll(self) -> None:
        """Take what the child reported (encoder choice, errors, counters)."""
        while True:
            try:
                kind, value = self._outbox.get_nowait()
            except queue.Empty:
                return
            if kind == "encoder":
                self.encoder = str(value)
            elif kind == "scheduling":
                self.realtime_priority, self.nice = (int(v) for v in value)
            elif kind == "error":
                self.error = str(value)
            elif kind == "stats":
                self.stats = dict(value)

    def describe(self) -> str:
        self.poll()
        return f"not running: {self.error}" if self.error else self.encoder

    def summary(self) -> dict[str, Any]:
        self.poll()
        return {"encoder": self.describe(), "nice": self.nice,
                "realtime_priority": self.realtime_priority, **self.stats,
                "dropped_requests": self.dropped_requests}

    def stop(self) -> None:
        """Stop the encoder process and take its final counters; a second call is a no-op."""
        if self._stopped:
            return
        self._stopped = True
        self._put(("stop", None))
        deadline = time.monotonic_ns() + STOP_TIMEOUT_NS
        while self._proc.is_alive() and time.monotonic_ns() < deadline:
            self.poll()  # a child flushing its last report must find room for it
            self._proc.join(0.05)
        if self._proc.is_alive():
            log.warning("video process did not stop; terminating it")
            self._proc.terminate()
            self._proc.join(2.0)
        self.poll()
        if self._own_dir:
            shutil.rmtree(self.control_path.parent, ignore_errors=True)


@dataclass(frozen=True)
class _ChildArgs:
    video: VideoConfig
    link: LinkConfig
    keys_dir: Path
    parent_pid: int
    log_level: int
    control_path: Path
    local_socket: Path | None = None
    """ipc XPUB copy of every access unit for the robot's own observers (page, recorder)."""


def _child_main(args: _ChildArgs, inbox: mp.Queue[tuple[str, Any]],
                outbox: mp.Queue[tuple[str, Any]]) -> None:
    from robot_side.video.capture import open_source
    from robot_side.video.encoder import H264Encoder, select_encoder
    from robot_side.video.sender import VideoSender
    from telesurgery.errors import TelesurgeryError
    from transport.auth import start_authenticator
    from transport.keys import ServerKeys
    from transport.link import video_server_socket

    video, link = args.video, args.link
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node stops us after Ctrl-C
    # Before any thread starts: libx264's, libzmq's and the capture thread inherit it.
    with contextlib.suppress(queue.Full):
        # One message: the queue may be as short as two, and "encoder" must fit after it.
        outbox.put_nowait(("scheduling", (_realtime(video.realtime_priority),
                                          _renice(0 if video.realtime_priority else video.nice))))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        keys = ServerKeys.load(args.keys_dir)
        with start_authenticator(ctx, keys):
            sock = video_server_socket(ctx, link, keys)
            control = ctx.socket(zmq.PULL)
            control.setsockopt(zmq.LINGER, 0)
            control.setsockopt(zmq.RCVHWM, CONTROL_HWM)
            control.bind(f"ipc://{args.control_path}")
            mirror = open_local_mirror(ctx, args.local_socket)
            try:
                choice = select_encoder(video)
                outbox.put(("encoder", choice.describe()))
                log.info("video encoder: %s", choice.describe())
                sender = VideoSender(sock, H264Encoder(video, choice), mirror=mirror)
                source = open_source(video)
                source.start()
                settle("video process")
                try:
                    _loop(source, sender, control, inbox, outbox, parent_pid=args.parent_pid,
                          mirror=mirror)
                finally:
                    source.stop()
                    log.info("video process: %s", GC_PAUSES.describe())
                    # Never block the exit on a parent that stopped reading (or died).
                    with contextlib.suppress(queue.Full):
                        outbox.put(("stats", _report(sender)), timeout=FINAL_PUT_S)
            finally:
                control.close(0)
                sock.close(0)
                if mirror is not None:
                    mirror.close(0)
    except TelesurgeryError as err:
        log.error("video stopped: %s; the surgeon's picture will go stale and the arm "
                  "will hold", err)
        with contextlib.suppress(queue.Full):
            outbox.put_nowait(("error", str(err)))
    finally:
        ctx.term()


def _report(sender: Any) -> dict[str, Any]:
    """The sender's counters and this process's own CPU (every thread) and time up, so the
    robot's CPU splits into control and encode (the issue's goal counts both)."""
    return {**sender.report(), "cpu_s": round(time.process_time(), 3),
            "up_s": round((time.monotonic_ns() - _STARTED_NS) / 1e9, 3)}


def _on_every_thread(set_one: Callable[[int], object]) -> None:
    """``set_one(tid)`` for each thread of this process: the ones started before us (the
    numerical libraries' pools, at import) do not inherit what this thread sets next.
    A thread that ended meanwhile is skipped; a refusal (OSError) goes to the caller."""
    tids = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir(
        "/proc/self/task") else [0]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):
            set_one(tid)


def _renice(nice: int) -> int:
    """Set this process's nice value (per thread on Linux: every thread so far, and
    inherited by the threads started later) where permitted; returns the value in force."""
    if nice:
        try:
            _on_every_thread(lambda tid: os.setpriority(os.PRIO_PROCESS, tid, nice))
        except OSError as err:
            log.info("video process nice %d not permitted (%s); normal priority", nice, err)
    return os.getpriority(os.PRIO_PROCESS, 0)


def _realtime(priority: int) -> int:
    """SCHED_FIFO ``priority`` for this thread and, inherited, every thread it starts,
    where permitted (0: leave it); returns the priority in force (0: normal)."""
    if priority:
        try:
            param = os.sched_param(priority)
            _on_every_thread(lambda tid: os.sched_setscheduler(tid, os.SCHED_FIFO, param))
        except OSError as err:
            log.info("video process SCHED_FIFO %d not permitted (%s); normal scheduling",
                     priority, err)
    return os.sched_getparam(0).sched_priority


def _take_control(control: zmq.Socket[Any], sender: Any) -> bool:
    """Pass the node threads' requests to ``sender``; True if one asked for a keyframe."""
    keyframe = False
    while True:
        try:
            item = control.recv_json(zmq.NOBLOCK)
        except zmq.Again:
            return keyframe
        except ValueError:  # not JSON: only the robot's own account can connect
            log.warning("video control: undecodable message dropped")
            continue
        match item:
            case ["keyframe", str(reason)]:
                sender.request_keyframe(reason[:64])
                keyframe = True
            case ["age", int(age_us)] if age_us >= 0:
                sender.report_video_age(age_us)
            case _:
                log.warning("video control: unexpected message dropped")


def _loop(source: Any, sender: Any, control: zmq.Socket[Any],
          inbox: mp.Queue[tuple[str, Any]], outbox: mp.Queue[tuple[str, Any]], *,
          parent_pid: int, mirror: zmq.Socket[bytes] | None = None) -> None:
    last: Any = None
    """The newest captured frame sent (a ``CapturedFrame``)."""
    keyframe_due = False
    next_stats = time.monotonic_ns()
    keyframes = MirrorKeyframes(mirror)
    while os.getppid() == parent_pid:  # a parent killed with SIGKILL leaves us orphaned
        keyframes.poll(sender, time.monotonic_ns())
        while True:
            try:
                kind, value = inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "stop":
                return
            if kind == "keyframe":
                sender.request_keyframe(value)
                keyframe_due = True
            elif kind == "age":
                sender.report_video_age(value)
        keyframe_due |= _take_control(control, sender)
        frame = source.wait_newer(None if last is None else last.frame_id,
                                  timeout_s=WAIT_SLICE_S)
        if (frame is None and keyframe_due and last is not None
                and time.monotonic_ns() - last.capture_ns < RESEND_MAX_AGE_NS):
            # A keyframe now (a path switch, a gap): the newest picture again, as an IDR,
            # not the next capture up to a frame interval later. Its capture time is its
            # own, so the console's picture age stays true.
            frame = last
        if frame is not None:
            last, keyframe_due = frame, False
            sender.send(frame)
        now = time.monotonic_ns()
        if now >= next_stats:
            next_stats = now + 1_000_000_000
            with contextlib.suppress(queue.Full):
                outbox.put_nowait(("stats", _report(sender)))
