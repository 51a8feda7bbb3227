"""The rig's smart-servo variant: the robot on the ``dynamixel`` or ``feetech`` backend.

``RigOptions(servo_family=...)`` starts ``telesurgery servo-sim`` (the protocol-accurate
bus emulator) on the rig's pty instead of the firmware emulator, with its JSON control
socket where the firmware's would be, and gives the robot the matching ``[manipulator]``
and ``[servos]`` sections. The arm is the rig's usual one (the shipped 6-joint URDF):
six joint servos plus a gripper servo, started at the URDF's home pose, so the
scripted surgery runs unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hil_tests.scenarios import BUS_WATCHDOG_MS, SERVO_LATENCY_MS

JOINT_IDS = (1, 2, 3, 4, 5, 6)
GRIPPER_ID = 7


def servo_sim_argv(family: str, link: str, run: Path) -> list[str]:
    from robot_side.kinematics import HOME_Q  # pinocchio: only when this rig runs

    initial = [*(float(q) for q in HOME_Q), 0.0]
    return ["servo-sim", "--family", family, "--link", link,
            "--ids", ",".join(str(i) for i in (*JOINT_IDS, GRIPPER_ID)),
            "--initial", ",".join(f"{q:.6f}" for q in initial),
            "--control", f"ipc://{run}/fw.ipc"]


def servo_sections(family: str, port: str) -> dict[str, dict[str, Any]]:
    return {
        "manipulator": {"backend": family},
        "servos": {"port": port, "ids": [*JOINT_IDS, GRIPPER_ID], "gripper_id": GRIPPER_ID,
                   "latency_ms": SERVO_LATENCY_MS, "max_rate_hz": 250.0,
                   "bus_watchdog_ms": BUS_WATCHDOG_MS, "command_watchdog_ms": 100.0,
                   "brake": "hold"},
    }
