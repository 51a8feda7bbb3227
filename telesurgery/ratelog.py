"""Rate-limited logging for input nobody on our side controls.

A hostile or broken peer can send thousands of bad messages a second; one log
line each would fill the disk and steal the CPU the control loop needs. Every
place that logs about untrusted input counts each event and logs at most once
per ``interval_ns`` per key, with the count of what it did not log.
"""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Counts every event; logs the first and then at most one line per interval and key."""

    def __init__(self, logger: logging.Logger, interval_s: float = 1.0,
                 max_keys: int = 256) -> None:
        self._log = logger
        self._interval_ns = int(interval_s * 1e9)
        self._max_keys = max_keys
        self._next_ns: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def __call__(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Count one ``key`` event; returns True when a line was written."""
        if key not in self.counts and len(self.counts) >= self._max_keys:
            key = "other"  # a peer choosing keys must not grow these tables without bound
        self.counts[key] = self.counts.get(key, 0) + 1
        now = time.monotonic_ns()
        if now < self._next_ns.get(key, 0):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._next_ns[key] = now + self._interval_ns
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            self._log.log(level, msg + " (%d more like it not logged)", *args, skipped)
        else:
            self._log.log(level, msg, *args)
        return True
