"""A synthetic moving scene: the simulated camera used by tests, demos and benchmarks.

Textured (so the encoder has real work), panning (so motion estimation does
too) with an instrument moving across it, a little sensor noise, and stamped
with its frame id and capture time, both as text for people and as a block
barcode that survives compression for tests (``read_frame_id``).

Drawn straight in the encoder's pixel format, planar YUV 4:2:0 (I420): the
background is converted once and each frame is a window into it (a pan), so a
frame costs a few copies and a few small drawings, not a warp of a large BGR
texture plus a BGR->YUV conversion (measured at 720p: ~7 ms of CPU per frame
before, ~0.5 ms now). ``render()`` still gives BGR for whoever wants to look.
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from robot_side.video.capture import Image, PixelFormat, ThreadedSource
from robot_side.video.config import VideoConfig

BARCODE_BITS = 24
NOISE_FRAMES = 4
NOISE_AMPLITUDE = 6
PAN_MARGIN = 200
"""Pixels of background beyond the frame on every side: the largest pan."""
NEUTRAL_CHROMA = 128
WHITE_Y = 255
BLACK_Y = 0


def _texture(size: int, seed: int) -> Image:
    """Blurred colour noise with a grid and discs: detail at several scales (BGR)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    tex = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    fine = rng.integers(0, 40, (size, size, 1), dtype=np.uint8)
    tex = cv2.add(tex, np.repeat(fine, 3, axis=2))
    for pos in range(0, size, 64):
        cv2.line(tex, (pos, 0), (pos, size - 1), (235, 235, 235), 2)
        cv2.line(tex, (0, pos), (size - 1, pos), (235, 235, 235), 2)
    for _ in range(40):
        center = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(tex, center, int(rng.integers(10, size // 12)), colour, -1, cv2.LINE_AA)
    return np.asarray(tex, dtype=np.uint8)


def _planes(i420: Image, width: int, height: int) -> tuple[Image, Image, Image]:
    """Views of the Y, U and V planes of an I420 buffer (height * 3 / 2 rows of width)."""
    flat = i420.reshape(-1)
    y_size, c_size = width * height, width * height // 4
    y = flat[:y_size].reshape(height, width)
    u = flat[y_size:y_size + c_size].reshape(height // 2, width // 2)
    v = flat[y_size + c_size:].reshape(height // 2, width // 2)
    return y, u, v


class SyntheticScene:
    """Renders frame n of the scene; pure apart from the clock value passed in."""

    def __init__(self, width: int, height: int, fps: float, seed: int = 7) -> None:
        self.width, self.height, self.fps = width, height, fps
        bg_w, bg_h = width + 2 * PAN_MARGIN, height + 2 * PAN_MARGIN
        tex = _texture(max(bg_w, bg_h), seed)[:bg_h, :bg_w]
        bg = np.ascontiguousarray(cv2.cvtColor(tex, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
        self._bg = _planes(bg, bg_w, bg_h)
        rng = np.random.default_rng(seed + 1)
        # Sensor noise on luma, where a camera's ISP leaves most of it.
        self._noise = [rng.integers(0, NOISE_AMPLITUDE, (height, width), dtype=np.uint8)
                       for _ in range(NOISE_FRAMES)]
        self._cell = max(4, min(16, width // (BARCODE_BITS + 4)))

    def render_i420(self, frame_id: int, t_ns: int) -> Image:
        """Frame ``frame_id`` as one I420 buffer: ``height * 3 // 2`` rows of ``width``."""
        t = frame_id / self.fps
        w, h = self.width, self.height
        pan_x = PAN_MARGIN * (0.6 * math.sin(0.5 * t) + 0.3 * math.sin(1.3 * t))
        pan_y = PAN_MARGIN * 0.6 * math.cos(0.3 * t)
        # Even offsets so luma and the half-size chroma planes move together.
        x0 = 2 * round((PAN_MARGIN + pan_x) / 2)
        y0 = 2 * round((PAN_MARGIN + pan_y) / 2)
        out = np.empty((h * 3 // 2, w), dtype=np.uint8)
        y, u, v = _planes(out, w, h)
        bg_y, bg_u, bg_v = self._bg
        cv2.add(bg_y[y0:y0 + h, x0:x0 + w], self._noise[frame_id % NOISE_FRAMES], dst=y)
        np.copyto(u, bg_u[y0 // 2:y0 // 2 + h // 2, x0 // 2:x0 // 2 + w // 2])
        np.copyto(v, bg_v[y0 // 2:y0 // 2 + h // 2, x0 // 2:x0 // 2 + w // 2])
        self._instrument(y, u, v, t)
        self._stamp(y, u, v, frame_id, t_ns)
        return out

    def render(self, frame_id: int, t_ns: int) -> Image:
        """Frame ``frame_id`` in BGR (height x width x 3), as a viewer would see it."""
        bgr = cv2.cvtColor(self.render_i420(frame_id, t_ns), cv2.COLOR_YUV2BGR_I420)
        return np.asarray(bgr, dtype=np.uint8)

    def _instrument(self, y: Image, u: Image, v: Image, t: float) -> None:
        """A grey shaft from the right edge to a tip wandering over the field, with jaws."""
        w, h = self.width, self.height
        tip = (int(w * (0.5 + 0.25 * math.sin(0.9 * t))), int(h * (0.45 + 0.2 * math.sin(1.7 * t))))
        entry = (w - 1, int(h * (0.2 + 0.1 * math.sin(0.4 * t))))
        thick = max(2, w // 80)
        cv2.line(y, entry, tip, 170, thick, cv2.LINE_AA)
        half = (entry[0] // 2, entry[1] // 2), (tip[0] // 2, tip[1] // 2)
        cv2.line(u, *half, NEUTRAL_CHROMA, max(1, thick // 2))
        cv2.line(v, *half, NEUTRAL_CHROMA, max(1, thick // 2))
        opening = 0.35 + 0.25 * math.sin(3.0 * t)
        axis = math.atan2(tip[1] - entry[1], tip[0] - entry[0])
        jaw = 3 * thick
        for side in (-1, 1):
            a = axis + side * opening
            end = (int(tip[0] + jaw * math.cos(a)), int(tip[1] + jaw * math.sin(a)))
            cv2.line(y, tip, end, 220, max(1, thick // 2), cv2.LINE_AA)
            for plane in (u, v):  # steel, not the tissue's colour
                cv2.line(plane, (tip[0] // 2, tip[1] // 2), (end[0] // 2, end[1] // 2),
                         NEUTRAL_CHROMA, max(1, thick // 4))

    def _stamp(self, y: Image, u: Image, v: Image, frame_id: int, t_ns: int) -> None:
        cell = self._cell
        y0 = self.height - 2 * cell
        top, right = y0 - 30, cell * (BARCODE_BITS + 2)
        y[max(0, top):, :right] = BLACK_Y
        # Grey chroma under the stamp, so it decodes as black and white (clamped at 0).
        c_top, c_right = max(0, top) // 2, (right + 1) // 2
        u[c_top:, :c_right] = NEUTRAL_CHROMA
        v[c_top:, :c_right] = NEUTRAL_CHROMA
        cv2.putText(y, f"#{frame_id} t={t_ns / 1e9:.3f}s", (4, y0 - 9),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, WHITE_Y, 1, cv2.LINE_AA)
        for bit in range(BARCODE_BITS):
            if frame_id >> bit & 1:
                x = cell * (bit + 1)
                y[y0:y0 + cell, x:x + cell] = WHITE_Y


def read_frame_id(image: Image) -> int | None:
    """Read the barcode back from a (decoded) BGR frame; None when it is not legible."""
    height, width = image.shape[:2]
    cell = max(4, min(16, width // (BARCODE_BITS + 4)))
    y0 = height - 2 * cell
    gray = image[y0:y0 + cell, :, :].mean(axis=2)
    value = 0
    for bit in range(BARCODE_BITS):
        x = cell * (bit + 1)
        level = float(gray[cell // 4:3 * cell // 4, x + cell // 4:x + 3 * cell // 4].mean())
        if 60 < level < 195:
            return None
        if level >= 195:
            value |= 1 << bit
    return value


class SyntheticSource(ThreadedSource):
    """The synthetic scene as a camera that delivers I420, as many real ones can."""

    paced = True
    pixel_format: PixelFormat = "yuv420p"

    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__(cfg)
        self.scene = SyntheticScene(cfg.width, cfg.height, cfg.fps)
        self.render_ns_total = 0
        self.render_cpu_ns_total = 0
        """The reader thread's own CPU time for rendering (wall time counts waits for
        a core on a busy machine)."""

    def _grab(self) -> Image | None:
        t0, c0 = time.monotonic_ns(), time.thread_time_ns()
        image = self._render(t0)
        self.render_cpu_ns_total += time.thread_time_ns() - c0
        self.render_ns_total += time.monotonic_ns() - t0
        return image

    def _render(self, t_ns: int) -> Image:
        return self.scene.render_i420(self._next_id, t_ns)


class SyntheticBgrSource(SyntheticSource):
    """The scene delivered in BGR, as a camera read through OpenCV delivers it: its
    render includes the driver-side YUV->BGR conversion and the encoder converts back,
    so ``bench video --bgr-source`` prices what a real camera costs per frame."""

    pixel_format: PixelFormat = "bgr24"

    def _render(self, t_ns: int) -> Image:
        return self.scene.render(self._next_id, t_ns)
