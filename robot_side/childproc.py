"""The robot node's handle on one of its spawned helper processes.

The on-site page, the recorder, the patient-monitor source and the Zenoh fan-out
each run in a process of their own (spawned, never forked from the threaded node)
so nothing of theirs shares the control process's GIL. The node keeps one of
these handles per child; the child never touches the node. Each child gets the
node's pid (it exits when its parent is gone) and the node's log level after its
own arguments.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class ChildProcess:
    """Start/stop handle of one helper process: SIGTERM, a bounded wait, then SIGKILL."""

    def __init__(self, target: Callable[..., None], name: str, *args: Any,
                 stop_timeout_s: float = 3.0) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self.stop_timeout_s = stop_timeout_s
        self._proc = ctx.Process(target=target, name=name, daemon=True,
                                 args=(*args, os.getpid(),
                                       logging.getLogger().getEffectiveLevel()))

    def start(self) -> None:
        self._proc.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.is_alive()

    def stop(self) -> None:
        """SIGTERM (the child closes what it writes and exits), then SIGKILL after
        ``stop_timeout_s``."""
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(self.stop_timeout_s)
        if self._proc.is_alive():
            log.warning("%s did not stop in %.0f s; killing it", self.name, self.stop_timeout_s)
            self._proc.kill()
            self._proc.join(1.0)
