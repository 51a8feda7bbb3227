"""The session bag is one that ``ros2 bag info``/``play`` and Foxglove read.

The keys checked are those rosbag2's own metadata decoder requires
(rosbag2_storage ``yaml.hpp``: each field from the version that introduced it) and
those of the MCAP ``ros2`` profile (channel ``offered_qos_profiles`` string, schema
``ros2msg``, message encoding ``cdr``); the bag is read back with ``rosbags``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import Reader
from ruamel.yaml import YAML

from robot_side.observe import CommandRing
from robot_side.recording.bag import BAG_VERSION, SessionBag
from transport.schema import (
    Command,
    LinkReport,
    Pose,
    SafetyEvent,
    Telemetry,
    VideoFrameHeader,
    decode,
)

# (ruamel.yaml: the YAML library rosbags itself reads metadata with)
QOS_KEYS = {"history", "depth", "reliability", "durability", "deadline", "lifespan",
            "liveliness", "liveliness_lease_duration", "avoid_ros_namespace_conventions"}


def _session(folder: Path) -> Path:
    now = time.monotonic_ns()
    bag = SessionBag(folder, ("j1", "j2"))
    bag.telemetry(Telemetry(seq=1, t_ns=now, state="following", reason="engaged",
                            measured_js=(0.1, 0.2), setpoint_js=(0.1, 0.2),
                            measured_cp=Pose(), setpoint_cp=Pose(), link=LinkReport(),
                            scale=0.2, estop=False))
    bag.event(SafetyEvent(seq=1, t_ns=now + 1, code="command_timeout",
                          state_from="following", state_to="hold"))
    ring = CommandRing()
    ring.add(Command(seq=1, t_send_ns=0, position=(0.0, 0.0, 0.1),
                     orientation=(1.0, 0.0, 0.0, 0.0), grip=0.0, clutch=False,
                     operator_present=True), now + 2)
    for batch in ring.batches():
        bag.commands_received(decode(batch))
    bag.video(VideoFrameHeader(frame_id=1, capture_ns=now + 3, send_ns=now + 3, keyframe=True,
                               width=16, height=16, payload_len=5), b"\x00\x00\x00\x01\x65")
    bag.close()
    return folder


def test_metadata_has_every_key_rosbag2_reads(tmp_path: Path) -> None:
    session = _session(tmp_path / "s")
    info: dict[str, Any] = YAML(typ="safe").load(
        (session / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    version = info["version"]
    assert version == BAG_VERSION == 8
    assert info["storage_identifier"] == "mcap"
    assert isinstance(info["duration"]["nanoseconds"], int)
    assert isinstance(info["starting_time"]["nanoseconds_since_epoch"], int)
    assert info["message_count"] == sum(t["message_count"]
                                        for t in info["topics_with_message_count"])
    for path in info["relative_file_paths"]:
        assert (session / path).is_file()
    assert info["compression_format"] == "" and info["compression_mode"] == ""  # v3
    for f in info["files"]:  # v5
        assert {"path", "starting_time", "duration", "message_count"} <= set(f)
    assert all(isinstance(v, str) for v in info["custom_data"].values())  # v6
    assert isinstance(info["ros_distro"], str)  # v8
    topics = {}
    for t in info["topics_with_message_count"]:
        meta = t["topic_metadata"]
        topics[meta["name"]] = meta["type"]
        assert meta["serialization_format"] == "cdr"
        # Up to v8 rosbag2 converts this to a std::string: a YAML sequence here is refused.
        assert isinstance(meta["offered_qos_profiles"], str)  # v4
        (qos,) = YAML(typ="safe").load(meta["offered_qos_profiles"])
        assert set(qos) == QOS_KEYS
        assert meta["type_description_hash"].startswith("RIHS01_")  # v7
    assert topics["/video/compressed"] == "foxglove_msgs/msg/CompressedVideo"
    assert topics["/console/buttons"] == "sensor_msgs/msg/Joy"
    assert all(t.split("/")[1] == "msg" for t in topics.values())


def test_the_mcap_file_follows_the_ros2_profile(tmp_path: Path) -> None:
    from mcap.reader import make_reader

    session = _session(tmp_path / "s")
    (mcap_file,) = session.glob("*.mcap")
    with mcap_file.open("rb") as fh:
        reader = make_reader(fh)
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
        assert summary is not None
        for channel in summary.channels.values():
            assert channel.message_encoding == "cdr"
            assert isinstance(channel.metadata["offered_qos_profiles"], str)
            assert summary.schemas[channel.schema_id].encoding == "ros2msg"
        names = [m.name for m in reader.iter_metadata()]
    assert "rosbag2" in names  # the storage plugin's copy of the metadata


def test_the_rosbags_reader_opens_it(tmp_path: Path) -> None:
    session = _session(tmp_path / "s")
    with Reader(session) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert reader.message_count == 11  # telemetry 6, event 1, commands 3, video 1
    assert counts["/console/master_cp"] == counts["/console/buttons"] == 1
    assert counts["/video/compressed"] == 1
