"""The Dynamixel and Feetech backends against the servo-bus emulator on a real pty.

Each test runs for both families. No timing assertions: conditions are awaited
with generous deadlines, and every safety test names what it would miss.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from robot_side.manipulator.base import Hold, ManipulatorError, Reading, Release, Targets
from robot_side.serial_protocol import FwFlags
from robot_side.servos.arm import ServoArm
from robot_side.servos.busstate import FAULT_SERVO_HARDWARE, FAULT_SERVO_SILENT
from robot_side.servos.config import (
    ArmCalibration,
    GripperCalibration,
    JointCalibration,
    ServosConfig,
)
from robot_side.servos.dynamixel import DynamixelArm
from robot_side.servos.emulator import ServoBusEmulator
from robot_side.servos.feetech import FeetechArm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDS = (1, 2, 3, 4)
JOINTS = (1, 2, 3)
ARMS: dict[str, type[ServoArm]] = {"dynamixel": DynamixelArm, "feetech": FeetechArm}


def wait_for(cond: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def calibration(family: str) -> ArmCalibration:
    # Joint 2 is mounted the other way round and homed off-centre, as on a real arm.
    return ArmCalibration(family, (
        JointCalibration(1, "base", 2048, 1, 1024, 3072),
        JointCalibration(2, "shoulder", 2148, -1, 1100, 3100),
        JointCalibration(3, "elbow", 2048, 1, 1024, 3072),
    ), GripperCalibration(4, 2048, 2548), arm="test")


class Rig:
    def __init__(self, family: str, emu: ServoBusEmulator, arm: ServoArm) -> None:
        self.family, self.emu, self.arm = family, emu, arm
        self.faults: list = []

    def reading(self) -> Reading:
        r = self.arm.read()
        self.faults += r.faults
        return r

    def flags(self) -> FwFlags:
        r = self.reading()
        return r.sample.flags if r.sample is not None else FwFlags(0)

    def q(self) -> tuple[float, ...]:
        r = self.reading()
        assert r.sample is not None
        return r.sample.positions

    def engage(self) -> None:
        def following() -> bool:  # re-sent, as a surgeon re-engages after a refusal
            self.arm.write([Release()])
            time.sleep(0.02)
            return FwFlags.FOLLOWING in self.flags()
        assert wait_for(following)

    def follow(self, q: tuple[float, ...], grip: float = 0.0) -> None:
        def there() -> bool:
            self.arm.write([Targets(q, grip)])  # the control loop keeps writing
            return all(abs(a - b) < 0.01 for a, b in zip(self.q(), q, strict=True))
        assert wait_for(there)


@pytest.fixture(params=sorted(ARMS))
def rig(request, tmp_path) -> Iterator[Rig]:
    family = request.param
    emu = ServoBusEmulator(family, IDS, link=tmp_path / "ttyBUS", seed=3).start()
    # Watchdogs at 1 s: a test thread on a loaded machine is no 1 kHz control loop (the
    # watchdog tests set their own).
    cfg = ServosConfig(port=emu.port_path, ids=IDS, gripper_id=4, latency_ms=50.0,
                       max_rate_hz=200.0, bus_watchdog_ms=1000.0, command_watchdog_ms=1000.0)
    arm = ARMS[family](cfg, calibration(family))
    arm.open()
    assert wait_for(lambda: arm.read().sample is not None)
    yield Rig(family, emu, arm)
    arm.close()
    arm.close()  # safe twice
    emu.stop()


def test_nothing_moves_before_release_and_targets_follow_after(rig: Rig) -> None:
    assert rig.arm.info.rate_hz is not None and rig.arm.info.rate_hz > 0
    assert FwFlags.BRAKED in rig.flags()
    rig.arm.write([Targets((0.3, 0.2, -0.2), 0.5)])
    time.sleep(0.1)
    assert all(not rig.emu.snapshot(i).torque_on for i in IDS)
    assert rig.arm.counters["targets_ignored"] >= 1
    rig.engage()
    rig.follow((0.3, 0.2, -0.2), 0.5)
    # The calibration's direction and homing offset reach the wire: joint 2 runs reversed.
    shoulder = rig.emu.snapshot(2)
    assert shoulder.position_rad == pytest.approx(100 * 2 * math.pi / 4096 - 0.2, abs=0.01)
    assert wait_for(lambda: abs(rig.reading().sample.grip - 0.5) < 0.01)


def test_goals_are_clamped_to_the_calibrated_range(rig: Rig) -> None:
    rig.engage()
    far = (3.0, 0.0, 0.0)  # beyond range_max 3072 ticks = +1.57 rad
    rig.arm.write([Targets(far, 0.0)])
    assert wait_for(lambda: rig.emu.snapshot(1).goal_rad > 1.5)
    assert rig.emu.snapshot(1).goal_rad == pytest.approx(1024 * 2 * math.pi / 4096, abs=1e-3)
    assert rig.arm.counters["goals_clamped"] >= 1


def test_hold_freezes_every_goal_where_the_joint_is(rig: Rig) -> None:
    rig.engage()
    rig.follow((0.2, 0.0, 0.0))
    rig.arm.write([Targets((1.2, 0.0, 0.0), 0.0)])
    assert wait_for(lambda: rig.emu.snapshot(1).position_rad > 0.3)
    rig.arm.write([Hold(brake=True)])
    assert wait_for(lambda: FwFlags.HOLDING in rig.flags())
    snap = rig.emu.snapshot(1)
    assert snap.goal_rad < 1.1  # the far target was dropped for where the joint was
    rig.arm.write([Targets((1.2, 0.0, 0.0), 0.0)])
    time.sleep(0.05)
    assert rig.emu.snapshot(1).goal_rad == pytest.approx(snap.goal_rad, abs=1e-6)
    assert snap.torque_on  # hold with torque: a brakeless arm must not fall


def test_missing_servo_at_startup_is_one_line_naming_it(tmp_path) -> None:
    for family, cls in ARMS.items():
        with ServoBusEmulator(family, (1, 2, 4), link=tmp_path / f"tty{family}") as emu:
            cfg = ServosConfig(port=emu.port_path, ids=IDS, gripper_id=4, latency_ms=50.0)
            with pytest.raises(ManipulatorError) as err:
                cls(cfg, calibration(family)).open()
            assert "servo ID 3 does not answer" in str(err.value)
            assert "\n" not in str(err.value)


def test_hardware_error_is_a_fault_in_plain_words_and_the_others_hold(rig: Rig) -> None:
    rig.engage()
    rig.follow((0.3, 0.1, 0.3))
    rig.emu.inject_overload(2)

    def faulted() -> bool:  # the control loop keeps writing the same pose meanwhile
        rig.arm.write([Targets((0.3, 0.1, 0.3), 0.0)])
        time.sleep(0.005)
        rig.reading()
        return any(f.code == FAULT_SERVO_HARDWARE for f in rig.faults)

    assert wait_for(faulted)
    note = next(f for f in rig.faults if f.code == FAULT_SERVO_HARDWARE)
    assert "servo 2 (shoulder): overload" in note.detail
    assert FwFlags.FAULT in rig.flags() and FwFlags.HOLDING in rig.flags()
    assert not rig.emu.snapshot(2).torque_on  # the servo cut its own torque
    for _ in range(20):  # new targets: the others hold where they were
        rig.arm.write([Targets((-0.5, 0.1, -0.5), 0.0)])
        time.sleep(0.005)
    for sid in (1, 3):
        snap = rig.emu.snapshot(sid)
        assert snap.torque_on and snap.goal_rad == pytest.approx(0.3, abs=0.02)


def test_a_servo_that_stops_answering_faults_and_the_others_hold(rig: Rig) -> None:
    rig.engage()
    rig.follow((0.3, 0.1, 0.3))
    rig.emu.inject(silent=[3])

    def faulted() -> bool:  # the control loop keeps writing the same pose meanwhile
        rig.arm.write([Targets((0.3, 0.1, 0.3), 0.0)])
        time.sleep(0.005)
        rig.reading()
        return any(f.code == FAULT_SERVO_SILENT for f in rig.faults)

    assert wait_for(faulted)
    note = next(f for f in rig.faults if f.code == FAULT_SERVO_SILENT)
    assert "servo 3 (elbow) stopped answering" in note.detail
    assert FwFlags.FAULT in rig.flags() and FwFlags.HOLDING in rig.flags()
    for _ in range(40):  # new targets, and re-engage attempts, while servo 3 is gone
        rig.arm.write([Targets((-0.5, 0.1, -0.5), 0.0)])
        if _ % 10 == 0:
            rig.arm.write([Release()])
        time.sleep(0.005)
    assert FwFlags.FOLLOWING not in rig.flags()
    assert rig.emu.snapshot(1).goal_rad == pytest.approx(0.3, abs=0.02)  # held, not -0.5


def test_bad_bytes_on_the_bus_are_counted_and_never_move_the_arm(rig: Rig) -> None:
    pose = (0.4, -0.3, 0.9)  # distinct joints: another servo's status would be a jump
    rig.engage()
    rig.follow(pose)
    # Each kind of bad input shows in its own counter (a truncated status is cut short
    # by the deadline, or runs into the next one and fails its CRC/checksum).
    counted_as = {"noise": ("rx_garbage_bytes",), "corrupt": ("rx_corrupt",),
                  "wrong_id": ("rx_wrong_id",), "truncate": ("rx_short", "rx_corrupt")}
    for fault in ({"noise": 0.5}, {"corrupt": 0.5}, {"wrong_id": 0.5}, {"truncate": 0.5}):
        before = dict(rig.arm.counters)
        rig.emu.inject(**fault)
        for _ in range(20):  # the control loop keeps writing; the bus keeps reading
            rig.arm.write([Targets(pose, 0.0)])
            time.sleep(0.005)
        rig.arm.write([Hold()])  # a hold sets each goal from that servo's own reading
        assert wait_for(lambda: FwFlags.HOLDING in rig.flags())
        for sid, q in zip(JOINTS, pose, strict=True):
            snap = rig.emu.snapshot(sid)
            cal = calibration(rig.family).joints[sid - 1]
            goal = cal.direction * (snap.goal_rad - (cal.zero_tick - 2048) * 2 * math.pi / 4096)
            assert goal == pytest.approx(q, abs=0.02), (fault, sid)
        rig.emu.inject()
        after = rig.arm.counters
        (kind,) = fault
        assert any(after[k] > before[k] for k in counted_as[kind]), (fault, before, after)
        rig.engage()
    c = rig.arm.counters
    assert c["rx_corrupt"] + c["rx_short"] > 0 and c["rx_wrong_id"] > 0
    assert rig.arm.connected


@pytest.mark.parametrize("family", sorted(ARMS))
def test_command_watchdog_holds_when_the_control_loop_stops_writing(family: str,
                                                                    tmp_path) -> None:
    cls = ARMS[family]
    with ServoBusEmulator(family, IDS, link=tmp_path / "ttyCWD") as emu:
        cfg = ServosConfig(port=emu.port_path, ids=IDS, gripper_id=4, latency_ms=50.0,
                           bus_watchdog_ms=2000.0, command_watchdog_ms=100.0)
        with cls(cfg, calibration(family)) as arm:
            rig = Rig(family, emu, arm)
            rig.engage()
            arm.write([Targets((0.4, 0.0, 0.0), 0.0)])  # then the loop falls silent
            assert wait_for(lambda: FwFlags.WATCHDOG_TRIPPED in rig.flags())
            assert FwFlags.HOLDING in rig.flags()
            held = emu.snapshot(1).goal_rad
            arm.write([Targets((-0.4, 0.0, 0.0), 0.0)])  # latched: ignored
            time.sleep(0.05)
            assert emu.snapshot(1).goal_rad == pytest.approx(held, abs=1e-6)
            assert arm.counters["watchdog_holds"] >= 1

            def cleared() -> bool:  # a Release clears the latch
                arm.write([Release()])
                time.sleep(0.01)
                flags = rig.flags()
                return FwFlags.FOLLOWING in flags and FwFlags.WATCHDOG_TRIPPED not in flags

            assert wait_for(cleared)


CHILD = """
import sys, time
from robot_side.manipulator.base import Release, Targets
from robot_side.servos.config import ServosConfig
from robot_side.servos.{module} import {cls}
cfg = ServosConfig(port=sys.argv[1], ids=(1, 2, 3, 4), gripper_id=4, latency_ms=50.0,
                   bus_watchdog_ms=60.0, command_watchdog_ms=5000.0)
arm = {cls}(cfg)
arm.open()
arm.write([Release()])
while True:
    arm.write([Targets((1.4, 0.0, 0.0), 0.0)])
    time.sleep(0.002)
"""


@pytest.mark.parametrize("family", sorted(ARMS))
def test_a_sigkilled_robot_process_leaves_the_servos_stopped_or_at_their_last_goal(
        family: str, tmp_path) -> None:
    """Dynamixel: the Bus Watchdog stops each servo where it is. Feetech has none: each
    servo goes on to its last goal, which the control core kept within one step (and
    the tracking bound) of the arm; the hazard table says so."""
    with ServoBusEmulator(family, IDS, link=tmp_path / "ttyKILL") as emu:
        module, cls = ("dynamixel", "DynamixelArm") if family == "dynamixel" else (
            "feetech", "FeetechArm")
        child = subprocess.Popen([sys.executable, "-c", CHILD.format(module=module, cls=cls),
                                  emu.port_path], env={**os.environ, "PYTHONPATH": ROOT})
        try:
            assert wait_for(lambda: emu.snapshot(1).position_rad > 0.1, 30.0)
        finally:
            child.kill()
            child.wait()
        if family == "dynamixel":
            assert wait_for(lambda: all(emu.snapshot(i).watchdog_tripped for i in IDS))
            snap = emu.snapshot(1)
            assert snap.position_rad < 1.3
            assert snap.goal_rad == pytest.approx(snap.position_rad, abs=0.01)
            time.sleep(0.1)
            assert emu.snapshot(1).position_rad == pytest.approx(snap.position_rad, abs=1e-3)
        else:
            assert wait_for(lambda: abs(emu.snapshot(1).position_rad - 1.4) < 0.01)
            assert emu.snapshot(1).goal_rad == pytest.approx(1.4, abs=0.01)
            assert not emu.snapshot(1).watchdog_tripped


def test_down_sampling_keeps_every_hold_and_release_and_only_the_newest_targets() -> None:
    from robot_side.servos.busstate import Command, merge_pending

    t1, t2, t3 = (Targets((0.1 * i, 0.0, 0.0), 0.0) for i in (1, 2, 3))
    pending = None
    for seq, frames in enumerate(([Release()], [t1], [t2], [Hold()], [t3], [Release()], [t1])):
        pending = merge_pending(pending, Command(seq, tuple(frames), seq))
    assert pending.frames == (Release(), Hold(), Release(), t1)
    assert pending.seq == 6
    assert merge_pending(merge_pending(None, Command(0, (Release(), t1), 0)),
                  Command(1, (t2,), 1)).frames == (Release(), t2)


def test_statuses_of_one_sync_read_survive_a_silent_predecessor_and_strays_are_dropped() -> None:
    from robot_side.servos.busstate import collect_statuses

    wire = [("ok", 1, 0, b"a"), ("ok", 99, 0, b"x"), ("ok", 3, 0, b"c"),  # 2 is silent
            ("ok", 4, 0, b"d"), ("timeout", -1, 0, b"")]
    counts = dict.fromkeys(("rx_timeouts", "rx_corrupt", "rx_short", "rx_wrong_id"), 0)
    got = collect_statuses([1, 2, 3, 4], iter(wire).__next__, counts)
    assert got == {1: (0, b"a"), 2: None, 3: (0, b"c"), 4: (0, b"d")}
    assert counts == {"rx_timeouts": 1, "rx_corrupt": 0, "rx_short": 0, "rx_wrong_id": 1}


def test_an_unplugged_bus_disconnects_and_reconnects_braked(rig: Rig) -> None:
    rig.engage()
    rig.follow((0.2, 0.1, 0.2))
    rig.emu.vanish()
    assert wait_for(lambda: not rig.reading().connected)
    assert not rig.arm.reconnect()  # still unplugged: one clear failure, no exception
    rig.emu.reappear()
    assert wait_for(rig.arm.reconnect)
    assert wait_for(lambda: rig.reading().sample is not None
                    and FwFlags.BRAKED in rig.reading().sample.flags)
    assert all(not rig.emu.snapshot(i).torque_on for i in IDS)  # nothing moves until Release
    rig.arm.write([Targets((0.5, 0.1, 0.2), 0.0)])
    time.sleep(0.05)
    assert rig.emu.snapshot(1).goal_rad == pytest.approx(0.2, abs=0.02)
    rig.engage()
    rig.follow((0.5, 0.1, 0.2))
