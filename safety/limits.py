"""Motion limits applied to every setpoint before it can reach a driver (invariant 5).

Three pure, clock-free checks that run every control period:

* ``CartesianLimiter`` bounds a Cartesian setpoint: NaN/inf or a non-unit quaternion
  is a fault, a command that jumps ``jump_fault_factor`` times further than one
  period allows is a fault (the Alemzadeh-style attack: an in-range command that
  would move the arm 10x too far in one step), and otherwise the pose is clamped
  into the workspace and to one translation and rotation step per period.
* ``JointLimiter`` does the same for joint targets after inverse kinematics.
* ``TrackingMonitor`` faults when the measured pose departs from the setpoint.

On a fault the result is the last allowed pose, so a caller that ignores the flag
still holds. Faults are ``safety.states.Reason`` members.

The vectors are three or six floats, so this is plain ``math``: numpy's per-call
overhead costs more than the arithmetic at these sizes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

from safety.config import MotionLimits
from safety.states import Reason
from telesurgery.config import check, finite_positive
from telesurgery.quat import Quat, Vec3, quat_angle, quat_mul, quat_relative, unit_or_none

log = logging.getLogger(__name__)

MAX_SPAN_PERIODS = 25.0
"""Cap of the jump bound's time scaling: freshness already bounds the span upstream,
and an unbounded span would let any step through (issue 12.10(e))."""


class LimitResult(NamedTuple):
    position: Vec3
    quat: Quat
    clamped: bool
    fault: Reason | None
    reasons: tuple[str, ...]
    """What was clamped: "step", "rotation_step", "workspace"."""


class JointResult(NamedTuple):
    q: tuple[float, ...]
    clamped: bool
    fault: Reason | None
    reasons: tuple[str, ...]
    """What was clamped: "joint_limit", "joint_velocity"."""


# --- small vector and quaternion helpers (plain floats) -------------------------------


def _rotate_toward(a: Quat, b: Quat, max_rad: float,
                   relative: tuple[float, Vec3] | None = None) -> tuple[Quat, bool]:
    """``b``, or the rotation ``max_rad`` from ``a`` toward ``b`` when b is further away.

    ``relative``: ``quat_relative(a, b)`` when the caller has it already."""
    angle, (x, y, z) = quat_relative(a, b) if relative is None else relative
    if angle <= max_rad:
        return b, False
    s = math.sin(max_rad / 2.0)
    return quat_mul(a, (math.cos(max_rad / 2.0), x * s, y * s, z * s)), True


def _distance(a: Sequence[float], b: Sequence[float]) -> float:
    return math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (a[2] - b[2]) ** 2)


def _step_toward(a: Vec3, b: Vec3, max_m: float,
                 distance: float | None = None) -> tuple[Vec3, bool]:
    """``b``, or the point ``max_m`` from ``a`` toward ``b`` when b is further away.

    ``distance``: ``_distance(a, b)`` when the caller has it already."""
    d = _distance(a, b) if distance is None else distance
    if d <= max_m:
        return b, False
    f = max_m / d
    return (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f), True


def _finite(values: Sequence[float]) -> bool:
    return all(map(math.isfinite, values))  # map: half the cost of a generator here


# --- Cartesian setpoints ----------------------------------------------------------------


class CartesianLimiter:
    """Bounds each Cartesian setpoint against the last allowed one.

    The jump fault compares a target with the previous accepted target (after the
    workspace clamp), not with the last allowed pose: when the surgeon moves faster
    than ``max_speed_m_s`` the arm lags by a growing distance, and that lag is the
    step clamp's business; a single command that leaps ten periods' worth is not.
    """

    def __init__(self, limits: MotionLimits, period_s: float) -> None:
        finite_positive("period_s", period_s)
        self._limits = limits
        self._step_m = limits.step_m(period_s)
        self._step_rad = limits.step_rad(period_s)
        self._period_s = period_s
        self._jump_m = limits.jump_fault_factor * self._step_m
        self._jump_rad = limits.jump_fault_factor * self._step_rad
        self._last: tuple[Vec3, Quat] | None = None
        self._target: tuple[Vec3, Quat] | None = None
        self.faults = 0
        self.clamps = 0

    @property
    def last(self) -> tuple[Vec3, Quat]:
        """The last allowed pose (position, quat)."""
        if self._last is None:
            raise RuntimeError("CartesianLimiter used before reset(): no anchor pose")
        return self._last

    def reset(self, position: Sequence[float], quat: Sequence[float]) -> None:
        """Anchor at the follower's current pose; call on every engage."""
        q = unit_or_none(quat)
        if len(position) != 3 or not _finite(position) or q is None:
            raise ValueError(f"reset pose not finite or not unit: {position!r} {quat!r}")
        pose = ((float(position[0]), float(position[1]), float(position[2])), q)
        self._last = self._target = pose

    def limit(self, position: Sequence[float], quat: Sequence[float],
              elapsed_s: float | None = None) -> LimitResult:
        """What may be commanded this period for the target ``position``, ``quat``.

        ``elapsed_s`` is the time the target moved over since the previous one; the
        caller bounds it by the robot's own receive times (never only the console's
        send times, which a forged command can stretch). When two commands arrive in
        one period the jump bound covers both, so network jitter is not taken for an
        attack. It is clamped to [1, ``MAX_SPAN_PERIODS``] periods.
        """
        if self._last is None or self._target is None:
            raise RuntimeError("CartesianLimiter used before reset(): no anchor pose")
        q = unit_or_none(quat)
        if q is None or not _finite(position):
            return self._fault(Reason.NONFINITE_SETPOINT,
                               f"position={tuple(position)} quat={tuple(quat)}")
        target, in_workspace = self._workspace(position)
        prev_pos, prev_q = self._target
        step = _distance(target, prev_pos)
        turn_axis = quat_relative(prev_q, q)
        turn = turn_axis[0]
        periods = 1.0 if elapsed_s is None else min(max(elapsed_s / self._period_s, 1.0),
                                                     MAX_SPAN_PERIODS)
        jump_m, jump_rad = self._jump_m * periods, self._jump_rad * periods
        if step > jump_m or turn > jump_rad:
            return self._fault(Reason.SETPOINT_JUMP,
                               f"step {step * 1e3:.3f} mm / {turn:.4f} rad vs bound "
                               f"{jump_m * 1e3:.3f} mm / {jump_rad:.4f} rad")
        self._target = (target, q)
        last_pos, last_q = self._last
        # While the arm keeps up, the last allowed pose is the last target: the distance
        # and rotation to the new target are the ones just computed (issue 11, ~1.5 us).
        new_pos, stepped = _step_toward(last_pos, target, self._step_m,
                                        step if last_pos == prev_pos else None)
        new_q, turned = _rotate_toward(last_q, q, self._step_rad,
                                       turn_axis if last_q == prev_q else None)
        self._last = (new_pos, new_q)
        if not (stepped or turned or not in_workspace):
            return LimitResult(new_pos, new_q, False, None, ())
        reasons = tuple(name for name, hit in (
            ("step", stepped), ("rotation_step", turned), ("workspace", not in_workspace),
        ) if hit)
        self.clamps += 1
        return LimitResult(new_pos, new_q, True, None, reasons)

    def _workspace(self, p: Sequence[float]) -> tuple[Vec3, bool]:
        """``p`` clamped into the workspace, and whether it was inside already."""
        lim = self._limits
        x, y, z = float(p[0]), float(p[1]), float(p[2])
        if lim.workspace_shape == "sphere":
            c, r = lim.workspace_center, lim.workspace_radius_m
            d = _distance((x, y, z), c)
            if d <= r:
                return (x, y, z), True
            f = r / d
            return (c[0] + (x - c[0]) * f, c[1] + (y - c[1]) * f, c[2] + (z - c[2]) * f), False
        lo, hi = lim.workspace_min, lim.workspace_max
        clamped = (min(max(x, lo[0]), hi[0]), min(max(y, lo[1]), hi[1]),
                   min(max(z, lo[2]), hi[2]))
        return clamped, clamped == (x, y, z)

    def _fault(self, fault: Reason, detail: str) -> LimitResult:
        self.faults += 1
        log.warning("setpoint rejected (%s): %s", fault, detail)
        pos, q = self.last
        return LimitResult(pos, q, False, fault, ())


# --- joint targets ------------------------------------------------------------------------


class JointLimiter:
    """Bounds joint targets (after inverse kinematics) against the previous command.

    Position limits are the URDF limits shrunk by ``joint_margin_rad``; the speed
    bound per joint is min(URDF velocity, ``max_joint_speed_rad_s``). On a fault
    the result is ``q_prev``: the caller holds.
    """

    def __init__(self, lower: Sequence[float], upper: Sequence[float],
                 velocity: Sequence[float], limits: MotionLimits, period_s: float) -> None:
        finite_positive("period_s", period_s)
        n = len(lower)
        check(len(upper) == n and len(velocity) == n, "joint limits", (len(lower), len(upper),
              len(velocity)), "lower, upper and velocity must have the same length")
        margin = limits.joint_margin_rad
        self._lo = tuple(float(v) + margin for v in lower)
        self._hi = tuple(float(v) - margin for v in upper)
        for i, (lo, hi) in enumerate(zip(self._lo, self._hi, strict=True)):
            check(lo <= hi, f"joint[{i}] limits", (lower[i], upper[i]),
                  f"range must exceed twice joint_margin_rad ({margin})")
        for i, v in enumerate(velocity):
            check(v > 0, f"joint[{i}] velocity", v, "must be > 0")  # NaN fails too
        self._step = tuple(min(float(v), limits.max_joint_speed_rad_s) * period_s
                           for v in velocity)
        # Not jump_fault_factor x step: IK near a singularity may ask for a few times the
        # velocity bound, which is clamped; only a branch flip is a fault.
        self._jump = tuple(max(limits.joint_jump_fault_rad, s) for s in self._step)
        self._joints = tuple(zip(self._lo, self._hi, self._jump, self._step, strict=True))
        """Per joint (lo, hi, jump, step): one zip of three a period instead of six."""
        self.faults = 0
        self.clamps = 0

    def limit(self, q_target: Sequence[float], q_prev: Sequence[float]) -> JointResult:
        n = len(self._lo)
        if len(q_target) != n or len(q_prev) != n:
            raise ValueError(f"expected {n} joints, got target {len(q_target)}, "
                             f"previous {len(q_prev)}")
        prev = tuple(map(float, q_prev))
        if not (_finite(q_target) and _finite(prev)):
            return self._fault(Reason.NONFINITE_SETPOINT, prev,
                               f"q_target={tuple(q_target)} q_prev={prev}")
        out: list[float] = []
        at_limit = too_fast = False
        # Comparisons rather than min()/max() calls: this loop runs every period.
        for i, ((lo, hi, jump, s), p, want) in enumerate(zip(
                self._joints, prev, q_target, strict=True)):
            t = lo if want < lo else hi if want > hi else want
            at_limit = at_limit or t != want
            # Measured from q_prev pulled into range, so a joint resting inside the margin
            # does not read as a jump when the first target pulls it back in.
            if abs(t - (lo if p < lo else hi if p > hi else p)) > jump:
                return self._fault(Reason.SETPOINT_JUMP, prev,
                                   f"joint {i}: {p:.4f} -> {t:.4f} rad, bound "
                                   f"{jump:.4f}")
            if abs(t - p) > s:
                t = p + s if t > p else p - s
                too_fast = True
            out.append(t)
        if at_limit or too_fast:
            self.clamps += 1
            reasons = (("joint_limit",) if at_limit else ()) + (
                ("joint_velocity",) if too_fast else ())
            return JointResult(tuple(out), True, None, reasons)
        return JointResult(tuple(out), False, None, ())

    def _fault(self, fault: Reason, prev: tuple[float, ...], detail: str) -> JointResult:
        self.faults += 1
        log.warning("joint target rejected (%s): %s", fault, detail)
        return JointResult(prev, False, fault, ())


# --- tracking -----------------------------------------------------------------------------


class TrackingMonitor:
    """Faults when the measured pose is further from the setpoint than the tolerance.

    A non-finite measurement is a tracking error too: NaN compares false with every
    bound and would otherwise pass silently.
    """

    def __init__(self, limits: MotionLimits) -> None:
        self._tol_m = limits.tracking_error_m
        self._tol_rad = limits.tracking_error_rad
        self.faults = 0

    def check(self, measured_pos: Sequence[float], measured_quat: Sequence[float],
              setpoint_pos: Sequence[float], setpoint_quat: Sequence[float]) -> Reason | None:
        mq, sq = unit_or_none(measured_quat), unit_or_none(setpoint_quat)
        if mq is None or sq is None or not (_finite(measured_pos) and _finite(setpoint_pos)):
            return self._fault("measured or setpoint pose not finite or not unit")
        dist = _distance(measured_pos, setpoint_pos)
        angle = quat_angle(mq, sq)
        if dist > self._tol_m or angle > self._tol_rad:
            return self._fault(f"{dist * 1e3:.2f} mm, {angle:.3f} rad from the setpoint")
        return None

    def _fault(self, detail: str) -> Reason:
        self.faults += 1
        log.warning("tracking error: %s", detail)
        return Reason.TRACKING_ERROR
