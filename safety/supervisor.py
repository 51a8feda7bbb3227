"""The supervisor state machine: when may the follower move?

Pure logic with time passed in; the robot node calls ``step()`` once per control period
and the control requests (arm, engage, ...) as they arrive. Motion is allowed only in
FOLLOWING, and FOLLOWING is left in the same ``step()`` that sees any reason not to move
(invariants 1 and 2):

    DISABLED --arm--> READY --engage--> FOLLOWING --clutch--> HOLD(clutch)
                                            |                    | release, nothing tripped
                                            |                    v
                                            |                FOLLOWING (re-anchored)
                                            +--link trip / operator absent--> HOLD (latched)
    HOLD (latched) --engage with a settled, healthy link--> FOLLOWING (re-anchored)
    HOLD (latched, link still bad for hold_to_fault_ms) --> FAULT (hold_escalated)
    any --trip()--> FAULT --clear_fault--> READY
    any --estop()--> ESTOP --clear_estop(local=True)--> DISABLED

A latched hold never resumes by itself when its cause goes away (invariant 3); only
``request_engage`` resumes, and only when the link has been healthy for ``settle_ms``.
The e-stop is cleared only by a robot-side caller (invariant 4); a remote attempt is
refused and recorded. Every transition is queued for ``drain_transitions()``; the robot
node writes each one to the audit log before it reports it (invariant 7).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from safety.config import WatchdogLimits
from safety.states import LATCHED_STATES, LINK_TRIPS, Reason, State
from safety.watchdog import LinkHealth

log = logging.getLogger(__name__)

_MS = 1_000_000
MAX_PENDING_TRANSITIONS = 1024
"""Undrained transitions kept; the node drains every period, so this is never reached."""


class StepInputs(NamedTuple):
    """One period's facts. The command's freshness is not here: the link watchdog alone
    judges a command timeout, and ``health`` carries its verdict."""

    operator_present: bool
    clutch: bool
    health: LinkHealth


class Decision(NamedTuple):
    motion_allowed: bool
    hold: bool
    """Command a hold on the manipulator this period (always ``not motion_allowed``)."""
    scale: float
    state: State
    reason: Reason
    reanchor: bool = False
    """First period of (re)started following: re-anchor master to follower before moving."""


@dataclass(frozen=True, slots=True)
class Transition:
    t_ns: int
    state_from: State
    state_to: State
    reason: Reason
    detail: str = ""


Reply = tuple[bool, Reason]
"""(accepted, reason) for a control request; the reason is what the reply shows."""


class Supervisor:
    """The state machine; ``period_ns`` is the control period ``step()`` is called at.

    A trip seen by ``step()`` is answered by that same call with ``hold``, so the hold is
    commanded within one period of the detection (invariant 2).
    """

    def __init__(self, cfg: WatchdogLimits, period_ns: int) -> None:
        if period_ns <= 0:
            raise ValueError(f"period_ns = {period_ns}: must be > 0")
        self.cfg = cfg
        self.period_ns = period_ns
        self._state = State.DISABLED
        self._reason = Reason.STARTUP
        self._latched = False  # a HOLD caused by a trip: only an engage leaves it
        self._degraded_since_ns: int | None = None  # link bad while in a latched HOLD
        self._reanchor = False
        self._last_inputs: StepInputs | None = None
        self._transitions: deque[Transition] = deque()
        self.dropped_transitions = 0
        self.refusals = 0

    # ---------------------------------------------------------------- observers
    @property
    def state(self) -> State:
        return self._state

    @property
    def reason(self) -> Reason:
        return self._reason

    @property
    def latched(self) -> bool:
        """True in FAULT, ESTOP and a tripped HOLD: nothing resumes without an operator."""
        return self._state in LATCHED_STATES or self._latched

    @property
    def has_transitions(self) -> bool:
        """Any transition not drained yet (asked every period: nothing built for nothing)."""
        return bool(self._transitions)

    def drain_transitions(self) -> list[Transition]:
        out = list(self._transitions)
        self._transitions.clear()
        return out

    # ---------------------------------------------------------------- control requests
    def arm(self, now_ns: int) -> Reply:
        if self._state is State.DISABLED:
            self._go(now_ns, State.READY, Reason.ARMED)
            return True, Reason.ARMED
        if self._state in LATCHED_STATES:
            return self._refuse("arm", Reason.LATCHED)
        return True, self._reason  # already armed

    def disarm(self, now_ns: int) -> Reply:
        if self._state in LATCHED_STATES:
            return self._refuse("disarm", Reason.LATCHED)
        if self._state is not State.DISABLED:
            self._go(now_ns, State.DISABLED, Reason.DISARMED)
        return True, Reason.DISARMED

    def request_engage(self, now_ns: int, health: LinkHealth, *, aligned: bool = True,
                       not_ready: str | None = None) -> Reply:
        """Start (or resume after a clutch or a latched hold) following.

        Refused unless armed and not latched in FAULT/ESTOP, the robot's own start-up is
        over (``not_ready`` None; else it says what the robot waits for), the link (fresh
        commands included) is healthy and has been for ``settle_ms``, the last step saw
        the operator present, and (when the robot node checks alignment) master and
        follower orientations are within tolerance. On success the next step says
        ``reanchor``.
        """
        if self._state in LATCHED_STATES:
            return self._refuse("engage", Reason.LATCHED)
        if self._state is State.DISABLED:
            return self._refuse("engage", Reason.NOT_ARMED)
        if self._state is State.FOLLOWING:
            return True, self._reason
        if not_ready is not None:
            # A robot still starting says so rather than trip a second after the engage.
            return self._refuse("engage", Reason.NOT_READY, not_ready)
        if not health.ok:
            return self._refuse("engage", health.trip or Reason.RTT_UNKNOWN, health.detail)
        inputs = self._last_inputs
        if inputs is None or not inputs.operator_present:
            return self._refuse("engage", Reason.OPERATOR_ABSENT)
        since = health.healthy_since_ns
        if since is None or now_ns - since < self.cfg.settle_ms * _MS:
            healthy_ms = 0.0 if since is None else (now_ns - since) / _MS
            return self._refuse("engage", Reason.NOT_SETTLED,
                                f"link healthy {healthy_ms:.0f} ms < {self.cfg.settle_ms} ms")
        if not aligned:
            return self._refuse("engage", Reason.NOT_ALIGNED)
        self._follow(now_ns, Reason.ENGAGED)
        return True, Reason.ENGAGED

    def disengage(self, now_ns: int) -> Reply:
        """FOLLOWING or HOLD (any kind) -> READY; READY stays."""
        if self._state in (State.FOLLOWING, State.HOLD):
            self._go(now_ns, State.READY, Reason.DISENGAGED)
            return True, Reason.DISENGAGED
        if self._state is State.READY:
            return True, self._reason
        refusal = Reason.NOT_ARMED if self._state is State.DISABLED else Reason.LATCHED
        return self._refuse("disengage", refusal)

    def clear_fault(self, now_ns: int) -> Reply:
        """FAULT -> READY. Never clears an e-stop, nor a tripped hold (that takes an engage)."""
        if self._state is State.FAULT:
            self._go(now_ns, State.READY, Reason.FAULT_CLEARED)
            return True, Reason.FAULT_CLEARED
        if self.latched:
            return self._refuse("clear_fault", Reason.LATCHED)
        return True, self._reason

    def estop(self, now_ns: int, source: Reason, detail: str = "") -> None:
        if self._state is not State.ESTOP:
            self._go(now_ns, State.ESTOP, source, detail)

    def clear_estop(self, now_ns: int, local: bool) -> Reply:
        """ESTOP -> DISABLED, only from the robot side; a remote attempt is an event."""
        if self._state is not State.ESTOP:
            return True, self._reason
        if not local:
            self.refusals += 1
            log.warning("remote e-stop clear refused: the e-stop is cleared on the robot side")
            self._record(now_ns, State.ESTOP, State.ESTOP, Reason.ESTOP_CLEAR_REFUSED,
                         "remote clear attempt")
            return False, Reason.ESTOP_CLEAR_REFUSED
        self._go(now_ns, State.DISABLED, Reason.ESTOP_CLEARED)
        return True, Reason.ESTOP_CLEARED

    def trip(self, now_ns: int, reason: Reason, detail: str = "") -> None:
        """A fault found elsewhere (limits, serial, firmware, audit): latched FAULT.

        In FAULT or ESTOP already the first cause stays; a further fault is only logged.
        """
        if self._state in LATCHED_STATES:
            log.warning("fault %s while in %s (%s): %s", reason, self._state, self._reason, detail)
            return
        self._go(now_ns, State.FAULT, reason, detail)

    # ---------------------------------------------------------------- per period
    def step(self, now_ns: int, inputs: StepInputs) -> Decision:
        self._last_inputs = inputs
        if self._state is State.FOLLOWING:
            self._step_following(now_ns, inputs)
        elif self._state is State.HOLD:
            self._step_hold(now_ns, inputs)
        if self._state is not State.FOLLOWING:
            return Decision(False, True, 0.0, self._state, self._reason)
        reanchor, self._reanchor = self._reanchor, False
        return Decision(True, False, inputs.health.scale, self._state, self._reason, reanchor)

    def _step_following(self, now_ns: int, inputs: StepInputs) -> None:
        found = _trip_in(inputs)
        if found is not None:
            self._hold(now_ns, *found, latched=True)
        elif inputs.clutch:
            self._hold(now_ns, Reason.CLUTCH, "", latched=False)

    def _step_hold(self, now_ns: int, inputs: StepInputs) -> None:
        found = _trip_in(inputs)
        if not self._latched:  # a clutch hold
            if found is not None:
                self._hold(now_ns, *found, latched=True)
            elif not inputs.clutch:
                self._follow(now_ns, Reason.CLUTCH_RELEASED)
            return
        if inputs.health.ok:
            self._degraded_since_ns = None
            return
        if self._degraded_since_ns is None:
            self._degraded_since_ns = now_ns
        degraded_ns = now_ns - self._degraded_since_ns
        if degraded_ns >= self.cfg.hold_to_fault_ms * _MS:
            self._go(now_ns, State.FAULT, Reason.HOLD_ESCALATED,
                     f"link degraded ({inputs.health.trip}) in hold for "
                     f"{degraded_ns / _MS:.0f} ms")

    # ---------------------------------------------------------------- transitions
    def _hold(self, now_ns: int, reason: Reason, detail: str, *, latched: bool) -> None:
        self._go(now_ns, State.HOLD, reason, detail)
        self._latched = latched
        # A link trip starts the escalation clock at once, not a period later.
        self._degraded_since_ns = now_ns if latched and reason in LINK_TRIPS else None

    def _follow(self, now_ns: int, reason: Reason) -> None:
        self._reanchor = True
        self._go(now_ns, State.FOLLOWING, reason)

    def _go(self, now_ns: int, to: State, reason: Reason, detail: str = "") -> None:
        self._latched = False
        self._degraded_since_ns = None
        self._record(now_ns, self._state, to, reason, detail)
        self._state, self._reason = to, reason

    def _record(self, now_ns: int, frm: State, to: State, reason: Reason, detail: str) -> None:
        calm = to in (State.DISABLED, State.READY, State.FOLLOWING)
        log.log(logging.INFO if calm else logging.WARNING, "%s -> %s (%s) %s",
                frm, to, reason, detail)
        if len(self._transitions) >= MAX_PENDING_TRANSITIONS:
            self.dropped_transitions += 1
            log.error("transition queue full: dropping %s -> %s (%s)", frm, to, reason)
            return
        self._transitions.append(Transition(now_ns, frm, to, reason, detail))

    def _refuse(self, request: str, reason: Reason, detail: str = "") -> Reply:
        self.refusals += 1
        log.info("%s refused in %s: %s %s", request, self._state, reason, detail)
        return False, reason


def _trip_in(inputs: StepInputs) -> tuple[Reason, str] | None:
    """The first reason in ``inputs`` not to move, safety conditions before the clutch."""
    health = inputs.health
    if not health.ok:
        return health.trip or Reason.RTT_UNKNOWN, health.detail
    if not inputs.operator_present:
        return Reason.OPERATOR_ABSENT, "operator presence lost"
    return None
