"""The video channel over real ZeroMQ sockets with the real encoder and decoder.

Logic tests use inproc sockets, where a sent message is in the receiver's pipe
when ``send`` returns, so "several frames pending" is deterministic; the end-to-
end tests use TCP on random ports, one of them over the real CURVE-secured link.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from operator_console.video.decoder import H264Decoder
from operator_console.video.freshness import FreshnessMonitor
from operator_console.video.receiver import VideoReceiver
from robot_side.video.capture import CapturedFrame
from robot_side.video.config import VideoConfig
from robot_side.video.encoder import H264Encoder, select_encoder
from robot_side.video.sender import BitrateController, VideoSender
from robot_side.video.synthetic import SyntheticScene, read_frame_id
from transport import schema

W, H = 320, 240
CFG = VideoConfig(width=W, height=H, bitrate_kbps=800, min_bitrate_kbps=200, encoder="libx264")
SCENE = SyntheticScene(W, H, 30.0)
_inproc_ids = iter(range(10**6))


def pub_sub(ctx: zmq.Context[Any], transport: str = "inproc",
            hwm: int = 1000) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
    pub = ctx.socket(zmq.PUB)
    sub = ctx.socket(zmq.SUB)
    for sock in (pub, sub):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    pub.bind(f"inproc://video-{next(_inproc_ids)}" if transport == "inproc"
             else "tcp://127.0.0.1:*")
    sub.connect(pub.getsockopt_string(zmq.LAST_ENDPOINT))
    return pub, sub


def frame(frame_id: int, capture_ns: int | None = None) -> CapturedFrame:
    return CapturedFrame(frame_id, capture_ns or time.monotonic_ns(),
                         SCENE.render(frame_id, 0))


def sender_on(sock: zmq.Socket[Any], backpressure: bool = False) -> VideoSender:
    return VideoSender(sock, H264Encoder(CFG, select_encoder(CFG)), backpressure=backpressure)


def first_picture(sender: VideoSender, receiver: VideoReceiver, start_id: int = 0,
                  deadline_s: float = 10.0) -> int:
    """Send until the subscription is up and a picture arrives (TCP slow joiner)."""
    end = time.monotonic() + deadline_s
    frame_id = start_id
    while time.monotonic() < end:
        sender.request_keyframe()  # whatever gets through first must be decodable
        sender.send(frame(frame_id))
        frame_id += 1
        if receiver.poll(50) is not None:
            return frame_id
    raise AssertionError("no picture over the link within the deadline")


# ---------------------------------------------------------------- logic, inproc
def test_pending_frames_are_decoded_but_only_the_newest_is_shown(ctx: zmq.Context[Any]) -> None:
    pub, sub = pub_sub(ctx)
    sender, receiver = sender_on(pub), VideoReceiver(sub, H264Decoder())
    for i in range(5):
        assert sender.send(frame(i))
    shown = receiver.poll(1000)
    assert shown is not None and shown.frame_id == 4
    assert read_frame_id(shown.image) == 4
    assert receiver.stats.dropped == 4 and receiver.stats.decoded == 5
    assert receiver.poll(0) is None


def test_decoding_starts_at_the_newest_keyframe_in_a_batch(ctx: zmq.Context[Any]) -> None:
    pub, sub = pub_sub(ctx)
    sender, receiver = sender_on(pub), VideoReceiver(sub, H264Decoder())
    for i in range(6):
        if i == 3:
            sender.request_keyframe()
        sender.send(frame(i))
    shown = receiver.poll(1000)
    assert shown is not None and shown.frame_id == 5
    assert receiver.stats.decoded == 3  # 3 (keyframe), 4, 5: nothing before is needed


def test_gap_skips_to_the_next_keyframe_and_requests_one(ctx: zmq.Context[Any]) -> None:
    robot_pub, relay_sub = pub_sub(ctx)
    relay_pub, console_sub = pub_sub(ctx)
    sender, receiver = sender_on(robot_pub), VideoReceiver(console_sub, H264Decoder())

    def relay(drop: set[int]) -> None:
        """A lossy network: forwards every message except the listed frame ids."""
        while relay_sub.poll(0):
            parts = relay_sub.recv_multipart()
            header: schema.VideoFrameHeader = schema.decode_as(parts[0],
                                                               schema.VideoFrameHeader)
            if header.frame_id not in drop:
                relay_pub.send_multipart(parts)

    for i in range(10):
        sender.send(frame(i))
    relay(drop=set())
    assert receiver.poll(1000) is not None
    assert receiver.take_keyframe_request() is None  # healthy: nothing to ask for

    for i in range(10, 15):
        sender.send(frame(i))
    relay(drop={10, 11})
    assert receiver.poll(1000) is None  # 12..14 reference the lost frames: not shown
    assert receiver.keyframe_needed
    assert receiver.stats.lost == 2 and receiver.stats.skipped == 3

    now = time.monotonic_ns()
    request = receiver.take_keyframe_request(now)
    assert request is not None and request.reason == "gap" and request.last_frame_id == 14
    assert receiver.take_keyframe_request(now + 1_000_000) is None  # rate-limited
    schema.decode(schema.encode(request))  # it is a valid wire message

    sender.send(frame(15))  # still a P-frame: the request has not reached the robot yet
    relay(drop=set())
    assert receiver.poll(1000) is None
    retry = receiver.take_keyframe_request(now + 300_000_000)
    assert retry is not None and retry.seq == request.seq + 1

    sender.request_keyframe()
    sender.send(frame(16))
    relay(drop=set())
    shown = receiver.poll(1000)
    assert shown is not None and shown.keyframe and read_frame_id(shown.image) == 16
    assert not receiver.keyframe_needed
    for i in range(17, 20):
        sender.send(frame(i))
    relay(drop=set())
    clean = receiver.poll(1000)
    assert clean is not None and read_frame_id(clean.image) == 19
    assert np.abs(clean.image.astype(int) - SCENE.render(19, 0).astype(int)).mean() < 30


def test_malformed_messages_are_counted_not_fatal(ctx: zmq.Context[Any]) -> None:
    pub, sub = pub_sub(ctx)
    sender, receiver = sender_on(pub), VideoReceiver(sub, H264Decoder())
    good = schema.VideoFrameHeader(frame_id=0, capture_ns=1, send_ns=1, keyframe=True,
                                   width=W, height=H, payload_len=3)
    cmd = schema.Command(seq=1, t_send_ns=1, position=(0.0, 0.0, 0.0),
                         orientation=(1.0, 0.0, 0.0, 0.0), grip=0.0, clutch=False,
                         operator_present=True)
    pub.send_multipart([b"\xc1garbage", b"abc"])       # not msgpack
    pub.send_multipart([schema.encode(good)])           # payload frame missing
    pub.send_multipart([schema.encode(good), b"abcd"])  # payload_len lies
    pub.send_multipart([schema.encode(cmd), b"abc"])    # wrong message type
    sender.send(frame(0))
    shown = receiver.poll(1000)
    assert shown is not None and read_frame_id(shown.image) == 0
    assert receiver.stats.bad_messages == 4 and receiver.stats.received == 1


def test_corrupt_access_unit_requests_a_keyframe(ctx: zmq.Context[Any]) -> None:
    pub, sub = pub_sub(ctx)
    receiver = VideoReceiver(sub, H264Decoder())
    header = schema.VideoFrameHeader(frame_id=0, capture_ns=1, send_ns=1, keyframe=True,
                                     width=W, height=H, payload_len=4)
    pub.send_multipart([schema.encode(header), b"\x00\x00\x01\x09"])  # not a valid unit
    assert receiver.poll(1000) is None
    assert receiver.keyframe_needed and receiver.stats.decode_errors == 1
    request = receiver.take_keyframe_request()
    assert request is not None and request.reason == "decode error"


def test_backlog_without_keyframe_is_thrown_away(ctx: zmq.Context[Any]) -> None:
    pub, sub = pub_sub(ctx)
    sender, receiver = sender_on(pub), VideoReceiver(sub, H264Decoder(), max_backlog=4)
    sender.send(frame(0))
    assert receiver.poll(1000) is not None
    for i in range(1, 8):
        sender.send(frame(i))
    assert receiver.poll(1000) is None
    assert receiver.stats.dropped == 7 and receiver.stats.decoded == 1
    request = receiver.take_keyframe_request()
    assert request is not None and request.reason == "backlog"


def test_full_send_queue_drops_without_blocking_and_forces_a_keyframe(
        ctx: zmq.Context[Any]) -> None:
    pub, sub = pub_sub(ctx, hwm=1)
    sender, receiver = sender_on(pub, backpressure=True), VideoReceiver(sub, H264Decoder())
    start = time.monotonic()
    results = [sender.send(frame(i)) for i in range(6)]
    assert time.monotonic() - start < 10.0  # generous: it must simply not hang
    assert not all(results)
    assert sender.stats.dropped_backpressure == results.count(False)
    assert sender.controller.cuts >= 1 and sender._encoder.bitrate_kbps < CFG.bitrate_kbps
    receiver.poll(1000)
    assert sender.send(frame(6))
    receiver.poll(1000)
    assert sender.stats.keyframes >= 2  # the first frame and the one after the drop


def test_without_backpressure_a_slow_subscriber_never_blocks_the_sender(
        ctx: zmq.Context[Any]) -> None:
    pub, sub = pub_sub(ctx, hwm=1)
    sender, receiver = sender_on(pub), VideoReceiver(sub, H264Decoder())
    assert all(sender.send(frame(i)) for i in range(6))  # the queue discards, silently
    receiver.poll(1000)
    assert receiver.stats.received < 6
    sender.send(frame(6))
    receiver.poll(1000)
    assert receiver.stats.lost > 0 and receiver.keyframe_needed
    request = receiver.take_keyframe_request()
    assert request is not None and request.reason == "gap"
    sender.request_keyframe(request.reason)  # the loss it reports also cuts the rate
    assert sender.controller.cuts == 1 and sender._encoder.bitrate_kbps < CFG.bitrate_kbps
    sender.request_keyframe("decode error")  # not a link symptom: no further cut
    assert sender.controller.cuts == 1


def test_a_frame_already_stale_at_send_is_not_sent(ctx: zmq.Context[Any]) -> None:
    pub, _ = pub_sub(ctx)
    sender = sender_on(pub)
    assert not sender.send(frame(0, capture_ns=time.monotonic_ns() - 2_000_000_000))
    assert sender.stats.dropped_stale == 1 and sender.stats.sent == 0


def test_a_late_picture_is_sent_and_logged_with_where_it_lost_its_time(
        ctx: zmq.Context[Any], caplog: pytest.LogCaptureFixture) -> None:
    pub, _ = pub_sub(ctx)
    sender = sender_on(pub)
    caplog.set_level(logging.INFO, logger="robot_side.video.sender")
    # Late (older than LATE_AT_SEND_NS), not stale (below max_send_age_ms): sent, logged.
    assert sender.send(frame(0, capture_ns=time.monotonic_ns() - 150_000_000))
    late = [r.getMessage() for r in caplog.records if "old at send" in r.getMessage()]
    assert len(late) == 1 and "at encode start" in late[0] and "process CPU" in late[0], late
    assert sender.send(frame(1))  # a fresh one: nothing more
    assert len([r for r in caplog.records if "old at send" in r.getMessage()]) == 1


# ---------------------------------------------------------------- bitrate control (pure)
def test_bitrate_controller_cuts_on_congestion_and_recovers_slowly() -> None:
    ms = 1_000_000
    ctl = BitrateController(4000, 500, holdoff_ms=500, increase_every_ms=1000)
    assert ctl.tick(0) == 4000
    assert ctl.on_congestion(10 * ms) == 2800
    assert ctl.on_congestion(20 * ms) == 2800  # within hold-off: one cut per episode
    assert ctl.on_video_age(50_000, 600 * ms) == 2800  # 50 ms: fine
    assert ctl.on_video_age(200_000, 500 * ms) == 2800  # old, but once so far
    assert ctl.on_video_age(200_000, 700 * ms) == 1960  # old for 200 ms: frames are queuing
    for step in range(1, 100):
        ctl.on_congestion((700 + 500 * step) * ms)
    assert ctl.target_kbps == 500  # floor
    assert ctl.tick(51_000 * ms) == 500  # not yet a quiet second since the last cut
    assert ctl.tick(51_300 * ms) == 700
    for step in range(2, 40):
        ctl.tick((51_300 + 1000 * step) * ms)
    assert ctl.target_kbps == 4000  # ceiling


def test_one_late_picture_is_not_congestion_but_a_queue_is() -> None:
    """The healthy rig cut the rate every few seconds on single late pictures (the
    console's own hiccups): only an age that stays above the limit cuts it."""
    ms = 1_000_000
    ctl = BitrateController(4000, 500, congested_age_ms=120, congested_for_ms=200)
    for t in range(0, 2000, 100):  # reports every 100 ms; every fourth one old
        assert ctl.on_video_age(180_000 if t % 400 == 0 else 40_000, t * ms) == 4000
    assert ctl.cuts == 0
    ages = [ctl.on_video_age(180_000, t * ms) for t in range(2000, 2300, 100)]
    assert ages == [4000, 4000, 2800]  # old at 2000, 2100 and 2200 ms: a queue
    assert ctl.cuts == 1


# ---------------------------------------------------------------- stale picture
def test_freshness_monitor_goes_stale_after_the_limit() -> None:
    ms = 1_000_000
    mon = FreshnessMonitor(250.0)
    assert mon.age_us(0) is None and mon.stale(0) and mon.reason(0) == "no video"
    mon.on_displayed(capture_ns=1000 * ms, now_ns=1020 * ms)
    assert mon.age_us(1020 * ms) == 20_000 and not mon.stale(1020 * ms)
    assert not mon.stale(1250 * ms)
    assert mon.stale(1251 * ms) and mon.reason(1312 * ms) == "video stale 312 ms"
    mon.on_displayed(capture_ns=900 * ms, now_ns=1400 * ms)  # an older frame: no fresher
    assert mon.stale(1400 * ms)
    mon.on_displayed(capture_ns=1390 * ms, now_ns=1400 * ms)
    assert not mon.stale(1400 * ms)


def test_picture_goes_stale_when_the_sender_stops(ctx: zmq.Context[Any]) -> None:
    pub, sub = pub_sub(ctx, transport="tcp")
    sender, receiver = sender_on(pub), VideoReceiver(sub, H264Decoder())
    mon = FreshnessMonitor(250.0)
    next_id = first_picture(sender, receiver)
    mon.on_displayed(time.monotonic_ns(), time.monotonic_ns())
    for i in range(next_id, next_id + 5):  # a short healthy stream at ~30 fps
        sender.send(frame(i))
        shown = receiver.poll(33)
        now = time.monotonic_ns()
        if shown is not None:
            mon.on_displayed(shown.capture_local_ns, now)
            assert shown.g2g_ns(now) > 0
    last_shown = mon.displayed_ns
    assert last_shown is not None
    # The sender stops. The console keeps polling, as its loop does.
    deadline = time.monotonic() + 10.0
    while not mon.stale(time.monotonic_ns()):
        assert time.monotonic() < deadline, "picture never went stale"
        assert receiver.poll(20) is None
    age = mon.age_us(time.monotonic_ns())
    assert age is not None and age > 250_000
    assert mon.reason(time.monotonic_ns()).startswith("video stale")


# ---------------------------------------------------------------- the real secured link
def test_video_and_keyframe_request_over_the_secured_link(tmp_path: Path) -> None:
    from transport.config import LinkConfig
    from transport.keys import ClientKeys, ServerKeys, init_keys
    from transport.link import ConsoleLink, RobotLink

    init_keys(tmp_path / "keys")
    robot_cfg = LinkConfig(command_port=0, control_port=0, telemetry_port=0, video_port=0,
                           keys_dir=tmp_path / "keys")
    with RobotLink(robot_cfg, ServerKeys.load(tmp_path / "keys")) as robot:
        ports = robot.endpoints
        console_cfg = LinkConfig(command_port=ports["command"], control_port=ports["control"],
                                 telemetry_port=ports["telemetry"], video_port=ports["video"])
        with ConsoleLink(console_cfg, ClientKeys.load_surgeon(tmp_path / "keys")) as console:
            sender = sender_on(robot.video_socket)
            receiver = VideoReceiver(console.video_socket, H264Decoder())
            next_id = first_picture(sender, receiver)
            # Frames lost on the way: the next one to arrive is a few ids further on.
            ahead = schema.VideoFrameHeader(
                frame_id=sender.stats.sent + 3, capture_ns=time.monotonic_ns(),
                send_ns=time.monotonic_ns(), keyframe=False, width=W, height=H, payload_len=5)
            robot.video_socket.send_multipart([schema.encode(ahead), b"\x00\x00\x01\x41\x9a"])
            deadline = time.monotonic() + 10.0
            while not receiver.keyframe_needed:
                assert time.monotonic() < deadline
                receiver.poll(50)
            request = receiver.take_keyframe_request()
            assert request is not None and request.reason == "gap"
            assert console.send_keyframe_request(request)
            got = None
            while got is None:
                assert time.monotonic() < deadline
                got = next((i.msg for i in robot.poll(50)
                            if isinstance(i.msg, schema.KeyframeRequest)), None)
            sender.request_keyframe()
            sender.send(frame(next_id + 2))
            shown = None
            while shown is None:
                assert time.monotonic() < deadline
                shown = receiver.poll(50)
            assert shown.keyframe and read_frame_id(shown.image) == next_id + 2


# ---------------------------------------------------------------- the benchmark, briefly
@pytest.mark.slow
def test_video_bench_runs_two_processes_over_the_secured_link() -> None:
    from telesurgery.bench.video import run

    result = run(seconds=2.0, sizes=((320, 240),), fps=30.0)
    for key in ("g2g_p50_ms", "g2g_p99_ms", "codec_p50_ms", "ratio_p50"):
        assert np.isfinite(result[key]) and result[key] > 0, key
    assert result["g2g_p99_ms"] >= result["g2g_p50_ms"]
    console = result["sizes"]["320x240"]["console"]
    assert console["measured"] > 10 and console["bad_messages"] == 0


def test_a_path_switch_asks_again_with_the_first_frame_by_the_new_path(
        ctx: zmq.Context[Any]) -> None:
    # Dual path: the switch's request may reach the robot before the new connection is
    # subscribed (its keyframe then goes to no one); the first frame by the new path
    # proves the connection is up, so the receiver asks again at once, not 250 ms later.
    pub, sub = pub_sub(ctx)
    sender, receiver = sender_on(pub), VideoReceiver(sub, H264Decoder())
    for i in range(3):
        sender.send(frame(i))
    assert receiver.poll(1000) is not None
    now = time.monotonic_ns()
    receiver.on_path_switch()
    assert receiver.take_keyframe_request(now) is not None  # at once
    assert receiver.take_keyframe_request(now + 1000) is None  # within the retry interval
    sender.send(frame(3))  # a P-frame by the new path: its keyframe went to no one
    assert receiver.poll(1000) is None and receiver.keyframe_needed
    request = receiver.take_keyframe_request(now + 2000)
    assert request is not None and request.reason == "path switch"
    sender.request_keyframe()
    sender.send(frame(4))
    assert receiver.poll(1000) is not None and not receiver.keyframe_needed
