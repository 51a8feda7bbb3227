"""Supervisor state machine: every trip, every latch, every resume rule, injected clock."""

from __future__ import annotations

import pytest

from safety.config import WatchdogLimits
from safety.states import LINK_TRIPS, Reason, State, crtk_state
from safety.supervisor import MAX_PENDING_TRANSITIONS, StepInputs, Supervisor, Transition
from safety.watchdog import LinkHealth
from transport.schema import SUPERVISOR_STATES

MS = 1_000_000
P = MS
CFG = WatchdogLimits()
SETTLE = int(CFG.settle_ms * MS)


def healthy(since_ns: int = 0, scale: float = 1.0) -> LinkHealth:
    return LinkHealth(True, None, scale < 1.0, scale, "", since_ns)


def tripped(reason: Reason) -> LinkHealth:
    return LinkHealth(False, reason, True, 0.0, f"{reason} test")


def inputs(health: LinkHealth | None = None, *, fresh: bool = True, present: bool = True,
           clutch: bool = False) -> StepInputs:
    """``fresh=False``: the link watchdog, the one judge of command timeouts, says so."""
    if health is None:
        health = healthy() if fresh else tripped(Reason.COMMAND_TIMEOUT)
    return StepInputs(present, clutch, health)


def following(t: int = SETTLE) -> Supervisor:
    """A supervisor that has just started following at ``t``."""
    sup = Supervisor(CFG, P)
    sup.arm(0)
    sup.step(t, inputs())
    assert sup.request_engage(t, healthy()) == (True, Reason.ENGAGED)
    sup.drain_transitions()
    return sup


# ------------------------------------------------------------------------- vocabulary
def test_states_are_the_wire_values_and_map_to_crtk() -> None:
    assert {s.value for s in State} == SUPERVISOR_STATES
    assert {s: crtk_state(s) for s in State} == {
        State.DISABLED: "DISABLED", State.READY: "ENABLED", State.FOLLOWING: "ENABLED",
        State.HOLD: "PAUSED", State.FAULT: "FAULT", State.ESTOP: "FAULT",
    }


def test_reason_codes_fit_on_the_wire() -> None:
    assert all(0 < len(r.value) <= 64 for r in Reason)
    assert len({r.value for r in Reason}) == len(Reason)


# ------------------------------------------------------------------------- engage rules
def test_starts_disabled_and_never_moves_before_engage() -> None:
    sup = Supervisor(CFG, P)
    assert (sup.state, sup.reason) == (State.DISABLED, Reason.STARTUP)
    d = sup.step(0, inputs())
    assert (d.motion_allowed, d.hold) == (False, True)
    assert sup.request_engage(0, healthy()) == (False, Reason.NOT_ARMED)
    assert sup.arm(0) == (True, Reason.ARMED)
    assert not sup.step(SETTLE, inputs()).motion_allowed


@pytest.mark.parametrize(("step_in", "health", "aligned", "refusal"), [
    (None, healthy(), True, Reason.OPERATOR_ABSENT),  # no step yet: presence unknown
    (inputs(present=False), healthy(), True, Reason.OPERATOR_ABSENT),
    (inputs(), tripped(Reason.COMMAND_TIMEOUT), True, Reason.COMMAND_TIMEOUT),
    (inputs(), tripped(Reason.LOSS_BURST), True, Reason.LOSS_BURST),
    (inputs(), healthy(since_ns=1), True, Reason.NOT_SETTLED),
    (inputs(), LinkHealth(True, None, False, 1.0, "", None), True, Reason.NOT_SETTLED),
    (inputs(), healthy(), False, Reason.NOT_ALIGNED),
])
def test_engage_refusals(step_in: StepInputs | None, health: LinkHealth, aligned: bool,
                         refusal: Reason) -> None:
    sup = Supervisor(CFG, P)
    sup.arm(0)
    if step_in is not None:
        sup.step(SETTLE, step_in)
    assert sup.request_engage(SETTLE, health, aligned=aligned) == (False, refusal)
    assert sup.state is State.READY
    assert sup.refusals == 1
    assert not sup.step(SETTLE + P, inputs()).motion_allowed


def test_engage_after_settling_then_first_step_reanchors() -> None:
    sup = Supervisor(CFG, P)
    sup.arm(0)
    sup.step(SETTLE - 1, inputs())
    assert sup.request_engage(SETTLE - 1, healthy(0)) == (False, Reason.NOT_SETTLED)
    assert sup.request_engage(SETTLE, healthy(0)) == (True, Reason.ENGAGED)
    first = sup.step(SETTLE + P, inputs(healthy(0, scale=0.7)))
    assert (first.motion_allowed, first.hold, first.reanchor) == (True, False, True)
    assert first.scale == 0.7
    second = sup.step(SETTLE + 2 * P, inputs())
    assert second.motion_allowed and not second.reanchor
    assert [(t.state_from, t.state_to, t.reason) for t in sup.drain_transitions()] == [
        (State.DISABLED, State.READY, Reason.ARMED),
        (State.READY, State.FOLLOWING, Reason.ENGAGED),
    ]


def test_engage_refused_while_the_robot_is_not_ready_then_accepted() -> None:
    """Issue 11: a robot still starting says not_ready (nothing moves, nothing latches);
    the same engage is accepted once start-up is over. A latch still wins."""
    sup = Supervisor(CFG, P)
    sup.arm(0)
    sup.step(SETTLE, inputs())
    waiting = "robot starting: waiting for the ROS 2 bridge"
    assert sup.request_engage(SETTLE, healthy(0), not_ready=waiting) == (
        False, Reason.NOT_READY)
    assert sup.state is State.READY and not sup.latched
    assert not sup.step(SETTLE + P, inputs()).motion_allowed
    assert sup.request_engage(SETTLE + P, healthy(0), not_ready=None) == (True, Reason.ENGAGED)
    assert sup.step(SETTLE + 2 * P, inputs()).motion_allowed
    sup.trip(SETTLE + 3 * P, Reason.SERIAL_FAULT)
    assert sup.request_engage(SETTLE + 4 * P, healthy(0), not_ready=waiting) == (
        False, Reason.LATCHED)


# ------------------------------------------------------------------------- trips and latches
@pytest.mark.parametrize("reason", sorted(LINK_TRIPS))
def test_link_trip_holds_in_the_same_period_and_latches(reason: Reason) -> None:
    sup = following()
    t = SETTLE + 10 * P
    d = sup.step(t, inputs(tripped(reason)))  # detection and hold in one step
    assert (d.motion_allowed, d.hold, d.state, d.reason) == (False, True, State.HOLD, reason)
    assert sup.latched
    # The link recovers and stays good: still no motion, it does not resume by itself.
    for k in range(1, 3000):
        d = sup.step(t + k * P, inputs(healthy(t + P)))
        assert not d.motion_allowed and d.state is State.HOLD
    [tr] = sup.drain_transitions()
    assert tr == Transition(t, State.FOLLOWING, State.HOLD, reason, f"{reason} test")


@pytest.mark.parametrize(("step_in", "reason"), [
    (inputs(present=False), Reason.OPERATOR_ABSENT),
    (inputs(fresh=False), Reason.COMMAND_TIMEOUT),
])
def test_operator_absence_and_stale_commands_latch_too(step_in: StepInputs,
                                                       reason: Reason) -> None:
    sup = following()
    d = sup.step(SETTLE + P, step_in)
    assert (d.motion_allowed, d.state, d.reason) == (False, State.HOLD, reason)
    assert not sup.step(SETTLE + 2 * P, inputs()).motion_allowed
    assert sup.state is State.HOLD and sup.latched


def test_resume_after_a_trip_only_by_engage_with_a_settled_link() -> None:
    sup = following()
    t = SETTLE + P
    sup.step(t, inputs(tripped(Reason.RTT_HIGH)))
    recovered = t + 100 * P
    sup.step(recovered, inputs(healthy(recovered)))
    assert sup.request_engage(recovered + SETTLE - 1, healthy(recovered)) == (
        False, Reason.NOT_SETTLED)
    assert not sup.step(recovered + SETTLE - 1, inputs(healthy(recovered))).motion_allowed
    assert sup.request_engage(recovered + SETTLE, healthy(recovered)) == (True, Reason.ENGAGED)
    d = sup.step(recovered + SETTLE + P, inputs(healthy(recovered)))
    assert d.motion_allowed and d.reanchor


def test_degraded_hold_escalates_to_fault_at_hold_to_fault() -> None:
    sup = following()
    t = SETTLE + P
    sup.step(t, inputs(tripped(Reason.LOSS_BURST)))
    limit = int(CFG.hold_to_fault_ms * MS)
    assert sup.step(t + limit - 1, inputs(tripped(Reason.LOSS_BURST))).state is State.HOLD
    d = sup.step(t + limit, inputs(tripped(Reason.JITTER_HIGH)))
    assert (d.state, d.reason) == (State.FAULT, Reason.HOLD_ESCALATED)
    # A fault is latched: a good link and an engage do not clear it.
    assert sup.request_engage(t + limit + SETTLE, healthy(t)) == (False, Reason.LATCHED)
    assert sup.step(t + limit + SETTLE, inputs()).state is State.FAULT


def test_escalation_clock_restarts_when_the_link_recovers_in_hold() -> None:
    sup = following()
    t = SETTLE + P
    limit = int(CFG.hold_to_fault_ms * MS)
    sup.step(t, inputs(tripped(Reason.RTT_HIGH)))
    sup.step(t + limit // 2, inputs(healthy(t + limit // 2)))
    bad_again = t + limit // 2 + P
    sup.step(bad_again, inputs(tripped(Reason.RTT_HIGH)))
    assert sup.step(bad_again + limit - 1, inputs(tripped(Reason.RTT_HIGH))).state is State.HOLD
    assert sup.step(bad_again + limit, inputs(tripped(Reason.RTT_HIGH))).state is State.FAULT


def test_operator_absent_hold_does_not_escalate_on_a_good_link() -> None:
    sup = following()
    sup.step(SETTLE + P, inputs(present=False))
    d = sup.step(SETTLE + 10 * int(CFG.hold_to_fault_ms * MS), inputs(present=False))
    assert (d.state, d.reason) == (State.HOLD, Reason.OPERATOR_ABSENT)


# ------------------------------------------------------------------------- clutch
def test_clutch_hold_resumes_on_release_without_engage() -> None:
    sup = following()
    t = SETTLE + P
    d = sup.step(t, inputs(clutch=True))
    assert (d.motion_allowed, d.state, d.reason) == (False, State.HOLD, Reason.CLUTCH)
    assert not sup.latched
    assert not sup.step(t + P, inputs(clutch=True)).motion_allowed
    d = sup.step(t + 2 * P, inputs())
    assert (d.motion_allowed, d.reanchor, d.reason) == (True, True, Reason.CLUTCH_RELEASED)


@pytest.mark.parametrize("bad", [
    inputs(tripped(Reason.COMMAND_TIMEOUT), clutch=True),
    inputs(clutch=True, present=False),
    inputs(clutch=True, fresh=False),
])
def test_clutch_release_does_not_resume_after_a_trip_meanwhile(bad: StepInputs) -> None:
    sup = following()
    t = SETTLE + P
    sup.step(t, inputs(clutch=True))
    d = sup.step(t + P, bad)
    assert d.state is State.HOLD and d.reason is not Reason.CLUTCH and sup.latched
    sup.step(t + 2 * P, inputs(clutch=True))  # the cause went away, clutch still held
    d = sup.step(t + 3 * P, inputs())  # released
    assert not d.motion_allowed and d.state is State.HOLD
    [_, tr] = sup.drain_transitions()
    assert (tr.state_from, tr.state_to) == (State.HOLD, State.HOLD)


def test_a_trip_wins_over_the_clutch() -> None:
    sup = following()
    d = sup.step(SETTLE + P, inputs(tripped(Reason.VIDEO_STALE), clutch=True))
    assert d.reason is Reason.VIDEO_STALE and sup.latched


# ------------------------------------------------------------------------- faults
def test_external_fault_latches_until_clear_fault_then_needs_engage() -> None:
    sup = following()
    t = SETTLE + P
    sup.trip(t, Reason.SETPOINT_JUMP, "step 40 mm")
    assert sup.step(t, inputs()).state is State.FAULT
    assert sup.request_engage(t, healthy()) == (False, Reason.LATCHED)
    assert sup.disengage(t) == (False, Reason.LATCHED)
    assert sup.disarm(t) == (False, Reason.LATCHED)
    assert sup.clear_fault(t + P) == (True, Reason.FAULT_CLEARED)
    d = sup.step(t + 2 * P, inputs())
    assert (d.state, d.motion_allowed) == (State.READY, False)
    assert sup.request_engage(t + 3 * P, healthy()) == (True, Reason.ENGAGED)
    reasons = [tr.reason for tr in sup.drain_transitions()]
    assert reasons == [Reason.SETPOINT_JUMP, Reason.FAULT_CLEARED, Reason.ENGAGED]


def test_clear_fault_does_not_clear_a_tripped_hold() -> None:
    sup = following()
    sup.step(SETTLE + P, inputs(tripped(Reason.RTT_UNKNOWN)))
    assert sup.clear_fault(SETTLE + 2 * P) == (False, Reason.LATCHED)
    assert sup.state is State.HOLD


def test_disengage_leaves_hold_for_ready() -> None:
    sup = following()
    sup.step(SETTLE + P, inputs(tripped(Reason.RTT_HIGH)))
    assert sup.disengage(SETTLE + 2 * P) == (True, Reason.DISENGAGED)
    assert (sup.state, sup.latched) == (State.READY, False)
    assert not sup.step(SETTLE + 3 * P, inputs()).motion_allowed


# ------------------------------------------------------------------------- e-stop
@pytest.mark.parametrize("make", ["disabled", "ready", "following", "hold", "fault"])
def test_estop_from_every_state_latches_and_clears_only_locally(make: str) -> None:
    sup = following()
    t = SETTLE + P
    if make == "disabled":
        sup.disengage(t)
        sup.disarm(t)
    elif make == "ready":
        sup.disengage(t)
    elif make == "hold":
        sup.step(t, inputs(clutch=True))
    elif make == "fault":
        sup.trip(t, Reason.SERIAL_FAULT)
    sup.drain_transitions()
    sup.estop(t + P, Reason.ESTOP_BUTTON)
    assert sup.state is State.ESTOP and sup.latched
    for request in (sup.arm, sup.disarm, sup.disengage, sup.clear_fault):
        assert request(t + 2 * P) == (False, Reason.LATCHED)
    assert sup.request_engage(t + 2 * P, healthy()) == (False, Reason.LATCHED)
    sup.trip(t + 2 * P, Reason.FIRMWARE_FAULT)
    assert sup.clear_estop(t + 3 * P, local=False) == (False, Reason.ESTOP_CLEAR_REFUSED)
    for k in range(5):
        assert not sup.step(t + (4 + k) * P, inputs()).motion_allowed
    assert sup.state is State.ESTOP
    assert sup.clear_estop(t + 10 * P, local=True) == (True, Reason.ESTOP_CLEARED)
    assert sup.state is State.DISABLED  # re-arm and re-engage needed
    assert [(tr.state_from, tr.state_to, tr.reason) for tr in sup.drain_transitions()] == [
        (State(make), State.ESTOP, Reason.ESTOP_BUTTON),
        (State.ESTOP, State.ESTOP, Reason.ESTOP_CLEAR_REFUSED),
        (State.ESTOP, State.DISABLED, Reason.ESTOP_CLEARED),
    ]


def test_a_second_estop_is_not_a_new_transition() -> None:
    sup = Supervisor(CFG, P)
    sup.estop(0, Reason.ESTOP_ROS)
    sup.estop(1, Reason.ESTOP_BUTTON)
    assert len(sup.drain_transitions()) == 1
    assert sup.reason is Reason.ESTOP_ROS


# ------------------------------------------------------------------------- bookkeeping
def test_transition_queue_is_bounded_and_counts_drops() -> None:
    sup = Supervisor(CFG, P)
    sup.estop(0, Reason.ESTOP_LOCAL)
    for k in range(MAX_PENDING_TRANSITIONS + 10):
        sup.clear_estop(k, local=False)
    assert len(sup.drain_transitions()) == MAX_PENDING_TRANSITIONS
    assert sup.dropped_transitions == 11
    assert sup.drain_transitions() == []


def test_bad_period_is_refused() -> None:
    with pytest.raises(ValueError, match="period_ns"):
        Supervisor(CFG, 0)
