"""H.264 encoding with zero frame delay, on the best encoder that opens here.

``select_encoder`` probes the hardware encoders PyAV exposes, in a fixed order,
and falls back to libx264; the result says which one runs and why each other
one did not. A probe opens the encoder at the configured size *and* encodes a
test frame, because an encoder that opens but holds frames back (lookahead,
B-frames, async depth) would add latency the surgeon cannot see.

Every frame in gives exactly one access unit out, in Annex B with SPS/PPS
repeated on each keyframe so a decoder can join at any keyframe. The VBV buffer
is capped near one frame period of bits: an uncapped keyframe is several times
a normal frame and would stall the picture on a thin link.
"""

from __future__ import annotations

import fractions
import logging
import time
from dataclasses import dataclass, field

import av
import av.video.frame
import cv2
import numpy as np

from robot_side.video.capture import Image
from robot_side.video.config import HARDWARE_ENCODERS, SOFTWARE_ENCODER, VideoConfig
from telesurgery.errors import VideoError

log = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, 90_000)
"""The RTP video clock; pts are frame times on it."""

# Zero-delay settings per encoder family; each disables B-frames and lookahead.
_OPTIONS: dict[str, dict[str, str]] = {
    "h264_nvenc": {"preset": "p1", "tune": "ull", "zerolatency": "1", "delay": "0",
                   "rc": "cbr", "forced-idr": "1"},
    "h264_qsv": {"preset": "veryfast", "async_depth": "1", "look_ahead": "0",
                 "low_delay_brc": "1", "forced_idr": "1"},
    "h264_vaapi": {"async_depth": "1"},
    "h264_v4l2m2m": {"num_output_buffers": "2", "num_capture_buffers": "2"},
    "h264_amf": {"usage": "ultralowlatency", "quality": "speed", "rc": "cbr"},
}
_PIX_FMT = {"h264_qsv": "nv12", "h264_v4l2m2m": "nv12"}
# h264_vaapi wants GPU surfaces (a hardware frames context) that PyAV cannot set up
# from Python, so where it exists its probe fails at open and says so.


@dataclass(frozen=True)
class EncoderChoice:
    name: str
    tried: list[tuple[str, str]] = field(default_factory=list)
    """(encoder, why it was not used), in probe order."""

    def describe(self) -> str:
        rejected = "; ".join(f"{n}: {why}" for n, why in self.tried) or "none"
        return f"video encoder {self.name} (rejected: {rejected})"


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    payload: bytes
    """One H.264 access unit, Annex B."""
    keyframe: bool
    encode_ns: int
    """Colour conversion plus encode, on this process's monotonic clock."""
    convert_ns: int = 0
    """The part of ``encode_ns`` spent handing the picture over (and converting it)."""


def _x264_options(cfg: VideoConfig) -> dict[str, str]:
    params = ["scenecut=0", "repeat-headers=1", "annexb=1", "bframes=0", "rc-lookahead=0",
              "sync-lookahead=0"]
    if cfg.intra_refresh:
        params.append("intra-refresh=1")
    options = {"preset": cfg.preset, "tune": "zerolatency", "forced-idr": "1",
               "x264-params": ":".join(params)}
    if cfg.encoder_threads:
        options["threads"] = str(cfg.encoder_threads)
    return options


def _why(err: Exception) -> str:
    """FFmpeg's reason without PyAV's echo of the whole option dict."""
    if isinstance(err, av.error.FFmpegError):
        return f"{err.strerror} (error {err.errno})"
    return str(err)


def _open_context(name: str, cfg: VideoConfig) -> av.VideoCodecContext:
    """Open encoder ``name`` for ``cfg``; raise VideoError with the reason it failed."""
    try:
        ctx = av.CodecContext.create(name, "w")
    except (av.error.FFmpegError, ValueError) as err:  # UnknownCodecError is a ValueError
        raise VideoError(f"{name}: not available in this FFmpeg build") from err
    if not isinstance(ctx, av.VideoCodecContext):
        raise VideoError(f"{name}: not a video encoder")
    ctx.width, ctx.height = cfg.width, cfg.height
    ctx.pix_fmt = _PIX_FMT.get(name, "yuv420p")
    ctx.time_base = TIME_BASE
    ctx.framerate = fractions.Fraction(cfg.fps).limit_denominator(1001)
    ctx.bit_rate = cfg.bitrate_kbps * 1000
    ctx.max_b_frames = 0
    # A refresh wave needs a period even when no periodic keyframes are wanted.
    ctx.gop_size = cfg.gop if cfg.gop > 0 else max(1, round(cfg.fps))
    vbv_bits = int(cfg.bitrate_kbps * 1000 * cfg.vbv_frames / cfg.fps)
    options = {"maxrate": str(cfg.bitrate_kbps * 1000), "bufsize": str(vbv_bits), "bf": "0"}
    options.update(_x264_options(cfg) if name == SOFTWARE_ENCODER else _OPTIONS.get(name, {}))
    ctx.options = options
    try:
        ctx.open()
    except (av.error.FFmpegError, ValueError, OSError) as err:
        raise VideoError(f"{name}: failed to open: {_why(err)}") from err
    return ctx


def _probe(name: str, cfg: VideoConfig) -> str | None:
    """None when ``name`` opens and returns the first frame at once, else why not."""
    try:
        ctx = _open_context(name, cfg)
        frame = av.VideoFrame(cfg.width, cfg.height, ctx.pix_fmt or "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts = 0
        packets = ctx.encode(frame)
    except VideoError as err:
        return str(err).removeprefix(f"{name}: ")
    except (av.error.FFmpegError, ValueError, OSError) as err:
        return f"test encode failed: {_why(err)}"
    if len(packets) != 1:
        return f"held the first frame back ({len(packets)} packets out): it has frame delay"
    return None


def select_encoder(cfg: VideoConfig) -> EncoderChoice:
    """The encoder to use and why the others were not; VideoError when none works.

    An explicitly named encoder that does not work is an error, not a silent
    fallback: whoever named it expects its latency and CPU figures.
    """
    candidates = [*HARDWARE_ENCODERS, SOFTWARE_ENCODER] if cfg.encoder == "auto" else [cfg.encoder]
    tried: list[tuple[str, str]] = []
    for name in candidates:
        why = _probe(name, cfg)
        if why is None:
            choice = EncoderChoice(name, tried)
            log.info("%s", choice.describe())
            return choice
        log.log(logging.INFO if name in HARDWARE_ENCODERS else logging.WARNING,
                "video encoder %s not usable: %s", name, why)
        tried.append((name, why))
    raise VideoError("no usable H.264 encoder: " + "; ".join(f"{n}: {w}" for n, w in tried))


class H264Encoder:
    """One access unit per frame, keyframes on request, bitrate changeable live."""

    def __init__(self, cfg: VideoConfig, choice: EncoderChoice) -> None:
        self.cfg = cfg
        self.name = choice.name
        self._ctx = _open_context(choice.name, cfg)
        self._pts_step = round(1 / (cfg.fps * TIME_BASE))
        self._last_pts = -1
        self.bitrate_kbps = cfg.bitrate_kbps
        self.frames = 0
        self.keyframes = 0

    def encode(self, image: Image, frame_id: int, force_keyframe: bool = False) -> EncodedFrame:
        """Encode one picture: BGR (height x width x 3) or I420 (height * 3 / 2 rows of
        width, see ``capture.PixelFormat``); I420 goes to the encoder unconverted."""
        w, h = self.cfg.width, self.cfg.height
        if image.dtype != np.uint8 or image.shape not in ((h, w, 3), (h * 3 // 2, w)):
            raise VideoError(f"encoder {self.name}: expected {w}x{h} BGR or I420 uint8, "
                             f"got {image.shape} {image.dtype}")
        t0 = time.monotonic_ns()
        i420 = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
        # Wrapped, not copied (~0.3 ms per 720p frame): the encoder copies it into its
        # own picture during encode(), and the frame keeps the array alive until then.
        frame = av.VideoFrame.from_numpy_buffer(
            np.ascontiguousarray(i420, dtype=np.uint8), format="yuv420p")
        if self._ctx.pix_fmt != "yuv420p":
            frame = frame.reformat(format=self._ctx.pix_fmt)
        convert_ns = time.monotonic_ns() - t0
        # pts follow the frame ids so skipped frames keep rate control honest.
        self._last_pts = max(self._last_pts + 1, frame_id * self._pts_step)
        frame.pts = self._last_pts
        if force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        try:
            packets = self._ctx.encode(frame)
        except (av.error.FFmpegError, ValueError) as err:
            raise VideoError(
                f"encoder {self.name} failed on frame {frame_id}: {_why(err)}") from err
        if not packets:
            raise VideoError(f"encoder {self.name} held frame {frame_id} back: it has delay")
        payload = b"".join(bytes(p) for p in packets)
        keyframe = any(p.is_keyframe for p in packets)
        self.frames += 1
        self.keyframes += keyframe
        return EncodedFrame(payload, keyframe, time.monotonic_ns() - t0, convert_ns)

    def set_bitrate(self, kbps: int) -> int:
        """Retarget the rate (libx264 reconfigures in place, no keyframe); returns the
        value applied after clamping to [min_bitrate_kbps, bitrate_kbps]."""
        kbps = max(self.cfg.min_bitrate_kbps, min(self.cfg.bitrate_kbps, int(kbps)))
        if kbps != self.bitrate_kbps:
            self._ctx.bit_rate = kbps * 1000
            log.info("video bitrate %d -> %d kbps", self.bitrate_kbps, kbps)
            self.bitrate_kbps = kbps
        return kbps
