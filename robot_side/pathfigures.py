"""The path and latency figures of the run summary: preallocated rings of
microsecond figures and the console-sample -> frame-written recorder.

Apart from ``robot_side.command_port`` (which fills two of them) because they are
plain figures with no socket: the node's summary and the tests read them alone.
"""

from __future__ import annotations

import numpy as np

from transport.schema import Command

LATENCY_RING = 1 << 18
"""One-way latencies kept for the run summary: over four minutes at 1 kHz."""
MAX_PATH_SESSIONS = 32
"""Command sessions whose path figures are kept apart (``PathRecorder.by_session``)."""


class LatencyRing:
    """Preallocated ring of microsecond figures; nothing is allocated per sample."""

    def __init__(self, size: int = LATENCY_RING) -> None:
        self._us = np.zeros(size, dtype=np.int64)
        self.n = 0

    def add(self, us: int) -> None:
        self._us[self.n % len(self._us)] = us
        self.n += 1

    def percentiles(self, where: np.ndarray | None = None) -> dict[str, float]:
        """{n, p50_us, p99_us, p999_us, max_us} over what the ring holds; {n: 0} if empty.

        ``where``: a boolean mask over the ring's slots, to take a part of it."""
        k = min(self.n, len(self._us))
        data = self._us[:k] if where is None else self._us[:k][where[:k]]
        if len(data) == 0:
            return {"n": 0}
        p50, p99, p999 = np.percentile(data, [50, 99, 99.9])
        return {"n": self.n if where is None else len(data), "p50_us": float(p50),
                "p99_us": float(p99), "p999_us": float(p999), "max_us": float(data.max())}


class PathRecorder:
    """Console sample -> serial frame written, once per command that moved the arm.

    ``t_sample_ns`` is on the console's clock; it is mapped with the offset the
    robot measured itself (ClockSync), never a time the console claims about us.
    """

    def __init__(self) -> None:
        self.ring = LatencyRing()
        self.console = LatencyRing(1 << 16)
        """Its parts, to tell where the time goes: sample -> send on the console ..."""
        self.robot = LatencyRing(1 << 16)
        """... and receive -> frame written on the robot (the rest is the network)."""
        self._last_seq: int | None = None
        self.unmapped = 0
        self._session_of = np.zeros(LATENCY_RING, dtype=np.int8)
        """Per slot of ``ring``: the index of the session (in ``_sessions``) it belongs to."""
        self._sessions: dict[int | None, int] = {}

    def by_session(self) -> list[dict[str, float]]:
        """The path's figures per command session (surgeon console, ROS commander, ...),
        in the order the sessions first moved the arm (``bench path --ros``)."""
        return [self.ring.percentiles(self._session_of == i)
                for i in self._sessions.values()]

    def record(self, cmd: Command, offset_ns: int | None, written_ns: int,
               recv_ns: int | None = None) -> None:
        if cmd.seq == self._last_seq or cmd.t_sample_ns is None:
            return
        self._last_seq = cmd.seq
        if recv_ns is not None:
            self.robot.add((written_ns - recv_ns) // 1000)
        self.console.add((cmd.t_send_ns - cmd.t_sample_ns) // 1000)
        if offset_ns is None:
            self.unmapped += 1
            return
        index = self._sessions.get(cmd.session)
        if index is None:  # at most MAX_PATH_SESSIONS; later ones count as the last
            index = min(len(self._sessions), MAX_PATH_SESSIONS - 1)
            if len(self._sessions) < MAX_PATH_SESSIONS:
                self._sessions[cmd.session] = index
        self._session_of[self.ring.n % len(self._session_of)] = index
        self.ring.add((written_ns - (cmd.t_sample_ns + offset_ns)) // 1000)
