"""The manipulator interface: open / read / write / close, in python-can ``BusABC`` style.

The base class owns everything a backend must not get wrong on its own: frames
with a NaN/inf or the wrong joint count are refused before any byte moves,
counters, the write budget of one control period, an idempotent ``close`` and
the context manager. A backend implements ``_open``, ``_read``, ``_write`` and
``_close`` (and ``_reconnect`` when re-opening is more than close + open).

``read()`` never blocks: it returns the newest joint sample the backend has, the
fault reports drained since the last read, and whether the link is up.
``write()`` is the one call per control period that puts bytes on the port or
bus; it returns the monotonic time at which the bytes were handed over, and a
failure is raised (``ManipulatorError``) and also reported by the next
``read()``, so a pure control core learns of it from its inputs.
"""

from __future__ import annotations

import abc
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from robot_side.serial_protocol import FwFlags
from telesurgery.errors import ManipulatorError
from telesurgery.ratelog import RateLimitedLog

log = logging.getLogger(__name__)
_ratelog = RateLimitedLog(log)

__all__ = ["Frame", "Hold", "InvalidFrame", "JointSample", "Manipulator", "ManipulatorError",
           "ManipulatorInfo", "Reading", "Release", "Targets"]


class InvalidFrame(ManipulatorError, ValueError):
    """A frame was refused before any byte reached the port (NaN/inf, joint count)."""


# ---------------------------------------------------------------- what goes out
@dataclass(frozen=True, slots=True)
class Targets:
    """Joint position targets (rad) and the gripper opening 0..1."""

    q: tuple[float, ...]
    grip: float


@dataclass(frozen=True, slots=True)
class Hold:
    """Stop where you are; ``brake`` also engages the brakes (fault, e-stop, disabled)."""

    brake: bool = False


@dataclass(frozen=True, slots=True)
class Release:
    """Leave a hold and follow targets again (the firmware ignores targets until then)."""


Frame = Targets | Hold | Release


# ---------------------------------------------------------------- what comes in
@dataclass(frozen=True, slots=True)
class JointSample:
    """The arm's newest state, stamped when it arrived here (``time.monotonic_ns``)."""

    positions: tuple[float, ...]
    """rad"""
    velocities: tuple[float, ...]
    """rad/s"""
    efforts: tuple[float, ...]
    """N m, or the backend's documented unit (``ManipulatorInfo.detail``)."""
    grip: float
    flags: FwFlags
    """Generic status: e-stop pressed, fault, watchdog tripped, braked, holding, ..."""
    received_ns: int
    acked_seq: int | None = None
    """The newest frame sequence number the arm reports having received, if it has one."""


@dataclass(frozen=True, slots=True)
class FaultNote:
    """A fault the arm reported, in plain words."""

    code: int
    detail: str


@dataclass(frozen=True, slots=True)
class Reading:
    sample: JointSample | None
    faults: tuple[FaultNote, ...]
    connected: bool
    write_error: str | None = None
    """Why the previous ``write()`` failed, once; None when it went out."""
    last_sent_seq: int | None = None
    """Sequence number of the last frame written, for backends that number frames."""


@dataclass(frozen=True, slots=True)
class ManipulatorInfo:
    name: str
    n_joints: int
    rate_hz: float | None
    """Highest write rate the backend sustains; None: every control period. A slower
    bus down-samples writes itself and says so here (the tracking check allows for it)."""
    detail: str = ""


@dataclass(slots=True)
class _Counts:
    reads: int = 0
    writes: int = 0
    frames: int = 0
    rejected_frames: int = 0
    write_errors: int = 0
    over_budget: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Manipulator(abc.ABC):
    """Base of every backend; see the module doc for who owns what."""

    def __init__(self, info: ManipulatorInfo, write_budget_ns: int = 1_000_000) -> None:
        if info.n_joints < 1:
            raise ValueError(f"n_joints = {info.n_joints}: must be >= 1")
        self._info = info
        self.write_budget_ns = write_budget_ns
        """One control period: a write that takes longer is counted (and the backend
        gets this as its deadline, so stuck bytes fail instead of stalling the loop)."""
        self._counts = _Counts()
        self._open_state = False
        self._closed_lock = threading.Lock()
        self._write_error: str | None = None

    # ------------------------------------------------------------ lifecycle
    @property
    def info(self) -> ManipulatorInfo:
        return self._info

    def open(self) -> None:
        """Open the port or bus and handshake; raises ``ManipulatorError`` naming it."""
        if self._open_state:
            return
        self._open()
        self._open_state = True

    def close(self) -> None:
        """Release the port; safe to call twice and from ``__exit__`` after a failure."""
        with self._closed_lock:
            was_open, self._open_state = self._open_state, False
        if was_open:
            self._close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._open_state and self._is_connected()

    def reconnect(self) -> bool:
        """Called off the control loop (it may block) while ``connected`` is False."""
        if self.connected:
            return True
        ok = self._reconnect()
        if ok:
            self._open_state = True
        return ok

    # ------------------------------------------------------------ the period's I/O
    def read(self) -> Reading:
        """The newest sample and the faults since the last read; never blocks."""
        self._counts.reads += 1
        error, self._write_error = self._write_error, None
        if not self._open_state:
            return Reading(None, (), False, error)
        sample, faults = self._read()
        return Reading(sample, tuple(faults), self._is_connected(), error,
                       self._last_sent_seq())

    def write(self, frames: Sequence[Frame]) -> int:
        """Put ``frames`` on the port in one write; the monotonic ns they were handed over."""
        try:
            self._validate(frames)
            if not self.connected:
                raise ManipulatorError(f"{self._info.name}: not connected")
            start = time.monotonic_ns()
            sent_ns = self._write(frames, start + self.write_budget_ns)
        except ManipulatorError as err:
            self._counts.write_errors += not isinstance(err, InvalidFrame)
            self._write_error = str(err)
            raise
        self._counts.writes += 1
        self._counts.frames += len(frames)
        if sent_ns - start > self.write_budget_ns:
            self._counts.over_budget += 1
            _ratelog(logging.WARNING, "over_budget", "%s: write took %.0f us > budget %.0f us",
                     self._info.name, (sent_ns - start) / 1e3, self.write_budget_ns / 1e3)
        return sent_ns

    def _validate(self, frames: Sequence[Frame]) -> None:
        n = self._info.n_joints
        for f in frames:
            if isinstance(f, Targets):
                problem = None
                if len(f.q) != n:
                    problem = f"{len(f.q)} targets for {n} joints"
                # A finite sum has no NaN or inf in it (one in it makes the sum one): the
                # per-value check only when the sum is not finite (issue 11, every period).
                elif not math.isfinite(sum(f.q)) and not all(map(math.isfinite, f.q)):
                    problem = f"non-finite target {f.q}"
                elif not (math.isfinite(f.grip) and 0.0 <= f.grip <= 1.0):
                    problem = f"grip {f.grip} outside 0..1"
                if problem is not None:
                    self._counts.rejected_frames += 1
                    _ratelog(logging.ERROR, "rejected", "%s: frames refused, nothing sent: %s",
                             self._info.name, problem)
                    raise InvalidFrame(f"{self._info.name}: {problem}")
            elif not isinstance(f, Hold | Release):
                self._counts.rejected_frames += 1
                raise InvalidFrame(f"{self._info.name}: not a frame: {f!r}")

    @property
    def counters(self) -> dict[str, int]:
        c = self._counts
        out = {"reads": c.reads, "writes": c.writes, "frames": c.frames,
               "rejected_frames": c.rejected_frames, "write_errors": c.write_errors,
               "over_budget": c.over_budget}
        out.update(self._backend_counters())
        return out

    # ------------------------------------------------------------ for backends
    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    @abc.abstractmethod
    def _read(self) -> tuple[JointSample | None, Sequence[FaultNote]]: ...

    @abc.abstractmethod
    def _write(self, frames: Sequence[Frame], deadline_ns: int) -> int:
        """Hand every frame to the port in one call; return ``time.monotonic_ns()`` after
        it. Raise ``ManipulatorError`` when bytes cannot go out by ``deadline_ns``."""

    def _is_connected(self) -> bool:
        return True

    def _reconnect(self) -> bool:
        self._close()
        try:
            self._open()
        except ManipulatorError as err:
            log.info("%s: reconnect failed: %s", self._info.name, err)
            return False
        return True

    def _last_sent_seq(self) -> int | None:
        return None

    def _backend_counters(self) -> dict[str, int]:
        return {}
