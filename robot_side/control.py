"""One control period, pure: ``ControlCore.update(now_ns, reading, inputs) -> ControlOutput``.

The robot's whole safety path of one period, with no I/O and no clock reads:
the manipulator's ``Reading`` (taken by the control thread just before), the
newest fresh command, the link view, control requests, e-stop events, the audit
thread's health and any external trip come in as arguments; the frames to write,
the report, replies, transitions, the trip decision and the audit records of
every control operation come out in one frozen ``ControlOutput``. The control
thread then makes exactly one ``Manipulator.write`` (``robot_side.period``).

Order inside a period matters: inputs that can stop the arm (firmware state,
e-stop, external trips, audit, link health) are evaluated before any motion is
computed, and whenever motion is not allowed the frames are a hold.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np

from robot_side.config import RobotConfig
from robot_side.control_io import (
    CommandSample,
    ControlAudit,
    ControlInputs,
    ControlOutput,
    EstopEvent,
    ExternalTrip,
    LinkView,
    PendingRequest,
    StepReport,
    TripDecision,
    TripRecord,
)
from robot_side.follow import Follower
from robot_side.follow_joint import JointFollower
from robot_side.kinematics import Kinematics
from robot_side.manipulator.base import Frame, Hold, JointSample, Reading, Release, Targets
from robot_side.serial_protocol import FwFlags
from safety.anchor import Anchor
from safety.states import SURGEON_HOLDS, Reason, State
from safety.supervisor import StepInputs, Supervisor
from safety.watchdog import LinkHealth, LinkWatchdog
from telesurgery.quat import Pose
from telesurgery.ratelog import RateLimitedLog
from telesurgery.seqnum import u32_reached
from transport.schema import HANDOFF_OPS, ControlReply

__all__ = ["CommandSample", "ControlCore", "ControlInputs", "ControlOutput", "EstopEvent",
           "ExternalTrip", "LinkView", "PendingRequest", "StepReport", "TripDecision",
           "TripRecord"]

log = logging.getLogger(__name__)
_ratelog = RateLimitedLog(log)

_NOT_TRIPS = SURGEON_HOLDS | {Reason.DISARMED}
"""Deliberate stops: they hold the arm but are not trips."""
_ESTOP_BIT = int(FwFlags.ESTOP_PRESSED)
_FAULT_BIT = int(FwFlags.FAULT)
_WATCHDOG_BIT = int(FwFlags.WATCHDOG_TRIPPED)
_HOLD: tuple[Frame, ...] = (Hold(brake=False),)
_BRAKE: tuple[Frame, ...] = (Hold(brake=True),)
"""A holding period's frames: immutable, so made once rather than every period."""


class _Facts(NamedTuple):
    """What one period knows before it decides anything."""

    now_ns: int
    sample: JointSample | None
    arm_ok: bool
    measured_q: np.ndarray
    measured_t: tuple[float, ...]
    measured: Pose
    cmd: CommandSample | None
    health: LinkHealth
    not_ready: str | None


class ControlCore:
    """The robot's per-period decision; the control thread calls ``update`` once a period."""

    def __init__(self, cfg: RobotConfig, kin: Kinematics) -> None:
        self.cfg = cfg
        self.kin = kin
        self.period_ns = cfg.control.period_ns
        # The arm's state may be a few reports old; beyond this it is silent (blind).
        self._state_timeout_ns = max(5 * self.period_ns, 50_000_000)
        # Engage only on an arm whose reports have been steady this long (start-up, a
        # reopened port): a link that just came back is not yet one to follow on.
        self._arm_steady_ns = int(cfg.startup.arm_steady_ms * 1e6)
        self._arm_ok_since_ns: int | None = None
        """Since when the arm has been connected with fresh state (None: the last period
        could not trust it)."""
        self.supervisor = Supervisor(cfg.safety.watchdog, self.period_ns)
        self.watchdog = LinkWatchdog(cfg.safety.watchdog)
        self.follower = Follower(cfg, kin)
        self.joint_follower = JointFollower(cfg, kin, self.follower)
        self.surgeon_scale = cfg.control.scale
        self.following_periods = 0
        self.max_tracking_error_m = 0.0
        self.resumes_ns: list[int] = []
        """When motion started again (engage, clutch release); at most 10 000 kept."""
        self._last_seq: int | None = None
        self._last_cmd_recv_ns: int | None = None
        self._was_moving = False
        self._estop_sources: set[Reason] = set()
        self._release_pending = False
        self._release_seq: int | None = None
        self._measured_cache: tuple[tuple[float, ...],
                                    tuple[np.ndarray, tuple[float, ...], Pose]] | None = None
        """Seq of the last Release until a state report shows the arm got it."""

    @property
    def anchor(self) -> Anchor:
        return self.follower.anchor

    @property
    def branch_keeps(self) -> int:
        return self.follower.branch_keeps

    # ------------------------------------------------------------ the period
    def update(self, now_ns: int, reading: Reading, inputs: ControlInputs) -> ControlOutput:
        sup = self.supervisor
        engaged = sup.state is State.FOLLOWING or (
            sup.state is State.HOLD and sup.reason is Reason.CLUTCH)
        sample, arm_ok = self._arm_state(now_ns, reading)
        measured_q, measured_t, measured = self._measured(sample)
        if inputs.trip is not None:
            self._trip(now_ns, inputs.trip.reason, inputs.trip.detail)
        if not inputs.audit_ok and not sup.latched:
            # Latched states already hold; re-tripping every period would only flood the log.
            self._trip(now_ns, Reason.AUDIT_FAILURE, "audit log cannot be written")
        # Most periods carry no e-stop event, request or transition: skip building
        # empty tuples through generators (each ~0.5-1 us, every period; issue 11).
        estop_replies = (tuple(self._estop_event(now_ns, ev, sample) for ev in inputs.estop)
                         if inputs.estop else ())
        cmd = self._command(inputs.command)
        link = inputs.link
        facts = _Facts(now_ns, sample, arm_ok, measured_q, measured_t, measured, cmd,
                       self.watchdog.evaluate(now_ns, link.stats, link.rtt_ns, link.clock_fresh),
                       inputs.not_ready)
        handled = [self._handle(facts, r) for r in inputs.requests] if inputs.requests else ()
        decision = sup.step(now_ns, StepInputs(
            operator_present=cmd is not None and cmd.cmd.operator_present,
            clutch=cmd is not None and cmd.cmd.clutch, health=facts.health))
        frames: tuple[Frame, ...] = ()
        tracking_m = 0.0
        if decision.motion_allowed and cmd is not None and arm_ok:
            frames, tracking_m = self._follow(facts, cmd, decision.reanchor,
                                              self.surgeon_scale * decision.scale)
        moving = bool(frames)
        if not moving:
            # decision.hold, or a fault found while computing motion: hold this period.
            frames = _BRAKE if sup.state in (State.FAULT, State.ESTOP, State.DISABLED) else _HOLD
            self.follower.hold_at(measured_q, measured)
        trip = None
        if engaged and not moving and sup.reason not in _NOT_TRIPS:
            trip = TripDecision(str(sup.reason), now_ns, self._last_cmd_recv_ns)
        self._was_moving = moving
        scale = self.surgeon_scale * (decision.scale if decision.motion_allowed else 1.0)
        return ControlOutput(
            frames=frames, report=self._report(facts, tracking_m, scale),
            replies=tuple((r[0], r[1]) for r in handled) if handled else (),
            transitions=tuple(sup.drain_transitions()) if sup.has_transitions else (),
            trip=trip, audit=tuple(r[2] for r in handled) if handled else (),
            estop_replies=estop_replies)

    def _report(self, f: _Facts, tracking_m: float, scale: float) -> StepReport:
        sup = self.supervisor
        sample = f.sample
        return StepReport(
            t_ns=f.now_ns, state=sup.state, reason=sup.reason,
            measured_q=f.measured_t,
            setpoint_q=self.follower.setpoint_q,
            measured_cp=f.measured, setpoint_cp=self.follower.setpoint_cp,
            scale=scale, health=f.health, estop=sup.state is State.ESTOP,
            firmware_flags=int(sample.flags) if sample is not None else 0,
            tracking_error_m=tracking_m,
            measured_v=sample.velocities if sample is not None else (),
            measured_effort=sample.efforts if sample is not None else ())

    # ------------------------------------------------------------ inputs
    def _measured(self, sample: JointSample | None
                  ) -> tuple[np.ndarray, tuple[float, ...], Pose]:
        """The measured joints (array and tuple) and the tool pose there.

        An arm that stands still (holding, or a master at rest) reports the same
        positions period after period: their FK is then the last one (~6 us, issue 11).
        The arrays handed out are never written to (``hold_at`` copies).
        """
        if sample is None:
            q_set = self.follower.q_set
            return q_set, tuple(q_set.tolist()), self.kin.pose(q_set)
        positions = sample.positions
        cached = self._measured_cache
        if cached is not None and cached[0] == positions:
            return cached[1]
        measured_q = np.array(positions, dtype=float)
        measured_q.setflags(write=False)  # shared with later periods: nobody may write it
        # kin.pose checks the joints (count, finite) and raises as before.
        answer = (measured_q, tuple(measured_q.tolist()), self.kin.pose(measured_q))
        self._measured_cache = (positions, answer)
        return answer

    def _arm_state(self, now_ns: int, reading: Reading) -> tuple[JointSample | None, bool]:
        """The arm's newest state and whether it can be trusted; trips when it cannot
        while the arm is engaged (driving or holding blind is a fault)."""
        sup = self.supervisor
        engaged = sup.state in (State.FOLLOWING, State.HOLD)
        if reading.write_error is not None and engaged:
            self._trip(now_ns, Reason.SERIAL_FAULT, f"write failed: {reading.write_error}")
        was_ok = self._arm_ok_since_ns is not None
        if not reading.connected:
            if was_ok:
                self._trip(now_ns, Reason.SERIAL_FAULT, "manipulator link lost")
            # The node's reconnector reopens the port off this loop; motion stays
            # latched off until the surgeon clears the fault and re-engages.
            self._arm_ok_since_ns = None
            return reading.sample, False
        sample = reading.sample
        if sample is None or now_ns - sample.received_ns > self._state_timeout_ns:
            if was_ok and engaged:
                self._trip(now_ns, Reason.SERIAL_FAULT, "no state report from the arm")
            elif was_ok:
                _ratelog(logging.WARNING, "arm_silent",
                         "no state report from the arm; engaging is blocked")
            self._arm_ok_since_ns = None
            return sample, False
        if not was_ok:
            self._arm_ok_since_ns = now_ns
        if self._release_pending:
            self._release_pending = False
            self._release_seq = reading.last_sent_seq
        if self._release_seq is not None and (
                sample.acked_seq is None or u32_reached(sample.acked_seq, self._release_seq)):
            self._release_seq = None
        # A report sent before the arm saw our Release still carries the latched
        # flags the Release clears: right after an engage they are history, not news.
        following = (sup.state is State.FOLLOWING and self._release_seq is None
                     and not self._release_pending)
        flags = sample.flags
        bits = int(flags)  # int masks: IntFlag's ``in`` costs ~1 us each, every period
        if bits & _ESTOP_BIT:
            self._estop(now_ns, Reason.ESTOP_BUTTON)
        if bits & _FAULT_BIT and following:
            self._trip(now_ns, Reason.FIRMWARE_FAULT, f"firmware flags {flags!r}")
        if bits & _WATCHDOG_BIT and following:
            self._trip(now_ns, Reason.FIRMWARE_WATCHDOG, "firmware watchdog braked the arm")
        for fault in reading.faults:
            _ratelog(logging.WARNING, f"fault{fault.code}", "arm fault report %d: %s",
                     fault.code, fault.detail)
            if engaged:
                self._trip(now_ns, Reason.FIRMWARE_FAULT, f"firmware fault {fault.code}")
        return sample, True

    def _command(self, sample: CommandSample | None) -> CommandSample | None:
        """The newest command; a new one feeds the watchdog, which alone judges timeouts."""
        if sample is None and self._last_seq is not None:
            self._last_seq = None
            self.watchdog.forget_commands()
        if sample is not None and sample.cmd.seq != self._last_seq:
            self._last_seq = sample.cmd.seq
            self._last_cmd_recv_ns = sample.recv_ns
            self.watchdog.on_fresh_command(sample.recv_ns)
            self.watchdog.on_video_age(sample.recv_ns, sample.cmd.video_age_us)
        return sample

    def _estop_event(self, now_ns: int, ev: EstopEvent, sample: JointSample | None
                     ) -> tuple[int, str]:
        sup = self.supervisor
        if ev.action == "press":
            self._estop(now_ns, ev.source)
            return ev.token, "ok e-stop pressed"
        if ev.action == "clear":
            return ev.token, ("ok e-stop cleared" if self._clear_estop_local(now_ns, sample)
                              else f"refused: {sup.reason}")
        return ev.token, f"ok {sup.state} {sup.reason}"

    # ------------------------------------------------------------ actions
    def _trip(self, now_ns: int, reason: Reason, detail: str) -> None:
        self.supervisor.trip(now_ns, reason, detail)

    def _estop(self, now_ns: int, source: Reason) -> None:
        if source in self._estop_sources and self.supervisor.state is State.ESTOP:
            return
        self._estop_sources.add(source)
        self.supervisor.estop(now_ns, source)

    def _clear_estop_local(self, now_ns: int, sample: JointSample | None) -> bool:
        """Only the on-site staff's local socket reaches this (invariant 4).

        Refused while the arm reports its e-stop button still pressed: the firmware
        refuses Release then, so a "cleared" supervisor would claim motion is possible
        when it is not (and re-latch on the next report).
        """
        if sample is not None and FwFlags.ESTOP_PRESSED in sample.flags:
            log.warning("e-stop clear refused: the e-stop button is still pressed")
            return False
        ok, _ = self.supervisor.clear_estop(now_ns, local=True)
        if ok:
            self._estop_sources.clear()
        return ok

    def _handle(self, f: _Facts, req: PendingRequest
                ) -> tuple[bytes, ControlReply, ControlAudit]:
        sup = self.supervisor
        now_ns = f.now_ns
        op, value = req.req.op, req.req.value
        detail = ""
        why: str
        if op == "arm":
            was_armed = sup.state is not State.DISABLED
            ok, why = sup.arm(now_ns)
            why = "already_armed" if ok and was_armed else why  # a no-op: nothing restarts
        elif op == "disarm":
            ok, why = sup.disarm(now_ns)
        elif op == "engage":
            ok, why, detail = self._engage(f)
        elif op == "disengage":
            ok, why = sup.disengage(now_ns)
        elif op == "clear_fault":
            ok, why = sup.clear_fault(now_ns)
        elif op == "set_scale":
            ok, why = self._set_scale(value)
            detail = f"scale {self.surgeon_scale:.3f}"
        elif op in HANDOFF_OPS:
            # The commander changes (the network thread's SessionGuard decided who): the
            # arm holds until the new one engages, re-anchored to its own master.
            engaged = sup.state in (State.FOLLOWING, State.HOLD)
            ok, why = sup.disengage(now_ns) if engaged and op != "deny" else (True, sup.reason)
        else:  # the schema admits no other op; refuse what a newer console may send
            ok, why = False, "unknown_op"
        reply = ControlReply(req_id=req.req.req_id, ok=ok, state=str(sup.state),
                             reason=str(why)[:64], detail=detail[:200])
        audit = ControlAudit(now_ns, req.peer, op, req.req.req_id, value, ok, str(why)[:64],
                             str(sup.state))
        return req.peer, reply, audit

    def _engage(self, f: _Facts) -> tuple[bool, str, str]:
        """(accepted, reason, the refusal's detail in plain words)."""
        if not f.arm_ok:
            return False, str(Reason.SERIAL_FAULT), "no state report from the arm"
        not_ready = f.not_ready
        since = self._arm_ok_since_ns
        if not_ready is None and since is not None and f.now_ns - since < self._arm_steady_ns:
            not_ready = (f"arm not steady yet: state reports for {(f.now_ns - since) / 1e6:.0f}"
                         f" ms of {self._arm_steady_ns / 1e6:.0f}")
        # The surgeon's hand (registered master orientation) against the instrument:
        # following starts only when they agree, as the dVRK requires.
        tol = self.cfg.safety.motion.align_tolerance_rad
        aligned = tol is None or (f.cmd is not None and self.anchor.aligned(
            f.cmd.cmd.orientation, f.measured[1], tol))
        if f.cmd is not None and f.cmd.cmd.joints is not None:  # joint mode: its own check
            aligned = self.joint_follower.aligned(f.cmd.cmd, f.measured_q)
        ok, reason = self.supervisor.request_engage(f.now_ns, f.health, aligned=aligned,
                                                    not_ready=not_ready)
        return ok, str(reason), (not_ready or "") if reason is Reason.NOT_READY else ""

    def _set_scale(self, value: float | None) -> tuple[bool, str]:
        c = self.cfg.control
        if value is None or not math.isfinite(value) or not c.min_scale <= value <= c.max_scale:
            return False, "scale_out_of_range"
        self.surgeon_scale = value
        return True, "scale_set"

    def _follow(self, f: _Facts, cmd: CommandSample, reanchor: bool, scale: float
                ) -> tuple[tuple[Frame, ...], float]:
        """One period of motion: the frames to write, or () after tripping."""
        now_ns = f.now_ns
        frames: tuple[Frame, ...] = ()
        if reanchor:
            # First period of motion (engage, clutch release): anchor at the follower
            # and release the arm's hold (it ignores targets until told to follow).
            why = (self.joint_follower.resume(cmd, f.measured_q)
                   or self.follower.resume(cmd, f.measured_q, f.measured))
            if why is not None:
                self._trip(now_ns, why, "cannot anchor at this pose")
                return (), 0.0
            if len(self.resumes_ns) < 10_000:
                self.resumes_ns.append(now_ns)
            self._release_pending = True
            frames = (Release(),)
        step = self.joint_follower.step(cmd, scale, f.measured)
        if step.targets is None or step.fault is not None:
            self._trip(now_ns, step.fault or Reason.IK_FAILED, step.detail)
            return (), step.tracking_m
        self.following_periods += 1
        self.max_tracking_error_m = max(self.max_tracking_error_m, step.tracking_m)
        grip = min(1.0, max(0.0, cmd.cmd.grip))
        return (*frames, Targets(step.targets, grip)), step.tracking_m


def trip_record(trip: TripDecision, hold_sent_ns: int | None) -> TripRecord:
    """The reaction time of a trip, once the write carrying its hold has returned."""
    return TripRecord(trip.reason, trip.detected_ns,
                      hold_sent_ns if hold_sent_ns is not None else -1, trip.last_command_ns)
