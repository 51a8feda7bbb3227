"""Joint-space following (CRTK ``servo_jp``): master joints -> follower joints.

A ``Command`` that carries ``joints`` (a leader arm, a ROS ``servo_jp``) is followed in
joint space through the same limits as Cartesian teleop, on the Cartesian follower's
own instances: its ``JointLimiter`` (URDF position limits with margin, velocity,
``joint_jump_fault_rad``), its ``TrackingMonitor`` (measured pose against the setpoint
pose) and its setpoint, which the telemetry reports. What joint mode adds:

* **Engage only when aligned** (``[joint_teleop] engage_tolerance_rad``): every master
  joint within the tolerance of the follower's measured joint, else the engage is
  refused (``not_aligned``). The residual offset at engage, and the offset after each
  clutch, is then held (relative motion), so neither an engage nor a clutch release
  ever jumps. Refusing rather than silently holding a large offset keeps the leader's
  pose the follower's pose: the surgeon's hand feels the arm's joint limits and
  self-collisions where they are, and a leader at one end of its range cannot hide a
  follower already at its limit.
* **Jump check on the master stream**: a target that moves further than
  ``jump_fault_factor`` periods of the joint speed bound since the target last
  changed (time from the robot's own receive span as well as the console's send span,
  so a forged send time cannot stretch it; at most ``JUMP_SPAN_PERIODS``) is a fault,
  like the Cartesian limiter's; slower lag is the velocity clamp's business.
* **The tool's Cartesian bounds**: the tool's step per period is bounded by
  ``max_speed_m_s`` and a step that would leave the workspace is not taken, so a
  joint master cannot drive the tool faster or further than a Cartesian one.
* **Mode is fixed per engagement**: a Cartesian command while following in joint mode,
  a joint command while following in Cartesian mode, or a wrong joint count is a
  ``joint_command`` fault; non-finite joints a ``nonfinite_setpoint`` fault (the wire
  schema already refuses them; this also covers commands made in process).

Joint mode maps 1:1: the surgeon's motion scale and the latency factor shape Cartesian
motion only; in joint mode the velocity bound limits the speed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from robot_side.config import RobotConfig
from robot_side.control_io import CommandSample
from robot_side.follow import Follower, FollowStep
from robot_side.kinematics import Kinematics
from safety.states import Reason
from telesurgery.quat import Pose, as_pose
from transport.schema import Command

JUMP_SPAN_PERIODS = 10.0
"""The jump bound scales with the time since the master's joints last changed, up to
this many periods: a leader arm's bus is read slower than the control rate (its
reading changes every few periods), but a still master that leaps is a fault. Every
accepted step is still clamped to the velocity bound."""


class JointFollower:
    """Dispatches a period to joint-space or Cartesian following by the engaged mode."""

    def __init__(self, cfg: RobotConfig, kin: Kinematics, follower: Follower) -> None:
        self.kin = kin
        self.follower = follower
        self.n = kin.n
        motion = cfg.safety.motion
        period_s = cfg.control.period_ns / 1e9
        self.tolerance_rad = cfg.joint_teleop.engage_tolerance_rad
        step = [min(float(v), motion.max_joint_speed_rad_s) * period_s
                for v in kin.velocity.tolist()]
        self._jump_per_period = tuple(motion.jump_fault_factor * s for s in step)
        self._jump_max = motion.joint_jump_fault_rad
        # The target handed to the JointLimiter is at most this far from the setpoint:
        # lag behind a fast master is clamped, never taken for the limiter's branch flip.
        self._lag_rad = motion.joint_jump_fault_rad / 2
        self.period_s = period_s
        self._limits = motion
        self._step_m = motion.step_m(period_s)
        self.workspace_stops = 0
        """Periods where a joint target would have left the workspace: not taken."""
        self.joint_mode = False
        self._offset: tuple[float, ...] = ()
        self._target: tuple[float, ...] = ()
        self._changed: CommandSample | None = None
        self.faults = 0

    # ------------------------------------------------------------ checks
    def problem(self, joints: Sequence[float]) -> tuple[Reason, str] | None:
        if len(joints) != self.n:
            return Reason.JOINT_COMMAND, f"{len(joints)} joints for a {self.n}-joint arm"
        if not all(math.isfinite(v) for v in joints):
            return Reason.NONFINITE_SETPOINT, f"joints {tuple(joints)}"
        return None

    def aligned(self, cmd: Command | None, measured_q: np.ndarray) -> bool:
        """Engage check of a joint command: the master's joints at the follower's."""
        if cmd is None or cmd.joints is None or self.problem(cmd.joints) is not None:
            return False
        return all(abs(m - float(q)) <= self.tolerance_rad
                   for m, q in zip(cmd.joints, measured_q, strict=True))

    # ------------------------------------------------------------ following
    def resume(self, sample: CommandSample, measured_q: np.ndarray) -> Reason | None:
        """First period of motion: fix the mode and, in joint mode, the offset."""
        joints = sample.cmd.joints
        self.joint_mode = joints is not None
        if joints is None:
            return None
        bad = self.problem(joints)
        if bad is not None:
            self.joint_mode = False
            return bad[0]
        q = tuple(float(v) for v in measured_q)
        self._offset = tuple(f - m for f, m in zip(q, joints, strict=True))
        self._target = q
        self._changed = sample
        return None

    def step(self, sample: CommandSample, scale: float, measured: Pose) -> FollowStep:
        joints = sample.cmd.joints
        if not self.joint_mode:
            if joints is not None:
                return self._fault(Reason.JOINT_COMMAND,
                                   "joint command while following in Cartesian mode")
            return self.follower.step(sample, scale, measured)
        if joints is None:
            return self._fault(Reason.JOINT_COMMAND,
                               "Cartesian command while following in joint mode")
        bad = self.problem(joints)
        if bad is not None:
            return self._fault(*bad)
        target = tuple(m + o for m, o in zip(joints, self._offset, strict=True))
        jump = self._jump(sample, target)
        if jump is not None:
            return self._fault(Reason.SETPOINT_JUMP, jump)
        fol = self.follower
        q_set = fol.q_set.tolist()
        lag = self._lag_rad
        toward = [q + min(max(t - q, -lag), lag) for t, q in zip(target, q_set, strict=True)]
        joint = fol.joint_limiter.limit(toward, q_set)
        if joint.fault is not None:
            return self._fault(joint.fault, f"joint limiter: {joint.fault}")
        err_m = math.dist(measured[0], fol.setpoint_cp[0])
        tracking = fol.tracking.check(measured[0], measured[1], *fol.setpoint_cp)
        if tracking is not None:
            return FollowStep(None, tracking, f"tracking error {err_m * 1000:.1f} mm", err_m)
        q_new, pose = self._cartesian_bound(np.asarray(joint.q, dtype=float))
        fol.q_set, fol.setpoint_cp = q_new, pose
        return FollowStep(tuple(float(v) for v in q_new), None, "", err_m)

    def _cartesian_bound(self, q: np.ndarray) -> tuple[np.ndarray, Pose]:
        """The tool's Cartesian bounds hold in joint mode too: its step per period is
        at most ``max_speed_m_s`` x period (the joint step is shortened to fit), and a
        step that would take it further outside the workspace is not taken (the arm
        stops at the boundary; moving back frees it)."""
        fol = self.follower
        q_set = fol.q_set
        pose = as_pose(*self.kin.fk(q))
        step = math.dist(pose[0], fol.setpoint_cp[0])
        if step > self._step_m:
            q = q_set + (q - q_set) * (self._step_m / step)
            pose = as_pose(*self.kin.fk(q))
        outside = self._outside_m(pose[0])
        if outside > 0.0 and outside >= self._outside_m(fol.setpoint_cp[0]):
            self.workspace_stops += 1
            return q_set.copy(), fol.setpoint_cp
        return q, pose

    def _outside_m(self, p: Sequence[float]) -> float:
        """How far ``p`` is outside the workspace (0 inside)."""
        lim = self._limits
        if lim.workspace_shape == "sphere":
            return max(0.0, math.dist(p, lim.workspace_center) - lim.workspace_radius_m)
        lo, hi = lim.workspace_min, lim.workspace_max
        return math.sqrt(sum(max(lo[i] - p[i], 0.0, p[i] - hi[i]) ** 2 for i in range(3)))

    def _jump(self, sample: CommandSample, target: tuple[float, ...]) -> str | None:
        """Why ``target`` leapt since the target last changed, or None."""
        if target == self._target:
            return None
        prev = self._changed
        periods = 1.0
        if prev is not None and prev.cmd.seq != sample.cmd.seq:
            span_ns = min(sample.cmd.t_send_ns - prev.cmd.t_send_ns,
                          sample.recv_ns - prev.recv_ns)
            periods = min(max(span_ns / 1e9 / self.period_s, 1.0), JUMP_SPAN_PERIODS)
        for i, (t, p) in enumerate(zip(target, self._target, strict=True)):
            bound = min(self._jump_max, self._jump_per_period[i] * periods)
            if abs(t - p) > bound:
                return f"joint {i}: target {p:.4f} -> {t:.4f} rad, bound {bound:.4f}"
        self._target = target
        self._changed = sample
        return None

    def _fault(self, reason: Reason, detail: str) -> FollowStep:
        self.faults += 1
        return FollowStep(None, reason, detail, 0.0)
