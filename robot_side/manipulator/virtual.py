"""The virtual backend: an in-process arm on the pure firmware model.

No pty, no threads, no sleeps: ``write()`` hands each frame to
``robot_side.firmware_model.FirmwareModel`` as the emulator would after
decoding it, and ``read()`` advances the model to "now" and returns a fresh
state report. The clock is injected (``time.monotonic_ns`` by default), so
component tests drive the control core on simulated time, and ``bench loop``
on the real one. Like python-can's virtual interface, it is a registered
backend, used by tests and benchmarks alike, not a mock.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from robot_side import serial_protocol as sp
from robot_side.firmware_model import FirmwareModel, JointParams, default_params
from robot_side.manipulator.base import (
    FaultNote,
    Frame,
    Hold,
    JointSample,
    Manipulator,
    ManipulatorError,
    ManipulatorInfo,
    Targets,
)
from telesurgery.seqnum import U32

if TYPE_CHECKING:
    from robot_side.config import RobotConfig

Clock = Callable[[], int]


class VirtualManipulator(Manipulator):
    """``[manipulator] backend = "virtual"``: the firmware model, stepped on every read."""

    def __init__(self, params: Sequence[JointParams], *, watchdog_ms: float = 100.0,
                 initial: Sequence[float] | None = None, clock: Clock = time.monotonic_ns,
                 write_budget_ns: int = 1_000_000) -> None:
        super().__init__(ManipulatorInfo("virtual", len(params), None,
                                         "firmware model in process; efforts in N m"),
                         write_budget_ns)
        self._params = list(params)
        self._watchdog_ms = watchdog_ms
        self._initial = list(initial) if initial is not None else None
        self.clock = clock
        self.model: FirmwareModel | None = None
        self._seq = 0
        self._sent = 0
        self._faults: list[FaultNote] = []
        self.unplugged = False
        """Set by a test to model a cut cable: reads report disconnected, writes fail."""
        self.report_delay_ns = 0
        """State reports reach the host this late (a slow bus, a delayed reply)."""
        self._reports: collections.deque[tuple[int, sp.StateReport]] = collections.deque(
            maxlen=4096)

    @classmethod
    def from_config(cls, cfg: RobotConfig) -> VirtualManipulator:
        from robot_side.kinematics import Kinematics

        kin = Kinematics.from_urdf(cfg.kinematics.urdf, cfg.kinematics.tip_frame)
        params = default_params(kin.n, kin.lower.tolist(), kin.upper.tolist(),
                                kin.velocity.tolist())
        return cls(params, initial=kin.home.tolist(), write_budget_ns=cfg.control.period_ns)

    # ------------------------------------------------------------ lifecycle
    def _open(self) -> None:
        if self.unplugged:
            raise ManipulatorError("virtual: unplugged")
        now = self.clock()
        if self.model is None:  # a reconnect finds the arm where it was, as a real one
            self.model = FirmwareModel(self._params, self._watchdog_ms, now, self._initial)
        self._collect(self.model.on_message(sp.Hello(self._next_seq(), sp.PROTOCOL_VERSION,
                                                     len(self._params)), now))

    def _close(self) -> None:
        pass

    def _is_connected(self) -> bool:
        return not self.unplugged

    # ------------------------------------------------------------ I/O
    def _read(self) -> tuple[JointSample | None, Sequence[FaultNote]]:
        if self.unplugged:
            return None, ()
        model = self._model()
        now = self.clock()
        self._collect(model.step(now))
        st = model.state_report(now)
        if self.report_delay_ns:
            self._reports.append((now, st))
            while len(self._reports) > 1 and self._reports[1][0] <= now - self.report_delay_ns:
                self._reports.popleft()
            st = self._reports[0][1]
        faults, self._faults = self._faults, []
        return JointSample(st.positions, st.velocities, st.efforts, st.grip,
                           sp.FwFlags(st.flags), now, st.last_rx_seq), faults

    # ------------------------------------------------------------ the arm's own button
    def press_estop(self) -> None:
        self._collect(self._model().press_estop())

    def release_estop(self) -> None:
        self._model().release_estop()

    def _write(self, frames: Sequence[Frame], deadline_ns: int) -> int:
        if self.unplugged:
            raise ManipulatorError("virtual: unplugged")
        model = self._model()
        now = self.clock()
        for f in frames:
            seq = self._next_seq()
            msg: sp.Message
            if isinstance(f, Targets):
                msg = sp.JointTargets(seq, f.q, f.grip)
            elif isinstance(f, Hold):
                msg = sp.Hold(seq, f.brake)
            else:
                msg = sp.Release(seq)
            self._collect(model.on_message(msg, now))
        self._sent += len(frames)
        return self.clock()

    def _last_sent_seq(self) -> int | None:
        return None if self._sent == 0 else (self._seq - 1) % U32

    # ------------------------------------------------------------ helpers
    def _model(self) -> FirmwareModel:
        if self.model is None:
            raise ManipulatorError("virtual: not open")
        return self.model

    def _next_seq(self) -> int:
        seq, self._seq = self._seq, (self._seq + 1) % U32
        return seq

    def _collect(self, messages: Sequence[sp.Message]) -> None:
        for m in messages:
            if isinstance(m, sp.FaultReport):
                self._faults.append(FaultNote(m.code, m.detail))
        del self._faults[:-64]  # bounded, like the serial driver's fault queue
