"""Capture sources behind one interface, each keeping only its newest frame.

A reader thread pulls frames as fast as the source produces them and keeps
only the newest one with its capture time (lerobot's ``read_latest`` idea):
the sender never works through a backlog, and a consumer can refuse a frame
that is too old. ``wait_newer()`` wakes the sender the moment a frame lands, so
no frame waits for a polling tick.

Sources are registered by name (python-can's backend table): a new source is
one module plus one row in ``SOURCES``.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Literal, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from robot_side.video.config import VideoConfig
from telesurgery.errors import VideoError
from telesurgery.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
PixelFormat = Literal["bgr24", "yuv420p"]
"""bgr24: height x width x 3 (OpenCV's order); yuv420p: planar I420, one buffer of
height * 3 / 2 rows of width (Y, then U, then V), what H.264 encoders take."""


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    frame_id: int
    capture_ns: int
    """time.monotonic_ns() when the frame became available to the pipeline."""
    image: Image
    """uint8 pixels in ``pixel_format``."""
    pixel_format: PixelFormat = "bgr24"

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        rows = int(self.image.shape[0])
        return rows if self.pixel_format == "bgr24" else rows * 2 // 3

    def bgr(self) -> Image:
        """The picture in BGR (converted here when the source delivers YUV)."""
        if self.pixel_format == "bgr24":
            return self.image
        return np.asarray(cv2.cvtColor(self.image, cv2.COLOR_YUV2BGR_I420), dtype=np.uint8)


class FrameSource(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def latest(self) -> CapturedFrame | None: ...

    def wait_newer(self, after_id: int | None, timeout_s: float) -> CapturedFrame | None: ...


class ThreadedSource:
    """Owns the reader thread and the newest-frame slot; drivers implement ``_grab``.

    ``paced`` sources (a file, the synthetic scene) produce a frame whenever asked,
    so the base class spaces them at the configured rate; a camera paces itself.
    """

    paced = False
    pixel_format: PixelFormat = "bgr24"
    """What ``_grab`` returns; a source that can give the encoder's format saves a
    conversion per frame."""

    def __init__(self, cfg: VideoConfig) -> None:
        self.cfg = cfg
        self._cond = threading.Condition()
        self._latest: CapturedFrame | None = None
        self._next_id = 0
        self._running = False
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.resized = 0
        self._ratelog = RateLimitedLog(log)
        """A camera failing every frame must not write 30 lines a second."""

    # -- driver hooks
    def _open(self) -> None:
        """Acquire the device; raise VideoError naming it when that fails."""

    def _grab(self) -> Image | None:
        """Return the next image in ``pixel_format``, or None at a transient failure."""
        raise NotImplementedError

    def _close(self) -> None:
        """Release the device."""

    # -- public interface
    def start(self) -> None:
        if self._running:
            return
        self._open()
        self._running = True
        self._thread = threading.Thread(target=self._run, name=type(self).__name__,
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self._close()
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> ThreadedSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def frames_captured(self) -> int:
        return self._next_id

    def latest(self, max_age_ms: float | None = None) -> CapturedFrame | None:
        """The newest frame, or None when there is none or it is older than max_age_ms."""
        with self._cond:
            frame = self._latest
        if frame is None:
            return None
        if max_age_ms is not None and time.monotonic_ns() - frame.capture_ns > max_age_ms * 1e6:
            return None
        return frame

    def wait_newer(self, after_id: int | None, timeout_s: float) -> CapturedFrame | None:
        """Block until a frame newer than ``after_id`` exists; None on timeout or stop."""
        deadline = time.monotonic_ns() + int(timeout_s * 1e9)
        with self._cond:
            while self._running:
                frame = self._latest
                if frame is not None and (after_id is None or frame.frame_id > after_id):
                    return frame
                remaining = (deadline - time.monotonic_ns()) / 1e9
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
        return None

    # -- reader thread
    def _run(self) -> None:
        period = self.cfg.frame_period_ns
        next_due = time.monotonic_ns()
        while self._running:
            if self.paced:
                delay = next_due - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
                # Late frames are not made up for: a live scene skips, it does not catch up.
                next_due = max(next_due + period, time.monotonic_ns())
            try:
                image = self._grab()
                image = None if image is None else self._fit(image)
            except (cv2.error, OSError, VideoError) as err:
                self.errors += 1
                self._ratelog(logging.WARNING, "capture", "%s: capture failed (%d so far): %s",
                              type(self).__name__, self.errors, err)
                image = None
            if image is None:
                time.sleep(period / 4e9)
                continue
            self._publish(image)

    def _fit(self, image: Image) -> Image:
        h, w = self.cfg.height, self.cfg.width
        if self.pixel_format != "bgr24":
            if image.shape != (h * 3 // 2, w):
                raise VideoError(f"{type(self).__name__} delivered {image.shape}, not "
                                 f"{self.pixel_format} at {w}x{h}")
            return image
        if image.shape[:2] == (h, w):
            return image
        if self.resized == 0:
            log.warning("%s delivers %dx%d, resizing to %dx%d", type(self).__name__,
                        image.shape[1], image.shape[0], w, h)
        self.resized += 1
        return np.asarray(cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA),
                          dtype=np.uint8)

    def _publish(self, image: Image, capture_ns: int | None = None) -> None:
        stamp = time.monotonic_ns() if capture_ns is None else capture_ns
        frame = CapturedFrame(self._next_id, stamp, image, self.pixel_format)
        self._next_id += 1
        with self._cond:
            self._latest = frame
            self._cond.notify_all()


class OpenCvSource(ThreadedSource):
    """A camera or file read through cv2.VideoCapture."""

    def __init__(self, cfg: VideoConfig, target: str | int, what: str) -> None:
        super().__init__(cfg)
        self._target = target
        self._what = what
        self._cap: cv2.VideoCapture | None = None

    def _open(self) -> None:
        cap = cv2.VideoCapture(self._target)
        if not cap.isOpened():
            cap.release()
            raise VideoError(f"{self._what} {self._target!r} could not be opened")
        self._configure(cap)
        self._cap = cap
        log.info("%s %r opened", self._what, self._target)

    def _configure(self, cap: cv2.VideoCapture) -> None:
        """Request format settings before the first read."""

    def _grab(self) -> Image | None:
        if self._cap is None:
            return None
        ok, image = self._cap.read()
        return np.asarray(image, dtype=np.uint8) if ok else self._at_end()

    def _at_end(self) -> Image | None:
        raise VideoError(f"{self._what} {self._target!r} returned no frame")

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class CameraSource(OpenCvSource):
    def __init__(self, cfg: VideoConfig) -> None:
        device = cfg.device.strip()
        super().__init__(cfg, int(device) if device.isdigit() else device, "camera")

    def _configure(self, cap: cv2.VideoCapture) -> None:
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
        cap.set(cv2.CAP_PROP_FPS, self.cfg.fps)
        # One driver buffer: a deeper queue hands us frames that are already old.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)


class FileSource(OpenCvSource):
    """A video file replayed in a loop at the configured rate."""

    paced = True

    def __init__(self, cfg: VideoConfig) -> None:
        if cfg.path is None:
            raise VideoError("file source needs video.path")
        super().__init__(cfg, str(cfg.path), "video file")

    def _at_end(self) -> Image | None:
        if self._cap is not None and self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
            ok, image = self._cap.read()
            if ok:
                return np.asarray(image, dtype=np.uint8)
        raise VideoError(f"video file {self._target!r} has no readable frame")


SOURCES: dict[str, tuple[str, str]] = {
    "synthetic": ("robot_side.video.synthetic", "SyntheticSource"),
    "camera": ("robot_side.video.capture", "CameraSource"),
    "file": ("robot_side.video.capture", "FileSource"),
}


def open_source(cfg: VideoConfig) -> ThreadedSource:
    """Build (not start) the source named by ``cfg.source``."""
    if cfg.source not in SOURCES:
        raise VideoError(f"unknown video source {cfg.source!r}; known: {sorted(SOURCES)}")
    module_name, class_name = SOURCES[cfg.source]
    cls: type[ThreadedSource] = getattr(importlib.import_module(module_name), class_name)
    return cls(cfg)
