"""The serial backend: the project's firmware protocol (docs/serial-protocol.md).

A thin adapter over ``robot_side.driver.SerialManipulator``, which keeps its
reader thread (newest state report with its arrival time, bounded fault queue)
and its blocking handshake; ``reconnect()`` is called by the node's reconnector
thread, never by the control loop. Every frame of one period goes out in one
``os.write`` with consecutive sequence numbers, so ``Reading.last_sent_seq`` and
the firmware's ``last_rx_seq`` tell the control core what the firmware has seen.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from robot_side import serial_protocol as sp
from robot_side.driver import SerialConfig, SerialManipulator
from robot_side.manipulator.base import (
    FaultNote,
    Frame,
    Hold,
    JointSample,
    Manipulator,
    ManipulatorInfo,
    Targets,
)

if TYPE_CHECKING:
    from robot_side.config import RobotConfig


def _encoder(frame: Frame) -> Callable[[int], bytes]:
    if isinstance(frame, Targets):
        # The period's frame: packed directly, no JointTargets object (serial_protocol).
        return functools.partial(_targets, frame)
    if isinstance(frame, Hold):
        return functools.partial(_hold, frame.brake)
    return _release


def _targets(frame: Targets, seq: int) -> bytes:
    return sp.encode_targets_frame(seq, frame.q, frame.grip)


def _hold(brake: bool, seq: int) -> bytes:
    return sp.encode_frame(sp.Hold(seq, brake))


def _release(seq: int) -> bytes:
    return sp.encode_frame(sp.Release(seq))


class SerialBackend(Manipulator):
    """``[manipulator] backend = "serial"``: the firmware (or its emulator) on a tty."""

    def __init__(self, cfg: SerialConfig, write_budget_ns: int = 1_000_000) -> None:
        super().__init__(ManipulatorInfo("serial", cfg.n_joints, None,
                                         f"firmware protocol v{sp.PROTOCOL_VERSION} on "
                                         f"{cfg.port}; efforts in N m"), write_budget_ns)
        self.driver = SerialManipulator(cfg)
        self._seen: tuple[object, JointSample] | None = None
        """The reader's last (report, time) and the sample made of it: the firmware
        reports at its own rate, the loop reads every period; an unchanged report is
        not converted again (issue 11)."""

    @classmethod
    def from_config(cls, cfg: RobotConfig) -> SerialBackend:
        return cls(cfg.serial, cfg.control.period_ns)

    def _open(self) -> None:
        self.driver.open()

    def _close(self) -> None:
        self.driver.close()

    def _is_connected(self) -> bool:
        return self.driver.connected

    def _reconnect(self) -> bool:
        return self.driver.reconnect()

    def _read(self) -> tuple[JointSample | None, Sequence[FaultNote]]:
        latest = self.driver.latest_state()
        drained = self.driver.drain_faults()
        faults = [FaultNote(f.code, f.detail) for f in drained] if drained else ()
        if latest is None:
            return None, faults
        seen = self._seen
        if seen is not None and seen[0] is latest:
            return seen[1], faults
        st, received_ns = latest
        sample = JointSample(st.positions, st.velocities, st.efforts, st.grip,
                             sp.FwFlags(st.flags), received_ns, st.last_rx_seq)
        self._seen = (latest, sample)
        return sample, faults

    def _write(self, frames: Sequence[Frame], deadline_ns: int) -> int:
        self.driver.send_encoded([_encoder(f) for f in frames], deadline_ns)
        return time.monotonic_ns()

    def _last_sent_seq(self) -> int | None:
        return self.driver.last_sent_seq

    def _backend_counters(self) -> dict[str, int]:
        return self.driver.counters
