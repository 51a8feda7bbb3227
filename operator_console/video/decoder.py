"""H.264 decoding for the console: one access unit in, one BGR picture out.

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

    def decode(self, payload: bytes | memoryview) -> Image | None:
        """Decode one access unit; None when it yields no picture (e.g. headers only).

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
        frame = frames[-1]
        if frame.format.name == "yuv420p":
            image = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420)
        else:
            image = frame.to_ndarray(format="bgr24")
        self.frames += 1
        self.last_decode_ns = time.monotonic_ns() - t0
        return np.asarray(image, dtype=np.uint8)
