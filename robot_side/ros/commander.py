"""The opt-in ROS 2 command side: a ROS program as one more surgeon-role link client.

Off by default (``[ros] command = false``). When on, the bridge process runs
this thread, which connects to the robot's own link exactly like a surgeon
console, with its own key (``<keys_dir>/ros/``, ``telesurgery keys add-ros``).
Its every wait on the link streams (``robot_side.ros.link_waits``). Nothing here
moves the arm by itself: every command it sends passes the robot's command gate
(age, sequence), watchdog (a ROS stream that stops is a command timeout),
supervisor (engage, hold, latches, e-stop), Cartesian and joint limits, jump
checks and audit, like any console's.

CRTK topics it serves (``SUBSCRIPTIONS`` with ``command=True``):

- ``state_command`` (crtk_msgs/StringStamped): ``enable`` -> clear_fault when in
  fault, then arm; ``disable`` -> disarm; ``pause`` -> disengage; ``resume`` ->
  stream the arm's measured pose as the master pose (the robot anchors there, so
  poses map 1:1 in the base frame at scale 1), then engage; ``home`` -> nothing
  to do (absolute encoders: always homed); ``unhome`` -> refused.
- ``servo_cp`` / ``move_cp`` (geometry_msgs/PoseStamped, ``robot_side.ros.pose_command``):
  each servo message is sent once as it arrives (only the newest of a wake-up: a
  setpoint stream supersedes itself); a move goal is streamed along a line at
  ``command_hz``. When the ROS stream stops, commands stop and the robot's command
  timeout holds the arm.
- ``servo_jp`` / ``move_jp`` (sensor_msgs/JointState, ``robot_side.ros.joint_command``):
  the same in joint space (``Command.joints``; move_jp at ``move_joint_speed_rad_s``).
  The robot fixes the space at engage, so the first joint command while following in
  Cartesian space (or a Cartesian one while in joint space) re-engages in the other
  space: disengage, hold-stream the arm's measured joints (or pose), engage; that
  servo message is dropped (the stream goes on after the engage), a move goal is kept
  and started once engaged.

Poses are master poses of the robot's one teleop mapping: the robot anchors them
at engage and applies the surgeon's motion scale and the latency factor, so a
ROS program drives exactly what a console drives.

Messages from DDS are untrusted: non-finite or out-of-range poses and unknown
state commands are counted, logged at most once a second per kind, and dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

from robot_side.config import RobotConfig
from robot_side.kinematics import Kinematics
from robot_side.ros import msgs
from robot_side.ros.handoff import HANDOFF_COMMANDS, RosHandoff
from robot_side.ros.interface import RosBridge
from robot_side.ros.joint_command import JointTrajectory, ros_joints
from robot_side.ros.link_waits import StreamingWaits
from robot_side.ros.pose_command import Trajectory, ros_pose, sample_time
from telesurgery.errors import TelesurgeryError
from telesurgery.quat import Quat, Vec3
from telesurgery.ratelog import RateLimitedLog
from transport.keys import ClientKeys
from transport.link import ConsoleLink
from transport.schema import MAX_POSITION_M, Command, Telemetry

log = logging.getLogger(__name__)

ANCHOR_COMMANDS = 5
"""Hold-stream commands sent before ``engage``, so the robot anchors at a fresh one."""
ENGAGE_RETRY_NS = 3_000_000_000
"""resume: engage is retried this long while the robot says its link has not settled."""
ENGAGE_RETRY_PERIOD_NS = 50_000_000
LOOP_WAIT_NS = 10_000_000
"""The loop's wait for a ROS command message at most (the link is answered between)."""
STATE_COMMANDS = frozenset({"enable", "disable", "home", "unhome", "pause", "resume",
                            *HANDOFF_COMMANDS})
"""CRTK's (dVRK's) state commands, and the handoff's (``robot_side.ros.handoff``)."""
WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "::", ""})


def commander_link_config(cfg: RobotConfig) -> Any:
    """The robot's link as a client on this machine sees it (a wildcard bind -> loopback)."""
    host = "127.0.0.1" if cfg.link.host.strip() in WILDCARD_HOSTS else cfg.link.host
    return replace(cfg.link, host=host)


class RosCommander(threading.Thread):
    """Turns the command topics into link commands and control requests."""

    def __init__(self, cfg: RobotConfig, bridge: RosBridge, kin: Kinematics) -> None:
        super().__init__(name="ros-commander", daemon=True)
        self.cfg = cfg
        self.bridge = bridge
        self.kin = kin
        self.keys = ClientKeys.load_commander(cfg.link.keys_dir, cfg.ros.command_key)
        self._period_ns = int(1e9 / cfg.ros.command_hz)
        self._halt = threading.Event()
        self._ratelog = RateLimitedLog(log)
        self._tlm: Telemetry | None = None
        self._seq = 0
        self._mode = "idle"
        """idle (sends nothing), hold (streams ``_last``), move (streams the trajectory),
        servo (forwards each servo_cp once)."""
        self._last: tuple[Vec3, Quat] | None = None
        self._move: Trajectory | None = None
        self._space = "cp"
        """The space the robot follows in (fixed per engage): "cp" pose, "jp" joints."""
        self._last_jp: tuple[float, ...] | None = None
        self._move_jp: JointTrajectory | None = None
        self._pending_jp: tuple[float, ...] | None = None
        """A move_jp goal kept while re-engaging in joint space."""
        self._engage_at: int | None = None
        self._engage_until = 0
        self.handoff = RosHandoff(bridge, cfg.ros.command_key)
        self.counters: dict[str, int] = {"commands_sent": 0, "servo_cp": 0, "move_cp": 0,
                                         "servo_jp": 0, "move_jp": 0, "state_command": 0,
                                         "superseded": 0, "rejected": 0,
                                         "requests_failed": 0}
        self.waits = StreamingWaits(self._period_ns, cfg.link.control_timeout_ms * 1_000_000,
                                    stream=self._stream, on_link=self.handoff.on_link,
                                    wait_ros=bridge.wait_command, counters=self.counters)

    def stats(self) -> dict[str, Any]:
        return {"commander": {**self.counters, **self.handoff.counters},
                "commander_mode": self._mode}

    def on_telemetry(self, tlm: Telemetry) -> None:
        """From the bridge's feed loop: the robot's latest state (a reference swap)."""
        self._tlm = tlm

    def stop(self) -> None:
        self._halt.set()
        self.bridge.wake_command()

    def run(self) -> None:
        try:
            with ConsoleLink(commander_link_config(self.cfg), self.keys) as link:
                log.info("ROS commander connected to the robot's link as %r",
                         self.cfg.ros.command_key)
                self._loop(link)
        except TelesurgeryError as err:
            log.error("ROS commander stopped: %s", err)

    # ------------------------------------------------------------------ loop
    def _loop(self, link: ConsoleLink) -> None:
        self.waits.next_stream_ns = time.monotonic_ns()
        while not self._halt.is_set():
            # The same wait as a control request's: stream, answer the link.
            self.waits.wait(link, time.monotonic_ns() + LOOP_WAIT_NS, ros_wake=True)
            now = time.monotonic_ns()
            self.handoff.publish(now)
            for msg, _ in self.bridge.take("state_command"):
                self._state_command(link, msg)
            self._servo(link)
            self._move_cp(link)
            self._servo_jp(link)
            self._move_jp_goal(link)
            self._engage(link, time.monotonic_ns())

    def _newest(self, topic: str) -> tuple[Any, int] | None:
        """The newest message of ``topic`` since the last wake-up; the older ones are
        superseded (a setpoint or goal stream supersedes itself) and only counted."""
        items = self.bridge.take(topic)
        if not items:
            return None
        self.counters[topic] += len(items)
        self.counters["superseded"] += len(items) - 1
        return items[-1]

    def _servo(self, link: ConsoleLink) -> None:
        if (newest := self._newest("servo_cp")) is None:
            return
        msg, recv_ns = newest
        pose = self._checked("servo_cp", msg)
        if pose is None:
            return
        if self._mode not in ("hold", "move", "servo"):
            self._ratelog(logging.WARNING, "servo-idle", "ROS servo_cp ignored: send "
                          "state_command 'resume' first")
            return
        if self._space != "cp":
            self._switch(link, "cp")
            return
        self._mode, self._move, self._last = "servo", None, pose
        self._send(link, pose, sample_time(msg, recv_ns))

    def _move_cp(self, link: ConsoleLink) -> None:
        if (newest := self._newest("move_cp")) is None:
            return
        goal = self._checked("move_cp", newest[0])
        if goal is None:
            return
        if self._mode not in ("hold", "move", "servo") or self._last is None:
            self._ratelog(logging.WARNING, "move-idle", "ROS move_cp ignored: send "
                          "state_command 'resume' first")
            return
        if self._space != "cp":
            self._switch(link, "cp")
            if self._last is None:
                return
        self._move = Trajectory(self._last, goal, self.cfg.ros.move_speed_m_s,
                                time.monotonic_ns())
        self._mode = "move"

    def _servo_jp(self, link: ConsoleLink) -> None:
        if (newest := self._newest("servo_jp")) is None:
            return
        msg, recv_ns = newest
        q = self._checked_jp("servo_jp", msg)
        if q is None:
            return
        if self._mode not in ("hold", "move", "servo") or self._last is None:
            self._ratelog(logging.WARNING, "servo-jp-idle", "ROS servo_jp ignored: send "
                          "state_command 'resume' first")
            return
        if self._space != "jp":
            self._switch(link, "jp")
            return
        self._mode, self._move_jp, self._last_jp = "servo", None, q
        self._send(link, self._last, sample_time(msg, recv_ns), joints=q)

    def _move_jp_goal(self, link: ConsoleLink) -> None:
        if (newest := self._newest("move_jp")) is None:
            return
        goal = self._checked_jp("move_jp", newest[0])
        if goal is None:
            return
        if self._mode not in ("hold", "move", "servo") or self._last is None:
            self._ratelog(logging.WARNING, "move-jp-idle", "ROS move_jp ignored: send "
                          "state_command 'resume' first")
            return
        if self._space != "jp":
            self._pending_jp = goal  # started once engaged in joint space
            self._switch(link, "jp")
            return
        self._start_move_jp(goal)

    def _start_move_jp(self, goal: tuple[float, ...]) -> None:
        if self._last_jp is None:
            return
        self._move_jp = JointTrajectory(self._last_jp, goal, self.cfg.ros.move_joint_speed_rad_s,
                                        time.monotonic_ns())
        self._mode = "move"

    def _switch(self, link: ConsoleLink, space: str) -> None:
        """Re-engage in the other space: the robot fixes the space at engage."""
        log.info("ROS commander: re-engaging in %s space", "joint" if space == "jp"
                 else "Cartesian")
        # The robot follows in the old space until the disengage is done, so the stream
        # stays in it meanwhile: commands go straight to the control loop and requests
        # through the node's network thread, so a new-space command streamed during the
        # wait could arrive first and trip joint_command (seen 1 run in 5 in the servo_jp
        # test once the network thread kept its Python out of the control period).
        self.waits.request(link, "disengage")
        self._space = space
        self._resume(link)

    def _checked_jp(self, topic: str, msg: Any) -> tuple[float, ...] | None:
        q = ros_joints(msg, self.kin.joint_names)
        if q is None:
            self.counters["rejected"] += 1
            self._ratelog(logging.WARNING, f"bad:{topic}", "ROS %s dropped: not %d finite "
                          "positions (names, when given, exactly %s)", topic, self.kin.n,
                          list(self.kin.joint_names))
        return q

    def _stream(self, link: ConsoleLink, now: int) -> None:
        """hold and move stream at command_hz; servo sends only what arrives."""
        if self._space == "jp":
            if self._mode == "move" and self._move_jp is not None:
                self._last_jp = self._move_jp.at(now)
            if self._mode in ("move", "hold") and self._last is not None \
                    and self._last_jp is not None:
                self._send(link, self._last, joints=self._last_jp)
            return
        if self._mode == "move" and self._move is not None:
            self._last = self._move.at(now)
            self._send(link, self._last)
        elif self._mode == "hold" and self._last is not None:
            self._send(link, self._last)

    def _send(self, link: ConsoleLink, pose: tuple[Vec3, Quat],
              t_sample_ns: int | None = None, joints: tuple[float, ...] | None = None) -> None:
        self._seq += 1
        now = time.monotonic_ns()
        cmd = Command(seq=self._seq, t_send_ns=now, position=pose[0], orientation=pose[1],
                      grip=0.0, clutch=False, operator_present=True,
                      t_sample_ns=now if t_sample_ns is None else t_sample_ns, joints=joints)
        if link.send_command(cmd):
            self.counters["commands_sent"] += 1

    def _checked(self, topic: str, msg: Any) -> tuple[Vec3, Quat] | None:
        pose = ros_pose(msg)
        if pose is None:
            self.counters["rejected"] += 1
            self._ratelog(logging.WARNING, f"bad:{topic}", "ROS %s dropped: not a finite pose "
                          "with a unit quaternion within %.0f m", topic, MAX_POSITION_M)
        return pose

    # -------------------------------------------------------- state commands
    def _state_command(self, link: ConsoleLink, msg: Any) -> None:
        self.counters["state_command"] += 1
        what = getattr(msg, "string", None) if isinstance(msg, msgs.StringStamped) else None
        if what not in STATE_COMMANDS:
            self.counters["rejected"] += 1
            self._ratelog(logging.WARNING, "bad:state_command", "ROS state_command %r "
                          "dropped: not one of %s", str(what)[:32], sorted(STATE_COMMANDS))
            return
        log.info("ROS state_command %r", what)
        if what in HANDOFF_COMMANDS:
            # When command changes hands the robot holds the arm: stream nothing until a
            # resume (a request's wait blocks this loop, so stop streaming before it).
            if what in ("request_command", "takeover") and not self.handoff.in_command:
                self._idle()
            if self.handoff.act(link, what):
                self._idle()
            return
        state = self._tlm.state if self._tlm is not None else "unknown"
        if what == "enable":
            if state == "fault":
                self.waits.request(link, "clear_fault")
            reply = self.waits.request(link, "arm")
            if reply is not None and reply.ok and reply.reason == "already_armed":
                log.info("ROS enable: already armed (%s); the session and the motion go on",
                         reply.state)
        elif what == "disable":
            self._idle()
            self.waits.request(link, "disarm")
        elif what == "pause":
            self._idle()
            self.waits.request(link, "disengage")
        elif what == "resume":
            self._resume(link)
        elif what == "unhome":
            log.warning("ROS state_command 'unhome' refused: this arm has absolute encoders")

    def _idle(self) -> None:
        self._mode, self._move, self._engage_at = "idle", None, None
        self._move_jp = self._pending_jp = None

    def _resume(self, link: ConsoleLink) -> None:
        tlm = self._tlm
        if tlm is None:
            log.warning("ROS state_command 'resume' refused: no telemetry from the robot yet")
            return
        # Master pose = the arm's pose: the robot anchors the two together at engage.
        self._last = (tlm.measured_cp.position, tlm.measured_cp.orientation)
        # Joint space: the master's joints are the arm's, so the engage check passes.
        self._last_jp = (tuple(tlm.measured_js) if len(tlm.measured_js) == self.kin.n
                         else None)
        if self._space == "jp" and self._last_jp is None:
            log.warning("ROS commander: no measured joints from the robot; staying in "
                        "Cartesian space")
            self._space = "cp"
        self._mode, self._move, self._move_jp = "hold", None, None
        now = time.monotonic_ns()
        # Engage once the hold stream has reached the robot and its link has settled;
        # the loop keeps streaming between attempts.
        self._engage_at = now + ANCHOR_COMMANDS * self._period_ns
        self._engage_until = now + ENGAGE_RETRY_NS

    def _engage(self, link: ConsoleLink, now: int) -> None:
        if self._engage_at is None or now < self._engage_at:
            return
        reply = self.waits.request(link, "engage", quiet_reason="not_settled")
        if reply is not None and not reply.ok and reply.reason == "not_settled" \
                and now < self._engage_until:
            self._engage_at = now + ENGAGE_RETRY_PERIOD_NS
            return
        self._engage_at = None
        if reply is not None and reply.ok and self._pending_jp is not None:
            self._start_move_jp(self._pending_jp)
        self._pending_jp = None
