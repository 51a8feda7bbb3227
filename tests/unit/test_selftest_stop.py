"""Ctrl-C and SIGTERM stop ``telesurgery selftest`` at its next check, never lost.

The handler only notes the signal (``transport.selftest._note_stop``): an exception
raised from a handler lands wherever the main thread is, and inside a destructor Python
prints it and drops it. The system test (tests/system/test_link.py,
``test_selftest_stops_in_one_line_and_leaves_no_child``) runs the real process."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from transport import selftest


@pytest.fixture(autouse=True)
def no_stop_noted() -> Iterator[None]:
    selftest._STOP_SIGNAL.clear()
    yield
    selftest._STOP_SIGNAL.clear()


class _RaisesInItsDestructor:
    def __del__(self) -> None:
        raise KeyboardInterrupt  # what the default SIGINT handler can do mid-destructor


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_noted_signal_survives_a_destructor_and_stops_at_the_next_check() -> None:
    selftest._note_stop(signal.SIGINT, None)
    obj = _RaisesInItsDestructor()
    del obj  # Python prints "Exception ignored in ..." and goes on: the note stays
    with pytest.raises(selftest.Interrupted) as why:
        selftest.check_stop()
    assert why.value.signum == signal.SIGINT


def test_the_first_signal_is_the_one_reported() -> None:
    selftest._note_stop(signal.SIGTERM, None)
    selftest._note_stop(signal.SIGINT, None)
    with pytest.raises(selftest.Interrupted) as why:
        selftest.check_stop()
    assert why.value.signum == signal.SIGTERM


def test_no_signal_no_stop() -> None:
    selftest.check_stop()  # returns: nothing was noted
