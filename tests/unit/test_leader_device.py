"""The SO-101 leader arm as a console input device, on the emulated Feetech bus.

Its presence/clutch keys come from a real pty standing in for the terminal (or the
foot pedal that types them).
"""

from __future__ import annotations

import os
import time
import tty
from collections.abc import Iterator

import numpy as np
import pytest

from operator_console.devices import DeviceConfig, create_device
from operator_console.devices.leader import URDF
from robot_side.kinematics import Kinematics
from robot_side.servos.emulator import ServoBusEmulator
from telesurgery.errors import DeviceError


def read_until(dev, pred, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sample = dev.read(time.monotonic_ns())
            if pred(sample):
                return sample
        except DeviceError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        time.sleep(0.01)


@pytest.fixture
def leader(tmp_path) -> Iterator[tuple]:
    master, slave = os.openpty()
    tty.setraw(slave)
    with ServoBusEmulator("feetech", (1, 2, 3, 4, 5, 6), link=tmp_path / "ttyLEADER") as emu:
        cfg = DeviceConfig(kind="so101_leader", device=emu.port_path,
                           switches=os.ttyname(slave))
        dev = create_device(cfg)
        dev.open()
        try:
            yield emu, dev, master
        finally:
            dev.close()
            os.close(master)
            os.close(slave)


def test_the_leader_pose_is_the_forward_kinematics_of_its_joints(leader) -> None:
    emu, dev, keys = leader
    kin = Kinematics.from_urdf(URDF)
    sample = read_until(dev, lambda s: True)
    assert not sample.operator_present and not sample.clutch
    q = np.array([0.2, -0.6, 0.9, 0.3, -0.4])
    for sid, angle in enumerate(q, start=1):
        assert emu.move_by_hand(sid, float(angle))  # torque off: a hand moves it
    emu.move_by_hand(6, -0.5)  # the trigger squeezed past the uncalibrated "closed" tick
    expected, quat = kin.fk(q)
    sample = read_until(dev, lambda s: np.allclose(s.position, expected, atol=2e-3))
    assert sample.joints is not None and np.allclose(sample.joints, q, atol=2e-3)
    assert np.allclose(sample.quat, quat, atol=5e-3) or np.allclose(sample.quat,
                                                                    -np.array(quat), atol=5e-3)
    assert sample.grip == 1.0
    os.write(keys, b"p ")
    sample = read_until(dev, lambda s: s.operator_present)
    assert sample.clutch
    assert not any(emu.snapshot(i).torque_on for i in range(1, 7))  # never torqued


def test_a_silent_leader_servo_is_a_device_error_not_a_frozen_pose(leader) -> None:
    emu, dev, _ = leader
    read_until(dev, lambda s: True)
    emu.inject(silent=[3])
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            dev.read(time.monotonic_ns())
        except DeviceError as err:
            if "servo 3" in str(err):
                break
        time.sleep(0.01)
    else:
        raise AssertionError("no device error naming servo 3")
    for _ in range(5):  # and it stays an error: never the pose with servo 3 frozen
        with pytest.raises(DeviceError, match="servo 3"):
            dev.read(time.monotonic_ns())
        time.sleep(0.02)
