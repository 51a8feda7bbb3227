"""Helpers run their Python outside the control period (robot_side.gilwindow): the
window itself, and the serial reader's hook-up on a real emulator over a pty."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from robot_side.driver import SerialConfig, SerialManipulator
from robot_side.firmware_sim import FirmwareEmulator
from robot_side.gilwindow import ControlWindow

MS = 1_000_000


def test_room_before_the_deadline_or_no_loop_means_no_wait() -> None:
    w = ControlWindow(MS)
    assert w.wait_quiet(250_000) == 0  # no loop has run yet
    w.period_done(time.monotonic_ns() + 50 * MS)
    assert w.wait_quiet(250_000) == 0 and w.deferred == 0


def test_a_helper_waits_while_the_loop_works() -> None:
    w = ControlWindow(MS, max_wait_ns=10_000 * MS)
    w.period_started()
    done = threading.Timer(0.05, lambda: w.period_done(time.monotonic_ns() + 50 * MS))
    done.start()
    t0 = time.monotonic_ns()
    waited = w.wait_quiet(250_000)
    done.join()
    assert waited >= 40 * MS and time.monotonic_ns() - t0 >= 40 * MS
    assert w.deferred == 1 and w.deferred_ns == waited


def test_a_helper_does_not_start_into_a_near_deadline() -> None:
    w = ControlWindow(20 * MS, max_wait_ns=10_000 * MS)
    deadline = time.monotonic_ns() + 5 * MS  # nearer than the 10 ms chunk
    w.period_done(deadline)
    w.wait_quiet(10 * MS)
    assert time.monotonic_ns() >= deadline  # past it (no period came: the loop stopped)


def test_the_wait_is_bounded() -> None:
    w = ControlWindow(MS, max_wait_ns=20 * MS)
    w.period_started()  # a loop that never finishes its period
    waited = w.wait_quiet(250_000)
    assert 20 * MS <= waited < 2_000 * MS


def test_the_serial_reader_decodes_outside_the_period(tmp_path: Path) -> None:
    """Hook-up: while the loop "works", the reader does not hand over the emulator's
    reports (it would hold the GIL the loop wants); once the period is done, it does
    (fails when the reader ignores the window)."""
    with FirmwareEmulator(link=tmp_path / "ttyTS0", watchdog_ms=60_000) as emu:
        drv = SerialManipulator(SerialConfig(port=emu.port_path))
        drv.open()
        try:
            w = ControlWindow(MS, max_wait_ns=10_000 * MS)
            drv.window = w
            time.sleep(0.05)
            w.period_started()
            # Let the reader finish what it had taken before: at 500 Hz a report that
            # stays the newest for 20 ms means the reader now waits in the window.
            held, end = drv.latest_state(), time.monotonic() + 5.0
            while time.monotonic() < end:
                time.sleep(0.02)
                if drv.latest_state() is held:
                    break
                held = drv.latest_state()
            time.sleep(0.2)  # the emulator reports at 500 Hz meanwhile
            assert drv.latest_state() is held
            released = time.monotonic_ns()
            w.period_done(released + 50 * MS)
            end = time.monotonic() + 5.0
            while drv.latest_state() is held and time.monotonic() < end:
                time.sleep(0.005)
            latest = drv.latest_state()
            assert latest is not None and latest is not held and w.deferred >= 1
        finally:
            drv.close()
