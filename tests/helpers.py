"""Helpers shared by the test files (importable as ``from helpers import wait_until``).

``tests/conftest.py`` puts this directory on ``sys.path`` (pytest's default ``prepend``
import mode), which is also how ``ros_reference`` is found from ``unit/`` and ``system/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


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
