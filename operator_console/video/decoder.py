"""H.264 decoding for the console: one access unit in, one picture out.

The picture stays in the decoder's YUV until somebody looks at it: a
``Picture`` converts itself to BGR on first use (~0.5 ms per 720p picture), so
a headless console that shows nobody anything (the soak, the demo without a
HUD) spends nothing on conversion; a screen, a written PNG or ``last_image``
pay it once per picture they actually use.

Slice threading only: frame threading would hold a frame per thread back,
which is latency the surgeon cannot see. ``low_delay`` makes FFmpeg output each
picture as soon as it is decoded even when a stream does not declare its
reorder depth.
"""

from __future__ import annotations

import logging
import time
from typing import cast

import av
import cv2
import numpy as np
import numpy.typing as npt

from telesurgery.errors import VideoError

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]


class Picture:
    """A decoded picture; its BGR pixels are made on first use and kept."""

    __slots__ = ("_bgr", "_frame", "convert_ns", "height", "width")

    def __init__(self, frame: av.VideoFrame) -> None:
        self._frame = frame
        self._bgr: Image | None = None
        self.convert_ns = 0
        """What the conversion to BGR cost (0 until somebody asked for it)."""
        self.width, self.height = frame.width, frame.height

    @property
    def converted(self) -> bool:
        return self._bgr is not None

    @property
    def shape(self) -> tuple[int, int, int]:
        """The BGR shape, known without converting."""
        return self.height, self.width, 3

    @property
    def bgr(self) -> Image:
        """height x width x 3 BGR; shared by every caller: copy before drawing on it."""
        if self._bgr is None:
            frame = self._frame
            t0 = time.monotonic_ns()
            if frame.format.name == "yuv420p":
                image = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420)
            else:
                image = frame.to_ndarray(format="bgr24")
            self._bgr = np.asarray(image, dtype=np.uint8)
            self.convert_ns = time.monotonic_ns() - t0
        return self._bgr


def as_bgr(image: Image | Picture) -> Image:
    """BGR pixels of either kind of picture (a Picture converts, once)."""
    return image.bgr if isinstance(image, Picture) else image


class H264Decoder:
    def __init__(self, threads: int = 2) -> None:
        ctx = av.CodecContext.create("h264", "r")
        if not isinstance(ctx, av.VideoCodecContext):
            raise VideoError("h264 decoder is not a video codec in this FFmpeg build")
        ctx.thread_type = "SLICE"
        ctx.thread_count = threads
        ctx.flags |= av.codec.context.Flags.low_delay
        self._ctx = ctx
        self.frames = 0
        self.errors = 0
        self.last_decode_ns = 0

    def decode_picture(self, payload: bytes | memoryview) -> Picture | None:
        """Decode one access unit; None when it yields no picture (e.g. headers only).
        The picture is not converted to BGR until somebody asks (``Picture.bgr``).

        Raises VideoError on a corrupt access unit; the next keyframe recovers.
        """
        t0 = time.monotonic_ns()
        try:
            # PyAV reads any buffer; the stub only admits bytes. No copy is made.
            frames = self._ctx.decode(av.Packet(cast(bytes, payload)))
        except (av.error.FFmpegError, ValueError) as err:
            self.errors += 1
            raise VideoError(f"h264 decode failed ({self.errors} so far): {err}") from err
        if not frames:
            return None
        self.frames += 1
        self.last_decode_ns = time.monotonic_ns() - t0
        return Picture(frames[-1])

    def decode(self, payload: bytes | memoryview) -> Image | None:
        """``decode_picture`` converted to BGR at once, for callers that always look."""
        picture = self.decode_picture(payload)
        return None if picture is None else picture.bgr
