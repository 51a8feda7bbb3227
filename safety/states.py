"""Supervisor states and transition reason codes, and their CRTK mapping.

The ``State`` values are the wire strings of ``transport.schema.SUPERVISOR_STATES``;
the ``Reason`` values travel as ``SafetyEvent.code`` and ``Telemetry.reason`` (at most
64 characters each), reach the HUD and are written to the audit log.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    DISABLED = "disabled"
    """Not armed: no motion, brakes may be on."""
    READY = "ready"
    """Armed and holding; waiting for the surgeon to engage."""
    FOLLOWING = "following"
    """The follower tracks the master: the only state in which anything moves."""
    HOLD = "hold"
    """Holding position: clutch (resumes on release) or a latched trip (needs re-engage)."""
    FAULT = "fault"
    """Latched; cleared only by an explicit clear_fault."""
    ESTOP = "estop"
    """Emergency stop, latched; cleared only on the robot side."""


class Reason(StrEnum):
    """Why a transition happened (or why a request was refused)."""

    # operator and control requests
    STARTUP = "startup"
    ARMED = "armed"
    DISARMED = "disarmed"
    ENGAGED = "engaged"
    DISENGAGED = "disengaged"
    CLUTCH = "clutch"
    CLUTCH_RELEASED = "clutch_released"
    OPERATOR_ABSENT = "operator_absent"
    # link watchdog trips
    COMMAND_TIMEOUT = "command_timeout"
    RTT_HIGH = "rtt_high"
    RTT_UNKNOWN = "rtt_unknown"
    LATENCY_HIGH = "latency_high"
    LOSS_BURST = "loss_burst"
    JITTER_HIGH = "jitter_high"
    VIDEO_STALE = "video_stale"
    # motion limits and kinematics
    NONFINITE_SETPOINT = "nonfinite_setpoint"
    SETPOINT_JUMP = "setpoint_jump"
    WORKSPACE = "workspace"
    JOINT_LIMIT = "joint_limit"
    IK_FAILED = "ik_failed"
    TRACKING_ERROR = "tracking_error"
    JOINT_COMMAND = "joint_command"
    """Joint-space teleop: wrong joint count, or the command's mode (joint/Cartesian)
    changed while following (robot_side.follow_joint)."""
    # manipulator and firmware
    SERIAL_FAULT = "serial_fault"
    FIRMWARE_FAULT = "firmware_fault"
    FIRMWARE_WATCHDOG = "firmware_watchdog"
    # emergency stop
    ESTOP_BUTTON = "estop_button"
    ESTOP_ROS = "estop_ros"
    ESTOP_LOCAL = "estop_local"
    ESTOP_CLEARED = "estop_cleared"
    ESTOP_CLEAR_REFUSED = "estop_clear_refused"
    # authentication
    KEY_REVOKED = "key_revoked"
    """A reload removed the key of a live surgeon session: latched, audited."""
    # latches and refusals
    FAULT_CLEARED = "fault_cleared"
    AUDIT_FAILURE = "audit_failure"
    HOLD_ESCALATED = "hold_escalated"
    NOT_SETTLED = "not_settled"
    NOT_ALIGNED = "not_aligned"
    NOT_ARMED = "not_armed"
    NOT_READY = "not_ready"
    """The robot's own start-up is not over (a child process not up yet, the arm's
    state reports not steady yet): engage is refused, the detail says what it waits for."""
    LATCHED = "latched"


LINK_TRIPS: frozenset[Reason] = frozenset({
    Reason.COMMAND_TIMEOUT, Reason.RTT_HIGH, Reason.RTT_UNKNOWN, Reason.LATENCY_HIGH,
    Reason.LOSS_BURST, Reason.JITTER_HIGH, Reason.VIDEO_STALE,
})
"""Reasons the link watchdog reports; they hold first and escalate to a fault."""

LATCHED_STATES: frozenset[State] = frozenset({State.FAULT, State.ESTOP})

_CRTK: dict[State, str] = {
    State.DISABLED: "DISABLED",
    State.READY: "ENABLED",
    State.FOLLOWING: "ENABLED",
    State.HOLD: "PAUSED",
    State.FAULT: "FAULT",
    State.ESTOP: "FAULT",
}


def crtk_state(state: State) -> str:
    """The CRTK ``operating_state`` string (DISABLED, ENABLED, PAUSED, FAULT) for ROS 2.

    READY maps to ENABLED (powered, holding, accepting an engage); an e-stop is a
    FAULT to CRTK clients, and the supervisor reason tells them which one.
    """
    return _CRTK[state]


SURGEON_HOLDS: frozenset[Reason] = frozenset({Reason.CLUTCH, Reason.CLUTCH_RELEASED,
                                              Reason.DISENGAGED})
"""Holds the surgeon causes on purpose: not trips, wherever they are judged."""
