"""Is this command fresh? A pure judgement: no sockets, the clock is passed in.

A command is FRESH only when all of these hold:

* its sequence number is above the last one accepted in this session
  (equal: DUPLICATE, below: REPLAY), so nothing is executed twice or out of order;
* the clock offset to the console is known (otherwise NO_CLOCK: its age can not
  be proven, so it is not fresh);
* its age, ``recv_ns - (t_send_ns + offset_ns)``, is within the limit (else STALE).
  A command from the future by more than the limit is STALE too: the clocks
  disagree and its age can not be trusted either way.

Only FRESH advances the session's sequence number. ``reset()`` starts a new
session; the robot calls it when the surgeon arms, because the console
restarts its sequence numbers per run.
"""

from __future__ import annotations

import enum
from collections import Counter

from telesurgery.errors import ConfigError
from transport.schema import Command


class Verdict(enum.Enum):
    FRESH = "fresh"
    DUPLICATE = "duplicate"
    REPLAY = "replay"
    STALE = "stale"
    NO_CLOCK = "no_clock"
    INVALID = "invalid"
    """Judged by ``transport.intake``: a sequence jump the robot's own clock rules out."""
    FOREIGN = "foreign"
    """Judged by ``transport.intake``: not the current surgeon session's token."""


class CommandGate:
    """Accepts each command at most once, in order, and only while young enough."""

    def __init__(self, age_limit_ns: int) -> None:
        if age_limit_ns <= 0:
            raise ConfigError(f"age_limit_ns = {age_limit_ns}: must be > 0")
        self.age_limit_ns = age_limit_ns
        self.counts: Counter[Verdict] = Counter()
        self.last_seq: int | None = None
        """Sequence number of the last FRESH command in this session."""
        self.last_age_ns: int | None = None
        """Age of the last command judged with a known clock (for statistics)."""

    def offer(self, cmd: Command, recv_ns: int, offset_ns: int | None) -> Verdict:
        verdict = self._judge(cmd, recv_ns, offset_ns)
        self.counts[verdict] += 1
        if verdict is Verdict.FRESH:
            self.last_seq = cmd.seq
        return verdict

    def reset(self) -> None:
        """Start a new session: the next command is judged without sequence history."""
        self.last_seq = None

    @property
    def counters(self) -> dict[str, int]:
        return {v.value: self.counts[v] for v in Verdict}

    def _judge(self, cmd: Command, recv_ns: int, offset_ns: int | None) -> Verdict:
        if self.last_seq is not None:
            if cmd.seq == self.last_seq:
                return Verdict.DUPLICATE
            if cmd.seq < self.last_seq:
                return Verdict.REPLAY
        if offset_ns is None:
            return Verdict.NO_CLOCK
        age = recv_ns - (cmd.t_send_ns + offset_ns)
        self.last_age_ns = age
        if abs(age) > self.age_limit_ns:
            return Verdict.STALE
        return Verdict.FRESH
