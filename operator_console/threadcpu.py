"""CPU seconds of each of this process's threads, by name, from ``/proc/self/task``.

For the run summary: which of the console's threads (the video loop on the main
thread, the paced command thread, the session thread, libzmq's I/O thread) costs
what. Read from outside the threads themselves, so a thread still running at
summary time is counted too. Empty where ``/proc`` does not exist.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(stat: str) -> tuple[str, float]:
    """(comm, utime + stime in seconds) from one ``/proc/.../stat`` line."""
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    return comm, (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def thread_cpu_seconds() -> dict[str, float]:
    """Every live thread's CPU seconds: Python threads by their names, native ones by
    ``native:`` and their kernel names (libzmq's ``ZMQbg/IO/0``; FFmpeg's slice threads
    carry the process's name), threads of one name summed."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    out: dict[str, float] = {}
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            comm, cpu = _cpu_s((task / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
        name = names.get(int(task.name), f"native:{comm}")
        out[name] = round(out.get(name, 0.0) + cpu, 2)
    return out
