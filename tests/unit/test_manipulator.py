"""The Manipulator interface: the base class's guarantees on both backends.

The serial backend runs against the firmware emulator on a real pseudo-terminal;
the virtual backend is the firmware model in process. Timing bounds on the pty
are generous (the machine is shared); what is asserted is logic and ordering.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until

from robot_side.config import ManipulatorConfig, RobotConfig
from robot_side.driver import SerialConfig
from robot_side.firmware_model import Mode, default_params
from robot_side.firmware_sim import FirmwareEmulator
from robot_side.manipulator import (
    BACKENDS,
    Hold,
    InvalidFrame,
    Manipulator,
    ManipulatorError,
    Release,
    Targets,
    make_manipulator,
)
from robot_side.manipulator.serial import SerialBackend
from robot_side.manipulator.virtual import VirtualManipulator
from robot_side.serial_protocol import FwFlags
from telesurgery.errors import ConfigError
from telesurgery.seqnum import u32_reached

N = 6
HOME = (0.0, 0.3, 0.6, 0.0, 0.6, 0.0)


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[FirmwareEmulator]:
    with FirmwareEmulator(link=tmp_path / "ttyTS0", watchdog_ms=300.0, seed=1,
                          initial=list(HOME)) as e:
        yield e


@pytest.fixture
def serial_arm(emu: FirmwareEmulator) -> Iterator[SerialBackend]:
    # A generous budget: the pty's reader is another process on a shared machine.
    with SerialBackend(SerialConfig(port=emu.port_path), write_budget_ns=50_000_000) as m:
        yield m


@pytest.fixture
def virtual_arm() -> Iterator[VirtualManipulator]:
    clock = [0]
    with VirtualManipulator(default_params(N), initial=HOME,
                            clock=lambda: clock[0]) as m:
        yield m


def test_backend_table_names_both_and_refuses_unknown() -> None:
    assert {"serial", "virtual"} <= set(BACKENDS)
    arm = make_manipulator(RobotConfig(manipulator=ManipulatorConfig(backend="virtual")))
    assert isinstance(arm, VirtualManipulator) and not arm.connected
    with pytest.raises(ConfigError, match=r"manipulator\.backend"):
        make_manipulator(RobotConfig(manipulator=ManipulatorConfig(backend="nope")))


@pytest.mark.parametrize("bad", [
    Targets((math.nan, 0, 0, 0, 0, 0), 0.5), Targets((0.0,) * N, math.inf),
    Targets((0.0,) * (N - 1), 0.5), Targets((math.inf,) * N, 0.5),
])
def test_bad_frames_are_refused_before_any_byte(serial_arm: SerialBackend,
                                                emu: FirmwareEmulator, bad: Targets) -> None:
    serial_arm.write((Release(),))
    assert wait_until(lambda: emu.snapshot().mode == "following")
    sent = serial_arm.counters["writes"]
    rx_before = serial_arm.driver.last_sent_seq
    # The good Release in the same call is not sent either: a period's frames go
    # out together or not at all.
    with pytest.raises(InvalidFrame):
        serial_arm.write((Release(), bad))
    assert serial_arm.counters["writes"] == sent
    assert serial_arm.counters["rejected_frames"] == 1
    assert serial_arm.driver.last_sent_seq == rx_before
    assert serial_arm.read().write_error is not None, "the next read reports the refusal"
    assert all(math.isfinite(t) for t in emu.snapshot().targets)


def test_one_write_carries_the_periods_frames_in_order(serial_arm: SerialBackend,
                                                       emu: FirmwareEmulator) -> None:
    goal = tuple(q + 0.05 for q in HOME)
    seq_before = serial_arm.driver.last_sent_seq
    serial_arm.write((Release(), Targets(goal, 0.5)))
    last = serial_arm.driver.last_sent_seq
    assert last is not None and seq_before is not None and last - seq_before == 2
    assert wait_until(lambda: emu.snapshot().mode == "following"
                      and emu.snapshot().targets == pytest.approx(goal, abs=1e-5))

    def acked() -> bool:
        r = serial_arm.read()
        return (r.sample is not None and r.sample.acked_seq is not None
                and r.last_sent_seq == last and u32_reached(r.sample.acked_seq, last))

    assert wait_until(acked)
    serial_arm.write((Hold(brake=True),))
    assert wait_until(lambda: emu.snapshot().mode == "braked")
    assert wait_until(lambda: (s := serial_arm.read().sample) is not None
                      and FwFlags.BRAKED in s.flags)


def test_read_never_blocks_and_stamps_arrival(serial_arm: SerialBackend) -> None:
    assert wait_until(lambda: serial_arm.read().sample is not None)
    t0 = time.monotonic_ns()
    reading = serial_arm.read()
    assert time.monotonic_ns() - t0 < 50_000_000
    assert reading.connected and reading.sample is not None
    assert reading.sample.received_ns <= time.monotonic_ns()
    assert len(reading.sample.positions) == len(reading.sample.velocities) == N


def test_vanished_port_fails_writes_and_reconnects(serial_arm: SerialBackend,
                                                   emu: FirmwareEmulator) -> None:
    emu.vanish()
    assert wait_until(lambda: not serial_arm.read().connected)
    with pytest.raises(ManipulatorError):
        serial_arm.write((Hold(),))
    emu.reappear()
    assert wait_until(serial_arm.reconnect, 5.0)
    assert serial_arm.read().connected


@pytest.mark.parametrize("kind", ["serial", "virtual"])
def test_close_is_idempotent_and_context_managed(kind: str, request: pytest.FixtureRequest
                                                 ) -> None:
    arm: Manipulator = request.getfixturevalue(f"{kind}_arm")
    arm.close()
    arm.close()
    assert not arm.connected
    assert not arm.read().connected
    with pytest.raises(ManipulatorError):
        arm.write((Hold(),))


def test_virtual_arm_follows_brakes_and_keeps_its_watchdog() -> None:
    clock = [0]
    with VirtualManipulator(default_params(N), initial=HOME, watchdog_ms=100.0,
                            clock=lambda: clock[0]) as arm:
        assert arm.model is not None and arm.model.mode is Mode.BRAKED
        goal = tuple(q + 0.02 for q in HOME)
        for _ in range(50):
            clock[0] += 1_000_000
            arm.read()
            arm.write((Release(), Targets(goal, 0.3)) if clock[0] == 1_000_000
                      else (Targets(goal, 0.3),))
        assert arm.model.mode is Mode.FOLLOWING
        sample = arm.read().sample
        assert sample is not None and sample.positions != pytest.approx(HOME, abs=1e-3)
        clock[0] += 150_000_000  # the host falls silent
        reading = arm.read()
        assert reading.sample is not None and FwFlags.WATCHDOG_TRIPPED in reading.sample.flags
        assert any("no valid frame" in f.detail for f in reading.faults)
        assert arm.model.mode is Mode.BRAKED
