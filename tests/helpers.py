"""Helpers shared by the test files (importable as ``from helpers import wait_until``).

``tests/conftest.py`` puts this directory on ``sys.path`` (pytest's default ``prepend``
import mode), which is also how ``ros_reference`` is found from ``unit/`` and ``system/``.
"""

from __future__ import annotations

import concurrent.futures
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from telesurgery.errors import LinkTimeout
from transport.config import LinkConfig
from transport.keys import ClientKeys
from transport.link import ConsoleLink
from transport.schema import Command, ControlReply, Telemetry

if TYPE_CHECKING:
    from hil_tests.rig import SimRig


def wait_until(pred: Callable[[], object], timeout_s: float = 5.0, what: str | None = None,
               *, step_s: float = 0.05) -> bool:
    """Poll ``pred`` every ``step_s`` until it is truthy or ``timeout_s`` has passed.

    Returns whether it became true (for ``assert wait_until(...)``); with ``what`` given, a
    timeout is an AssertionError naming what was awaited instead.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step_s)
    ok = bool(pred())
    if what is not None:
        assert ok, f"timed out after {timeout_s} s waiting for {what}"
    return ok


# ------------------------------------------------------------- against a running rig
def joints(rig: SimRig) -> np.ndarray:
    """The emulated arm's joint positions, from the firmware emulator's control socket."""
    state: dict[str, Any] = rig.firmware({"state": True})["state"]
    return np.array(state["positions"])


def motion_over(rig: SimRig, seconds: float) -> float:
    """The largest joint motion (rad) over ``seconds``."""
    before = joints(rig)
    time.sleep(seconds)
    return float(np.abs(joints(rig) - before).max())


def following(rig: SimRig) -> bool:
    return rig.state()[0] == "following"


# ------------------------------------------------------------- a scripted surgeon console
Motion = Callable[[float], tuple[float, float, float]]
"""A master position (m) from the seconds since the console started."""


def still(_t_s: float) -> tuple[float, float, float]:
    """The master holds still at the origin."""
    return (0.0, 0.0, 0.0)


def wave_x(t_s: float) -> tuple[float, float, float]:
    """A 2 cm, 1 Hz wave in x."""
    return (0.02 * math.sin(2 * math.pi * t_s), 0.0, 0.0)


class Surgeon(threading.Thread):
    """One scripted surgeon console on a real ConsoleLink: streams its master pose
    (``motion``, which a test may swap at any time; the orientation is the arm's measured
    one), answers pings, keeps the newest telemetry, and runs control requests one at a
    time in its own thread (ZeroMQ sockets are single-thread)."""

    def __init__(self, cfg: LinkConfig, keys: ClientKeys, motion: Motion = still, *,
                 wait_s: float = 15.0, request_timeout_ms: int = 3000) -> None:
        super().__init__(daemon=True)
        self.link = ConsoleLink(cfg, keys)
        self.motion = motion
        self.wait_s = wait_s
        """How long ``engage`` and ``following`` wait."""
        self.request_timeout_ms = request_timeout_ms
        """A request's reply timeout unless ``ask`` is given one."""
        self.tlm: Telemetry | None = None
        self._ops: queue.Queue[tuple[str, int | None, int,
                                     concurrent.futures.Future[ControlReply | None]]]
        self._ops = queue.Queue()
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def ask(self, op: str, handoff: int | None = None,
            timeout_ms: int | None = None) -> concurrent.futures.Future[ControlReply | None]:
        """Queue a control request; its future gets the reply (None on a link timeout)."""
        done: concurrent.futures.Future[ControlReply | None] = concurrent.futures.Future()
        self._ops.put((op, handoff, timeout_ms or self.request_timeout_ms, done))
        return done

    def engage(self) -> None:
        """Engage as a surgeon does: again until the robot agrees (link settled)."""
        def engaged() -> bool:
            reply = self.ask("engage").result(5.0)
            return reply is not None and reply.ok
        wait_until(engaged, self.wait_s, "the engage", step_s=0.005)

    def following(self, pred: Callable[[], object], what: str) -> None:
        """Wait for ``pred`` while following; re-engage after a trip, as a surgeon does
        (a loaded two-core machine can starve this stream into a command timeout, or
        the loop into the firmware's watchdog). What is asserted holds either way."""
        def check() -> object:
            if pred():
                return True
            state = None if self.tlm is None else self.tlm.state
            if state == "fault":  # the virtual firmware's watchdog, a starved loop
                self.ask("clear_fault").result(5.0)
            elif state in ("ready", "hold"):
                self.ask("engage").result(5.0)
            return False
        if not wait_until(check, self.wait_s, step_s=0.005):
            tlm = self.tlm
            raise AssertionError(f"timed out waiting for {what} (robot "
                                 f"{tlm.state if tlm else None}, {tlm.reason if tlm else None})")

    def run(self) -> None:
        seq = 0
        try:
            while not self._halt.is_set():
                for item in self.link.poll(2):
                    if isinstance(item.msg, Telemetry):
                        self.tlm = item.msg
                if self.tlm is not None:
                    seq += 1
                    now = time.monotonic_ns()
                    self.link.send_command(Command(
                        seq=seq, t_send_ns=now, position=self.motion(time.monotonic() - self._t0),
                        orientation=self.tlm.measured_cp.orientation, grip=0.0, clutch=False,
                        operator_present=True, t_sample_ns=now))
                try:
                    op, handoff, timeout_ms, done = self._ops.get_nowait()
                except queue.Empty:
                    continue
                try:
                    done.set_result(self.link.request(op, handoff=handoff,
                                                      timeout_ms=timeout_ms))
                except LinkTimeout:
                    done.set_result(None)
        finally:
            self.link.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._halt.set()
        self.join(timeout_s)
