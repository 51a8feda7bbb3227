"""CPU time per thread of this process, from ``/proc/self/task/*/stat``.

Where a process's CPU goes (issue 11: the control process's budget at 1 kHz) is a
question per thread: the control loop, the network thread, the serial reader,
libzmq's I/O thread. Python threads are named by ``threading`` (their kernel
``comm`` is the interpreter's); other threads (libzmq's ``ZMQbg/IO/0``) by their
``comm``. Threads of one name are summed. Linux only; elsewhere an empty dict.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu_seconds(task_dir: Path = Path("/proc/self/task")) -> dict[str, float]:
    """{thread name: user + system CPU seconds so far}; threads that ended are not in it."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    out: dict[str, float] = {}
    try:
        tasks = list(task_dir.iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        # "tid (comm) state ..." : comm may hold spaces or parentheses; split at the last ")".
        head, _, rest = stat.rpartition(")")
        fields = rest.split()
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
        tid = int(task.name)
        name = names.get(tid) or head.partition("(")[2]
        out[name] = out.get(name, 0.0) + (utime + stime) / _TICKS_PER_S
    return out


def describe(cpu_s: dict[str, float], seconds: float, periods: int) -> str:
    """One line: each thread's share of a core and its CPU per control period."""
    parts = []
    for name, s in sorted(cpu_s.items(), key=lambda kv: -kv[1]):
        if s <= 0.0:
            continue
        per = f", {s / periods * 1e6:.0f} us/period" if periods else ""
        parts.append(f"{name} {100 * s / seconds:.1f} %{per}" if seconds > 0 else name)
    return "; ".join(parts)
