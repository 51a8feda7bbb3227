"""Is the robot's own start-up over? The node's children report ready, within a bound.

Issue 11: the healthy rig tripped in its first seconds (``serial_fault``, ``video_stale``)
because the console engaged ~2 s after the node came up, while the node's children
were still starting (the ROS 2 bridge importing, opening DDS and collecting its heap;
the video process probing encoders). A surgeon expects a robot that says "not ready"
rather than one that trips a second after the engage: until every child the node
waits for says it is up, engage is refused with ``Reason.NOT_READY`` and a detail in
plain words ("robot starting: waiting for the ROS 2 bridge"); arming, e-stop and every
other path are unchanged.

A child that never comes up must not keep the robot unusable silently: after
``startup.children_timeout_s`` (or as soon as the child reports an error or exits)
the detail says which child failed and why, the failure is logged once at ERROR and
audited, and engage stays refused (the ROS 2 bridge also carries the ROS e-stop topic,
the video the surgeon's picture; neither is optional once configured). A child that
reported an error or exited stays failed (the staff restart the node); one that was
only late is still asked, and the robot becomes ready if it comes up after all (a
child starved by a loaded machine, issue 11's shared test host).

``StartupWatch`` is pure (``check(now_ns)``, no clock of its own, probes given as
callables); ``ReadinessThread`` polls it off the control loop and publishes one
reference (``detail``) that the loop reads each period into ``ControlInputs``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

POLL_S = 0.05

Probe = Callable[[], "bool | str"]
"""True: up. False: still starting. A string: failed, and why (one line)."""


@dataclass
class _Child:
    words: str
    probe: Probe
    ready_ns: int | None = None
    failure: str | None = None
    """Final: the child reported an error or exited."""
    late: bool = False
    """Past the bound: named as failed, still asked (a starved child may yet come up)."""


class StartupWatch:
    """The children the robot waits for before it may follow; pure, time passed in."""

    def __init__(self, start_ns: int, timeout_s: float) -> None:
        self.start_ns = start_ns
        self.timeout_ns = int(timeout_s * 1e9)
        self._children: dict[str, _Child] = {}
        self.failures: list[str] = []
        """Each failure once, in plain words, for the log and the audit."""

    def add(self, name: str, words: str, probe: Probe) -> None:
        """Wait for ``name`` (``words``: how the staff call it, "the ROS 2 bridge")."""
        self._children[name] = _Child(words, probe)

    def check(self, now_ns: int) -> str | None:
        """None once every child is up; else what the robot waits for, or what failed."""
        waiting: list[str] = []
        failed: list[str] = []
        for child in self._children.values():
            if child.ready_ns is not None:
                continue
            if child.failure is None:
                self._probe(child, now_ns)
            if child.ready_ns is not None:
                continue
            if child.failure is not None:
                failed.append(f"{child.words} {child.failure}")
            elif child.late:
                failed.append(f"{child.words} {self._late_words}")
            else:
                waiting.append(child.words)
        if failed:
            return "robot not ready: " + "; ".join(failed)
        if waiting:
            return "robot starting: waiting for " + " and ".join(waiting)
        return None

    @property
    def ready_after_s(self) -> dict[str, float]:
        """Each child that came up, and when, in seconds after the watch started."""
        return {name: round((c.ready_ns - self.start_ns) / 1e9, 3)
                for name, c in self._children.items() if c.ready_ns is not None}

    @property
    def _late_words(self) -> str:
        return f"did not come up in {self.timeout_ns / 1e9:.0f} s"

    def _probe(self, child: _Child, now_ns: int) -> None:
        try:
            answer = child.probe()
        except Exception as err:  # a probe is the node's code; its bug must not hide a child
            answer = f"could not be checked: {err}"
        if answer is True:
            child.ready_ns = now_ns
            if child.late:
                log.warning("%s came up after all, %.1f s after start", child.words,
                            (now_ns - self.start_ns) / 1e9)
            return
        if isinstance(answer, str):
            child.failure = answer
            self.failures.append(f"{child.words} {answer}")
        elif not child.late and now_ns - self.start_ns >= self.timeout_ns:
            child.late = True
            self.failures.append(f"{child.words} {self._late_words}")


class ReadinessThread(threading.Thread):
    """Polls a ``StartupWatch`` every 50 ms until all is up; never touches the loop.

    ``detail`` is the one reference the control loop reads (None: ready). Each failure
    goes once to the log and to ``on_failure`` (the node audits it).
    """

    def __init__(self, watch: StartupWatch, on_failure: Callable[[str], None]) -> None:
        super().__init__(name="robot-readiness", daemon=True)
        self.watch = watch
        self._on_failure = on_failure
        self._halt = threading.Event()
        self._reported = 0
        self.detail: str | None = watch.check(time.monotonic_ns())
        self.ready_ns: int | None = None

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        last = self.detail
        while not self._halt.wait(POLL_S):
            now = time.monotonic_ns()
            detail = self.watch.check(now)
            self.detail = detail
            for failure in self.watch.failures[self._reported:]:
                self._reported += 1
                log.error("robot not ready: %s; engage is refused", failure)
                self._on_failure(failure)
            if detail != last:
                log.info("%s", detail or "robot ready to follow: children up after "
                         + ", ".join(f"{k} {v:.1f} s" for k, v in
                                     self.watch.ready_after_s.items()))
                last = detail
            if detail is None:
                self.ready_ns = now
                return


class _VideoChild(Protocol):
    error: str | None
    stats: dict[str, Any]

    @property
    def exitcode(self) -> int | None: ...


def video_probe(video: _VideoChild) -> Probe:
    """The video process is up once it has sent a picture (its once-a-second report,
    taken by the network thread's poll, counts them)."""
    def probe() -> bool | str:
        if video.error is not None:
            return f"failed: {video.error}"
        code = video.exitcode
        if code is not None:
            return f"exited (code {code})"
        return int(video.stats.get("sent", 0)) > 0
    return probe
