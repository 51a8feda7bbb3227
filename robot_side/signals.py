"""What every signal does to the robot node: the arm is never left moving unheld.

* ``SIGTERM``, ``SIGINT``, ``SIGQUIT``: an orderly stop. The handler only sets the
  node's halt event; the control loop then leaves, commands a hold with the brake and
  the node writes its ``stop`` record naming the signal.
* ``SIGHUP``: reload the authorised keys (as ``telesurgery keys reload`` does); the
  arm goes on as before unless a live surgeon session's key was revoked, which holds
  it with an audited trip (``Reason.KEY_REVOKED``).
* Every other catchable signal whose default would kill or stop the process
  (``SIGUSR1``, ``SIGUSR2``, ``SIGPIPE``, ``SIGALRM``, ``SIGTSTP``, ``SIGTTIN``,
  ``SIGTTOU``, ``SIGVTALRM``, ``SIGPROF``, ``SIGXCPU``, ``SIGXFSZ``, ``SIGIO``,
  ``SIGPWR``, ``SIGSTKFLT``, the real-time signals): ignored, logged and audited, so
  a stray ``kill -USR1`` neither kills the node mid-motion nor goes unrecorded.
* ``SIGKILL`` and ``SIGSTOP`` cannot be caught: the firmware's own watchdog brakes
  the arm within its period (invariant 6).

Python runs signal handlers in the main thread, which is the control loop: the
handlers here only set events and append to a bounded deque; the ``SignalDesk``
thread does the audit (fsync) and the reload outside the loop.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from telesurgery.errors import AuditError

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
RELOAD_SIGNALS = (signal.SIGHUP,)
IGNORED_SIGNALS: tuple[int, ...] = (
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE, signal.SIGALRM, signal.SIGTSTP,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGVTALRM, signal.SIGPROF, signal.SIGXCPU,
    signal.SIGXFSZ, signal.SIGIO,
    # Linux: these also terminate by default.
    *(getattr(signal, name) for name in ("SIGPWR", "SIGSTKFLT") if hasattr(signal, name)),
    *range(signal.SIGRTMIN, signal.SIGRTMAX + 1),
)
_AUDIT_EVERY_NS = 10_000_000_000
"""A signal storm is audited once per signal and 10 s, with its count."""

Scalar = str | int | float | bool | None


class SignalDesk(threading.Thread):
    """Installs the handlers; audits and acts on each signal outside the control loop."""

    def __init__(self, stop: Callable[[], None], reload: Callable[[], str]) -> None:
        super().__init__(name="robot-signals", daemon=True)
        self._stop_node = stop
        self._reload = reload
        self._audit: Callable[[str, dict[str, Scalar]], int] | None = None
        self._pending: collections.deque[int] = collections.deque(maxlen=64)
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._next_audit_ns: dict[int, int] = {}
        self.counts: collections.Counter[int] = collections.Counter()
        self.stop_signal: str | None = None
        """Name of the signal that stopped the node, for its ``stop`` record."""

    def install(self) -> None:
        """Called from the main thread before the node starts."""
        for sig in (*STOP_SIGNALS, *RELOAD_SIGNALS, *IGNORED_SIGNALS):
            signal.signal(sig, self._handler)

    def attach_audit(self, audit: Callable[[str, dict[str, Scalar]], int] | None) -> None:
        """The node's audit log once open; ``None`` again before it closes."""
        self._audit = audit

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the control thread between two bytecodes: flags only, no I/O.
        if signum in STOP_SIGNALS and self.stop_signal is None:
            self.stop_signal = _name(signum)
            self._stop_node()
        self._pending.append(signum)
        self._wake.set()

    def close(self) -> None:
        self._halt.set()
        self._wake.set()

    def run(self) -> None:
        while not self._halt.is_set():
            self._wake.wait()
            self._wake.clear()
            while self._pending:
                self._handle(self._pending.popleft())

    def _handle(self, signum: int) -> None:
        name = _name(signum)
        self.counts[signum] += 1
        if signum in STOP_SIGNALS:
            action = "stop: the arm holds"
        elif signum in RELOAD_SIGNALS:
            try:
                action = f"reload keys: {self._reload()}"
            except Exception as err:  # a failed reload must not kill the node
                log.exception("key reload on %s failed", name)
                action = f"reload keys failed: {err}"
        else:
            action = "ignored"
        log.warning("signal %s: %s", name, action)
        now = time.monotonic_ns()
        audit = self._audit
        if signum in STOP_SIGNALS:
            return  # the node's own ``stop`` record names it (the log closes right after)
        if audit is None or now < self._next_audit_ns.get(signum, 0):
            return
        self._next_audit_ns[signum] = now + _AUDIT_EVERY_NS
        try:
            audit("signal", {"signal": name, "action": action[:200],
                             "count": self.counts[signum]})
        except AuditError as err:
            log.error("signal %s not audited: %s", name, err)


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal has no enum member
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
