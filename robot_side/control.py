"""One control period: newest fresh command -> supervisor -> limits -> IK -> serial.

``ControlCore.step`` is the whole safety-relevant path of the robot node and
does no network or disk I/O: commands, link statistics, control requests and
e-stop inputs arrive as arguments (filled by the network thread), and safety
transitions leave through ``transitions`` for the audit thread, which persists
them before anything reports them. The only I/O here is the serial write, which
must happen in the same period as the decision (invariant 2).

Order inside a period matters: inputs that can stop the arm (e-stop, firmware
faults, serial loss, link health) are evaluated before any motion is computed,
and whenever motion is not allowed a hold frame goes out in the same period.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from robot_side.config import RobotConfig
from robot_side.driver import SerialManipulator
from robot_side.kinematics import IkResult, Kinematics
from robot_side.serial_protocol import FwFlags, StateReport
from safety.anchor import Anchor
from safety.limits import CartesianLimiter, JointLimiter, TrackingMonitor
from safety.states import SURGEON_HOLDS, Reason, State
from safety.supervisor import StepInputs, Supervisor, Transition
from safety.watchdog import LinkHealth, LinkWatchdog
from telesurgery.errors import SerialLinkError
from transport.linkstats import LinkSnapshot
from transport.schema import Command, ControlReply, ControlRequest

log = logging.getLogger(__name__)

Vec3 = tuple[float, float, float]
Quat = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class CommandSample:
    """The newest command the gate accepted as fresh, with its arrival time."""

    cmd: Command
    recv_ns: int


@dataclass(frozen=True, slots=True)
class LinkView:
    """What the network thread knows about the link at one instant."""

    stats: LinkSnapshot
    rtt_ns: int | None
    clock_fresh: bool


@dataclass(frozen=True, slots=True)
class PendingRequest:
    peer: bytes
    req: ControlRequest
    recv_ns: int


@dataclass(frozen=True, slots=True)
class TripRecord:
    """Reaction times of one trip, for the demo report and the HIL rig."""

    reason: str
    detected_ns: int
    hold_sent_ns: int
    last_command_ns: int | None


@dataclass(slots=True)
class StepReport:
    """Everything the reporters (telemetry, ROS 2) need from one period."""

    t_ns: int
    state: State
    reason: Reason
    measured_q: tuple[float, ...]
    setpoint_q: tuple[float, ...]
    measured_cp: tuple[Vec3, Quat]
    setpoint_cp: tuple[Vec3, Quat]
    scale: float
    health: LinkHealth
    estop: bool
    firmware_flags: int
    tracking_error_m: float
    replies: list[tuple[bytes, ControlReply]] = field(default_factory=list)


def _as_pose(position: Sequence[float] | np.ndarray, quat: Sequence[float]) -> tuple[Vec3, Quat]:
    return ((float(position[0]), float(position[1]), float(position[2])),
            (float(quat[0]), float(quat[1]), float(quat[2]), float(quat[3])))


def _acked(last_rx_seq: int, seq: int) -> bool:
    """The firmware has received frame ``seq`` (serial seqs wrap at 2**32)."""
    return (last_rx_seq - seq) % 2**32 < 2**31


_NOT_TRIPS = SURGEON_HOLDS | {Reason.DISARMED}
"""Deliberate stops: they hold the arm but are not trips."""


class ControlCore:
    """The robot's per-period decision, driven by the control thread."""

    def __init__(self, cfg: RobotConfig, kin: Kinematics, driver: SerialManipulator) -> None:
        self.cfg = cfg
        self.kin = kin
        self.driver = driver
        period_ns = cfg.control.period_ns
        self.period_ns = period_ns
        period_s = period_ns / 1e9
        wd = cfg.safety.watchdog
        self._timeout_ns = int(wd.command_timeout_ms * 1e6)
        self._state_timeout_ns = max(5 * period_ns, 50_000_000)
        self.supervisor = Supervisor(wd, period_ns)
        self.watchdog = LinkWatchdog(wd)
        self.anchor = Anchor()
        self.cart_limiter = CartesianLimiter(cfg.safety.motion, period_s)
        self.joint_limiter = JointLimiter(kin.lower.tolist(), kin.upper.tolist(),
                                          kin.velocity.tolist(), cfg.safety.motion, period_s)
        self.tracking = TrackingMonitor(cfg.safety.motion)
        joint_step = cfg.safety.motion.max_joint_speed_rad_s * period_s
        self._flip_guard_rad = cfg.safety.motion.joint_jump_fault_rad / 2
        self._ik_trust_rad = 3.0 * joint_step
        self.branch_keeps = 0
        """Periods where the branch-keeping IK replaced a swinging solution."""
        self.surgeon_scale = cfg.control.scale
        self._applied_scale = 0.0
        self._last_seq: int | None = None
        self._last_cmd_recv_ns: int | None = None
        self._prev_cmd_ns: int | None = None
        self._q_set: np.ndarray = kin.home.copy()
        self._setpoint_cp: tuple[Vec3, Quat] = _as_pose(*kin.fk(kin.home))
        self._was_moving = False
        self._estop_sources: set[Reason] = set()
        self.trips: list[TripRecord] = []
        self.max_tracking_error_m = 0.0
        self.resumes_ns: list[int] = []
        """When motion started again (engage, clutch release): bounded by the run's trips."""
        self.following_periods = 0
        self.transitions: list[Transition] = []
        self.serial_ok = False
        self._release_seq: int | None = None
        self._decided_ns: int | None = None
        """Serial seq of the last Release until a state report shows the firmware got it."""

    # ------------------------------------------------------------ inputs
    def _firmware(self, now_ns: int) -> tuple[StateReport | None, bool]:
        """Newest firmware state; trips the supervisor when the serial link is unusable."""
        if not self.driver.connected:
            if self.serial_ok:
                self._trip(now_ns, Reason.SERIAL_FAULT, "serial port lost")
            # SerialReconnector (robot_side.workers) reopens the port off this loop;
            # motion stays latched off until the surgeon clears the fault and re-engages.
            self.serial_ok = False
            return None, False
        latest = self.driver.latest_state()
        if latest is None or now_ns - latest[1] > self._state_timeout_ns:
            # Driving (or holding) blind is a fault; while nothing moves a short silence
            # only blocks engaging (the command is not "fresh" without firmware state).
            if self.serial_ok and self.supervisor.state in (State.FOLLOWING, State.HOLD):
                self._trip(now_ns, Reason.SERIAL_FAULT, "no state report from firmware")
            elif self.serial_ok:
                log.warning("no state report from firmware for %.0f ms; engaging is blocked",
                            (now_ns - latest[1]) / 1e6 if latest else float("nan"))
            self.serial_ok = False
            return (latest[0] if latest else None), False
        self.serial_ok = True
        state = latest[0]
        flags = FwFlags(state.flags)
        if self._release_seq is not None and _acked(state.last_rx_seq, self._release_seq):
            self._release_seq = None
        # A report sent before the firmware saw our Release still carries the latched
        # flags the Release clears: right after an engage they are history, not news.
        following = self.supervisor.state is State.FOLLOWING and self._release_seq is None
        if FwFlags.ESTOP_PRESSED in flags:
            self.estop(now_ns, Reason.ESTOP_BUTTON)
        if FwFlags.FAULT in flags and following:
            self._trip(now_ns, Reason.FIRMWARE_FAULT, f"firmware flags {flags!r}")
        if FwFlags.WATCHDOG_TRIPPED in flags and following:
            self._trip(now_ns, Reason.FIRMWARE_WATCHDOG, "firmware watchdog braked the arm")
        for fault in self.driver.drain_faults():
            log.warning("firmware fault report: %s", fault)
            if self.supervisor.state in (State.FOLLOWING, State.HOLD):
                self._trip(now_ns, Reason.FIRMWARE_FAULT, f"firmware fault {fault.code}")
        return state, True

    def _command(self, now_ns: int, sample: CommandSample | None) -> Command | None:
        if sample is None:
            return None
        if sample.cmd.seq != self._last_seq:
            self._last_seq = sample.cmd.seq
            self._last_cmd_recv_ns = sample.recv_ns
            self.watchdog.on_fresh_command(sample.recv_ns)
            self.watchdog.on_video_age(sample.recv_ns, sample.cmd.video_age_us)
        if now_ns - sample.recv_ns > self._timeout_ns:
            return None
        return sample.cmd

    # ------------------------------------------------------------ actions
    def _trip(self, now_ns: int, reason: Reason, detail: str) -> None:
        # The hold itself goes out at the end of this same period (_hold_if_stopped);
        # its reaction time is measured from this moment, not from the period's start.
        self._decided_ns = time.monotonic_ns()
        self.supervisor.trip(now_ns, reason, detail)

    def estop(self, now_ns: int, source: Reason) -> None:
        if source in self._estop_sources and self.supervisor.state is State.ESTOP:
            return
        self._estop_sources.add(source)
        self.supervisor.estop(now_ns, source)

    def clear_estop_local(self, now_ns: int) -> bool:
        """Only the on-site staff's local socket calls this (invariant 4).

        Refused while the firmware reports its e-stop button still pressed: the
        firmware refuses Release then, so a "cleared" supervisor would claim motion
        is possible when it is not (and re-latch on the next report).
        """
        latest = self.driver.latest_state() if self.driver.connected else None
        if latest is not None and FwFlags.ESTOP_PRESSED in FwFlags(latest[0].flags):
            log.warning("e-stop clear refused: the e-stop button is still pressed")
            return False
        ok, _ = self.supervisor.clear_estop(now_ns, local=True)
        if ok:
            self._estop_sources.clear()
        return ok

    def _hold_if_stopped(self, now_ns: int, clutched: bool = False) -> None:
        """Every period without motion sends a hold frame, which also feeds the
        firmware watchdog; the first one after motion records the reaction time."""
        state = self.supervisor.state
        brake = state in (State.FAULT, State.ESTOP, State.DISABLED)
        sent: int | None = None
        if self.driver.connected:
            try:
                self.driver.hold(brake=brake)
                sent = time.monotonic_ns()
            except SerialLinkError as err:
                log.error("hold not sent (%s); the firmware watchdog brakes the arm", err)
        # Engaged counts, also in the surgeon's clutch hold: a fault then is a trip too.
        if (self._was_moving or clutched) and self.supervisor.reason not in _NOT_TRIPS:
            # Link trips are decided by the supervisor at the period's start (now_ns);
            # limiter, IK and serial trips later in the period, when _trip ran.
            decided = self._decided_ns if self._decided_ns is not None else now_ns
            self.trips.append(TripRecord(str(self.supervisor.reason), decided,
                                         sent if sent is not None else -1,
                                         self._last_cmd_recv_ns))
        self._was_moving = False
        self._decided_ns = None

    def _engage(self, now_ns: int, cmd: Command | None, health: LinkHealth,
                measured: tuple[Vec3, Quat]) -> tuple[bool, str]:
        if cmd is None:
            return False, str(Reason.COMMAND_TIMEOUT)
        if not cmd.operator_present:
            return False, str(Reason.OPERATOR_ABSENT)
        tol = self.cfg.safety.motion.align_tolerance_rad
        aligned = tol is None or self.anchor.aligned(cmd.orientation, measured[1], tol)
        ok, reason = self.supervisor.request_engage(now_ns, health, aligned=aligned)
        if not ok:
            return False, str(reason)
        return True, str(reason)

    def _resume(self, now_ns: int, cmd: Command, measured: tuple[Vec3, Quat],
                measured_q: np.ndarray) -> bool:
        """First period of motion after engage or clutch release.

        Anchor at the follower so the surgeon's offset never becomes a jump, and
        release the firmware's hold: it ignores targets until told to follow.
        """
        self._anchor(cmd, measured)
        self.cart_limiter.reset(*measured)
        self._prev_cmd_ns = None
        if len(self.resumes_ns) < 10_000:
            self.resumes_ns.append(now_ns)
        self._q_set = measured_q.copy()
        self._setpoint_cp = measured
        try:
            self._release_seq = self.driver.release()
        except SerialLinkError as err:
            self._trip(now_ns, Reason.SERIAL_FAULT, str(err))
            return False
        return True

    def _anchor(self, cmd: Command, follower: tuple[Vec3, Quat]) -> None:
        self.anchor.anchor(cmd.position, cmd.orientation, follower[0], follower[1])
        self._applied_scale = 0.0

    def _handle(self, now_ns: int, req: PendingRequest, cmd: Command | None,
                health: LinkHealth, measured: tuple[Vec3, Quat]) -> ControlReply:
        sup = self.supervisor
        op = req.req.op
        detail = ""
        why: str
        if op == "arm":
            ok, why = sup.arm(now_ns)
        elif op == "disarm":
            ok, why = sup.disarm(now_ns)
        elif op == "engage":
            ok, why = self._engage(now_ns, cmd, health, measured)
        elif op == "disengage":
            ok, why = sup.disengage(now_ns)
        elif op == "clear_fault":
            ok, why = sup.clear_fault(now_ns)
        else:  # set_scale: the schema admits no other op
            ok, why = self._set_scale(req.req.value)
            detail = f"scale {self.surgeon_scale:.3f}"
        return ControlReply(req_id=req.req.req_id, ok=ok, state=str(sup.state),
                            reason=str(why)[:64], detail=detail)

    def _set_scale(self, value: float | None) -> tuple[bool, str]:
        c = self.cfg.control
        if value is None or not math.isfinite(value) or not c.min_scale <= value <= c.max_scale:
            return False, "scale_out_of_range"
        self.surgeon_scale = value
        return True, "scale_set"

    # ------------------------------------------------------------ the period
    def step(self, now_ns: int, sample: CommandSample | None, link: LinkView,
             requests: Sequence[PendingRequest] = (), audit_ok: bool = True) -> StepReport:
        clutched = (self.supervisor.state is State.HOLD
                    and self.supervisor.reason is Reason.CLUTCH)
        fw, fw_ok = self._firmware(now_ns)
        measured_q = np.asarray(fw.positions, dtype=float) if fw is not None else self._q_set
        measured = _as_pose(*self.kin.fk(measured_q))
        if not audit_ok and not self.supervisor.latched:
            # Latched states already hold; re-tripping every period would only flood the log.
            self._trip(now_ns, Reason.AUDIT_FAILURE, "audit log cannot be written")
        cmd = self._command(now_ns, sample)
        health = self.watchdog.evaluate(now_ns, link.stats, link.rtt_ns, link.clock_fresh)
        replies = [(r.peer, self._handle(now_ns, r, cmd, health, measured)) for r in requests]
        decision = self.supervisor.step(now_ns, StepInputs(
            command_fresh=cmd is not None and fw_ok,
            operator_present=cmd.operator_present if cmd is not None else False,
            clutch=cmd.clutch if cmd is not None else False,
            health=health,
        ))
        tracking_m = 0.0
        moved = False
        if decision.motion_allowed and cmd is not None and fw_ok:
            if not self._was_moving:
                moved = self._resume(now_ns, cmd, measured, measured_q)
            if self._was_moving or moved:
                moved, tracking_m = self._follow(now_ns, cmd, decision.scale, measured)
        if not moved:
            self._hold_if_stopped(now_ns, clutched)
            self._q_set = measured_q.copy()
            self._setpoint_cp = measured
        self.transitions.extend(self.supervisor.drain_transitions())
        return StepReport(
            t_ns=now_ns, state=self.supervisor.state, reason=self.supervisor.reason,
            measured_q=tuple(float(x) for x in measured_q),
            setpoint_q=tuple(float(x) for x in self._q_set),
            measured_cp=measured, setpoint_cp=self._setpoint_cp,
            scale=self.surgeon_scale * (decision.scale if decision.motion_allowed else 1.0),
            health=health, estop=self.supervisor.state is State.ESTOP,
            firmware_flags=int(fw.flags) if fw is not None else 0,
            tracking_error_m=tracking_m, replies=replies,
        )

    def _solve_ik(self, position: Vec3, quat: Quat) -> IkResult:
        """IK warm-started at the current joints, kept on the current branch.

        Near the wrist singularity damped least squares may swing the wrist-roll
        joints into the other branch (a 0.5 rad jump the joint limiter would fault).
        When a solution moves any joint that far, solve again with a trust region of
        a few periods of joint motion and keep that one if it reaches the target.
        """
        ik = self.kin.ik(position, quat, self._q_set, max_iter=self.cfg.control.ik_max_iter)
        if float(np.max(np.abs(ik.q - self._q_set))) <= self._flip_guard_rad:
            return ik
        near = self.kin.ik(position, quat, self._q_set,
                           max_iter=2 * self.cfg.control.ik_max_iter,
                           max_step_rad=self._ik_trust_rad)
        motion = self.cfg.safety.motion
        if near.err_m <= motion.tracking_error_m and near.err_rad <= motion.tracking_error_rad:
            self.branch_keeps += 1
            return near
        return ik

    def _follow(self, now_ns: int, cmd: Command, link_scale: float,
                measured: tuple[Vec3, Quat]) -> tuple[bool, float]:
        """One period of following; returns (a target was sent, tracking error m)."""
        scale = self.surgeon_scale * link_scale
        if scale != self._applied_scale:
            # A scale change must never jump: re-anchor where the old scale puts the
            # target now, so the target the limiter sees is continuous. (The sent
            # setpoint may lag the target while the step clamp is active.)
            if self._applied_scale:
                here = self.anchor.follower_target(cmd.position, cmd.orientation,
                                                   self._applied_scale)
                self.anchor.anchor(cmd.position, cmd.orientation, *here)
            self._applied_scale = scale
        target_p, target_q = self.anchor.follower_target(cmd.position, cmd.orientation, scale)
        elapsed = None if self._prev_cmd_ns is None else (cmd.t_send_ns - self._prev_cmd_ns) / 1e9
        self._prev_cmd_ns = cmd.t_send_ns
        lim = self.cart_limiter.limit(target_p, target_q, elapsed)
        if lim.fault is not None:
            self._trip(now_ns, Reason(lim.fault), f"cartesian limiter: {lim.fault}")
            return False, 0.0
        ik = self._solve_ik(lim.position, lim.quat)
        motion = self.cfg.safety.motion
        if not ik.converged and (ik.err_m > motion.tracking_error_m
                                 or ik.err_rad > motion.tracking_error_rad):
            # Near a singularity damped IK trades accuracy for bounded joint motion;
            # only a target the arm cannot get within the tracking tolerance of trips.
            self._trip(now_ns, Reason.IK_FAILED,
                       f"IK error {ik.err_m * 1000:.1f} mm / {ik.err_rad:.3f} rad")
            return False, 0.0
        joint = self.joint_limiter.limit(ik.q.tolist(), self._q_set.tolist())
        if joint.fault is not None:
            self._trip(now_ns, Reason(joint.fault), f"joint limiter: {joint.fault}")
            return False, 0.0
        tracking = self.tracking.check(measured[0], measured[1], *self._setpoint_cp)
        err_m = math.dist(measured[0], self._setpoint_cp[0])
        if tracking is not None:
            self._trip(now_ns, Reason(tracking), f"tracking error {err_m * 1000:.1f} mm")
            return False, err_m
        try:
            self.driver.send_targets(joint.q, cmd.grip)
        except SerialLinkError as err:
            self._trip(now_ns, Reason.SERIAL_FAULT, str(err))
            return False, err_m
        self._q_set = np.asarray(joint.q, dtype=float)
        # The setpoint is what was sent after every limit, not what was asked for:
        # tracking is judged against it and telemetry reports it.
        self._setpoint_cp = _as_pose(*self.kin.fk(self._q_set))
        self._was_moving = True
        self.following_periods += 1
        self.max_tracking_error_m = max(self.max_tracking_error_m, err_m)
        return True, err_m
