"""The recorder's health as the robot node tells the surgeon: one short text in telemetry.

The recorder process writes its status file (``recorder.recording_status_path``) about
once a second. The node's network thread (never the control thread) calls a
``RecordingHealth`` each time it builds a telemetry message; the file is read at most
once per ``READ_PERIOD_NS`` and the answer cached in between. What it says:

* ``"ok"``: recording, status fresh;
* ``"starting"``: no status from this run's recorder yet (within ``START_GRACE_NS``);
* ``"stopped: <why>"``: the recorder stopped (disk nearly full, folder gone, write
  failed), did not start, has not answered for ``STALE_NS``, or never did.

A status older than this node's start is a previous run's, never taken as current.
Telemetry carries it (``Telemetry.recording``), so the console's HUD and status view
show a recording alarm (``operator_console.view``); the arm is never affected.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from telesurgery.ratelog import RateLimitedLog

log = logging.getLogger(__name__)
ratelog = RateLimitedLog(log)

READ_PERIOD_NS = 500_000_000
STALE_NS = 10_000_000_000
"""The recorder writes every second: ten seconds without a status is a dead or hung
recorder (five were seen on a machine at load 37 while it caught up)."""
START_GRACE_NS = 30_000_000_000
"""A spawned recorder imports rosbags and opens its bag before its first status."""
OK = "ok"


def recording_status_path(robot_cfg: Any) -> Path:
    """The recorder's status file in the robot's runtime folder (the page reads it too)."""
    path: Path = robot_cfg.estop.socket.parent / "recording.json"
    return path


class RecordingHealth:
    """Callable: the recorder's health now (cached; reads the file at most twice a second)."""

    def __init__(self, status_path: Path) -> None:
        self.path = status_path
        self.started_ns = time.monotonic_ns()
        self._next_read_ns = 0
        self._answer = "starting"
        self.reads = 0
        self.bad_status = 0

    def __call__(self) -> str:
        now = time.monotonic_ns()
        if now >= self._next_read_ns:
            self._next_read_ns = now + READ_PERIOD_NS
            self._answer = self._judge(now)
        return self._answer

    def _judge(self, now: int) -> str:
        self.reads += 1
        try:
            body = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            body = None
        except (OSError, ValueError) as err:  # a torn or foreign file: say so, keep going
            self.bad_status += 1
            ratelog(logging.WARNING, "status", "recording status %s unreadable: %s",
                    self.path, err)
            body = None
        written = body.get("t_ns") if body is not None else None
        state = body.get("state") if body is not None else None
        why = str(body.get("why") or "no reason given")[:100] if body is not None else ""
        if state in ("failed", "stopped") and (written is None or written >= self.started_ns):
            return f"stopped: {why}"  # terminal: no fresher status will come
        if not isinstance(written, int) or written < self.started_ns:
            if now - self.started_ns < START_GRACE_NS:
                return "starting"
            return "stopped: the recorder never reported"
        if now - written > STALE_NS:
            return f"stopped: the recorder has not reported for {(now - written) / 1e9:.0f} s"
        return OK if state == "recording" else f"stopped: {state}"
