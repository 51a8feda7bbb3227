"""``telesurgery calibrate``: walk a person through an arm's homing, directions and ranges.

The torque stays off the whole time (nothing is ever Released), so every joint
moves freely by hand. Four steps, each ended with Enter:

1. the zero pose (the URDF's zero configuration) -> each joint's ``zero_tick``;
2. each joint turned a little in its positive direction -> ``direction``
   (skipped with ``--directions 1,-1,...``);
3. every joint at one end of its range, then at the other -> ``range_min/max``;
4. the gripper closed, then open -> the grip channel's ticks.

The result is the per-arm JSON file that ``[servos] calibration`` names. The
prompts go through ``ask``/``say`` callables, so a test (or a script) can drive
the walk; ``main`` wires them to the terminal.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from robot_side.servos.arm import ServoArm
from robot_side.servos.config import (
    ArmCalibration,
    GripperCalibration,
    JointCalibration,
    ServosConfig,
)
from telesurgery.errors import ConfigError, TelesurgeryError

MIN_MOVE_TICKS = 20
"""A joint turned by less than this (~1.8 degrees) did not move: ask again."""
TRIES = 3


class CalibrationError(TelesurgeryError, RuntimeError):
    """The walk could not finish (a joint did not move, a servo stopped answering)."""


@dataclass(frozen=True)
class ArmPreset:
    backend: str
    ids: tuple[int, ...]
    gripper_id: int | None
    names: tuple[str, ...]
    urdf: str


PRESETS = {
    "so101": ArmPreset("feetech", (1, 2, 3, 4, 5, 6), 6,
                       ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex",
                        "wrist_roll"), "so101.urdf"),
    "omx": ArmPreset("dynamixel", (11, 12, 13, 14, 15), 15,
                     ("joint1", "joint2", "joint3", "joint4"), "omx.urdf"),
}


def arm_class(backend: str) -> Callable[[ServosConfig, ArmCalibration | None], ServoArm]:
    if backend == "feetech":
        from robot_side.servos.feetech import FeetechArm
        return FeetechArm
    if backend == "dynamixel":
        from robot_side.servos.dynamixel import DynamixelArm
        return DynamixelArm
    raise ConfigError(f"backend {backend!r}: not a servo bus (feetech or dynamixel)")


def calibrate(arm: ServoArm, names: Sequence[str], ask: Callable[[str], str],
              say: Callable[[str], None], *, directions: Sequence[int] | None = None,
              arm_name: str = "") -> ArmCalibration:
    cfg = arm.cfg
    joints = cfg.joint_ids
    if len(names) != len(joints):
        raise ConfigError(f"{len(names)} joint names for {len(joints)} joints {joints}")
    if directions is not None and (len(directions) != len(joints)
                                   or any(d not in (1, -1) for d in directions)):
        raise ConfigError(f"directions {list(directions)}: one 1 or -1 per joint")

    def positions(prompt: str) -> dict[int, int]:
        ask(prompt)
        return arm.raw_positions(time.monotonic_ns())

    say("Torque is off: every joint moves freely by hand. Support the arm as you go.")
    zero = positions("1/4 Put the arm in its zero pose (as drawn in the URDF), then Enter")
    dirs = list(directions) if directions is not None else []
    if directions is None:
        for sid, name in zip(joints, names, strict=True):
            for _ in range(TRIES):
                moved = positions(f"2/4 Turn {name} (servo {sid}) a little in its positive "
                                  "direction (right-hand rule about its URDF axis), then Enter")
                delta = moved[sid] - zero[sid]
                if abs(delta) >= MIN_MOVE_TICKS:
                    dirs.append(1 if delta > 0 else -1)
                    break
                say(f"{name} moved only {delta} ticks; turn it further.")
            else:
                raise CalibrationError(f"{name} (servo {sid}) did not move in {TRIES} tries")
    end_a = positions("3/4 Move every joint to one end of its range, then Enter")
    end_b = positions("3/4 Now move every joint to the other end of its range, then Enter")
    cal_joints = []
    for sid, name, d in zip(joints, names, dirs, strict=True):
        lo = min(zero[sid], end_a[sid], end_b[sid])
        hi = max(zero[sid], end_a[sid], end_b[sid])
        if hi - lo < MIN_MOVE_TICKS:
            raise CalibrationError(f"{name} (servo {sid}): range {lo}..{hi} is too small")
        cal_joints.append(JointCalibration(sid, name, zero[sid], d, lo, hi))
    gripper = None
    if cfg.gripper_id is not None:
        gid = cfg.gripper_id
        closed = positions("4/4 Close the gripper fully, then Enter")[gid]
        opened = positions("4/4 Open the gripper fully, then Enter")[gid]
        if abs(opened - closed) < MIN_MOVE_TICKS:
            raise CalibrationError(f"gripper (servo {gid}) moved only {opened - closed} ticks")
        gripper = GripperCalibration(gid, closed, opened)
    return ArmCalibration(arm.family.name, tuple(cal_joints), gripper, arm_name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="telesurgery calibrate",
                                     description="Calibrate a smart-servo arm by hand.")
    parser.add_argument("--arm", choices=sorted(PRESETS), required=True)
    parser.add_argument("--port", default="auto", help="e.g. /dev/ttyACM0 (default: emulator)")
    parser.add_argument("--baud", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, required=True, help="calibration file to write")
    parser.add_argument("--directions", default=None,
                        help="1 or -1 per joint, comma-separated: skips step 2")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    preset = PRESETS[args.arm]
    cfg = ServosConfig(port=args.port, baudrate=args.baud, ids=preset.ids,
                       gripper_id=preset.gripper_id)
    dirs = ([int(d) for d in args.directions.split(",")] if args.directions else None)
    cls = arm_class(preset.backend)

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def ask(prompt: str) -> str:
        say(prompt)
        return sys.stdin.readline()

    try:
        with cls(cfg, ArmCalibration.default(preset.backend, cfg)) as arm:
            cal = calibrate(arm, preset.names, ask, say, directions=dirs, arm_name=args.arm)
    except (TelesurgeryError, OSError) as err:
        sys.stderr.write(f"telesurgery calibrate: {err}\n")
        return 1
    cal.save(args.out)
    say(f"wrote {args.out}; in the robot profile set [servos] calibration = \"{args.out}\" "
        f"and [kinematics] urdf = robot_side/description/{preset.urdf}")
    return 0
