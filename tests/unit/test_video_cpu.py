"""What video costs (issue 11): pictures stay in YUV until something shows them, I420
frames are sent as they are, and the video process's CPU bench runs.

Real encoder, decoder and inproc ZeroMQ sockets; the console side is the real
``VideoReceiver`` handing its pictures to the real headless ``Display``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from operator_console.video.decoder import H264Decoder
from operator_console.video.display import Display
from operator_console.video.receiver import DecodedFrame, VideoReceiver
from robot_side.video.capture import CapturedFrame, PixelFormat, ThreadedSource
from robot_side.video.synthetic import read_frame_id
from tests.unit.test_hud import FOLLOWING
from tests.unit.test_video_channel import CFG, SCENE, H, W, pub_sub, sender_on
from transport import schema

FAULT = dataclasses.replace(FOLLOWING, state="fault", reason="t")


@pytest.fixture
def ctx() -> Any:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.term()


def _pictures(ctx: zmq.Context[Any], count: int) -> tuple[list[DecodedFrame], H264Decoder]:
    """``count`` frames of the I420 synthetic camera, sent and received one by one."""
    pub, sub = pub_sub(ctx)
    decoder = H264Decoder(threads=1)
    sender, receiver = sender_on(pub), VideoReceiver(sub, decoder)
    shown = []
    try:
        for i in range(count):
            now = time.monotonic_ns()
            sender.send(CapturedFrame(i, now, SCENE.render_i420(i, 0), "yuv420p"))
            picture = receiver.poll(1000)
            assert picture is not None
            shown.append(picture)
    finally:
        pub.close(0)
        sub.close(0)
    # The header says the picture's size, not the I420 buffer's.
    assert sender.stats.sent == count and sender.stats.convert_ns_total > 0
    return shown, decoder


def test_a_headless_console_with_nothing_to_write_never_converts_to_bgr(
        ctx: zmq.Context[Any]) -> None:
    shown, _ = _pictures(ctx, 8)
    display = Display(headless=True)
    for picture in shown:
        display.show(picture.picture, FAULT)
    assert not any(p.picture.converted for p in shown)
    # Asked for, the last image is converted (that one only) and has its HUD.
    drawn = display.last_image
    assert drawn is not None and drawn.shape == (H, W, 3)
    assert not np.array_equal(drawn, shown[-1].image)
    assert read_frame_id(shown[-1].image) == 7
    assert [p.picture.converted for p in shown] == [False] * 7 + [True]
    assert shown[-1].picture.convert_ns > 0


def test_a_display_that_writes_converts_what_it_writes_and_reads_true(
        ctx: zmq.Context[Any], tmp_path: Path) -> None:
    shown, _ = _pictures(ctx, 6)
    with Display(headless=True, out_dir=tmp_path, every_n=2) as display:
        for picture in shown:
            display.show(picture.picture, None)
    assert [p.picture.converted for p in shown] == [False, True] * 3
    # The converted picture is the scene, barcode legible (what g2g tests read).
    last = shown[-1]
    assert last.image.shape == (H, W, 3) and last.picture.shape == (H, W, 3)
    assert read_frame_id(last.image) == 5
    assert len(list(tmp_path.glob("frame_*.png"))) == 3


def test_an_i420_frame_header_carries_the_picture_size(ctx: zmq.Context[Any]) -> None:
    pub, sub = pub_sub(ctx)
    sender = sender_on(pub)
    try:
        sender.send(CapturedFrame(0, time.monotonic_ns(), SCENE.render_i420(0, 0), "yuv420p"))
        header, _ = sub.recv_multipart()
    finally:
        pub.close(0)
        sub.close(0)
    decoded = schema.decode_as(header, schema.VideoFrameHeader)
    assert (decoded.width, decoded.height) == (CFG.width, CFG.height)


def test_the_video_process_cpu_bench_measures_the_real_process() -> None:
    from telesurgery.bench.videocpu import video_process_cpu

    result = video_process_cpu(1.0, 320, 240, 15.0)
    assert result["frames_per_s"] > 0 and result["cpu_ms_per_frame"] > 0
    assert 0 < result["video_process_cpu_pct"] < 200


class _BadI420Camera(ThreadedSource):
    """Stands in for a camera driver that delivers the wrong buffer size every frame."""

    paced = True
    pixel_format: PixelFormat = "yuv420p"

    def _grab(self) -> np.ndarray:
        return np.zeros((10, 10), np.uint8)


def test_a_source_delivering_the_wrong_size_is_counted_and_logged_rate_limited(
        caplog: pytest.LogCaptureFixture) -> None:
    source = _BadI420Camera(dataclasses.replace(CFG, fps=120.0))
    with caplog.at_level(logging.WARNING, logger="robot_side.video.capture"), source:
        deadline = time.monotonic() + 10.0
        while source.errors < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert source._thread is not None and source._thread.is_alive()
    assert source.errors >= 6 and source.latest() is None
    lines = [r for r in caplog.records if "capture failed" in r.getMessage()]
    assert lines and "not yuv420p" in lines[0].getMessage()
    assert len(lines) < source.errors
