"""A synthetic moving scene: the simulated camera used by tests, demos and benchmarks.

Textured (so the encoder has real work), panning and rotating (so motion
estimation does too), with a little sensor noise, and stamped with its frame id
and capture time, both as text for people and as a block barcode that survives
compression for tests (``read_frame_id``).
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from robot_side.video.capture import Image, ThreadedSource
from robot_side.video.config import VideoConfig

BARCODE_BITS = 24
NOISE_FRAMES = 4
NOISE_AMPLITUDE = 6


def _texture(size: int, seed: int) -> Image:
    """Blurred colour noise with a grid and discs: detail at several scales."""
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


class SyntheticScene:
    """Renders frame n of the scene; pure apart from the clock value passed in."""

    def __init__(self, width: int, height: int, fps: float, seed: int = 7) -> None:
        self.width, self.height, self.fps = width, height, fps
        side = int(math.hypot(width, height)) + 256
        self._texture = _texture(side, seed)
        rng = np.random.default_rng(seed + 1)
        self._noise = [rng.integers(0, NOISE_AMPLITUDE, (height, width, 3), dtype=np.uint8)
                       for _ in range(NOISE_FRAMES)]
        self._cell = max(4, min(16, width // (BARCODE_BITS + 4)))

    def render(self, frame_id: int, t_ns: int) -> Image:
        t = frame_id / self.fps
        side = self._texture.shape[0]
        angle = 8.0 * math.sin(0.4 * t)
        pan_x = 90.0 * math.sin(0.5 * t) + 40.0 * t % 128
        pan_y = 60.0 * math.cos(0.3 * t)
        m = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
        # Shift so the frame's centre looks at the texture centre plus the pan.
        m[0, 2] -= (side - self.width) / 2 + pan_x
        m[1, 2] -= (side - self.height) / 2 + pan_y
        warped = cv2.warpAffine(self._texture, m, (self.width, self.height),
                                flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
        noisy = cv2.add(warped, self._noise[frame_id % NOISE_FRAMES])
        image: Image = np.asarray(noisy, dtype=np.uint8)
        self._stamp(image, frame_id, t_ns)
        return image

    def _stamp(self, image: Image, frame_id: int, t_ns: int) -> None:
        cell = self._cell
        y0 = self.height - 2 * cell
        cv2.rectangle(image, (0, y0 - 30), (cell * (BARCODE_BITS + 2), self.height),
                      (0, 0, 0), -1)
        cv2.putText(image, f"#{frame_id} t={t_ns / 1e9:.3f}s", (4, y0 - 9),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        for bit in range(BARCODE_BITS):
            if frame_id >> bit & 1:
                x = cell * (bit + 1)
                image[y0:y0 + cell, x:x + cell] = 255


def read_frame_id(image: Image) -> int | None:
    """Read the barcode back from a (decoded) frame; None when it is not legible."""
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
    paced = True

    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__(cfg)
        self.scene = SyntheticScene(cfg.width, cfg.height, cfg.fps)
        self.render_ns_total = 0

    def _grab(self) -> Image | None:
        t0 = time.monotonic_ns()
        image = self.scene.render(self._next_id, t0)
        self.render_ns_total += time.monotonic_ns() - t0
        return image
