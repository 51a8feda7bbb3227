"""Capture sources and the real H.264 encoder/decoder (PyAV, libx264 here)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from operator_console.video.decoder import H264Decoder
from robot_side.video.capture import open_source
from robot_side.video.config import HARDWARE_ENCODERS, VideoConfig
from robot_side.video.encoder import H264Encoder, select_encoder
from robot_side.video.synthetic import SyntheticScene, read_frame_id
from telesurgery.config import build
from telesurgery.errors import ConfigError, VideoError

W, H = 640, 360


def small(**kw: object) -> VideoConfig:
    base: dict[str, object] = {"width": W, "height": H, "bitrate_kbps": 1500, "encoder": "libx264"}
    base.update(kw)
    return VideoConfig(**base)


def make_codec(cfg: VideoConfig) -> tuple[H264Encoder, H264Decoder]:
    return H264Encoder(cfg, select_encoder(cfg)), H264Decoder()


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return SyntheticScene(W, H, 30.0)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(("data", "key"), [
    ({"width": 641}, "video.width"),
    ({"fps": 0.0}, "video.fps"),
    ({"gop": 0}, "video.gop"),
    ({"source": "file"}, "video.path"),
    ({"encoder": "h265_magic"}, "video.encoder"),
    ({"bitrate_kbps": 100, "min_bitrate_kbps": 500}, "video.bitrate_kbps"),
    ({"preset": "placebo"}, "video.preset"),
    ({"encoder_threads": 99}, "video.encoder_threads"),
    # At 20 or more the encode would stand level with the control process's helpers.
    ({"realtime_priority": 20}, "video.realtime_priority"),
    ({"realtime_priority": -1}, "video.realtime_priority"),
])
def test_config_rejects_bad_values_naming_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build(VideoConfig, data)


def test_config_accepts_intra_refresh_only() -> None:
    cfg = build(VideoConfig, {"gop": 0, "intra_refresh": True, "source": "file", "path": "x.mp4"})
    assert cfg.path == Path("x.mp4")


# ---------------------------------------------------------------- capture
def test_synthetic_source_moves_and_stamps_its_frames() -> None:
    source = open_source(small(fps=60.0))
    with source:
        first = source.wait_newer(None, timeout_s=5.0)
        assert first is not None
        later = source.wait_newer(first.frame_id + 2, timeout_s=5.0)
    assert later is not None and later.frame_id > first.frame_id
    assert later.capture_ns > first.capture_ns
    # Delivered in the encoder's format (no conversion per frame), viewable as BGR.
    assert first.pixel_format == "yuv420p" and first.image.shape == (H * 3 // 2, W)
    assert (first.width, first.height) == (W, H) and first.image.dtype == np.uint8
    a, b = first.bgr(), later.bgr()
    assert a.shape == (H, W, 3) and a.dtype == np.uint8
    # A moving, textured scene: not static, not flat.
    assert np.abs(b.astype(int) - a.astype(int)).mean() > 10
    assert a.std() > 30
    assert read_frame_id(a) == first.frame_id
    assert read_frame_id(b) == later.frame_id


def test_latest_refuses_a_frame_older_than_asked(scene: SyntheticScene) -> None:
    source = open_source(small())
    source._publish(scene.render_i420(0, 0), capture_ns=time.monotonic_ns() - 500_000_000)
    assert source.latest() is not None
    assert source.latest(max_age_ms=250) is None


def test_missing_camera_is_a_video_error_naming_the_device() -> None:
    source = open_source(small(source="camera", device="/dev/video-does-not-exist"))
    with pytest.raises(VideoError, match="video-does-not-exist"):
        source.start()


def test_file_source_plays_a_file_in_a_loop(tmp_path: Path, scene: SyntheticScene) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (320, 180))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG")
    for i in range(3):
        writer.write(cv2.resize(scene.render(i, 0), (320, 180)))
    writer.release()
    source = open_source(small(source="file", path=path, fps=120.0))
    with source:
        frame = source.wait_newer(5, timeout_s=5.0)  # past the end: it looped
    assert frame is not None and frame.image.shape == (H, W, 3)
    assert source.resized > 0


# ---------------------------------------------------------------- encoder selection
def test_auto_falls_back_to_libx264_and_says_why_hardware_failed() -> None:
    choice = select_encoder(small(encoder="auto"))
    tried = [name for name, _ in choice.tried]
    if choice.name != "libx264":
        pytest.skip(f"this machine has a working hardware encoder: {choice.name}")
    assert tried == list(HARDWARE_ENCODERS)
    assert all(why for _, why in choice.tried)
    assert "h264_nvenc" in choice.describe()


def test_explicit_encoder_that_cannot_open_is_an_error_naming_it() -> None:
    for name in HARDWARE_ENCODERS:
        try:
            select_encoder(small(encoder=name))
        except VideoError as err:
            assert name in str(err)
            return
    pytest.skip("every hardware encoder opens on this machine")


# ---------------------------------------------------------------- codec
def test_round_trip_one_access_unit_per_frame_no_delay(scene: SyntheticScene) -> None:
    encoder, decoder = make_codec(small())
    ids = []
    for i in range(40):
        image = scene.render(i, 0)
        encoded = encoder.encode(image, i)
        assert encoded.payload  # one access unit out for this frame, now
        picture = decoder.decode(encoded.payload)
        assert picture is not None, f"decoder held frame {i} back"
        assert picture.shape == image.shape
        assert np.abs(picture.astype(int) - image.astype(int)).mean() < 30
        ids.append(read_frame_id(picture))
    assert encoder.frames == 40
    assert ids[10:] == list(range(10, 40))


def test_keyframe_on_request_only(scene: SyntheticScene) -> None:
    encoder, _ = make_codec(small())
    flags = [encoder.encode(scene.render(i, 0), i, force_keyframe=i == 12).keyframe
             for i in range(20)]
    assert [i for i, k in enumerate(flags) if k] == [0, 12]


def _keyframe_ratio(cfg: VideoConfig, scene: SyntheticScene) -> float:
    encoder, _ = make_codec(cfg)
    sizes = [len(encoder.encode(scene.render(i, 0), i, force_keyframe=i == 20).payload)
             for i in range(30)]
    return sizes[20] / float(np.mean(sizes[10:20]))


def test_vbv_cap_keeps_keyframes_near_a_normal_frame(scene: SyntheticScene) -> None:
    capped = _keyframe_ratio(small(vbv_frames=1.0), scene)
    loose = _keyframe_ratio(small(vbv_frames=30.0), scene)
    print(f"keyframe / P-frame size: capped {capped:.2f}, uncapped-ish {loose:.2f}")
    assert capped < 2.0
    assert loose > capped * 1.5  # the cap, not the content, is what keeps it small


def test_set_bitrate_takes_effect_without_a_keyframe(scene: SyntheticScene) -> None:
    encoder, _ = make_codec(small(bitrate_kbps=3000))
    before = [encoder.encode(scene.render(i, 0), i) for i in range(30)]
    assert encoder.set_bitrate(100) == 500  # clamped to min_bitrate_kbps
    after = [encoder.encode(scene.render(i, 0), i) for i in range(30, 60)]
    assert not any(f.keyframe for f in after)
    high = np.mean([len(f.payload) for f in before[10:]])
    low = np.mean([len(f.payload) for f in after[10:]])
    assert low < high / 2


def test_intra_refresh_mode_streams_without_periodic_keyframes(scene: SyntheticScene) -> None:
    encoder, decoder = make_codec(small(gop=0, intra_refresh=True))
    for i in range(40):
        assert decoder.decode(encoder.encode(scene.render(i, 0), i).payload) is not None


def test_encoder_rejects_a_wrong_size_image() -> None:
    encoder, _ = make_codec(small())
    with pytest.raises(VideoError, match="expected 640x360"):
        encoder.encode(np.zeros((10, 10, 3), np.uint8), 0)


def test_decoder_recovers_at_a_keyframe_after_garbage(scene: SyntheticScene) -> None:
    encoder, decoder = make_codec(small())
    rng = np.random.default_rng(1)
    for _ in range(5):
        # Garbage either fails as VideoError or yields nothing; never anything else.
        with contextlib.suppress(VideoError):
            decoder.decode(b"\x00\x00\x00\x01\x65" + rng.bytes(2000))
    picture = decoder.decode(encoder.encode(scene.render(0, 0), 0, force_keyframe=True).payload)
    assert picture is not None and read_frame_id(picture) is not None



def test_i420_frames_are_encoded_as_given(scene: SyntheticScene) -> None:
    """The synthetic camera's I420 goes to the encoder without a BGR round trip and
    decodes to the same picture as its BGR rendering."""
    encoder, decoder = make_codec(small())
    for i in range(12):
        picture = decoder.decode(encoder.encode(scene.render_i420(i, 0), i).payload)
        assert picture is not None
    assert picture is not None
    assert np.abs(picture.astype(int) - scene.render(11, 0).astype(int)).mean() < 30
    assert read_frame_id(picture) == 11
    with pytest.raises(VideoError, match="BGR or I420"):
        encoder.encode(np.zeros((H * 3 // 2, W + 2), np.uint8), 12)
