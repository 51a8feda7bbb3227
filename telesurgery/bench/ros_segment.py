"""``bench path --ros``: the ROS 2 command path's segment, an independent DDS participant.

A process of its own (its own cyclonedds participant, on loopback like the command
bridge) that does what a ROS 2 program does: reads ``measured_cp`` and
``operating_state`` with the ROS 2 default QoS, takes command with ``state_command``
``enable`` (the console that drove before is gone, so the robot's takeover rule
lets the ROS commander's ``arm`` through) and ``resume``, then publishes ``servo_cp``
at the bench's rate for ``seconds``: a small circle around the pose it read. Each
message's header stamp is its publish time, so the robot measures ROS topic ->
serial frame written exactly as it measures console sample -> serial frame written.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import re
import time
from multiprocessing.connection import Connection
from typing import Any

from telesurgery.pacer import Pacer, lower_timer_slack, try_realtime

SENDER_PRIORITY = 40
"""As the console's command thread and the raw pyzmq sender."""
TAKE_COMMAND_S = 45.0
CIRCLE_RADIUS_M = 0.003
CIRCLE_PERIOD_S = 4.0
CHECK_EVERY_NS = 50_000_000
REENGAGE_AFTER_NS = 1_000_000_000
"""As the scripted console's ``reengage_after_s``: resume this long after a trip."""


def _child(domain_id: int, namespace: str, seconds: float, rate_hz: float,
           conn: Connection) -> None:
    from cyclonedds.core import Policy, Qos
    from cyclonedds.domain import Domain, DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    from robot_side.ros import msgs
    from robot_side.ros.ddsconfig import config_xml
    from robot_side.ros.topics import SUBSCRIPTIONS, TOPICS

    qos = Qos(Policy.Reliability.Reliable(max_blocking_time=100_000_000),
              Policy.History.KeepLast(10), Policy.Durability.Volatile,
              Policy.DataRepresentation(use_cdrv0_representation=True))
    domain = Domain(domain_id, config_xml(("lo",), ()))  # the command bridge is on lo only
    dp = DomainParticipant(domain_id)

    def writer(key: str) -> DataWriter[Any]:
        spec = SUBSCRIPTIONS[key]
        return DataWriter(dp, Topic(dp, spec.dds_name(namespace), spec.msg_type), qos)

    def reader(key: str) -> DataReader[Any]:
        spec = TOPICS[key]
        return DataReader(dp, Topic(dp, spec.dds_name(namespace), spec.msg_type), qos)

    state_w, servo_w = writer("state_command"), writer("servo_cp")
    pose_r, state_r = reader("measured_cp"), reader("operating_state")
    out: dict[str, Any] = {"ros_sent": 0, "ros_take_command_s": None, "ros_reengaged": 0}
    pose: Any = None
    busy = False

    def read() -> None:
        nonlocal pose, busy
        for p in pose_r.take(N=16):
            pose = p
        for s in state_r.take(N=16):
            busy = bool(s.is_busy)

    def command(what: str) -> None:
        state_w.write(msgs.StringStamped(string=what))

    conn.send("ready")
    if not conn.poll(600.0):  # the parent says go once the console's segment is over
        return
    conn.recv()
    t0 = time.monotonic()
    deadline = t0 + TAKE_COMMAND_S
    # enable (arm: the robot's takeover rule once the console is gone) and resume
    # (anchor at the arm's pose, engage) until the arm follows the ROS commander.
    # Each resume gets its time (the commander retries engage for 3 s while the robot
    # says its link has not settled): sending again sooner would restart it.
    while not busy and time.monotonic() < deadline:
        # enable (arm) every time: it takes the session the console left (the takeover
        # rule), and the holder's repeated arm is a no-op.
        command("enable")
        time.sleep(1.0)
        command("resume")
        until = time.monotonic() + 5.0
        while time.monotonic() < until:
            read()
            if busy:
                break
            time.sleep(0.05)
    read()
    if not busy or pose is None:
        out["ros_error"] = "the ROS commander did not take command"
        conn.send(out)
        return
    out["ros_take_command_s"] = round(time.monotonic() - t0, 2)
    conn.send("streaming")  # the parent starts this segment's raw pyzmq pair now
    try_realtime(SENDER_PRIORITY)
    lower_timer_slack()
    centre = pose.pose
    pacer = Pacer(int(1e9 / rate_hz))
    start = time.monotonic_ns()
    end = start + int(seconds * 1e9)
    pacer.restart()
    next_check, idle_since = start, None
    while time.monotonic_ns() < end:
        pacer.wait()
        now = time.monotonic_ns()
        if now >= next_check:
            next_check = now + CHECK_EVERY_NS
            read()
            idle_since = None if busy else (idle_since or now)
            if idle_since is not None and now - idle_since >= REENGAGE_AFTER_NS:
                # Tripped (load: a command timeout, a starved emulator): enable and resume
                # as the scripted console re-engages, and restart the circle where the arm
                # holds (no jump).
                out["ros_reengaged"] += 1
                command("enable")  # clears a latched fault (a starved emulator); else a no-op
                command("resume")
                idle_since, centre, start = None, pose.pose, now
        phase = 2 * math.pi * (time.monotonic_ns() - start) / 1e9 / CIRCLE_PERIOD_S
        # A circle that starts at the centre: no jump at the first message.
        dx = CIRCLE_RADIUS_M * (math.cos(phase) - 1.0)
        dy = CIRCLE_RADIUS_M * math.sin(phase)
        wall = time.time_ns()  # wall-clock ok: a ROS header stamp is the wall clock
        msg = msgs.PoseStamped(
            header=msgs.Header(stamp=msgs.Time(sec=wall // 1_000_000_000,
                                               nanosec=wall % 1_000_000_000),
                               frame_id="base"),
            pose=msgs.Pose(position=msgs.Point(x=centre.position.x + dx,
                                               y=centre.position.y + dy,
                                               z=centre.position.z),
                           orientation=centre.orientation))
        servo_w.write(msg)
        out["ros_sent"] += 1
    command("pause")
    time.sleep(0.2)
    conn.send(out)
    del domain


_BRIDGE_PID = re.compile(r"ROS 2 \w+ \(process (\d+)\)")


def bridge_pid(robot_log: str) -> int | None:
    """The ROS 2 bridge process's pid, from the robot node's start line."""
    m = _BRIDGE_PID.search(robot_log)
    return int(m.group(1)) if m else None


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks (/proc/<pid>/stat), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


class ProcessCpu:
    """A process's CPU share (percent of one core) between ``start`` and ``stop``."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._t0 = time.monotonic_ns()
        self._ticks0 = None if pid is None else cpu_ticks(pid)

    def percent(self) -> float | None:
        if self.pid is None or self._ticks0 is None:
            return None
        ticks = cpu_ticks(self.pid)
        elapsed_s = (time.monotonic_ns() - self._t0) / 1e9
        if ticks is None or elapsed_s <= 0:
            return None
        return round(100.0 * (ticks - self._ticks0) / os.sysconf("SC_CLK_TCK") / elapsed_s, 1)


class RosSegment:
    """The ROS 2 program of ``bench path --ros``, started early (DDS discovery takes a
    while) and told to go once the console's segment is over."""

    def __init__(self, domain_id: int, namespace: str, seconds: float, rate_hz: float) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, name="bench-ros",
                                 args=(domain_id, namespace, seconds, rate_hz, child),
                                 daemon=True)
        self._proc.start()
        self._early: dict[str, Any] | None = None
        self._ready = False

    def go(self, timeout_s: float = TAKE_COMMAND_S + 30.0) -> bool:
        """Take command and start streaming; True once it streams."""
        self._ready = self._conn.poll(60.0) and self._conn.recv() == "ready"
        if not self._ready:
            return False
        self._conn.send("go")
        if not self._conn.poll(timeout_s):
            return False
        first = self._conn.recv()
        if first != "streaming":
            self._early = first
            return False
        return True

    def results(self, timeout_s: float) -> dict[str, Any]:
        out: dict[str, Any] = {"ros_error": "the ROS participant did not start"}
        if self._early is not None:
            out = self._early
        elif self._ready:
            out = self._conn.recv() if self._conn.poll(timeout_s) else {
                "ros_error": "no answer from the ROS participant"}
        self._proc.join(5.0)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(2.0)
        return out
