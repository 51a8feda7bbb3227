"""The robot side's video section: capture source, encoder and rate limits.

One frozen dataclass validated at load, like every other config section; an
error names the dotted key (``video.<field>``) and the bad value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from telesurgery.config import check, finite_positive

HARDWARE_ENCODERS: tuple[str, ...] = (
    "h264_nvenc", "h264_qsv", "h264_vaapi", "h264_v4l2m2m", "h264_amf",
)
"""Probed in this order by ``encoder = "auto"``; libx264 is the fallback."""
SOFTWARE_ENCODER = "libx264"
X264_PRESETS = frozenset({
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium",
})
"""Slower presets cost more than a frame period at 720p30 on an edge CPU."""
MAX_VIDEO_PRIORITY = 19
"""Below ``telesurgery.pacer.HELPER_PRIORITY`` (20): the lowest real-time priority the rig's
other threads use."""


@dataclass(frozen=True)
class VideoConfig:
    source: Literal["synthetic", "camera", "file"] = "synthetic"
    device: str = "0"
    """Camera index ("0") or device path ("/dev/video2"); used when source = camera."""
    path: Path | None = None
    """Video file; required when source = file (played in a loop)."""
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    encoder: str = "auto"
    """"auto" probes the hardware encoders then libx264, or one codec name."""
    bitrate_kbps: int = 4000
    """Target and ceiling; congestion lowers it, never below min_bitrate_kbps."""
    min_bitrate_kbps: int = 500
    gop: int = 300
    """Frames between periodic keyframes; 0 = none (intra refresh only)."""
    intra_refresh: bool = False
    """Spread intra macroblocks over frames instead of sending big keyframes."""
    preset: str = "ultrafast"
    encoder_threads: int = 0
    """libx264 threads (sliced: each frame cut into that many slices, no frame delay);
    0 lets libx264 choose (1.5 x cores). One thread costs least CPU; more cut the
    encode's wall time, which is picture latency (``telesurgery bench video``), and at
    normal scheduling weigh more: CFS shares a busy CPU per thread, and one thread got a
    third to a half of the sliced encoder's pictures out on a loaded machine (round 7)."""
    vbv_frames: float = 1.0
    """VBV buffer in frame periods: caps any frame, keyframes included, near this."""
    max_send_age_ms: float = 250.0
    """A captured frame older than this at send time is dropped, never sent."""
    nice: int = -10
    """Nice value of the video process (capture, encoder and its libx264 and libzmq
    threads) where permitted; 0: unchanged. At normal priority a busy machine preempted
    the encode mid-frame and the surgeon's picture went stale (capture -> sent up to
    1.3 s). Not SCHED_FIFO: an encoder taking a third of a core at real-time priority
    pushed the rig's CPUs into the kernel's real-time throttling (all real-time threads
    stopped for up to 50 ms a second: the arm's state reports missed, serial faults),
    while a CFS weight ~10x an ordinary process's keeps it ahead of other work and still
    below every real-time thread of the control process. Ignored while
    ``realtime_priority`` is set."""
    realtime_priority: int = 0
    """SCHED_FIFO priority of the video process and every thread it starts (capture,
    libx264's, libzmq's) where permitted; 0: normal scheduling at ``nice``. At most
    ``MAX_VIDEO_PRIORITY``, below the control process's helpers (20) and every thread the
    period needs, so real-time work of the arm always preempts the encode. Off by default:
    at 10 the pictures came, but a third of a core more real-time work on a shared two-core
    machine brought the kernel's real-time throttling back (stall gaps ~50 ms, the emulator
    starved, ``serial_fault`` trips). For a robot whose CPUs carry no console or proxy."""

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            check(16 <= value <= 8192 and value % 2 == 0, f"video.{name}", value,
                  "must be an even number of pixels in [16, 8192]")
        finite_positive("video.fps", self.fps)
        check(self.fps <= 240.0, "video.fps", self.fps, "must be <= 240")
        check(self.encoder == "auto" or self.encoder in HARDWARE_ENCODERS
              or self.encoder == SOFTWARE_ENCODER, "video.encoder", self.encoder,
              f"must be 'auto' or one of {[*HARDWARE_ENCODERS, SOFTWARE_ENCODER]}")
        check(self.min_bitrate_kbps > 0, "video.min_bitrate_kbps", self.min_bitrate_kbps,
              "must be > 0")
        check(self.bitrate_kbps >= self.min_bitrate_kbps, "video.bitrate_kbps",
              self.bitrate_kbps, "must be >= min_bitrate_kbps")
        check(self.gop >= 0, "video.gop", self.gop, "must be >= 0")
        check(self.gop > 0 or self.intra_refresh, "video.gop", self.gop,
              "0 (no keyframes) needs intra_refresh = true")
        check(-20 <= self.nice <= 19, "video.nice", self.nice, "must be within -20..19")
        check(0 <= self.realtime_priority <= MAX_VIDEO_PRIORITY, "video.realtime_priority",
              self.realtime_priority,
              f"must be in [0, {MAX_VIDEO_PRIORITY}] (0: normal scheduling at video.nice)")
        check(0 <= self.encoder_threads <= 16, "video.encoder_threads", self.encoder_threads,
              "must be in [0, 16] (0: the encoder chooses)")
        check(self.preset in X264_PRESETS, "video.preset", self.preset,
              f"must be one of {sorted(X264_PRESETS)}")
        check(math.isfinite(self.vbv_frames) and 0.5 <= self.vbv_frames <= 30.0,
              "video.vbv_frames", self.vbv_frames, "must be in [0.5, 30]")
        finite_positive("video.max_send_age_ms", self.max_send_age_ms)
        if self.source == "file":
            check(self.path is not None, "video.path", self.path,
                  "is required when source = 'file'")
        if self.source == "camera":
            check(bool(self.device.strip()), "video.device", self.device,
                  "must name a camera index or path")

    @property
    def frame_period_ns(self) -> int:
        return round(1e9 / self.fps)
