"""A smart-servo arm behind the ``Manipulator`` interface: one bus thread per arm.

A half-duplex servo bus cannot be written and read at the control loop's
1 kHz (6 STS3215 at 1 Mbaud sustain a few hundred cycles a second), and a
status packet takes a round trip the loop must not wait for. So ``write()``
only hands the newest frames to the bus thread (it never blocks), and the bus
thread runs cycles as fast as the bus allows, up to ``servos.max_rate_hz``:

    apply the newest command (sync write of goals)  ->  sync read of the state

That is the down-sampling: targets that arrive between two cycles are
replaced by the newest, which the step limits already kept within one control
period of the previous; ``info.rate_hz`` is the measured cycle rate.

What the firmware protocol's invariants become on servos:

* nothing moves before a ``Release``: the torque is off after ``open()``, and
  a Release sets every goal to where the joint is before enabling it;
* ``Hold``: every goal becomes the present position (the servos' position hold
  is the brake of a brakeless arm; ``servos.brake = "torque_off"`` cuts torque);
* the command watchdog: no ``write()`` for ``command_watchdog_ms`` while
  following -> hold, ``WATCHDOG_TRIPPED`` latched until a Release; a dead
  process is covered by the servos' own Bus Watchdog (Dynamixel) or not at all
  (Feetech: see docs/hazards.md);
* a servo hardware error -> a fault in plain words, torque off on that servo
  (the servo does it), the others hold; a servo that stops answering for
  ``missed_reads`` cycles -> a fault naming it, the others hold;
* bad bytes on the bus (noise, truncated, wrong-ID or bad-checksum status) are
  counted and dropped: they never become a goal.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence

from robot_side.manipulator.base import (
    FaultNote,
    Frame,
    Hold,
    JointSample,
    Manipulator,
    ManipulatorError,
    ManipulatorInfo,
    Release,
    Targets,
)
from robot_side.serial_protocol import FwFlags
from robot_side.servos.busstate import (
    FAULT_SERVO_HARDWARE,
    FAULT_SERVO_SILENT,
    Command,
    CycleLog,
    ServoState,
    merge_pending,
)
from robot_side.servos.config import ArmCalibration, ServosConfig
from robot_side.servos.tables import ServoFamily
from telesurgery.pacer import try_realtime
from telesurgery.ratelog import RateLimitedLog

log = logging.getLogger(__name__)
_ratelog = RateLimitedLog(log)
BUS_THREAD_PRIORITY = 48
"""SCHED_FIFO priority of the bus thread, where permitted: the serial driver's reader's."""

EFFORT_LIMIT_FRACTION = 0.9
MAX_FAULTS = 64


class ServoArm(Manipulator):
    """The bus thread and the servo-level safety; a family implements the ``_bus_*`` calls."""

    family: ServoFamily

    def __init__(self, cfg: ServosConfig, calibration: ArmCalibration | None, *,
                 name: str, write_budget_ns: int = 1_000_000) -> None:
        cal = calibration or ArmCalibration.default(self.family.name, cfg)
        cal.check_against(self.family, cfg)
        if calibration is None:
            log.warning("%s: no calibration file: centre tick = 0 rad, full range allowed; "
                        "run 'telesurgery calibrate' before moving a real arm", name)
        super().__init__(ManipulatorInfo(
            name, len(cfg.joint_ids), cfg.max_rate_hz,
            f"{self.family.model_name} servos {list(cfg.ids)} at {cfg.baudrate} baud; "
            "efforts as a fraction of rated torque"), write_budget_ns)
        self.cfg = cfg
        self.cal = cal
        self.port = cfg.resolved_port()
        self._cond = threading.Condition()
        self._command: Command | None = None
        self._seq = 0
        self._applied_seq: int | None = None
        self._sample: JointSample | None = None
        self._faults: collections.deque[FaultNote] = collections.deque(maxlen=MAX_FAULTS)
        self._pending_faults: list[FaultNote] = []
        """This cycle's faults: published with the sample that shows them, never before."""
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._bus_up = False
        self._mode = "braked"
        self._latched = FwFlags(0)
        self._goals: dict[int, int] = {}
        self._last_write_ns = 0
        self.servos: dict[int, ServoState] = {}
        self.cycles = CycleLog()
        self.bus_counts: dict[str, int] = dict.fromkeys(
            ("cycles", "rx_timeouts", "rx_corrupt", "rx_wrong_id", "rx_short", "rx_garbage_bytes",
             "targets_ignored", "goals_clamped", "watchdog_holds"), 0)

    # ------------------------------------------------------------ for a family
    @abc.abstractmethod
    def _bus_open(self) -> None:
        """Open the port; raise ``ManipulatorError`` with a one-line reason."""

    @abc.abstractmethod
    def _bus_close(self) -> None: ...

    @abc.abstractmethod
    def _bus_ping(self, servo_id: int) -> int | None:
        """The model number, or None when the servo does not answer."""

    @abc.abstractmethod
    def _bus_read_block(self) -> dict[int, tuple[dict[int, int], int] | None]:
        """One sync read: per ID its decoded fields and error bits, or None (no answer)."""

    @abc.abstractmethod
    def _bus_write_goals(self, goals: dict[int, int]) -> None: ...

    @abc.abstractmethod
    def _bus_torque(self, ids: Sequence[int], on: bool) -> None: ...

    @abc.abstractmethod
    def _bus_prepare_release(self, ids: Sequence[int]) -> None:
        """Clear latched errors and (re)arm the servos' own watchdog before following."""

    def _bus_housekeeping(self, cycle: int) -> FwFlags:
        """A slow round-robin check (e.g. the Bus Watchdog register); flags it found."""
        return FwFlags(0)

    # ------------------------------------------------------------ Manipulator
    def _open(self) -> None:
        self._bus_open()
        try:
            missing = [i for i in self.cfg.ids if not self._answers(i)]
            if missing:
                raise ManipulatorError(
                    f"{self.info.name} on {self.port}: servo ID {missing[0]} does not answer"
                    + (f" (also missing: {missing[1:]})" if missing[1:] else "")
                    + f"; check its cable, power and ID at {self.cfg.baudrate} baud")
            self._bus_torque(self.cfg.ids, False)
        except ManipulatorError:
            self._bus_close()
            raise
        self.servos = {i: ServoState({}) for i in self.cfg.ids}
        self._mode, self._latched, self._goals = "braked", FwFlags(0), {}
        self._info = dataclasses.replace(self._info, rate_hz=self._measure_rate())
        log.info("%s on %s: %d servos answer; the bus sustains ~%.0f cycles/s "
                 "(write + read), setpoints down-sampled to that", self.info.name, self.port,
                 len(self.cfg.ids), self._info.rate_hz)
        self._bus_up = True
        self._halt.clear()
        self._thread = threading.Thread(target=self._bus_loop, name=f"{self.info.name}-bus",
                                        daemon=True)
        self._thread.start()

    def _answers(self, servo_id: int) -> bool:
        """A ping answered within ``missed_reads`` tries: one lost status is no missing servo."""
        return any(self._bus_ping(servo_id) is not None for _ in range(self.cfg.missed_reads))

    def _measure_rate(self, cycles: int = 10) -> float:
        """Cycles a second the bus sustains: timed sync reads plus a goal write's wire time."""
        start = time.monotonic_ns()
        for _ in range(cycles):
            self._bus_read_block()
        read_ns = (time.monotonic_ns() - start) / cycles
        fam = self.family
        write_bytes = 14 + len(self.cfg.ids) * (1 + fam.goal_position.size)
        write_ns = write_bytes * 10 * 1e9 / self.cfg.baudrate
        return min(self.cfg.max_rate_hz, 1e9 / (read_ns + write_ns))

    def _close(self) -> None:
        self._halt.set()
        with self._cond:
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        if self.cfg.torque_off_on_close and self._bus_up:
            try:
                self._bus_torque(self.cfg.ids, False)
            except ManipulatorError as err:
                log.warning("%s: torque off at close failed: %s", self.info.name, err)
        self._bus_up = False
        self._bus_close()

    def _is_connected(self) -> bool:
        return self._bus_up

    def _read(self) -> tuple[JointSample | None, Sequence[FaultNote]]:
        with self._cond:
            faults = list(self._faults)
            self._faults.clear()
            return self._sample, faults

    def _write(self, frames: Sequence[Frame], deadline_ns: int) -> int:
        now = time.monotonic_ns()
        with self._cond:
            self._seq += 1
            self._command = merge_pending(self._command, Command(self._seq, tuple(frames), now))
            self._cond.notify_all()
        return now

    def _last_sent_seq(self) -> int | None:
        return self._seq

    def _backend_counters(self) -> dict[str, int]:
        return dict(self.bus_counts)

    def raw_positions(self, after_ns: int, timeout_s: float = 2.0) -> dict[int, int]:
        """Present positions in ticks from a bus cycle that started after ``after_ns``."""
        deadline = time.monotonic_ns() + int(timeout_s * 1e9)
        pos = self.family.present_position.addr
        while time.monotonic_ns() < deadline:
            states = list(self.servos.values())
            if all(s.ok_ns > after_ns and pos in s.raw for s in states):
                return {sid: s.raw[pos] for sid, s in self.servos.items()}
            time.sleep(0.005)
        stale = [sid for sid, s in self.servos.items() if s.ok_ns <= after_ns]
        raise ManipulatorError(f"{self.info.name}: no fresh position from servo(s) {stale}")

    def measured_rate_hz(self) -> float | None:
        """Bus cycles per second over the last 50 cycles."""
        return self.cycles.rate_hz()

    # ------------------------------------------------------------ the bus thread
    def _bus_loop(self) -> None:
        # The control loop judges the arm's freshness by when this thread read its
        # statuses: a starved bus thread reads as silent servos (a healthy bus tripped
        # serial_fault and "servo 1 stopped answering" every second or two under a load
        # average of 15 at normal priority). As the serial driver's reader (48), below the
        # control loop (50); it waits in select(), never spins (sdkport).
        try_realtime(BUS_THREAD_PRIORITY)
        period_ns = int(1e9 / self.cfg.max_rate_hz)
        cycle = 0
        next_ns = time.monotonic_ns()
        while not self._halt.is_set():
            with self._cond:
                command, self._command = self._command, None
            try:
                start = time.monotonic_ns()
                if command is not None:
                    self._apply(command)
                self._check_command_watchdog(time.monotonic_ns())
                wrote = time.monotonic_ns()
                self._poll(cycle)
                self.cycles.add(start, wrote - start, time.monotonic_ns() - wrote)
            except ManipulatorError as err:
                _ratelog(logging.ERROR, "bus", "%s: bus failed: %s", self.info.name, err)
                self._bus_up = False
                return
            except Exception:  # a bus thread that dies must say so: the arm reads as gone
                log.exception("%s: bus thread failed", self.info.name)
                self._bus_up = False
                return
            cycle += 1
            now = time.monotonic_ns()
            self.bus_counts["cycles"] = cycle
            next_ns = max(next_ns + period_ns, now)
            with self._cond:
                if self._command is None and not self._halt.is_set():
                    self._cond.wait(timeout=(next_ns - now) / 1e9)

    def _apply(self, command: Command) -> None:
        for frame in command.frames:
            if isinstance(frame, Release):
                self._release()
            elif isinstance(frame, Hold):
                self._hold(frame.brake)
            elif isinstance(frame, Targets):
                self._targets(frame)
        self._last_write_ns = command.at_ns
        self._applied_seq = command.seq

    def _present_goals(self, ids: Sequence[int]) -> dict[int, int]:
        pos = self.family.present_position.addr
        return {i: self.servos[i].raw[pos] for i in ids if pos in self.servos[i].raw}

    def _release(self) -> None:
        gone = [i for i, s in self.servos.items() if s.missed >= self.cfg.missed_reads]
        if gone:
            self._fault(FAULT_SERVO_SILENT, f"cannot release: servo {gone[0]} not answering")
            return
        ids = self.cfg.ids
        self._bus_prepare_release(ids)
        self._goals = self._present_goals(ids)
        self._bus_write_goals(self._goals)
        self._bus_torque(ids, True)
        self._mode, self._latched = "following", FwFlags(0)

    def _hold(self, brake: bool) -> None:
        if self._mode == "following":
            self._goals = self._present_goals(self.cfg.ids)
            self._bus_write_goals(self._goals)
        if brake and self.cfg.brake == "torque_off":
            self._bus_torque(self.cfg.ids, False)
            self._mode = "braked"
        elif self._mode != "braked":
            self._mode = "holding"

    def _targets(self, frame: Targets) -> None:
        if self._mode != "following":
            self.bus_counts["targets_ignored"] += 1
            return
        goals: dict[int, int] = {}
        fam = self.family
        for q, joint in zip(frame.q, self.cal.joints, strict=True):
            tick = joint.to_tick(q, fam)
            if abs(joint.to_rad(tick, fam) - q) > fam.rad_per_tick:
                self.bus_counts["goals_clamped"] += 1
            goals[joint.servo_id] = tick
        if self.cal.gripper is not None:
            goals[self.cal.gripper.servo_id] = self.cal.gripper.to_tick(frame.grip)
        self._goals = goals
        self._bus_write_goals(goals)

    def _check_command_watchdog(self, now: int) -> None:
        limit = int(self.cfg.command_watchdog_ms * 1e6)
        if self._mode == "following" and now - self._last_write_ns > limit:
            self.bus_counts["watchdog_holds"] += 1
            _ratelog(logging.WARNING, "cmd_watchdog", "%s: no write for %.0f ms: holding",
                     self.info.name, (now - self._last_write_ns) / 1e6)
            self._hold(brake=False)
            self._latched |= FwFlags.WATCHDOG_TRIPPED

    def _fault(self, code: int, detail: str) -> None:
        _ratelog(logging.ERROR, f"fault{code}", "%s: %s", self.info.name, detail)
        self._latched |= FwFlags.FAULT
        self._pending_faults.append(FaultNote(code, detail))

    def _poll(self, cycle: int) -> None:
        now = time.monotonic_ns()
        results = self._bus_read_block()
        newly_gone: list[int] = []
        for sid, result in results.items():
            state = self.servos[sid]
            if result is None:
                state.missed += 1
                if state.missed == self.cfg.missed_reads:
                    newly_gone.append(sid)
                continue
            fields, errors = result
            if state.missed >= self.cfg.missed_reads:
                log.warning("%s: servo %d answers again", self.info.name, sid)
            state.missed, state.raw, state.ok_ns = 0, fields, now
            if errors and errors != state.error_bits:
                self._fault(FAULT_SERVO_HARDWARE, f"servo {sid} ({self._name_of(sid)}): "
                            f"{self.family.describe_error(errors)}")
                self._hold_others()
            state.error_bits = errors
        for sid in newly_gone:
            self._fault(FAULT_SERVO_SILENT, f"servo {sid} ({self._name_of(sid)}) stopped "
                        f"answering ({self.cfg.missed_reads} reads in a row)")
            self._hold_others()
        found = self._bus_housekeeping(cycle)
        if found & FwFlags.WATCHDOG_TRIPPED:
            self._hold_others()  # the servo stopped by itself; the rest must not go on
        self._latched |= found
        self._publish(now)

    def _hold_others(self) -> None:
        alive = [i for i, s in self.servos.items()
                 if s.missed < self.cfg.missed_reads and not s.error_bits]
        if self._mode == "following":
            self._goals = self._present_goals(alive)
            self._bus_write_goals(self._goals)
            self._mode = "holding"

    def _name_of(self, sid: int) -> str:
        for joint in self.cal.joints:
            if joint.servo_id == sid:
                return joint.name or f"joint {self.cal.joints.index(joint)}"
        return "gripper"

    def _publish(self, now: int) -> None:
        if any(not s.raw for s in self.servos.values()):
            with self._cond:  # no complete picture yet; the faults go out alone
                self._faults.extend(self._pending_faults)
            self._pending_faults.clear()
            return
        fam = self.family
        pos, vel, load = (f.addr for f in (fam.present_position, fam.present_velocity,
                                           fam.present_load))
        q, v, e = [], [], []
        flags = self._latched
        for joint in self.cal.joints:
            raw = self.servos[joint.servo_id].raw
            q.append(joint.to_rad(raw[pos], fam))
            v.append(joint.direction * raw[vel] * fam.velocity_unit_rad_s)
            effort = joint.direction * raw[load] * fam.load_unit
            e.append(effort)
            if abs(effort) >= EFFORT_LIMIT_FRACTION:
                flags |= FwFlags.EFFORT_LIMIT
        grip = 0.0
        if self.cal.gripper is not None:
            grip = self.cal.gripper.to_grip(self.servos[self.cal.gripper.servo_id].raw[pos])
        if any(s.error_bits or s.missed >= self.cfg.missed_reads for s in self.servos.values()):
            flags |= FwFlags.FAULT
        flags |= {"braked": FwFlags.BRAKED, "holding": FwFlags.HOLDING,
                  "following": FwFlags.FOLLOWING}[self._mode]
        sample = JointSample(tuple(q), tuple(v), tuple(e), grip, flags, now, self._applied_seq)
        with self._cond:
            self._sample = sample
            self._faults.extend(self._pending_faults)
        self._pending_faults.clear()
