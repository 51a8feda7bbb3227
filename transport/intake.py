"""Where every command the robot receives is judged: session, sequence, freshness, statistics.

``CommandIntake`` owns the ``CommandGate`` and the ``LinkStats`` and puts three
rules in front of them, in this order:

1. **Session**: a command must carry the token of the current surgeon session
   (``transport.session_guard``); before the first session only untokened
   commands pass. Anything else is FOREIGN.
2. **Plausible sequence**: from the last accepted command, the sequence number
   can advance at most as fast as the console may send (``max_command_hz``,
   with a margin) over the time *the robot measured* between the two arrivals,
   plus twice the age limit (two fresh commands can differ in latency by that
   much). A larger jump is INVALID: counted, logged rate-limited, audited once
   per session, and it never becomes the newest command. Without this one
   message with seq 2**64-1 would make every later command a replay and lock
   the surgeon out until a re-arm.
3. **Fresh** (``CommandGate``): in order, not seen, young enough.

Only FRESH commands feed the link statistics. A STALE or INVALID command is
evidence about nobody's link: letting it in made one hostile command turn every
later real one into "old" (latency_high) and pushed the latency out of the
telemetry schema, so nobody saw anything.

Pure logic: no sockets, no clock of its own. ``reset(session)`` starts a new
session (the robot calls it when the surgeon is granted ``arm``); nothing else
clears the sequence history.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass

from telesurgery.errors import ConfigError
from telesurgery.ratelog import RateLimitedLog
from transport.gate import CommandGate, Verdict
from transport.linkstats import LinkStats
from transport.schema import Command

log = logging.getLogger(__name__)

RATE_MARGIN = 1.25
"""The console's configured rate times this is the fastest a sequence may advance."""
SEQ_SLACK = 16
"""Sequence numbers allowed on top of the rate bound (a burst after a scheduling hiccup)."""
MAX_ALERTS = 64


@dataclass(frozen=True, slots=True)
class AuditAlert:
    """Something a peer did that belongs in the audit log; the node writes it once."""

    t_ns: int
    code: str
    detail: str
    level: int = logging.WARNING


class CommandIntake:
    """The robot's judge of incoming commands: ``offer()`` each one, in arrival order."""

    def __init__(self, age_limit_ns: int, loss_window_ns: int, max_command_hz: float) -> None:
        if not max_command_hz > 0:
            raise ConfigError(f"max_command_hz = {max_command_hz}: must be > 0")
        self.gate = CommandGate(age_limit_ns)
        self.stats = LinkStats(loss_window_ns)
        self.max_command_hz = max_command_hz
        self._slack_ns = 2 * age_limit_ns
        self.session: int | None = None
        """Token the commands must carry; None until the first session is granted."""
        self._previous: int | None = None
        self._last_recv_ns: int | None = None
        self._alerted: set[str] = set()
        self._alerts: deque[AuditAlert] = deque(maxlen=MAX_ALERTS)
        self._counts: Counter[Verdict] = Counter()
        self._fresh = 0
        """FRESH verdicts, counted apart: an Enum's hash is a Python call (two a
        ``Counter`` increment), and nearly every command is fresh (issue 11)."""
        self._ratelog = RateLimitedLog(log)

    # ---------------------------------------------------------------- input
    def offer(self, cmd: Command, recv_ns: int, offset_ns: int | None) -> Verdict:
        """Judge one command received at ``recv_ns`` (robot clock); FRESH means act on it."""
        verdict = self._judge(cmd, recv_ns, offset_ns)
        if verdict is Verdict.FRESH:
            self._fresh += 1
            self._last_recv_ns = recv_ns
            self.stats.on_message(cmd.seq, cmd.t_send_ns, recv_ns, offset_ns)
        else:
            self._counts[verdict] += 1
        return verdict

    def reset(self, session: int | None = None) -> None:
        """A new surgeon session (granted ``arm``): no sequence history, new token."""
        self._previous, self.session = self.session, session
        self.gate.reset()
        self.stats.reset()
        self._last_recv_ns = None
        self._alerted.clear()

    def _judge(self, cmd: Command, recv_ns: int, offset_ns: int | None) -> Verdict:
        if cmd.session != self.session:
            if cmd.session == self._previous and self.gate.last_seq is None:
                # Sent before the console learnt its new token: expected, not news. One
                # connection delivers in order, so none comes after the first fresh one.
                return Verdict.FOREIGN
            self._ratelog(logging.WARNING, "foreign",
                          "command refused: not from the current surgeon session")
            self._alert_once(recv_ns, "command_foreign_session",
                             "a command with another session's token (or none) was refused")
            return Verdict.FOREIGN
        last = self.gate.last_seq
        if last is not None and self._last_recv_ns is not None and cmd.seq > last:
            elapsed = max(0, recv_ns - self._last_recv_ns)
            allowed = int((elapsed + self._slack_ns) * self.max_command_hz * RATE_MARGIN
                          / 1e9) + SEQ_SLACK
            if cmd.seq - last > allowed:
                self._ratelog(logging.WARNING, "seq_jump",
                              "command refused: sequence jump of %d in %.1f ms (at most %d)",
                              cmd.seq - last, elapsed / 1e6, allowed)
                self._alert_once(recv_ns, "implausible_sequence_jump",
                                 f"seq {last} -> {cmd.seq} in {elapsed / 1e6:.1f} ms on the "
                                 f"robot's clock; at most {allowed} allowed")
                return Verdict.INVALID
        return self.gate.offer(cmd, recv_ns, offset_ns)

    def _alert_once(self, t_ns: int, code: str, detail: str) -> None:
        """Audit the first of each kind per session; the rest are counted and logged."""
        if code in self._alerted:
            return
        self._alerted.add(code)
        self._alerts.append(AuditAlert(t_ns, code, detail))

    # ---------------------------------------------------------------- output
    @property
    def has_alerts(self) -> bool:
        """Anything for ``drain_alerts``? (Asked every period: no list is made for nothing.)"""
        return bool(self._alerts)

    def drain_alerts(self) -> list[AuditAlert]:
        """Audit-worthy events since the last call, each reported once."""
        out = list(self._alerts)
        self._alerts.clear()
        return out

    @property
    def counters(self) -> dict[str, int]:
        """Every verdict, those of the intake's own rules included."""
        counts = {v.value: self._counts[v] for v in Verdict}
        counts[Verdict.FRESH.value] = self._fresh
        return counts

    @property
    def last_seq(self) -> int | None:
        return self.gate.last_seq
