"""Session recording: a real video process and observer feed, the recorder as its own
process, the bag read back by independent readers (rosbags, the mcap package, PyAV)."""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from hil_tests.rig import poll
from robot_side.observe import ObserverFeed
from robot_side.recording.config import RecordConfig
from robot_side.recording.recorder import RecorderPaths, RecorderProcess
from robot_side.video.config import VideoConfig
from robot_side.video_process import VideoProcess
from transport.config import LinkConfig
from transport.keys import init_keys
from transport.schema import (
    Command,
    CommandBatch,
    LinkReport,
    Pose,
    ReceivedCommand,
    SafetyEvent,
    Telemetry,
)

pytestmark = pytest.mark.slow

JOINTS = ("j1", "j2", "j3", "j4", "j5", "j6")
RECORD_S = 3.0


def telemetry(seq: int, state: str) -> Telemetry:
    return Telemetry(seq=seq, t_ns=time.monotonic_ns(), state=state, reason="engaged",
                     measured_js=(0.1 * seq % 1,) * 6, setpoint_js=(0.0,) * 6,
                     measured_cp=Pose((0.1, 0.2, 0.3), (1.0, 0.0, 0.0, 0.0)),
                     setpoint_cp=Pose(), link=LinkReport(rtt_us=1500, latency_us=700,
                                                         jitter_us=40, loss=0.0,
                                                         video_age_us=60_000),
                     scale=0.2, estop=False, firmware_flags=1 << 8)


def master(seq: int) -> Command:
    """The scripted surgeon's hand: a slow circle with a wrist roll, clutching now and then."""
    a = seq * 0.002
    return Command(seq=seq, t_send_ns=time.monotonic_ns(),
                   position=(0.05 * math.cos(a), 0.05 * math.sin(a), 0.001 * (seq % 100)),
                   orientation=(math.cos(a / 2), math.sin(a / 2), 0.0, 0.0),
                   grip=(seq % 1000) / 1000, clutch=(seq // 500) % 2 == 1,
                   operator_present=True, session=0x5EC12E7)


class Robot:
    """The robot's observable side: a real feed publisher and a real video process."""

    def __init__(self, run: Path) -> None:
        init_keys(run / "keys")
        self.feed = ObserverFeed(run / "observe.sock")
        self.video = VideoProcess(VideoConfig(width=160, height=120, fps=20.0, gop=40),
                                  LinkConfig(video_port=0, keys_dir=run / "keys"),
                                  run / "keys", local_socket=run / "video.sock")
        self.events: list[SafetyEvent] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._publish, daemon=True)

    def start(self) -> None:
        self.video.start()
        self._thread.start()

    def _publish(self) -> None:
        seq = 0
        while not self._halt.is_set():
            seq += 1
            state = "following" if (seq // 100) % 2 == 0 else "hold"
            self.feed.publish(telemetry(seq, state))
            # Ten commands as received per telemetry: 1 kHz, batched as the node does.
            now = time.monotonic_ns()
            self.feed.publish(CommandBatch(seq=seq, commands=tuple(
                ReceivedCommand(now - (9 - i) * 1_000_000, master(seq * 10 + i))
                for i in range(10))))
            if seq % 100 == 0:
                evt = SafetyEvent(seq=seq // 100, t_ns=time.monotonic_ns(),
                                  code="command_timeout" if state == "hold" else "engaged",
                                  state_from="following" if state == "hold" else "hold",
                                  state_to=state, detail="scripted")
                self.events.append(evt)
                self.feed.publish(evt)
            time.sleep(0.01)

    def stop(self) -> None:
        self._halt.set()
        self._thread.join()
        self.video.stop()
        self.feed.close()


@pytest.fixture
def robot(tmp_path: Path) -> Iterator[Robot]:
    r = Robot(tmp_path)
    r.start()
    yield r
    r.stop()


def record(run: Path, cfg: RecordConfig, seconds: float,
           during: Any = None) -> dict[str, Any]:
    paths = RecorderPaths(observe=run / "observe.sock", video=run / "video.sock",
                          status=run / "recording.json")
    rec = RecorderProcess(cfg, paths, JOINTS)
    rec.start()
    try:
        poll("the recorder's first status", 60.0, paths.status.exists)
        time.sleep(seconds)
        if during is not None:
            during()
            time.sleep(2.5)
        status: dict[str, Any] = json.loads(paths.status.read_text())
    finally:
        rec.stop()
    return status


def test_a_session_reads_back_in_standard_types(tmp_path: Path, robot: Robot) -> None:
    from rosbags.highlevel import AnyReader

    from robot_side.recording.bag import typestore

    record(tmp_path, RecordConfig(folder=tmp_path / "rec", min_free_mb=1.0), RECORD_S)
    (session,) = (tmp_path / "rec").iterdir()
    assert (session / "metadata.yaml").exists()
    assert list(session.glob("*.mcap"))
    with AnyReader([session], default_typestore=typestore()) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert topics["/arm/measured_js"] == "sensor_msgs/msg/JointState"
        assert topics["/video/compressed"] == "foxglove_msgs/msg/CompressedVideo"
        counts: dict[str, int] = {}
        codec = av.CodecContext.create("h264", "r")
        decoded = 0
        frames = 0
        stamps: list[int] = []
        states: list[str] = []
        keyframes_with_sps = keyframes = 0
        masters: list[tuple[int, Any]] = []
        for conn, t, raw in reader.messages():
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == "/video/compressed":
                frames += 1
                assert msg.format == "h264"
                data = bytes(msg.data)
                assert data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))  # Annex B
                nal_types = {b & 0x1F for b in _nal_headers(data)}
                if 5 in nal_types:
                    keyframes += 1
                    keyframes_with_sps += {7, 8} <= nal_types
                # One access unit per message: each is one packet, no parser needed.
                decoded += len(codec.decode(av.Packet(data)))
                stamps.append(msg.timestamp.sec * 10**9 + msg.timestamp.nanosec)
                assert stamps[-1] == t  # one timeline: header stamp == log time
            elif conn.topic == "/arm/measured_js":
                assert tuple(msg.name) == JOINTS and len(msg.position) == 6
            elif conn.topic == "/supervisor/events":
                states.append(msg.status[0].values[3].value)
            elif conn.topic == "/console/master_cp":
                masters.append((t, msg))
        decoded += len(codec.decode(None))  # flush
    print(f"recorded: {counts}")
    assert counts["/arm/measured_js"] > 50 and counts["/link/stats"] > 50
    assert counts.get("/supervisor/events", 0) >= 1 and set(states) <= {"hold", "following"}
    assert frames >= 20, "the video process answers a subscription with a keyframe"
    assert keyframes >= 1 and keyframes_with_sps == keyframes
    assert decoded == frames, f"decoded {decoded} of {frames} recorded frames"
    # Commands as received: every one, in order, on the robot's receive time.
    assert topics["/console/master_cp"] == "geometry_msgs/msg/PoseStamped"
    assert topics["/console/buttons"] == "sensor_msgs/msg/Joy"
    assert counts["/console/master_cp"] == counts["/console/buttons"] > 500
    times = [t for t, _ in masters]
    assert times == sorted(times) and len(set(times)) == len(times)
    t, first = masters[0]
    assert first.header.stamp.sec * 10**9 + first.header.stamp.nanosec == t


def _nal_headers(data: bytes) -> list[int]:
    out, i = [], 0
    while (i := data.find(b"\x00\x00\x01", i)) >= 0:
        i += 3
        if i < len(data):
            out.append(data[i])
    return out


def test_the_mcap_file_decodes_with_an_independent_reader(tmp_path: Path,
                                                          robot: Robot) -> None:
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    record(tmp_path, RecordConfig(folder=tmp_path / "rec", min_free_mb=1.0, video=False),
           1.5)
    (mcap_file,) = (tmp_path / "rec").glob("*/*.mcap")
    with mcap_file.open("rb") as fh:
        reader = make_reader(fh, decoder_factories=[DecoderFactory()])
        poses = [m for _, _, _, m in reader.iter_decoded_messages(topics=["/arm/measured_cp"])]
    assert poses and abs(poses[0].pose.position.z - 0.3) < 1e-9


def test_a_vanished_folder_stops_recording_with_an_alarm(tmp_path: Path,
                                                         robot: Robot) -> None:
    folder = tmp_path / "rec"
    status = record(tmp_path, RecordConfig(folder=folder, min_free_mb=1.0), 1.0,
                    during=lambda: shutil.rmtree(folder))
    assert status["state"] == "failed" and "gone" in status["why"], status
    assert robot.video.exitcode is None  # the robot's side carries on


def test_a_full_disk_stops_recording_with_an_alarm(tmp_path: Path, robot: Robot) -> None:
    total_mb = shutil.disk_usage(tmp_path).total / 1e6
    status = record(tmp_path, RecordConfig(folder=tmp_path / "rec", min_free_mb=total_mb * 2),
                    1.5)
    assert status["state"] == "failed" and "disk nearly full" in status["why"], status


def test_export_and_replay_read_a_session_back(tmp_path: Path, robot: Robot) -> None:
    from robot_side.recording.playback import export_mp4, replay

    record(tmp_path, RecordConfig(folder=tmp_path / "rec", min_free_mb=1.0), RECORD_S)
    (session,) = (tmp_path / "rec").iterdir()
    n = export_mp4(session, tmp_path / "session.mp4")
    with av.open(str(tmp_path / "session.mp4")) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert n >= 20 and decoded == n
    shown = replay(session, speed=100.0, out_dir=tmp_path / "replay")
    assert shown == n and len(list((tmp_path / "replay").glob("*.png"))) == n


def test_the_master_motion_plays_again_in_the_scripted_device(tmp_path: Path,
                                                              robot: Robot) -> None:
    """``telesurgery replay SESSION --drive``: the recorded hand, in time, on a console's
    scripted device; every pose it gives at a recorded instant is the recorded one."""
    from rosbags.highlevel import AnyReader

    from operator_console.devices import DeviceConfig, open_device
    from robot_side.recording.bag import typestore

    record(tmp_path, RecordConfig(folder=tmp_path / "rec", min_free_mb=1.0, video=False), 1.5)
    (session,) = (tmp_path / "rec").iterdir()
    with AnyReader([session], default_typestore=typestore()) as reader:
        conns = [c for c in reader.connections if c.topic == "/console/master_cp"]
        recorded = [(t, reader.deserialize(raw, c.msgtype).pose)
                    for c, t, raw in reader.messages(connections=conns)]
    assert len(recorded) > 100
    device = open_device(DeviceConfig(kind="scripted", path=session, loop=False))
    try:
        t0 = recorded[0][0]
        base = 10**12  # the console's own clock: any origin
        for t, pose in recorded:
            s = device.read(base + (t - t0))
            p, o = pose.position, pose.orientation
            assert s.position == pytest.approx((p.x, p.y, p.z), abs=1e-9)
            assert s.quat == pytest.approx((o.w, o.x, o.y, o.z), abs=1e-6)
            assert s.operator_present
        after = device.read(base + (recorded[-1][0] - t0) + 10**9)
        assert not after.operator_present  # the recording is over: the hand lets go
    finally:
        device.close()
