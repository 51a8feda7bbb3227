"""The on-site supervision panel: rendering, against a real robot node, and in a real pty.

The interactive tests run ``telesurgery panel`` in a pseudo-terminal and press its keys,
as the staff would; the screen is read back with the ANSI sequences stripped.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from hil_tests.rig import RigOptions, SimRig
from robot_side.estop import EstopServer
from robot_side.panel import PanelView, render
from robot_side.serial_protocol import FwFlags

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


class RobotOnlyRig(SimRig):
    """The rig without a console: the panel is for the staff beside the robot."""

    def start_console(self, name: str = "console",
                      session: dict[str, Any] | None = None) -> None:
        return None


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RobotOnlyRig]:
    run = tmp_path_factory.mktemp("panel")
    r = RobotOnlyRig(RigOptions(run_dir=run, video=False, ros_backend="none"))
    with r:
        r.start()
        yield r


def text_of(view: PanelView, now: float) -> str:
    console = Console(record=True, width=110, force_terminal=False, color_system=None)
    console.print(render(view, now))
    return console.export_text()


def status(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "state": "hold", "reason": "command_timeout", "estop": False, "report_age_s": 0.01,
        "since_s": 38.4, "scale": 0.2, "firmware_flags": int(FwFlags.BRAKED),
        "tracking_error_mm": 0.4, "link_ok": False, "link_detail": "no fresh command",
        "rtt_ms": 0.9, "loss": 0.5,
        "events": [{"ago_s": 38.4, "from": "following", "to": "hold",
                    "reason": "command_timeout", "detail": "no fresh command for 52.1 ms"}],
    }
    base.update(over)
    return base


# ------------------------------------------------------------------ rendering (pure)
def test_plain_words_with_times_and_every_figure_aged() -> None:
    now = 1000.0
    shown = text_of(PanelView(status=status(), received_at=now - 0.2), now)
    assert "ROBOT HOLDING STILL" in shown
    assert "link lost (no commands from the console) 39 s ago" in shown
    assert "no fresh command for 52.1 ms" not in shown  # the engineer's words stay out
    for figure in ("round trip", "loss", "motion scale", "tracking error", "arm controller"):
        row = next(line for line in shown.splitlines() if line.startswith(figure))
        assert row.rstrip().endswith("0.2 s ago"), row
    assert "50.0 %" in shown and "BRAKED" in shown
    event = next(line for line in shown.splitlines() if "hold: link lost" in line)
    assert re.match(r"\d\d:\d\d:\d\d +39 s ago", event), event


def test_a_robot_still_starting_says_what_it_waits_for() -> None:
    now = 1000.0
    waiting = "robot starting: waiting for the ROS 2 bridge"
    shown = text_of(PanelView(status=status(state="ready", reason="armed",
                                            not_ready=waiting), received_at=now), now)
    assert "ROBOT READY, HOLDING STILL" in shown and waiting in shown
    assert waiting not in text_of(PanelView(status=status(state="ready", not_ready=None),
                                            received_at=now), now)


def test_stale_answer_turns_into_robot_state_unknown() -> None:
    now = 1000.0
    view = PanelView(status=status(state="following", reason="engaged"),
                     received_at=now - 5.0, error="no robot node at /x: Connection refused")
    shown = text_of(view, now)
    assert "ROBOT STATE UNKNOWN" in shown and "FOLLOWING" not in shown.split("last known")[0]
    assert "last known: FOLLOWING THE SURGEON (5.0 s ago)" in shown
    assert "USE THE HARDWARE EMERGENCY STOP" in shown


def test_a_frozen_control_loop_is_unknown_even_if_the_socket_answers() -> None:
    now = 1000.0
    view = PanelView(status=status(state="following", report_age_s=3.0), received_at=now)
    shown = text_of(view, now)
    assert "ROBOT STATE UNKNOWN" in shown
    assert "the control loop has not reported for 3.0 s" in shown


def test_failed_press_banner_stays_until_a_press_gets_through() -> None:
    view = PanelView(status=status(), received_at=999.9, failed_press="12:00:00: error: x")
    shown = text_of(view, 1000.0)
    assert "E-STOP NOT DELIVERED" in shown and "USE THE HARDWARE EMERGENCY STOP NOW" in shown


# ------------------------------------------------------------------ against a real node
def panel_once(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "telesurgery.cli", "panel", "--once",
                           "--socket", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)


def wait_for(rig: SimRig, text: str) -> str:
    deadline = time.monotonic() + 60
    out = ""
    while time.monotonic() < deadline:
        out = panel_once(rig.run / "estop.sock").stdout
        if text in out:
            return out
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never shown; last panel:\n{out}")


def test_panel_shows_the_robot_and_the_local_estop_round_trip(rig: RobotOnlyRig) -> None:
    assert "ROBOT" in wait_for(rig, "ROBOT")
    assert rig.estop("press").startswith("ok")
    shown = wait_for(rig, "E-STOP LATCHED")
    assert "ROBOT EMERGENCY STOP" in shown and "e-stop pressed on site" in shown
    assert rig.estop("clear").startswith("ok")
    cleared = wait_for(rig, "DISABLED")
    assert "e-stop cleared on site" in cleared


def test_panel_without_a_robot_says_so(tmp_path: Path) -> None:
    result = panel_once(tmp_path / "none.sock")
    assert result.returncode == 1 and "no robot node answering" in result.stderr
    assert "ROBOT STATE UNKNOWN" in result.stdout


# ------------------------------------------------------------------ interactive, in a pty
class PtyPanel:
    """``telesurgery panel`` on a pseudo-terminal: keys in, screen text out."""

    def __init__(self, socket_path: Path) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "50"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "telesurgery.cli", "panel", "--socket", str(socket_path),
             "--period", "0.1"], stdin=slave, stdout=slave, stderr=slave, env=env,
            start_new_session=True)
        os.close(slave)
        self.screen = ""

    def read(self) -> None:
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.screen += ANSI.sub("", chunk.decode("utf-8", "replace"))

    def wait_for(self, text: str, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.read()
            if text in self.screen:
                return
        raise AssertionError(f"{text!r} never shown; screen tail:\n{self.screen[-2000:]}")

    def key(self, k: str) -> None:
        self.screen = ""  # only what is drawn from now on counts
        os.write(self.master, k.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            os.write(self.master, b"q")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        os.close(self.master)


def test_clear_needs_a_confirmation(rig: RobotOnlyRig) -> None:
    panel = PtyPanel(rig.run / "estop.sock")
    try:
        panel.wait_for("ROBOT")
        panel.key("e")
        panel.wait_for("E-STOP LATCHED")
        panel.key("c")
        panel.wait_for("CLEAR THE E-STOP?")
        assert rig.estop("status").startswith("ok estop")  # one key clears nothing
        panel.key("n")
        panel.wait_for("clear cancelled")
        assert rig.estop("status").startswith("ok estop")
        panel.key("c")
        panel.wait_for("CLEAR THE E-STOP?")
        panel.key("y")
        panel.wait_for("ok e-stop cleared")
        assert rig.estop("status").startswith("ok disabled")
    finally:
        panel.close()
        if rig.estop("status").startswith("ok estop"):
            rig.estop("clear")


def test_robot_dying_shows_unknown_and_a_failed_press_in_red(tmp_path: Path) -> None:
    """A real e-stop server that goes away under the panel (the node died)."""
    server = EstopServer(tmp_path / "run" / "estop.sock",
                         lambda: {"state": "following", "reason": "engaged",
                                  "report_age_s": 0.0, "events": []})
    server.start()
    panel = PtyPanel(server.path)
    try:
        panel.wait_for("ROBOT FOLLOWING THE SURGEON")
        server.stop()
        panel.wait_for("ROBOT STATE UNKNOWN")
        panel.key("e")
        panel.wait_for("E-STOP NOT DELIVERED")
        panel.wait_for("USE THE HARDWARE EMERGENCY STOP NOW")
        assert "ok e-stop pressed" not in panel.screen
    finally:
        panel.close()
        server.stop()
