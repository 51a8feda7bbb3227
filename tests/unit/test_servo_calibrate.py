"""``telesurgery calibrate`` driven by a script against the emulated bus, and the arm URDFs."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import pytest

from robot_side.kinematics import Kinematics
from robot_side.servos import calibrate as cal_mod
from robot_side.servos.calibrate import CalibrationError, calibrate
from robot_side.servos.config import ArmCalibration, ServosConfig
from robot_side.servos.emulator import ServoBusEmulator
from robot_side.servos.feetech import FeetechArm
from robot_side.servos.tables import FEETECH_STS

DESCRIPTION = Path(__file__).resolve().parents[2] / "robot_side" / "description"
TICK = FEETECH_STS.rad_per_tick


class Hand:
    """Moves the emulated joints as a person would at each prompt of the walk."""

    def __init__(self, emu: ServoBusEmulator, reversed_id: int) -> None:
        self.emu = emu
        self.reversed_id = reversed_id
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        emu = self.emu
        if prompt.startswith("1/4"):
            for sid in (1, 2, 3):
                emu.move_by_hand(sid, 0.1 * sid)  # zero pose: off-centre homing offsets
        elif prompt.startswith("2/4"):
            sid = int(prompt.split("servo ")[1].split(")", maxsplit=1)[0])
            step = -0.2 if sid == self.reversed_id else 0.2
            emu.move_by_hand(sid, 0.1 * sid + step)
        elif "one end" in prompt:
            for sid in (1, 2, 3):
                emu.move_by_hand(sid, -1.0)
        elif "other end" in prompt:
            for sid in (1, 2, 3):
                emu.move_by_hand(sid, 1.2)
        elif "Close the gripper" in prompt:
            emu.move_by_hand(4, -0.3)
        elif "Open the gripper" in prompt:
            emu.move_by_hand(4, 0.6)
        return "\n"


@pytest.fixture
def bus(tmp_path):
    with ServoBusEmulator("feetech", (1, 2, 3, 4), link=tmp_path / "ttyCAL") as emu:
        cfg = ServosConfig(port=emu.port_path, ids=(1, 2, 3, 4), gripper_id=4, latency_ms=50.0)
        yield emu, cfg


def test_the_walk_records_homing_directions_ranges_and_gripper(bus, tmp_path) -> None:
    emu, cfg = bus
    hand = Hand(emu, reversed_id=2)
    said: list[str] = []
    with FeetechArm(cfg, ArmCalibration.default("feetech", cfg)) as arm:
        result = calibrate(arm, ("pan", "lift", "elbow"), hand, said.append, arm_name="test")
    assert all(not emu.snapshot(i).torque_on for i in (1, 2, 3, 4))  # never released
    assert [j.direction for j in result.joints] == [1, -1, 1]
    for j, sid in zip(result.joints, (1, 2, 3), strict=True):
        assert j.zero_tick == 2048 + round(0.1 * sid / TICK)
        assert (j.range_min, j.range_max) == (2048 + round(-1.0 / TICK), 2048 + round(1.2 / TICK))
    assert result.gripper is not None
    assert (result.gripper.closed_tick, result.gripper.open_tick) == (
        2048 + round(-0.3 / TICK), 2048 + round(0.6 / TICK))
    path = tmp_path / "arm.json"
    result.save(path)
    loaded = ArmCalibration.load(path)
    assert loaded == result
    # The file drives the backend: the zero pose reads as 0 rad, joint 2 reversed.
    with FeetechArm(cfg, loaded) as arm:
        emu.move_by_hand(2, 0.2 + 0.3)
        q = arm.raw_positions(0)
        lift = loaded.joints[1]
        assert lift.to_rad(q[2], FEETECH_STS) == pytest.approx(-0.3, abs=2 * TICK)


def test_a_joint_that_does_not_move_stops_the_walk_with_its_name(bus) -> None:
    emu, cfg = bus
    with FeetechArm(cfg, ArmCalibration.default("feetech", cfg)) as arm, \
            pytest.raises(CalibrationError, match=r"lift \(servo 2\) did not move"):
        calibrate(arm, ("pan", "lift", "elbow"),
                  lambda p: "" if "servo 2" in p else Hand(emu, 0)(p), lambda _: None)


def test_main_writes_the_file_from_the_terminal(bus, tmp_path, monkeypatch) -> None:
    emu, _cfg = bus
    hand = Hand(emu, reversed_id=0)

    class Terminal(io.StringIO):
        def readline(self, size: int = -1) -> str:
            return hand(out.getvalue().rstrip("\n").splitlines()[-1])

    out = io.StringIO()
    monkeypatch.setattr(cal_mod, "PRESETS", {"mini": cal_mod.ArmPreset(
        "feetech", (1, 2, 3, 4), 4, ("a", "b", "c"), "so101.urdf")})
    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("sys.stdout", out)
    path = tmp_path / "mini.json"
    assert cal_mod.main(["--arm", "mini", "--port", emu.port_path, "--out", str(path),
                         "--directions", "1,1,-1"]) == 0
    assert [j.direction for j in ArmCalibration.load(path).joints] == [1, 1, -1]
    assert f"[servos] calibration = \"{path}\"" in out.getvalue()


@pytest.mark.parametrize(("urdf", "n", "home_tip"), [
    ("omx.urdf", 4, (0.286, 0.0, 0.2045)),  # ROBOTIS' published initial end-effector pose
    ("so101.urdf", 5, None),
])
def test_arm_urdfs_load_in_pinocchio(urdf: str, n: int, home_tip) -> None:
    kin = Kinematics.from_urdf(DESCRIPTION / urdf)
    assert kin.n == n
    assert all(lo < 0 < hi for lo, hi in zip(kin.lower, kin.upper, strict=True)) or \
        urdf == "so101.urdf"
    tip, _ = kin.fk(kin.home)
    if home_tip is not None:
        assert tuple(tip) == pytest.approx(home_tip, abs=1e-4)
    reach = max(float(math.dist(kin.fk(q)[0], kin.fk(kin.home)[0]))
                for q in (kin.lower, kin.upper))
    assert 0.05 < reach < 1.0


@pytest.mark.parametrize(("profile", "family", "ids"), [
    ("so101.toml", "feetech", (1, 2, 3, 4, 5, 6)),
    ("omx.toml", "dynamixel", (11, 12, 13, 14, 15)),
])
def test_arm_profiles_build_their_backend_from_the_table(profile: str, family: str, ids,
                                                         tmp_path) -> None:
    import dataclasses

    from robot_side.config import load_robot_config
    from robot_side.manipulator import make_manipulator

    cfg = load_robot_config(DESCRIPTION.parent.parent / "launch" / "profiles" / profile)
    assert cfg.manipulator.backend == family and cfg.servos.ids == ids
    kin = Kinematics.from_urdf(DESCRIPTION / Path(cfg.kinematics.urdf).name)
    assert kin.n == len(cfg.servos.joint_ids)
    with ServoBusEmulator(family, ids, link=tmp_path / "ttyPROFILE") as emu:
        servos = dataclasses.replace(cfg.servos, port=emu.port_path, calibration=None,
                                     latency_ms=50.0)
        arm = make_manipulator(dataclasses.replace(cfg, servos=servos))
        with arm:
            assert arm.info.n_joints == kin.n and arm.info.rate_hz
            deadline = time.monotonic() + 10
            while arm.read().sample is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(arm.read().sample.positions) == kin.n
