"""Watching a servo bus in the HIL table: positions, goals and the servos' own safety.

What ``hil_tests/test_scenarios.py`` checks on a Dynamixel or Feetech arm where it checks
the firmware emulator's mode and brake on the firmware arm (``scenarios.for_arm``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hil_tests.rig import SimRig, poll
from hil_tests.scenarios import BUS_WATCHDOG_MS, CI_SLACK_MS, SERVO_LATENCY_MS
from hil_tests.servo_rig import JOINT_IDS
from safety.audit import read_records

log = logging.getLogger(__name__)

SERVO_STILL_RAD = 2e-3
"""Joint or goal motion allowed while held on a servo bus: a servo settles on its goal
first (the firmware emulator holds exactly: 1e-6)."""
SERVO_SETTLE_S = 0.15
SERVO_SPAN_RAD = 0.05
"""Feetech after its link is gone: how far the last goal may be from where the joint was
(the robot bounds each target to a step per period and the tracking error)."""


def bus_state(rig: SimRig) -> dict[str, Any]:
    """The servo-bus emulator's snapshot (positions, goals, torque, Bus Watchdog)."""
    state: dict[str, Any] = rig.firmware({"state": True})["state"]
    return state


def servo_joints(rig: SimRig, key: str = "positions") -> list[float]:
    return [float(v) for v in bus_state(rig)[key][:len(JOINT_IDS)]]


def moved(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def watch_servos_still(rig: SimRig, until_ns: int, since: int) -> float:
    """``watch_still`` on a servo bus: neither a joint nor a goal moves while held.

    Counts only what was read before the robot's re-engage (the control thread's own
    time of it, from the audit): the robot's log, which ends the watch, reaches its file
    through a queue and a normal-priority thread, so on a loaded machine it showed the
    engage after the bus had already followed the new surgeon (a handoff row once
    counted 0.044 rad of the mentor's motion as motion while held)."""
    start_ns = time.monotonic_ns()
    time.sleep(SERVO_SETTLE_S)
    ref_q, ref_goal = servo_joints(rig), servo_joints(rig, "goals")
    samples: list[tuple[int, float]] = []  # (read by, largest motion)
    while time.monotonic_ns() < until_ns:
        if any(to == "following" for _, to, _ in rig.transitions()[since:]):
            engaged = poll_engaged(rig, start_ns)
            assert engaged is not None, "following without a re-engage's audit record"
            held = max((v for t, v in samples if t < engaged), default=0.0)
            after = max((v for t, v in samples if t >= engaged), default=0.0)
            log.info("held: %.4f rad moved; %.4f rad read after the re-engage (not counted)",
                     held, after)
            return held
        most = max(moved(servo_joints(rig), ref_q), moved(servo_joints(rig, "goals"), ref_goal))
        samples.append((time.monotonic_ns(), most))
        time.sleep(0.05)
    return max((v for _, v in samples), default=0.0)


def poll_engaged(rig: SimRig, since_ns: int, timeout_s: float = 10.0) -> int | None:
    """``following_since``, given the audit writer (fsync'd, a worker thread) time."""
    deadline = time.monotonic() + timeout_s
    while (engaged := following_since(rig, since_ns)) is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    return engaged


def following_since(rig: SimRig, since_ns: int) -> int | None:
    """The robot's monotonic time of its first transition to following after ``since_ns``
    (its audit record: the control thread's period; one clock on one machine)."""
    for rec in read_records(rig.run / "audit" / "robot.audit"):
        if rec.kind == "transition" and rec.fields.get("to") == "following":
            t_ns = rec.fields.get("t_ns")
            if isinstance(t_ns, int) and t_ns >= since_ns:
                return t_ns
    return None


def bus_watchdog_stop(rig: SimRig, start_ns: int) -> float:
    """Dynamixel: ms from ``start_ns`` until every servo's Bus Watchdog has stopped it."""
    def stopped() -> dict[str, Any] | None:
        state = bus_state(rig)
        return state if all(state["watchdog_tripped"]) else None
    state = poll("every servo's Bus Watchdog", 5.0, stopped)
    return max(_ms(t - start_ns) for t in state["watchdog_trip_ns"])


def last_goal_held(rig: SimRig, at_fault: list[float]) -> str:
    """Feetech STS (no bus watchdog): each servo goes on to its last goal, which the robot
    had bounded near where the joint was, and holds it there."""
    goals = servo_joints(rig, "goals")
    span = moved(goals, at_fault)
    assert span <= SERVO_SPAN_RAD, f"last goals {span:.4f} rad from the joints (bound " \
        f"{SERVO_SPAN_RAD})"
    poll("the servos to reach their last goals", 5.0,
         lambda: moved(servo_joints(rig), goals) < SERVO_STILL_RAD)
    time.sleep(0.3)
    assert moved(servo_joints(rig, "goals"), goals) < 1e-9, "a goal changed with no link"
    return f"no bus watchdog: each servo went on {span:.4f} rad to its last goal, holds it"


def servos_stopped(rig: SimRig, start_ns: int) -> str:
    """The bus is gone (vanished pty): the servos' own safety, within its period."""
    if rig.opts.servo_family == "dynamixel":
        after_ms = bus_watchdog_stop(rig, start_ns)
        bound = BUS_WATCHDOG_MS + SERVO_LATENCY_MS + CI_SLACK_MS
        assert after_ms <= bound, f"Bus Watchdog stopped {after_ms} ms after (bound {bound})"
        return f"Bus Watchdog stopped every servo {after_ms:.1f} ms after the fault"
    # The robot's hold went out before the pty vanished, or the servos keep the last
    # bounded goal: either way every goal stays within SERVO_SPAN_RAD of the joint.
    return last_goal_held(rig, servo_joints(rig))


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)
