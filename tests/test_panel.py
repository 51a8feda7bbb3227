"""The on-site supervision panel against a real robot node and firmware emulator."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil_tests.rig import RigOptions, SimRig
from robot_side.panel import render_panel
from robot_side.serial_protocol import FwFlags


class RobotOnlyRig(SimRig):
    """The rig without a console: the panel is for the staff beside the robot."""

    def start_console(self, name: str = "console") -> None:
        return None


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RobotOnlyRig]:
    run = tmp_path_factory.mktemp("panel")
    with RobotOnlyRig(RigOptions(run_dir=run, video=False, ros_backend="none")) as r:
        r.start()
        yield r


def panel(rig: SimRig) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "telesurgery.cli", "panel", "--once",
                           "--socket", str(rig.run / "estop.sock")],
                          capture_output=True, text=True, timeout=30, check=False)


def wait_for(rig: SimRig, text: str) -> str:
    deadline = time.monotonic() + 10
    out = ""
    while time.monotonic() < deadline:
        out = panel(rig).stdout
        if text in out:
            return out
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never shown; last panel:\n{out}")


def test_render_names_state_reason_flags_and_events() -> None:
    text = render_panel({"state": "fault", "reason": "serial_fault", "estop": False,
                         "firmware_flags": int(FwFlags.BRAKED | FwFlags.WATCHDOG_TRIPPED),
                         "link_ok": False, "link_detail": "no command", "rtt_ms": None,
                         "loss": 0.5, "events": ["following -> fault: serial_fault"]},
                        color=False)
    assert "ROBOT FAULT" in text and "serial_fault" in text
    assert "BRAKED" in text and "WATCHDOG_TRIPPED" in text
    assert "loss 50.0 %" in text and "following -> fault" in text


def test_panel_shows_the_robot_and_the_local_estop_round_trip(rig: RobotOnlyRig) -> None:
    assert "ROBOT" in wait_for(rig, "ROBOT")
    assert rig.estop("press").startswith("ok")
    shown = wait_for(rig, "E-STOP LATCHED")
    assert "ROBOT ESTOP" in shown and "estop_local" in shown
    assert rig.estop("clear").startswith("ok")
    cleared = wait_for(rig, "ROBOT DISABLED")
    assert "estop_cleared" in cleared


def test_panel_without_a_robot_says_so(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "telesurgery.cli", "panel", "--once",
                             "--socket", str(tmp_path / "none.sock")],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1 and "no robot node answering" in result.stderr
