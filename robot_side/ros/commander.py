"""The opt-in ROS 2 command side: a ROS program as one more surgeon-role link client.

Off by default (``[ros] command = false``). When on, the bridge process runs
this thread, which connects to the robot's own link exactly like a surgeon
console, with its own key (``<keys_dir>/ros/``, ``telesurgery keys add-ros``).
Nothing here moves the arm by itself: every command it sends passes the
robot's command gate (age, sequence), watchdog (a ROS stream that stops is a
command timeout), supervisor (engage, hold, latches, e-stop), Cartesian and
joint limits, jump checks and audit, like any console's.

CRTK topics it serves (``SUBSCRIPTIONS`` with ``command=True``):

- ``state_command`` (crtk_msgs/StringStamped): ``enable`` -> clear_fault when in
  fault, then arm; ``disable`` -> disarm; ``pause`` -> disengage; ``resume`` ->
  stream the arm's measured pose as the master pose (the robot anchors there, so
  poses map 1:1 in the base frame at scale 1), then engage; ``home`` -> nothing
  to do (absolute encoders: always homed); ``unhome`` -> refused.
- ``servo_cp`` (geometry_msgs/PoseStamped): the newest message of a wake-up
  becomes one command, sent as it arrives and never repeated: when the ROS stream
  stops, commands stop and the robot's command timeout holds the arm. A setpoint
  stream supersedes itself (as the robot's gate treats a console's): the older
  messages taken in the same wake-up are counted (``superseded``), never sent, so
  the commander cannot fall behind the stream (``servo_jp``, ``move_*`` alike).
- ``move_cp`` (geometry_msgs/PoseStamped): a straight line at ``move_speed_m_s``
  (orientation interpolated over the same time) streamed at ``command_hz``;
  at the goal the goal keeps being streamed (the commander holds it); a
  ``servo_cp`` or ``pause`` ends it.
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
import math
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
from telesurgery.errors import LinkTimeout, TelesurgeryError
from telesurgery.quat import Quat, Vec3, quat_from_rotvec, quat_mul, quat_relative
from telesurgery.ratelog import RateLimitedLog
from transport.keys import ClientKeys
from transport.link import ConsoleLink
from transport.schema import MAX_POSITION_M, QUAT_NORM_TOL, Command, ControlReply, Telemetry

log = logging.getLogger(__name__)

ANCHOR_COMMANDS = 5
"""Hold-stream commands sent before ``engage``, so the robot anchors at a fresh one."""
MAX_ANGULAR_SPEED = 0.5
"""move_cp: rad/s of the generated orientation interpolation at most."""
ENGAGE_RETRY_NS = 3_000_000_000
"""resume: engage is retried this long while the robot says its link has not settled."""
ENGAGE_RETRY_PERIOD_NS = 50_000_000
REQUEST_RETRY_NS = 5_000_000_000
"""A control request the link could not send yet is retried this long."""
LOOP_WAIT_NS = 10_000_000
"""The loop's wait for a ROS command message at most (the link is answered between)."""
STATE_COMMANDS = frozenset({"enable", "disable", "home", "unhome", "pause", "resume",
                            *HANDOFF_COMMANDS})
"""CRTK's (dVRK's) state commands, and the handoff's (``robot_side.ros.handoff``)."""
WILDCARD_HOSTS = frozenset({"0.0.0.0", "*", "::", ""})


def ros_pose(msg: Any) -> tuple[Vec3, Quat] | None:
    """Position and (w, x, y, z) of a PoseStamped; None when it is not a valid pose."""
    try:
        p, o = msg.pose.position, msg.pose.orientation
        pos = (float(p.x), float(p.y), float(p.z))
        quat = (float(o.w), float(o.x), float(o.y), float(o.z))
    except (AttributeError, TypeError, ValueError):
        return None
    if not all(math.isfinite(c) for c in (*pos, *quat)):
        return None
    if any(abs(c) > MAX_POSITION_M for c in pos):
        return None
    norm = math.sqrt(sum(c * c for c in quat))
    if abs(norm - 1.0) > QUAT_NORM_TOL:
        return None
    return pos, (quat[0] / norm, quat[1] / norm, quat[2] / norm, quat[3] / norm)


def sample_time(msg: Any, recv_ns: int) -> int:
    """A servo_cp's publish time on this machine's monotonic clock, for the path figure.

    The publisher's header stamp (wall clock) when it is plausible (not ahead of the
    arrival, at most a second before it), else the arrival at the bridge. For
    measurement only (``Command.t_sample_ns``): no bound of the robot rests on it.
    """
    try:
        stamp = msg.header.stamp
        wall_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    except (AttributeError, TypeError, ValueError):
        return recv_ns
    mono_ns = wall_ns - (time.time_ns() - time.monotonic_ns())  # wall-clock ok: ROS stamp
    return mono_ns if recv_ns - 1_000_000_000 <= mono_ns <= recv_ns else recv_ns


class Trajectory:
    """move_cp: a straight line at a bounded speed, orientation interpolated alongside."""

    def __init__(self, start: tuple[Vec3, Quat], goal: tuple[Vec3, Quat], speed_m_s: float,
                 t0_ns: int) -> None:
        self.start, self.goal = start, goal
        distance = math.dist(start[0], goal[0])
        self._angle, self._axis = quat_relative(start[1], goal[1])
        duration_s = max(distance / speed_m_s, self._angle / MAX_ANGULAR_SPEED)
        self.t0_ns = t0_ns
        self.duration_ns = max(1, int(duration_s * 1e9))

    def at(self, now_ns: int) -> tuple[Vec3, Quat]:
        s = min(1.0, max(0.0, (now_ns - self.t0_ns) / self.duration_ns))
        if s >= 1.0:
            return self.goal
        (x0, y0, z0), (x1, y1, z1) = self.start[0], self.goal[0]
        pos = (x0 + s * (x1 - x0), y0 + s * (y1 - y0), z0 + s * (z1 - z0))
        turn = quat_from_rotvec(tuple(c * s * self._angle for c in self._axis))  # type: ignore[arg-type]
        return pos, quat_mul(self.start[1], turn)

    def done(self, now_ns: int) -> bool:
        return now_ns - self.t0_ns >= self.duration_ns


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
        self._next_stream_ns = 0
        """When the hold/move stream sends next: one schedule for the loop and the
        waits for a control request's reply (``_wait_streaming``)."""
        self._reply_timeout_ns = cfg.link.control_timeout_ms * 1_000_000
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
        self._next_stream_ns = time.monotonic_ns()
        while not self._halt.is_set():
            # The same wait as a control request's: stream, answer the link.
            self._wait_streaming(link, time.monotonic_ns() + LOOP_WAIT_NS, ros_wake=True)
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
        self._space = space
        self._request(link, "disengage")
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
                self._request(link, "clear_fault")
            reply = self._request(link, "arm")
            if reply is not None and reply.ok and reply.reason == "already_armed":
                log.info("ROS enable: already armed (%s); the session and the motion go on",
                         reply.state)
        elif what == "disable":
            self._idle()
            self._request(link, "disarm")
        elif what == "pause":
            self._idle()
            self._request(link, "disengage")
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
        reply = self._request(link, "engage", quiet_reason="not_settled")
        if reply is not None and not reply.ok and reply.reason == "not_settled" \
                and now < self._engage_until:
            self._engage_at = now + ENGAGE_RETRY_PERIOD_NS
            return
        self._engage_at = None
        if reply is not None and reply.ok and self._pending_jp is not None:
            self._start_move_jp(self._pending_jp)
        self._pending_jp = None

    def _request(self, link: ConsoleLink, op: str,
                 quiet_reason: str | None = None) -> ControlReply | None:
        """Send ``op`` and wait for its reply while the hold/move stream goes on: a
        blocking wait stopped the stream, and a reply slower than the robot's command
        timeout (a loaded machine) tripped the arm it was meant to keep (a repeated
        ``enable`` while following)."""
        deadline = time.monotonic_ns() + REQUEST_RETRY_NS
        while True:
            try:
                req_id = link.send_request(op)
                break
            except LinkTimeout as err:
                # Not sent: the CurveZMQ session is still being set up (or the robot is
                # restarting).
                if time.monotonic_ns() > deadline:
                    self.counters["requests_failed"] += 1
                    log.warning("ROS commander: %s", err)
                    return None
                self._wait_streaming(link, time.monotonic_ns() + 100_000_000)
        reply = self._wait_streaming(link, time.monotonic_ns() + self._reply_timeout_ns,
                                     req_id)
        if reply is None:
            link.forget_request(req_id)
            self.counters["requests_failed"] += 1
            log.warning("ROS commander: no reply to control request %r within %d ms", op,
                        self._reply_timeout_ns // 1_000_000)
            return None
        if not reply.ok and reply.reason != quiet_reason:
            self.counters["requests_failed"] += 1
            log.warning("ROS commander: %s refused: %s (%s) %s", op, reply.reason, reply.state,
                        reply.detail)
        return reply

    def _wait_streaming(self, link: ConsoleLink, until_ns: int, req_id: int | None = None,
                        *, ros_wake: bool = False) -> ControlReply | None:
        """Until ``until_ns``, the reply to ``req_id`` or (``ros_wake``, the loop's wait)
        a ROS command message: keep the hold/move stream at command_hz, answer the
        robot's pings (its RTT and clock offset need them) and hand its telemetry (who
        is in command, who asks for it) to the handoff. The loop and a control
        request's wait both wait here, so the link is handled one way."""
        while (now := time.monotonic_ns()) < until_ns:
            if now >= self._next_stream_ns:
                self._next_stream_ns = now + self._period_ns
                self._stream(link, now)
            wait_ns = max(0, min(self._next_stream_ns, until_ns) - now)
            if ros_wake:
                self.bridge.wait_command(wait_ns / 1e9)
                return self._answer_link(link, 0, req_id)
            reply = self._answer_link(link, max(1, wait_ns // 1_000_000), req_id)
            if reply is not None:
                return reply
        return None

    def _answer_link(self, link: ConsoleLink, timeout_ms: int,
                     req_id: int | None) -> ControlReply | None:
        reply = None
        for item in link.poll(timeout_ms):
            if isinstance(item.msg, ControlReply):
                if item.msg.req_id == req_id:
                    reply = item.msg
                continue  # a late reply to a request given up on
            self.handoff.on_link(item.msg, item.recv_ns)
        return reply
