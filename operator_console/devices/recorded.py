"""The master motion of a recorded session, for the scripted device to play again.

A session recording (``robot_side.recording.bag``) holds every command the robot
accepted, as received: ``/console/master_cp`` (geometry_msgs/PoseStamped) and
``/console/buttons`` (sensor_msgs/Joy, ``axes = [grip]``, ``buttons = [clutch,
operator_present]``), both stamped with the robot's receive time. Read back in time
order they are a ``MotionTrack``: ``[device] kind = "scripted"`` with ``path`` set to
the session folder replays the surgeon's hand on a console (``telesurgery replay
SESSION --drive``). The poses are what the console sent, already registered and
tremor-filtered: a console replaying them turns both off (``drive_config``).

Only standard ROS 2 types are read, so any rosbag2 folder with these topics plays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from operator_console.devices.scripted import MotionTrack
from telesurgery.errors import DeviceError

MASTER_TOPIC = "/console/master_cp"
BUTTONS_TOPIC = "/console/buttons"


def load_session_motion(folder: Path) -> MotionTrack:
    """The recorded master motion of ``folder`` (a rosbag2 session); ``DeviceError`` if none."""
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.typesys import Stores, get_typestore

    poses: dict[int, tuple[list[float], list[float]]] = {}
    buttons: dict[int, tuple[float, bool, bool]] = {}
    try:
        with AnyReader([folder], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
            conns = [c for c in reader.connections if c.topic in (MASTER_TOPIC, BUTTONS_TOPIC)]
            if not any(c.topic == MASTER_TOPIC for c in conns):
                raise DeviceError(f"{folder}: no recorded master motion ({MASTER_TOPIC})")
            for conn, _, raw in reader.messages(connections=conns):
                msg: Any = reader.deserialize(raw, conn.msgtype)
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                if conn.topic == MASTER_TOPIC:
                    p, o = msg.pose.position, msg.pose.orientation
                    poses[stamp] = ([p.x, p.y, p.z], [o.w, o.x, o.y, o.z])
                elif len(msg.axes) >= 1 and len(msg.buttons) >= 2:
                    buttons[stamp] = (float(msg.axes[0]), bool(msg.buttons[0]),
                                      bool(msg.buttons[1]))
    except (AnyReaderError, OSError, KeyError, ValueError) as err:
        raise DeviceError(f"{folder}: cannot read the recording: {err}") from err
    stamps = sorted(poses)
    if len(stamps) < 2:
        raise DeviceError(f"{folder}: {len(stamps)} recorded master poses; needs at least 2")
    # A pose without its buttons (a torn last write) is a present, open, unclutched hand.
    grip, clutch, present = zip(*(buttons.get(s, (0.0, False, True)) for s in stamps),
                                strict=True)
    t = (np.array(stamps, dtype=np.int64) - stamps[0]) / 1e9
    track = MotionTrack(
        t=t, position=np.array([poses[s][0] for s in stamps], dtype=np.float64),
        quat=np.array([poses[s][1] for s in stamps], dtype=np.float64),
        grip=np.clip(np.array(grip, dtype=np.float64), 0.0, 1.0),
        clutch=np.array(clutch, dtype=bool), present=np.array(present, dtype=bool))
    track.validate(str(folder))
    return track
