"""A session as a rosbag2 folder with MCAP storage, in standard ROS 2 types (CDR).

Topics (standard types; the video type is Foxglove's):

* ``/arm/measured_js``, ``/arm/setpoint_js``: sensor_msgs/JointState
* ``/arm/measured_cp``, ``/arm/setpoint_cp``: geometry_msgs/PoseStamped
* ``/supervisor/status``: diagnostic_msgs/DiagnosticArray: state, reason (code and
  words), e-stop, scale, tracking error, firmware flags, loop jitter
* ``/supervisor/events``: diagnostic_msgs/DiagnosticArray, one per audited SafetyEvent
  (transition with its reason)
* ``/link/stats``: diagnostic_msgs/DiagnosticArray: RTT, one-way latency, jitter, loss,
  picture age, as the robot measures them
* ``/patient/vitals``: diagnostic_msgs/DiagnosticArray, one per relayed Vitals: each
  sign as ``value unit`` (``?`` when stale), each active alarm, the monitor's state
* ``/video/compressed``: foxglove_msgs/CompressedVideo, one H.264 access unit per
  message (Annex B; SPS/PPS with every keyframe)
* ``/console/master_cp``: geometry_msgs/PoseStamped, the surgeon's master pose of every
  command the robot accepted, as received (before the robot's scaling and anchoring),
  stamped with the robot's receive time
* ``/console/buttons``: sensor_msgs/Joy with the same stamp: ``axes = [grip]``,
  ``buttons = [clutch, operator_present]``
* ``/console/commands``: diagnostic_msgs/DiagnosticArray, one per batch the robot
  published: sequence numbers, commands lost before recording, the picture age the
  console reported

One timeline: every stamp (log time and header) is the robot's CLOCK_MONOTONIC time
of the sample (telemetry ``t_ns``, event ``t_ns``, frame ``capture_ns``) plus one
offset taken at the start, so Foxglove shows dates and intervals stay exact. The
offset is in the bag's metadata.

The setpoints (``/arm/setpoint_*``) are what the robot commanded after its limits; the
commands as received (``/console/*``) are what the surgeon asked for.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

import numpy as np
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from robot_side.supervision.words import firmware_words, reason_words
from transport.schema import CommandBatch, SafetyEvent, Telemetry, VideoFrameHeader, Vitals

COMPRESSED_VIDEO = "foxglove_msgs/msg/CompressedVideo"
COMPRESSED_VIDEO_MSG = """\
builtin_interfaces/Time timestamp
string frame_id
uint8[] data
string format
"""
TRIP_STATES = frozenset({"hold", "fault", "estop"})
BAG_VERSION: Final = 8
"""rosbag2 metadata version 8 (Jazzy's): every field ``ros2 bag`` reads from Humble on
(``files``, ``custom_data``, ``type_description_hash``, ``ros_distro``) with the QoS
profiles as a YAML *string*, as rosbag2's ``yaml.hpp`` decodes them up to version 8.
Version 9 stores them as a YAML sequence, which Humble's and Jazzy's ``ros2 bag`` cannot
convert to a string and refuse."""
OFFERED_QOS = Qos(QosHistory.KEEP_LAST, 10, QosReliability.RELIABLE, QosDurability.VOLATILE,
                  QosTime(0, 0), QosTime(0, 0), QosLiveliness.AUTOMATIC, QosTime(0, 0), False)
"""rclcpp's default publisher profile: what ``ros2 bag play`` offers each topic again."""


def typestore() -> Any:
    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(get_types_from_msg(COMPRESSED_VIDEO_MSG, COMPRESSED_VIDEO))
    return store


class SessionBag:
    """Writes one session; every method may raise OSError (the recorder stops on it)."""

    TOPICS = {
        "/arm/measured_js": "sensor_msgs/msg/JointState",
        "/arm/setpoint_js": "sensor_msgs/msg/JointState",
        "/arm/measured_cp": "geometry_msgs/msg/PoseStamped",
        "/arm/setpoint_cp": "geometry_msgs/msg/PoseStamped",
        "/supervisor/status": "diagnostic_msgs/msg/DiagnosticArray",
        "/supervisor/events": "diagnostic_msgs/msg/DiagnosticArray",
        "/link/stats": "diagnostic_msgs/msg/DiagnosticArray",
        "/patient/vitals": "diagnostic_msgs/msg/DiagnosticArray",
        "/video/compressed": COMPRESSED_VIDEO,
        "/console/master_cp": "geometry_msgs/msg/PoseStamped",
        "/console/buttons": "sensor_msgs/msg/Joy",
        "/console/commands": "diagnostic_msgs/msg/DiagnosticArray",
    }

    def __init__(self, path: Path, joint_names: tuple[str, ...]) -> None:
        self.path = path
        self.joint_names = joint_names
        self.offset_ns = time.time_ns() - time.monotonic_ns()  # wall-clock ok: one mapping
        self.store = typestore()
        self._t = self.store.types
        self._writer = Writer(path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._conn = {topic: self._writer.add_connection(topic, msgtype, typestore=self.store,
                                                         offered_qos_profiles=[OFFERED_QOS])
                      for topic, msgtype in self.TOPICS.items()}
        self._writer.set_custom_data("telesurgery.clock_offset_ns", str(self.offset_ns))
        self._writer.set_custom_data(
            "telesurgery.timeline", "stamp = robot CLOCK_MONOTONIC + clock_offset_ns")
        self._writer.set_custom_data(
            "telesurgery.commands", "/console/master_cp + /console/buttons: every command "
            "the robot's gate accepted as fresh, stamped on arrival")
        self.messages = 0
        self.video_frames = 0
        self.commands = 0
        self.commands_lost = 0

    # ------------------------------------------------------------ helpers
    def _stamp(self, mono_ns: int) -> Any:
        t = mono_ns + self.offset_ns
        return self._t["builtin_interfaces/msg/Time"](sec=t // 1_000_000_000,
                                                      nanosec=t % 1_000_000_000)

    def _header(self, mono_ns: int, frame: str = "base") -> Any:
        return self._t["std_msgs/msg/Header"](stamp=self._stamp(mono_ns), frame_id=frame)

    def _write(self, topic: str, mono_ns: int, msg: Any) -> None:
        data = self.store.serialize_cdr(msg, self.TOPICS[topic])
        self._writer.write(self._conn[topic], mono_ns + self.offset_ns, data)
        self.messages += 1

    def _diag(self, mono_ns: int, level: int, name: str, message: str,
              values: dict[str, str]) -> Any:
        kv = self._t["diagnostic_msgs/msg/KeyValue"]
        status = self._t["diagnostic_msgs/msg/DiagnosticStatus"](
            level=level, name=name, message=message,
            hardware_id="telesurgery",
            values=[kv(key=k, value=v) for k, v in values.items()])
        return self._t["diagnostic_msgs/msg/DiagnosticArray"](header=self._header(mono_ns),
                                                              status=[status])

    # ------------------------------------------------------------ records
    def telemetry(self, tlm: Telemetry) -> None:
        t = tlm.t_ns
        names = list(self.joint_names[:len(tlm.measured_js)])
        names += [f"joint_{i}" for i in range(len(names), len(tlm.measured_js))]
        js = self._t["sensor_msgs/msg/JointState"]
        empty = np.zeros(0, dtype=np.float64)
        for topic, q in (("/arm/measured_js", tlm.measured_js),
                         ("/arm/setpoint_js", tlm.setpoint_js)):
            self._write(topic, t, js(header=self._header(t), name=names[:len(q)],
                                     position=np.array(q, dtype=np.float64),
                                     velocity=empty, effort=empty))
        for topic, pose in (("/arm/measured_cp", tlm.measured_cp),
                            ("/arm/setpoint_cp", tlm.setpoint_cp)):
            w, x, y, z = pose.orientation
            msg = self._t["geometry_msgs/msg/PoseStamped"](
                header=self._header(t), pose=self._t["geometry_msgs/msg/Pose"](
                    position=self._t["geometry_msgs/msg/Point"](*pose.position),
                    orientation=self._t["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)))
            self._write(topic, t, msg)
        flags, bad = firmware_words(tlm.firmware_flags)
        level = 2 if tlm.state in TRIP_STATES else 1 if bad else 0
        self._write("/supervisor/status", t, self._diag(t, level, "supervisor", tlm.state, {
            "state": tlm.state, "reason": tlm.reason, "why": reason_words(tlm.reason),
            "estop": str(tlm.estop).lower(), "scale": f"{tlm.scale:.4f}",
            "tracking_error_m": f"{tlm.tracking_error_m:.6f}",
            "firmware_flags": hex(tlm.firmware_flags), "firmware": ", ".join(flags),
            "loop_jitter_us": str(tlm.loop_jitter_us), "robot_t_ns": str(t),
            # The audit log's chain head, where the robot sends it: ties this recording
            # to the audit records (``telesurgery audit verify --witness``).
            "audit_head": str(getattr(tlm, "audit_head", None) or "")}))
        lk = tlm.link
        self._write("/link/stats", t, self._diag(t, 0, "link", "as the robot measures it", {
            "rtt_us": str(lk.rtt_us), "latency_us": str(lk.latency_us),
            "jitter_us": str(lk.jitter_us), "loss": f"{lk.loss:.4f}",
            "video_age_us": str(lk.video_age_us)}))

    def event(self, evt: SafetyEvent) -> None:
        level = 2 if evt.state_to in TRIP_STATES and evt.state_from != evt.state_to else 0
        self._write("/supervisor/events", evt.t_ns, self._diag(
            evt.t_ns, level, "supervisor", evt.code, {
                "code": evt.code, "why": reason_words(evt.code), "from": evt.state_from,
                "to": evt.state_to, "detail": evt.detail, "seq": str(evt.seq),
                "robot_t_ns": str(evt.t_ns)}))

    def vitals(self, v: Vitals) -> None:
        """The patient monitor's snapshot: ERROR level for a high alarm or no monitor."""
        priorities = {a.priority for a in v.alarms}
        level = 2 if v.monitor != "ok" or "high" in priorities else 1 if priorities else 0
        values = {x.name: f"{x.value:g} {x.unit}{'' if x.status == 'ok' else ' ?'}"
                  for x in v.values}
        values.update({f"alarm {a.code}": f"{a.priority}: {a.text}" for a in v.alarms})
        values["monitor"] = v.monitor
        self._write("/patient/vitals", v.t_ns, self._diag(
            v.t_ns, level, "patient_monitor", v.detail or v.source, values))

    def video(self, header: VideoFrameHeader, access_unit: bytes) -> None:
        t = header.capture_ns
        msg = self._t[COMPRESSED_VIDEO](timestamp=self._stamp(t), frame_id="camera",
                                        data=np.frombuffer(access_unit, dtype=np.uint8),
                                        format="h264")
        self._write("/video/compressed", t, msg)
        self.video_frames += 1

    def commands_received(self, batch: CommandBatch) -> None:
        t = self._t
        pose, joy = t["geometry_msgs/msg/PoseStamped"], t["sensor_msgs/msg/Joy"]
        for rc in batch.commands:
            c, when = rc.cmd, rc.recv_ns
            w, x, y, z = c.orientation
            self._write("/console/master_cp", when, pose(
                header=self._header(when, "master"), pose=t["geometry_msgs/msg/Pose"](
                    position=t["geometry_msgs/msg/Point"](*c.position),
                    orientation=t["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w))))
            self._write("/console/buttons", when, joy(
                header=self._header(when, "master"),
                axes=np.array([c.grip], dtype=np.float32),
                buttons=np.array([int(c.clutch), int(c.operator_present)], dtype=np.int32)))
        if not batch.commands:
            return
        first, last = batch.commands[0], batch.commands[-1]
        self.commands += len(batch.commands)
        self.commands_lost = batch.lost
        self._write("/console/commands", last.recv_ns, self._diag(
            last.recv_ns, 1 if batch.lost else 0, "commands", "as received", {
                "count": str(len(batch.commands)), "first_seq": str(first.cmd.seq),
                "last_seq": str(last.cmd.seq), "lost_before_recording": str(batch.lost),
                "video_age_us": str(last.cmd.video_age_us),
                "console_t_send_ns": str(last.cmd.t_send_ns), "robot_t_ns": str(last.recv_ns)}))

    def close(self) -> None:
        self._writer.close()
