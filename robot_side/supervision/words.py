"""Plain words for the staff beside the patient: what the robot is doing and why it stopped.

A nurse reads "Stopped: the surgeon's commands stopped arriving", not
``command_timeout``; the code stays visible beside it for the engineers.
"""

from __future__ import annotations

from robot_side.serial_protocol import FwFlags
from safety.states import Reason, State

STATE_WORDS: dict[str, str] = {
    State.DISABLED: "Not armed: the arm is holding still",
    State.READY: "Armed and holding, waiting for the surgeon",
    State.FOLLOWING: "Moving: the arm follows the surgeon",
    State.HOLD: "Holding still",
    State.FAULT: "Stopped after a fault: the surgeon must clear it",
    State.ESTOP: "EMERGENCY STOP: the arm is stopped",
}

REASON_WORDS: dict[str, str] = {
    Reason.STARTUP: "the robot just started",
    Reason.ARMED: "the surgeon armed the robot",
    Reason.DISARMED: "the surgeon disarmed the robot",
    Reason.ENGAGED: "the surgeon took control",
    Reason.DISENGAGED: "the surgeon let go of control",
    Reason.CLUTCH: "the surgeon pressed the clutch",
    Reason.CLUTCH_RELEASED: "the surgeon released the clutch",
    Reason.OPERATOR_ABSENT: "the surgeon's hand left the controller",
    Reason.COMMAND_TIMEOUT: "the surgeon's commands stopped arriving (network)",
    Reason.RTT_HIGH: "the network to the surgeon became too slow",
    Reason.RTT_UNKNOWN: "the network delay to the surgeon could not be measured",
    Reason.LATENCY_HIGH: "the surgeon's commands arrived too late (network)",
    Reason.LOSS_BURST: "too many of the surgeon's commands were lost (network)",
    Reason.JITTER_HIGH: "the network timing to the surgeon became irregular",
    Reason.VIDEO_STALE: "the surgeon's picture froze",
    Reason.NONFINITE_SETPOINT: "an invalid motion command was refused",
    Reason.SETPOINT_JUMP: "a sudden jump in the commanded motion was refused",
    Reason.WORKSPACE: "the arm reached the edge of its allowed workspace",
    Reason.JOINT_LIMIT: "a joint reached its limit",
    Reason.IK_FAILED: "the arm cannot reach the commanded pose",
    Reason.TRACKING_ERROR: "the arm did not follow its commands closely enough",
    Reason.JOINT_COMMAND: "a joint command that does not fit this arm was refused",
    Reason.SERIAL_FAULT: "the connection to the arm's controller failed",
    Reason.FIRMWARE_FAULT: "the arm's controller reported a fault",
    Reason.FIRMWARE_WATCHDOG: "the arm's controller stopped hearing from the robot computer",
    Reason.ESTOP_BUTTON: "the hardware emergency stop button was pressed",
    Reason.ESTOP_ROS: "an emergency stop came from the ROS 2 system",
    Reason.ESTOP_LOCAL: "the emergency stop was pressed on site",
    Reason.ESTOP_CLEARED: "the emergency stop was cleared on site",
    Reason.ESTOP_CLEAR_REFUSED: "clearing the emergency stop was refused",
    Reason.FAULT_CLEARED: "the surgeon cleared the fault",
    Reason.AUDIT_FAILURE: "the safety log could not be written to disk",
    Reason.HOLD_ESCALATED: "a hold lasted too long and became a fault",
    Reason.NOT_SETTLED: "the arm had not settled yet",
    Reason.NOT_ALIGNED: "the surgeon's hand was not aligned with the instrument",
    Reason.NOT_ARMED: "the robot was not armed",
    Reason.LATCHED: "an earlier stop has not been cleared yet",
    # Warnings without a transition (robot_side.workers.PUBLISHED_ALERTS)
    "redundancy_lost": "down to one network path: no redundancy left (the arm keeps going)",
    "redundancy_restored": "a second network path is back: redundancy restored",
}

FLAG_WORDS: dict[FwFlags, str] = {
    FwFlags.BRAKED: "brakes on",
    FwFlags.HOLDING: "holding",
    FwFlags.WATCHDOG_TRIPPED: "controller watchdog tripped",
    FwFlags.ESTOP_PRESSED: "hardware e-stop pressed",
    FwFlags.FAULT: "controller fault",
    FwFlags.JOINT_LIMIT: "joint at limit",
    FwFlags.STUCK_JOINT: "a joint is stuck",
    FwFlags.EFFORT_LIMIT: "effort limit reached",
    FwFlags.FOLLOWING: "following targets",
    FwFlags.RX_ERRORS: "damaged frames on the serial line",
}
BAD_FLAGS = (FwFlags.WATCHDOG_TRIPPED | FwFlags.ESTOP_PRESSED | FwFlags.FAULT
             | FwFlags.STUCK_JOINT | FwFlags.EFFORT_LIMIT | FwFlags.RX_ERRORS)


def state_words(state: str) -> str:
    return STATE_WORDS.get(state, f"state {state}")


def reason_words(reason: str) -> str:
    return REASON_WORDS.get(reason, reason.replace("_", " "))


def why(state: str, reason: str) -> str:
    """One sentence for the banner: what the arm does, and why."""
    if state == State.FOLLOWING:
        return state_words(state)
    return f"{state_words(state)}: {reason_words(reason)}"


def firmware_words(flags: int) -> tuple[list[str], bool]:
    """The set flags in words, and whether any of them is a problem."""
    names = [text for flag, text in FLAG_WORDS.items() if flags & flag]
    return names, bool(flags & BAD_FLAGS)
