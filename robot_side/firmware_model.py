"""The emulated firmware's brain: joint dynamics and the safety state machine.

Pure and clock-injected: every entry point takes ``now_ns`` and returns the
frames the firmware would send, so the same logic runs in the pty emulator and
in plain unit tests. The rules it enforces are the ones docs/serial-protocol.md
promises real firmware keeps:

* three modes: BRAKED (power-up, Hold(brake), e-stop, watchdog, fault),
  HOLDING (Hold without brake, or a new handshake) and FOLLOWING;
* only a ``Release`` frame enters FOLLOWING, and it is refused while the
  e-stop button is pressed; a ``Hold`` never lifts a brake;
* the watchdog: no valid frame for ``watchdog_ms`` brakes and latches
  WATCHDOG_TRIPPED until a Release;
* after a Release the joints hold where they are until a target arrives.

The wire faults the emulator can inject (``Faults``, ``damage_frame``) live
here too: they are pure functions of a frame and a seeded RNG.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from robot_side.serial_protocol import (
    PROTOCOL_VERSION,
    FaultCode,
    FaultReport,
    FwFlags,
    Heartbeat,
    Hello,
    Hold,
    JointTargets,
    Message,
    Release,
    StateReport,
)
from telesurgery.config import check
from telesurgery.errors import ConfigError

log = logging.getLogger(__name__)

FIRMWARE_VERSION = "ts-sim 1.0"
SUBSTEP_NS = 1_000_000
"""Dynamics integrate in steps of at most 1 ms so a starved thread cannot overshoot."""
MAX_SUBSTEPS = 200
STUCK_ERROR_RAD = 0.02
STUCK_DETECT_NS = 50_000_000
GRIP_RATE = 2.0
"""Gripper opening speed, fraction per second."""


class Mode(Enum):
    BRAKED = "braked"
    HOLDING = "holding"
    FOLLOWING = "following"


_MODE_BITS = {Mode.BRAKED: int(FwFlags.BRAKED), Mode.HOLDING: int(FwFlags.HOLDING),
              Mode.FOLLOWING: int(FwFlags.FOLLOWING)}
_WATCHDOG_TRIPPED = int(FwFlags.WATCHDOG_TRIPPED)
_ESTOP_PRESSED = int(FwFlags.ESTOP_PRESSED)
_FAULT = int(FwFlags.FAULT)
_JOINT_LIMIT = int(FwFlags.JOINT_LIMIT)
_STUCK_JOINT = int(FwFlags.STUCK_JOINT)
_EFFORT_LIMIT = int(FwFlags.EFFORT_LIMIT)
_RX_ERRORS = int(FwFlags.RX_ERRORS)


@dataclass(frozen=True)
class JointParams:
    lower: float
    upper: float
    max_velocity: float
    max_accel: float = 40.0
    max_effort: float = 40.0
    inertia: float = 0.3
    damping: float = 0.5
    gravity: float = 0.0
    """Effort needed to hold the joint against gravity at position 0 (N m)."""


def default_params(n_joints: int, lower: Sequence[float] | None = None,
                   upper: Sequence[float] | None = None,
                   max_velocity: Sequence[float] | None = None) -> list[JointParams]:
    gravity = (0.0, 12.0, 5.0, 0.5, 0.3, 0.1)
    lo = list(lower) if lower is not None else [-2.9] * n_joints
    hi = list(upper) if upper is not None else [2.9] * n_joints
    vmax = list(max_velocity) if max_velocity is not None else [2.5] * n_joints
    for name, values in (("lower", lo), ("upper", hi), ("max_velocity", vmax)):
        if len(values) != n_joints:
            raise ConfigError(f"{name} has {len(values)} values for {n_joints} joints")
    for i in range(n_joints):
        if not (math.isfinite(lo[i]) and math.isfinite(hi[i]) and lo[i] < hi[i]):
            raise ConfigError(f"joint {i}: lower {lo[i]} must be below upper {hi[i]}")
        if not (math.isfinite(vmax[i]) and vmax[i] > 0):
            raise ConfigError(f"joint {i}: max_velocity {vmax[i]} must be > 0")
    return [JointParams(lo[i], hi[i], vmax[i], gravity=gravity[i] if i < len(gravity) else 0.0)
            for i in range(n_joints)]


class FirmwareModel:
    def __init__(self, params: Sequence[JointParams], watchdog_ms: float, now_ns: int,
                 initial: Sequence[float] | None = None) -> None:
        if not (math.isfinite(watchdog_ms) and watchdog_ms > 0):
            raise ConfigError(f"watchdog_ms {watchdog_ms} must be > 0")
        self.params = list(params)
        self.n = len(self.params)
        self.watchdog_ns = int(watchdog_ms * 1e6)
        self.boot_ns = now_ns
        self.mode = Mode.BRAKED
        # A real arm boots wherever it was left; the emulator starts at ``initial``
        # (the arm's home in the demo) or at zero, clamped into the joint limits.
        start = list(initial) if initial is not None else [0.0] * self.n
        if len(start) != self.n or not all(math.isfinite(q) for q in start):
            raise ConfigError(f"initial positions {start} must be {self.n} finite numbers")
        self.positions = [min(max(q, p.lower), p.upper)
                          for q, p in zip(start, self.params, strict=True)]
        self.velocities = [0.0] * self.n
        self.efforts = [0.0] * self.n
        self.targets = list(self.positions)
        self.target_velocity = [0.0] * self.n
        self._last_target_ns: int | None = None
        self.grip = 0.0
        self.grip_target = 0.0
        self.watchdog_tripped = False
        self.estop_pressed = False
        self.fault = False
        self.stuck_detected = False
        self.joint_limit = False
        self.effort_limit = False
        self.rx_errors = False
        self.stuck_joint: int | None = None
        self._stuck_since_ns: int | None = None
        self._ignored_reported = False
        self.last_rx_seq = 0
        self.last_valid_rx_ns = now_ns
        self.trip_ns: int | None = None
        self.trip_latency_ns: int | None = None
        self.targets_ignored = 0
        self._last_step_ns = now_ns
        self._tx_seq = 0

    # ------------------------------------------------------------ outgoing
    def _next_seq(self) -> int:
        seq = self._tx_seq
        self._tx_seq = (seq + 1) % 2**32
        return seq

    def _fault(self, code: FaultCode, detail: str) -> FaultReport:
        log.warning("firmware fault %s: %s", code.name, detail)
        return FaultReport(self._next_seq(), int(code), detail[:64])

    @property
    def flags(self) -> FwFlags:
        return FwFlags(self._flag_bits())

    def _flag_bits(self) -> int:
        # Plain int arithmetic: eight IntFlag operations per state report (500 Hz) were
        # a tenth of the emulator's report cost.
        bits = _MODE_BITS[self.mode]
        if self.watchdog_tripped:
            bits |= _WATCHDOG_TRIPPED
        if self.estop_pressed:
            bits |= _ESTOP_PRESSED
        if self.fault:
            bits |= _FAULT
        if self.joint_limit:
            bits |= _JOINT_LIMIT
        if self.stuck_detected:
            bits |= _STUCK_JOINT
        if self.effort_limit:
            bits |= _EFFORT_LIMIT
        if self.rx_errors:
            bits |= _RX_ERRORS
        return bits

    def state_report(self, now_ns: int) -> StateReport:
        report = StateReport(self._next_seq(), (now_ns - self.boot_ns) // 1000,
                             tuple(self.positions), tuple(self.velocities), tuple(self.efforts),
                             self.grip, self._flag_bits(), self.last_rx_seq)
        self.rx_errors = False
        return report

    # ------------------------------------------------------------ incoming
    def on_bad_frame(self) -> None:
        self.rx_errors = True

    def on_message(self, msg: Message, now_ns: int) -> list[Message]:
        """A valid frame: feeds the watchdog, then acts. Returns the replies."""
        self.last_valid_rx_ns = now_ns
        self.last_rx_seq = msg.seq
        if isinstance(msg, Hello):
            return self._on_hello(msg)
        if isinstance(msg, JointTargets):
            return self._on_targets(msg, now_ns)
        if isinstance(msg, Hold):
            self._hold(brake=msg.brake)
            return []
        if isinstance(msg, Release):
            return self._on_release()
        if isinstance(msg, Heartbeat):
            return []
        # StateReport/FaultReport only travel firmware -> host.
        return [self._fault(FaultCode.BAD_TARGET, f"unexpected {type(msg).__name__} from host")]

    def _on_hello(self, msg: Hello) -> list[Message]:
        out: list[Message] = [Hello(self._next_seq(), PROTOCOL_VERSION, self.n,
                                    FIRMWARE_VERSION)]
        # A new host session never inherits motion: it must Release explicitly.
        if self.mode is Mode.FOLLOWING:
            self._hold(brake=False)
        if msg.protocol_version != PROTOCOL_VERSION or msg.n_joints != self.n:
            out.append(self._fault(FaultCode.VERSION_MISMATCH,
                                   f"host v{msg.protocol_version}/{msg.n_joints} joints, "
                                   f"firmware v{PROTOCOL_VERSION}/{self.n} joints"))
        return out

    def _on_targets(self, msg: JointTargets, now_ns: int) -> list[Message]:
        if len(msg.positions) != self.n:
            self.fault = True
            self._hold(brake=False)
            return [self._fault(FaultCode.BAD_TARGET,
                                f"{len(msg.positions)} targets for {self.n} joints")]
        if self.mode is not Mode.FOLLOWING:
            self.targets_ignored += 1
            if self._ignored_reported:
                return []
            self._ignored_reported = True
            return [self._fault(FaultCode.NOT_RELEASED,
                                f"targets ignored while {self.mode.value}: send Release")]
        clamped = [min(max(t, p.lower), p.upper) for t, p in zip(msg.positions, self.params,
                                                                   strict=True)]
        limit_hit = clamped != list(msg.positions)
        out: list[Message] = []
        if limit_hit and not self.joint_limit:
            out.append(self._fault(FaultCode.JOINT_LIMIT, "target beyond a joint limit: clamped"))
        self.joint_limit = limit_hit
        if self._last_target_ns is not None and now_ns > self._last_target_ns:
            # Velocity feed-forward, like a real joint servo: the host streams a moving
            # target, and a pure position loop would lag it by speed / gain.
            dt = (now_ns - self._last_target_ns) / 1e9
            self.target_velocity = [
                0.5 * fv + 0.5 * (t - old) / dt
                for fv, t, old in zip(self.target_velocity, clamped, self.targets, strict=True)]
        self._last_target_ns = now_ns
        self.targets = clamped
        self.grip_target = min(max(msg.grip, 0.0), 1.0)
        return out

    def _on_release(self) -> list[Message]:
        if self.estop_pressed:
            return [self._fault(FaultCode.ESTOP, "release refused: e-stop button pressed")]
        if self.mode is not Mode.FOLLOWING:
            log.info("firmware released from %s", self.mode.value)
        self.mode = Mode.FOLLOWING
        self.targets = list(self.positions)
        self.target_velocity = [0.0] * self.n
        self._last_target_ns = None
        self.watchdog_tripped = self.fault = self.stuck_detected = False
        self._ignored_reported = False
        self._stuck_since_ns = None
        return []

    def _hold(self, brake: bool) -> None:
        if brake:
            if self.mode is not Mode.BRAKED:
                self.velocities = [0.0] * self.n
            self.mode = Mode.BRAKED
        elif self.mode is Mode.FOLLOWING:
            self.mode = Mode.HOLDING
        self._ignored_reported = False

    # ------------------------------------------------------------ local inputs
    def press_estop(self) -> list[Message]:
        if self.estop_pressed:
            return []
        self.estop_pressed = True
        self._hold(brake=True)
        return [self._fault(FaultCode.ESTOP, "e-stop button pressed")]

    def release_estop(self) -> None:
        # The brake stays on: the host must still send Release.
        self.estop_pressed = False

    # ------------------------------------------------------------ time
    def step(self, now_ns: int) -> list[Message]:
        """Watchdog first (so a trip brakes this very tick), then the dynamics."""
        out: list[Message] = []
        silent_ns = now_ns - self.last_valid_rx_ns
        if silent_ns > self.watchdog_ns and not self.watchdog_tripped:
            self.watchdog_tripped = True
            self.trip_ns = now_ns
            self.trip_latency_ns = silent_ns
            self._hold(brake=True)
            out.append(self._fault(FaultCode.WATCHDOG,
                                   f"no valid frame for {silent_ns / 1e6:.1f} ms: braked"))
        dt_total = now_ns - self._last_step_ns
        self._last_step_ns = now_ns
        substeps = min(MAX_SUBSTEPS, max(1, -(-dt_total // SUBSTEP_NS)))
        dt = min(dt_total / substeps, SUBSTEP_NS) / 1e9
        prev = list(self.positions)
        if dt > 0:
            for _ in range(substeps):
                self._integrate(dt)
        out.extend(self._check_stuck(prev, now_ns))
        return out

    def _integrate(self, dt: float) -> None:
        # Locals and conditional clamps instead of attribute look-ups and min(max()):
        # the same arithmetic in the same order (bit-identical results), at ~half the
        # cost of the emulator's largest per-tick item.
        mode = self.mode
        braked = mode is Mode.BRAKED
        following = mode is Mode.FOLLOWING
        stuck = self.stuck_joint
        positions, velocities, efforts = self.positions, self.velocities, self.efforts
        targets, target_velocity = self.targets, self.target_velocity
        sqrt, copysign, cos = math.sqrt, math.copysign, math.cos
        effort_limit = False
        for i, p in enumerate(self.params):
            if braked or i == stuck:
                velocities[i] = 0.0
                efforts[i] = 0.0 if braked else p.gravity * cos(positions[i])
                continue
            v = velocities[i]
            max_accel, max_velocity = p.max_accel, p.max_velocity
            if following:
                err = targets[i] - positions[i]
                # Feed-forward plus a position loop whose approach can still stop on the
                # target without overshoot when the target stands still.
                abs_err = abs(err)
                correction = min(sqrt(2.0 * max_accel * abs_err), 50.0 * abs_err)
                v_des = target_velocity[i] + copysign(correction, err)
                v_des = min(max(v_des, -max_velocity), max_velocity)
            else:
                v_des = 0.0
            step = max_accel * dt
            dv = min(max(v_des - v, -step), step)
            v += dv
            pos = positions[i] + v * dt
            lower, upper = p.lower, p.upper
            if not lower <= pos <= upper:
                pos, v = min(max(pos, lower), upper), 0.0
            positions[i], velocities[i] = pos, v
            effort = p.inertia * dv / dt + p.damping * v + p.gravity * cos(pos)
            max_effort = p.max_effort
            if abs(effort) > max_effort:
                effort_limit = True
                effort = max_effort if effort > 0 else -max_effort
            efforts[i] = effort
        self.effort_limit = effort_limit
        step = GRIP_RATE * dt
        self.grip += min(max(self.grip_target - self.grip, -step), step)

    def _check_stuck(self, prev: list[float], now_ns: int) -> list[Message]:
        """Following error that does not shrink while the joint should move: a stuck joint."""
        if self.mode is not Mode.FOLLOWING:
            self._stuck_since_ns = None
            return []
        stuck = [i for i in range(self.n)
                 if abs(self.targets[i] - self.positions[i]) > STUCK_ERROR_RAD
                 and abs(self.positions[i] - prev[i]) < 1e-9]
        if not stuck:
            self._stuck_since_ns = None
            return []
        if self._stuck_since_ns is None:
            self._stuck_since_ns = now_ns
            return []
        if now_ns - self._stuck_since_ns < STUCK_DETECT_NS:
            return []
        self.stuck_detected = self.fault = True
        self._hold(brake=True)
        i = stuck[0]
        error = self.targets[i] - self.positions[i]
        return [self._fault(FaultCode.STUCK_JOINT, f"joint {i} stuck: error {error:.3f} rad")]


# ---------------------------------------------------------------- wire faults
MAX_DELAY_MS = 10_000.0


@dataclass(frozen=True)
class Faults:
    """Probabilities per frame (tx: firmware -> host, rx: host -> firmware)."""

    drop: float = 0.0
    corrupt: float = 0.0
    garbage: float = 0.0
    truncate: float = 0.0
    delay_ms: float = 0.0
    stuck_joint: int | None = None
    rx_drop: float = 0.0
    rx_corrupt: float = 0.0

    def __post_init__(self) -> None:
        for name in ("drop", "corrupt", "garbage", "truncate", "rx_drop", "rx_corrupt"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, f"inject.{name}", value, "must be a probability in [0, 1]")
        check(0.0 <= self.delay_ms <= MAX_DELAY_MS, "inject.delay_ms", self.delay_ms,
              f"must be in [0, {MAX_DELAY_MS:g}]")


def flip_bit(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    bit = rng.randrange(8 * len(out))
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def corrupt_frames(data: bytes, p: float, rng: random.Random) -> bytes:
    """Flip one bit in each delimited piece of ``data`` with probability ``p``.

    Per frame, not per read: one read can carry several frames, and each must be
    damaged on its own for ``p = 1`` to mean "nothing valid gets through".
    """
    return b"\0".join(flip_bit(part, rng) if part and rng.random() < p else part
                      for part in data.split(b"\0"))


def damage_frame(frame: bytes, f: Faults, rng: random.Random) -> tuple[bytes, int]:
    """Damage one outgoing frame as the injected faults say; returns (bytes, faults applied)."""
    faults = 0
    if f.drop and rng.random() < f.drop:
        return b"", 1
    if f.corrupt and rng.random() < f.corrupt:
        frame, faults = flip_bit(frame[:-1], rng) + b"\0", faults + 1
    if f.truncate and rng.random() < f.truncate:
        frame, faults = frame[: rng.randrange(1, len(frame) - 1)] + b"\0", faults + 1
    if f.garbage and rng.random() < f.garbage:
        # Non-zero noise: it glues onto this frame, the worst case COBS must survive.
        noise = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 32)))
        frame, faults = noise + frame, faults + 1
    return frame, faults
