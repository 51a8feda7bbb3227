"""Plain words for the surgeon: what a reason code means and what to do next.

The robot speaks in reason codes (``loss_burst``, ``hold_escalated``); the HUD
and the status view speak to a surgeon in the middle of an operation. Every
code the supervisor can send has a sentence saying what happened and, where
the surgeon can act, the next step. An unknown code is shown as it is, never
hidden.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LINK_GREEN = "Re-engage when the link is green."
CALL_STAFF = "Call the on-site staff."


@dataclass(frozen=True)
class Phrase:
    what: str
    """What happened, in a few words."""
    next_step: str = ""
    """What the surgeon can do about it ("" when nothing is needed)."""

    def __str__(self) -> str:
        return f"{self.what} {self.next_step}".strip()


_REASONS: dict[str, Phrase] = {
    # operator and control requests
    "startup": Phrase("Robot starting.", "Arm, then engage."),
    "armed": Phrase("Robot armed and holding.", "Engage to operate."),
    "disarmed": Phrase("Robot disarmed.", "Arm, then engage."),
    "engaged": Phrase("Following your hand."),
    "disengaged": Phrase("Disengaged: arm holding.", "Engage to continue."),
    "clutch": Phrase("Clutch pressed: arm holding.", "Release the clutch to continue."),
    "clutch_released": Phrase("Clutch released."),
    "operator_absent": Phrase("Hand off the master: arm holding.",
                              "Take the master, then re-engage."),
    # link watchdog
    "command_timeout": Phrase("Link lost: arm holding.", LINK_GREEN),
    "rtt_high": Phrase("Link too slow (round trip): arm holding.", LINK_GREEN),
    "rtt_unknown": Phrase("Link delay unknown: arm holding.", LINK_GREEN),
    "latency_high": Phrase("Link too slow: arm holding.", LINK_GREEN),
    "loss_burst": Phrase("Link dropping packets: arm holding.", LINK_GREEN),
    "jitter_high": Phrase("Link unsteady: arm holding.", LINK_GREEN),
    "video_stale": Phrase("Picture froze: arm holding.", "Re-engage when the picture is live."),
    # motion limits and kinematics
    "nonfinite_setpoint": Phrase("Invalid motion from the console: arm holding.",
                                 "Clear the fault, then re-engage."),
    "setpoint_jump": Phrase("Sudden jump in the hand motion: arm stopped.",
                            "Clear the fault, then re-engage."),
    "workspace": Phrase("Edge of the workspace: arm holding.",
                        "Move back inside, clutch, then re-engage."),
    "joint_limit": Phrase("Joint at its limit: arm holding.",
                          "Move back, clutch, then re-engage."),
    "ik_failed": Phrase("Pose out of the arm's reach: arm holding.",
                        "Move back, clutch, then re-engage."),
    "tracking_error": Phrase("Arm could not follow (blocked?): arm stopped.",
                             "Check the instrument; clear the fault."),
    "joint_command": Phrase("Master's joints do not fit the arm: arm stopped.",
                            "Check the master arm; clear the fault."),
    # manipulator and firmware
    "serial_fault": Phrase("Arm controller not answering: arm stopped.", CALL_STAFF),
    "firmware_fault": Phrase("Arm controller fault: arm stopped.", CALL_STAFF),
    "firmware_watchdog": Phrase("Arm controller braked (watchdog).", CALL_STAFF),
    # emergency stop
    "estop_button": Phrase("Emergency stop pressed at the arm.", "Staff clear it on site."),
    "estop_ros": Phrase("Emergency stop from the OR system.", "Staff clear it on site."),
    "estop_local": Phrase("Emergency stop pressed by the staff.", "Staff clear it on site."),
    "estop_cleared": Phrase("Emergency stop cleared.", "Arm, then engage."),
    "estop_clear_refused": Phrase("Emergency stop still latched.", "Staff clear it on site."),
    # latches and refusals
    "fault_cleared": Phrase("Fault cleared: arm holding.", "Engage to continue."),
    "audit_failure": Phrase("Safety log failing: arm holding.", CALL_STAFF),
    "hold_escalated": Phrase("Hold lasted too long: arm faulted.",
                             "Clear the fault when the link is green."),
    "not_settled": Phrase("Arm still settling.", "Wait a moment, then engage."),
    "not_aligned": Phrase("Hand and instrument not aligned.",
                          "Match the instrument's orientation (a leader arm: the robot "
                          "arm's pose), then engage."),
    "not_armed": Phrase("Robot not armed.", "Arm first."),
    "latched": Phrase("A stop is latched.", "Clear it first."),
}


def describe(reason: str) -> Phrase:
    """The plain words for a reason code; an unknown code is shown as it is."""
    return _REASONS.get(reason, Phrase(reason.replace("_", " ")))


_REFUSED = re.compile(r"^(\w+) refused: (\w+)$")
_ROBOT = re.compile(r"^robot (\w+): (\w+)$")
_NO_ANSWER = re.compile(r"^(\w+): no answer from the robot$")


def plain(message: str) -> str:
    """A console message ("engage refused: loss_burst") in the surgeon's words."""
    if m := _REFUSED.match(message):
        op, reason = m.groups()
        p = describe(reason)
        return f"Cannot {op.replace('_', ' ')}: {p.what[0].lower()}{p.what[1:]} {p.next_step}"
    if m := _ROBOT.match(message):
        return str(describe(m.group(2)))
    if m := _NO_ANSWER.match(message):
        return f"The robot did not answer ({m.group(1).replace('_', ' ')}). {LINK_GREEN}"
    if message.startswith("disengaged: the picture is stale"):
        return "Picture froze: you were disengaged. Re-engage when the picture is live."
    return message
