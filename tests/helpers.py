"""Helpers shared by the test files (importable as ``from helpers import wait_until``).

``tests/conftest.py`` puts this directory on ``sys.path`` (pytest's default ``prepend``
import mode), which is also how ``ros_reference`` is found from ``unit/`` and ``system/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

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
