"""One period of following: anchor -> Cartesian limits -> IK -> joint limits -> tracking.

Pure and clock-free, like the rest of the control core: it gets the command with
its robot receive time, the motion scale, and the measured pose, and returns the
joint targets to write or the ``Reason`` to stop. It keeps the setpoint (what was
last sent after every limit), which the tracking check and telemetry report.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from robot_side.config import RobotConfig
from robot_side.control_io import CommandSample
from robot_side.kinematics import IkResult, Kinematics
from safety.anchor import Anchor
from safety.limits import CartesianLimiter, JointLimiter, TrackingMonitor
from safety.states import Reason
from telesurgery.errors import SchemaError
from telesurgery.quat import Pose, Quat, Vec3


class FollowStep(NamedTuple):
    """Joint targets to write, or the reason not to (then ``targets`` is None)."""

    targets: tuple[float, ...] | None
    fault: Reason | None
    detail: str
    tracking_m: float


class Follower:
    """The teleop mapping and every motion limit, one period at a time."""

    def __init__(self, cfg: RobotConfig, kin: Kinematics) -> None:
        self.cfg = cfg
        self.kin = kin
        period_s = cfg.control.period_ns / 1e9
        motion = cfg.safety.motion
        self.anchor = Anchor(rotation_scale=cfg.control.rotation_scale)
        self.cart_limiter = CartesianLimiter(motion, period_s)
        self.joint_limiter = JointLimiter(kin.lower.tolist(), kin.upper.tolist(),
                                          kin.velocity.tolist(), motion, period_s)
        self.tracking = TrackingMonitor(motion)
        joint_step = motion.max_joint_speed_rad_s * period_s
        self._flip_guard_rad = motion.joint_jump_fault_rad / 2
        self._ik_trust_rad = 3.0 * joint_step
        # Read once: config lookups through frozen dataclasses, every period otherwise.
        self._tracking_m = motion.tracking_error_m
        self._tracking_rad = motion.tracking_error_rad
        self._ik_max_iter = cfg.control.ik_max_iter
        self._ik_key: tuple[Vec3, Quat, list[float]] | None = None
        self._ik_answer: tuple[IkResult, list[float]]
        self._ik_kept = False
        self.branch_keeps = 0
        """Periods where the branch-keeping IK replaced a swinging solution."""
        self.q_set: np.ndarray = kin.home.copy()
        self.setpoint_cp: Pose = kin.pose(kin.home)
        self._prev: CommandSample | None = None
        self._setpoint_of: np.ndarray | None = None
        self._setpoint_t: tuple[float, ...] = ()

    def hold_at(self, measured_q: np.ndarray, measured: Pose) -> None:
        """Not moving: the setpoint is where the arm is.

        A read-only array (the control core's measured joints, shared between the
        periods of a still arm) is kept as it is: nobody can write into it, and the
        setpoint then stays the same object from period to period (``setpoint_q``).
        """
        self.q_set = measured_q if not measured_q.flags.writeable else measured_q.copy()
        self.setpoint_cp = measured

    @property
    def setpoint_q(self) -> tuple[float, ...]:
        """``q_set`` as a tuple of floats (the report's), made once per setpoint array:
        a holding arm keeps the same one (issue 11)."""
        q_set = self.q_set
        if q_set is not self._setpoint_of:
            self._setpoint_of, self._setpoint_t = q_set, tuple(q_set.tolist())
        return self._setpoint_t

    def resume(self, sample: CommandSample, measured_q: np.ndarray, measured: Pose
               ) -> Reason | None:
        """First period of motion (engage, clutch release): anchor master to follower,
        so the surgeon's offset never becomes a jump. A reason when that cannot be done."""
        cmd = sample.cmd
        try:
            self.anchor.anchor(cmd.position, cmd.orientation, measured[0], measured[1])
            self.cart_limiter.reset(*measured)
        except (SchemaError, ValueError):
            return Reason.NONFINITE_SETPOINT
        self._prev = None
        self.hold_at(measured_q, measured)
        return None

    def elapsed_s(self, sample: CommandSample) -> float | None:
        """Time the target moved over since the previous command: the smaller of the
        console's send-time span and the robot's own receive-time span (issue 12.4), so
        a forged send time cannot stretch the jump bound."""
        prev, self._prev = self._prev, sample
        if prev is None or prev.cmd.seq == sample.cmd.seq:
            return None
        send_span = sample.cmd.t_send_ns - prev.cmd.t_send_ns
        recv_span = sample.recv_ns - prev.recv_ns
        return max(0, min(send_span, recv_span)) / 1e9

    def step(self, sample: CommandSample, scale: float, measured: Pose) -> FollowStep:
        cmd = sample.cmd
        target_p, target_q = self.anchor.follower_target(cmd.position, cmd.orientation, scale)
        lim = self.cart_limiter.limit(target_p, target_q, self.elapsed_s(sample))
        if lim.fault is not None:
            return FollowStep(None, lim.fault, f"cartesian limiter: {lim.fault}", 0.0)
        q_set = self.q_set.tolist()
        ik, ik_q = self._solve_ik(lim.position, lim.quat, q_set)
        if not ik.converged and (ik.err_m > self._tracking_m
                                 or ik.err_rad > self._tracking_rad):
            # Near a singularity damped IK trades accuracy for bounded joint motion;
            # only a target the arm cannot get within the tracking tolerance trips.
            return FollowStep(None, Reason.IK_FAILED, f"IK error {ik.err_m * 1000:.1f} mm / "
                                                      f"{ik.err_rad:.3f} rad", 0.0)
        joint = self.joint_limiter.limit(ik_q, q_set)
        if joint.fault is not None:
            return FollowStep(None, joint.fault, f"joint limiter: {joint.fault}", 0.0)
        err_m = math.dist(measured[0], self.setpoint_cp[0])
        tracking = self.tracking.check(measured[0], measured[1], *self.setpoint_cp)
        if tracking is not None:
            return FollowStep(None, tracking, f"tracking error {err_m * 1000:.1f} mm", err_m)
        self.q_set = np.array(joint.q, dtype=float)
        # joint.q is the same floats as a tuple: the report's setpoint without a tolist.
        self._setpoint_of, self._setpoint_t = self.q_set, joint.q
        # The setpoint is what is sent after every limit, not what was asked for:
        # tracking is judged against it and telemetry reports it. When the joint
        # limiter changed nothing, IK's last evaluation already is its FK (saves ~6 us).
        self.setpoint_cp = (ik.pose if ik.pose is not None and not joint.clamped
                            else self.kin.pose(self.q_set))
        return FollowStep(joint.q, None, "", err_m)

    def _solve_ik(self, position: Vec3, quat: Quat, q_set: list[float]
                  ) -> tuple[IkResult, list[float]]:
        """IK warm-started at the current joints, kept on the current branch; with its
        joints as a list.

        Near the wrist singularity damped least squares may swing the wrist-roll
        joints into the other branch (a 0.5 rad jump the joint limiter would fault).
        When a solution moves any joint that far, solve again with a trust region of
        a few periods of joint motion and keep that one if it reaches the target.

        The same target from the same joints is the same answer: a master that holds
        still, or a command repeated in a period without a new one (a console slower
        than the loop), reuses the last answer instead of ~30 us of IK (issue 11).
        """
        key = (position, quat, q_set)
        if key == self._ik_key:
            if self._ik_kept:
                self.branch_keeps += 1
            return self._ik_answer
        ik, kept = self._solve_ik_fresh(position, quat)
        answer = (ik, ik.q.tolist())
        self._ik_key, self._ik_answer, self._ik_kept = key, answer, kept
        return answer

    def _solve_ik_fresh(self, position: Vec3, quat: Quat) -> tuple[IkResult, bool]:
        # The trusted entry: the Cartesian limiter has checked position and quat
        # (finite, unit) and q_set is ours; the checked ``ik`` repeats that for ~40 us.
        q_set = self.q_set
        ik = self.kin.ik_trusted(position, quat, q_set, max_iter=self._ik_max_iter)
        if max(map(abs, (ik.q - q_set).tolist())) <= self._flip_guard_rad:
            return ik, False
        near = self.kin.ik_trusted(position, quat, q_set, max_iter=2 * self._ik_max_iter,
                                   max_step_rad=self._ik_trust_rad)
        if near.err_m <= self._tracking_m and near.err_rad <= self._tracking_rad:
            self.branch_keeps += 1
            return near, True
        return ik, False
