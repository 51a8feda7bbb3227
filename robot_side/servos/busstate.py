"""What the bus thread keeps between cycles: pending frames, servo states, cycle times.

Split from ``robot_side.servos.arm`` so each stays readable; nothing here does I/O.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from robot_side.manipulator.base import Frame, ManipulatorError, Targets


class BadPacket(ManipulatorError):
    """An SDK call tripped over a well-formed but unexpected status (too short for what
    was asked): counted and treated as no answer, not as a failed port."""


FAULT_SERVO_HARDWARE = 20
FAULT_SERVO_SILENT = 21
FAULT_BUS_WATCHDOG = 23
CYCLE_LOG = 65_536


@dataclass
class ServoState:
    """What one servo last reported (raw units), and how it has been answering."""

    raw: dict[int, int]
    """Register address -> decoded value."""
    error_bits: int = 0
    missed: int = 0
    ok_ns: int = 0


@dataclass(frozen=True)
class Command:
    seq: int
    frames: tuple[Frame, ...]
    at_ns: int


MAX_PENDING = 16


def merge_pending(pending: Command | None, new: Command) -> Command:
    """What the bus thread has not applied yet, plus ``new``: the down-sampling.

    Only targets are replaced by newer ones; a Hold or Release is never dropped (a
    Release followed by targets within one bus cycle still releases), and a Hold or
    Release supersedes targets queued before it.
    """
    frames: list[Frame] = list(pending.frames) if pending is not None else []
    for frame in new.frames:
        if isinstance(frame, Targets):
            if frames and isinstance(frames[-1], Targets):
                frames[-1] = frame
            else:
                frames.append(frame)
        else:
            frames = [f for f in frames if not isinstance(f, Targets)]
            frames.append(frame)
    return Command(new.seq, tuple(frames[-MAX_PENDING:]), new.at_ns)




class CycleLog:
    """Per bus cycle: when it started and how long its write and its read took (ns)."""

    def __init__(self, maxlen: int = CYCLE_LOG) -> None:
        self.start: collections.deque[int] = collections.deque(maxlen=maxlen)
        self.write: collections.deque[int] = collections.deque(maxlen=maxlen)
        self.read: collections.deque[int] = collections.deque(maxlen=maxlen)

    def add(self, start_ns: int, write_ns: int, read_ns: int) -> None:
        self.start.append(start_ns)
        self.write.append(write_ns)
        self.read.append(read_ns)

    def rate_hz(self, last: int = 50) -> float | None:
        stamps = list(self.start)[-last:]
        if len(stamps) < 2 or stamps[-1] == stamps[0]:
            return None
        return (len(stamps) - 1) * 1e9 / (stamps[-1] - stamps[0])


Status = tuple[int, bytes]
"""A status packet's error byte and data."""
Received = tuple[str, int, int, bytes]
"""("ok" | "timeout" | "corrupt" | "short", servo ID, error byte, data)."""


def count_garbage(counts: dict[str, int], skipped: int) -> None:
    """Bytes the packet handler read but returned in no packet (noise before a header,
    the remains of a damaged packet) go to ``rx_garbage_bytes``. A byte-stuffed
    Dynamixel packet (data holding FF FF FD) counts its stuffing bytes here too."""
    if skipped > 0:
        counts["rx_garbage_bytes"] += skipped


def collect_statuses(ids: Sequence[int], receive: Callable[[], Received],
                     counts: dict[str, int]) -> dict[int, Status | None]:
    """The status of each servo of one sync read, in order; None where none came.

    A status from another servo of the same read (its predecessor was silent, so it
    answered early) is kept for its turn; one from a servo not asked is counted as
    wrong-ID and dropped. Timeouts, corrupt and short packets are counted.
    """
    early: dict[int, Status] = {}
    out: dict[int, Status | None] = {}
    for k, sid in enumerate(ids):
        if sid in early:
            out[sid] = early.pop(sid)
            continue
        later = set(ids[k + 1:])
        while True:
            kind, rid, error, data = receive()
            if kind != "ok":
                counts[f"rx_{kind}s" if kind == "timeout" else f"rx_{kind}"] += 1
                out[sid] = None
                break
            if rid == sid:
                out[sid] = (error, data)
                break
            if rid in later and rid not in early:
                early[rid] = (error, data)
                continue
            counts["rx_wrong_id"] += 1
    return out
