"""``telesurgery panel``: the on-site staff's supervision panel, on the robot machine.

What the robot does and why it stopped, in plain words with times ("link lost 38 s
ago"), refreshed a few times a second on a ``rich`` live display. Every figure shows
how old it is; when the robot stops answering, or its control loop stops reporting,
the panel says **ROBOT STATE UNKNOWN** instead of the last state. ``e`` presses the
e-stop; a press the robot did not confirm is shown in red with what to do (the
hardware emergency stop) until a later press gets through. ``c`` clears a latched
e-stop after a ``y`` confirmation. ``q`` quits. It talks only to the local e-stop
socket (robot_side.estop), checking that the robot's uid answers.
"""

from __future__ import annotations

import argparse
import json
import select
import sys
import termios
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from robot_side.estop import NOT_DELIVERED, client_target, send
from robot_side.serial_protocol import FwFlags
from telesurgery.errors import TelesurgeryError
from telesurgery.helptext import plain_help

STALE_S = 1.0
"""No answer (or no control-loop report) for this long: the state is unknown."""
PERIOD_S = 0.25

STATE_WORDS = {
    "following": ("FOLLOWING THE SURGEON", "bold green"),
    "ready": ("READY, HOLDING STILL", "bold green"),
    "hold": ("HOLDING STILL", "bold yellow"),
    "disabled": ("DISABLED (NOT ARMED)", "bold yellow"),
    "fault": ("STOPPED: FAULT", "bold white on red"),
    "estop": ("EMERGENCY STOP", "bold white on red"),
    "starting": ("STARTING", "bold yellow"),
}
REASON_WORDS = {
    "command_timeout": "link lost (no commands from the console)",
    "rtt_high": "network too slow", "rtt_unknown": "network delay unknown",
    "latency_high": "commands arriving late", "loss_burst": "network losing messages",
    "jitter_high": "network unsteady", "video_stale": "surgeon's video frozen",
    "nonfinite_setpoint": "invalid command", "setpoint_jump": "command jumped too far",
    "workspace": "outside the workspace", "joint_limit": "at a joint limit",
    "ik_failed": "position not reachable", "tracking_error": "arm not following its target",
    "joint_command": "joint command does not fit the arm",
    "serial_fault": "arm connection lost", "firmware_fault": "arm controller fault",
    "firmware_watchdog": "arm controller braked on its own",
    "estop_button": "e-stop button pressed", "estop_ros": "e-stop from ROS",
    "estop_local": "e-stop pressed on site", "estop_cleared": "e-stop cleared on site",
    "estop_clear_refused": "e-stop clear refused", "key_revoked": "surgeon's key revoked",
    "fault_cleared": "fault cleared", "audit_failure": "safety log not writable",
    "hold_escalated": "held too long with a bad link", "engaged": "surgeon took control",
    "disengaged": "surgeon let go", "clutch": "surgeon's clutch pressed",
    "clutch_released": "clutch released", "operator_absent": "surgeon not at the console",
    "armed": "armed", "disarmed": "disarmed", "startup": "started",
    "not_ready": "robot still starting",
}


def words(reason: str) -> str:
    return REASON_WORDS.get(reason, reason.replace("_", " "))


def ago(seconds: float | None) -> str:
    """'0.3 s ago', '38 s ago', '4 min ago': how nurses read a time."""
    if seconds is None:
        return "never"
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f} s ago"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    return f"{seconds / 60:.0f} min ago"


def _flags(value: int) -> str:
    names = [f.name for f in FwFlags if f.name and value & f.value]
    return ", ".join(names) if names else "none"


@dataclass
class PanelView:
    """What the panel knows: the last snapshot, when it came, and the staff's last action."""

    status: dict[str, Any] | None = None
    received_at: float | None = None
    """Our monotonic time of the last answer."""
    error: str = ""
    """Why the last query failed."""
    failed_press: str = ""
    """A press the robot did not confirm: stays on screen until a press gets through."""
    note: str = "keys: e = press e-stop   c = clear e-stop (asks to confirm)   q = quit"
    confirming_clear: bool = False
    history: list[str] = field(default_factory=list)


def render(view: PanelView, now: float) -> Group:
    """The whole screen for ``view`` at our monotonic ``now``; pure, tested as text."""
    parts: list[Any] = []
    if view.failed_press:
        parts.append(Panel(Text(f"{NOT_DELIVERED}\n{view.failed_press}", style="bold white"),
                           style="bold white on red", title="E-STOP FAILED"))
    parts.append(_state_block(view, now))
    if view.status is not None:
        parts.append(_figures(view.status, view.received_at, now))
        parts.append(_events(view.status, view.received_at, now))
    style = "bold black on yellow" if view.confirming_clear else "dim"
    parts.append(Text(view.note, style=style))
    return Group(*parts)


def _state_block(view: PanelView, now: float) -> Panel:
    st = view.status
    asked = None if view.received_at is None else now - view.received_at
    loop_age = None if st is None else float(st.get("report_age_s", 0.0)) + (asked or 0.0)
    if st is None or asked is None or asked > STALE_S or (loop_age or 0.0) > STALE_S:
        why = view.error or (f"the control loop has not reported for {loop_age:.1f} s"
                             if loop_age is not None and loop_age > STALE_S else
                             "no answer from the robot node")
        last = ""
        if st is not None:
            last = (f"\nlast known: {STATE_WORDS.get(st.get('state', ''), ('?',))[0]}"
                    f" ({ago(asked)})")
        return Panel(Text(f"ROBOT STATE UNKNOWN\n{why}{last}\n"
                          "If the arm must stop: USE THE HARDWARE EMERGENCY STOP.",
                          style="bold white on red"), style="red")
    state = str(st.get("state", "starting"))
    label, style = STATE_WORDS.get(state, (state.upper(), "bold yellow"))
    since = st.get("since_s")
    cause = words(str(st.get("reason", "")))
    line = Text(f"ROBOT {label}", style=style)
    line.append(f"   {cause} {ago(None if since is None else since + asked)}", style="bold")
    if st.get("estop"):
        line.append("\nE-STOP LATCHED: clear it here (c) once the patient is safe",
                    style="bold red")
    if st.get("not_ready"):  # engage is refused until the node's start-up is over
        line.append(f"\n{st['not_ready']}", style="bold yellow")
    line.append(f"\nas of {ago(asked)}", style="dim")
    return Panel(line)


def _figures(st: dict[str, Any], received_at: float | None, now: float) -> Table:
    age = ago(None if received_at is None else now - received_at)
    rtt, loss = st.get("rtt_ms"), st.get("loss")
    link = ("ok" if st.get("link_ok") else "NOT OK") + (
        f" ({st['link_detail']})" if st.get("link_detail") else "")
    rows = [
        ("link", link),
        ("round trip", "-" if rtt is None else f"{rtt:.1f} ms"),
        ("loss", "-" if loss is None else f"{100 * loss:.1f} %"),
        ("motion scale", str(st.get("scale", "-"))),
        ("tracking error", f"{st.get('tracking_error_mm', '-')} mm"),
        ("arm controller", _flags(int(st.get("firmware_flags", 0)))),
    ]
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("figure")
    table.add_column("value")
    table.add_column("age", style="dim")
    for name, value in rows:
        table.add_row(name, value, age)
    return table


def _events(st: dict[str, Any], received_at: float | None, now: float) -> Table:
    asked = 0.0 if received_at is None else now - received_at
    wall_now = time.time()  # wall-clock ok: clock times shown to people, never compared
    table = Table(title="recent safety events", title_justify="left", show_header=False,
                  box=None, pad_edge=False)
    table.add_column("when")
    table.add_column("ago", style="dim")
    table.add_column("what")
    for e in list(st.get("events", []))[-8:]:
        if not isinstance(e, dict):
            continue
        age_s = float(e.get("ago_s", 0.0)) + asked
        clock = time.strftime("%H:%M:%S", time.localtime(wall_now - age_s))
        what = f"{e.get('to', '?')}: {words(str(e.get('reason', '')))}"
        table.add_row(clock, ago(age_s), what)
    return table


def query(path: Path, view: PanelView, now: float, robot_uid: int | None) -> None:
    try:
        answer = send(path, "panel", "panel", timeout_s=1.0, robot_uid=robot_uid)
        if not answer.startswith("ok "):
            raise ValueError(answer)
        view.status, view.received_at, view.error = json.loads(answer[3:]), now, ""
    except (OSError, ValueError) as err:
        view.error = str(err)


def act(key: str, path: Path, view: PanelView, robot_uid: int | None) -> bool:
    """Handle one key; False to quit."""
    if view.confirming_clear:
        view.confirming_clear = False
        if key in ("y", "Y"):
            view.note = _do(path, "clear", robot_uid)
        else:
            view.note = "clear cancelled; the e-stop stays latched"
        return True
    if key == "q":
        return False
    if key == "e":
        answer = _do(path, "press", robot_uid)
        if answer.startswith("ok"):
            view.failed_press = ""
            view.note = f"{time.strftime('%H:%M:%S')} {answer}"  # wall-clock ok: display
        else:
            view.failed_press = f"{time.strftime('%H:%M:%S')}: {answer}"  # wall-clock ok
    elif key == "c":
        view.confirming_clear = True
        view.note = ("CLEAR THE E-STOP? The arm may move again once the surgeon re-engages. "
                     "Press y to clear, any other key to cancel.")
    return True


def _do(path: Path, action: str, robot_uid: int | None) -> str:
    try:
        return send(path, action, "panel", robot_uid=robot_uid)
    except OSError as err:
        return f"error: {err}"


def run_panel(path: Path, console: Console, period_s: float, robot_uid: int | None) -> int:
    view = PanelView()
    interactive = sys.stdin.isatty()
    old = termios.tcgetattr(sys.stdin) if interactive else None
    try:
        if interactive:
            tty.setcbreak(sys.stdin.fileno())
        with Live(console=console, auto_refresh=False, screen=console.is_terminal) as live:
            while True:
                query(path, view, time.monotonic(), robot_uid)
                live.update(render(view, time.monotonic()), refresh=True)
                end = time.monotonic() + period_s
                while (left := end - time.monotonic()) > 0:
                    ready, _, _ = select.select([sys.stdin] if interactive else [], [], [],
                                               left)
                    if not ready:
                        continue
                    if not act(sys.stdin.read(1), path, view, robot_uid):
                        return 0
                    live.update(render(view, time.monotonic()), refresh=True)
    finally:
        if old is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, old)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery panel", description=plain_help(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="robot config (for the socket path)")
    p.add_argument("--socket", type=Path, help="the robot node's local e-stop socket")
    p.add_argument("--once", action="store_true", help="print the panel once and exit")
    p.add_argument("--period", type=float, default=PERIOD_S, help="refresh period in seconds")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        path, robot_uid = client_target(args.config, args.socket)
    except (OSError, TelesurgeryError) as err:
        sys.stderr.write(f"telesurgery panel: {err}\n")
        return 2
    console = Console()
    if args.once:
        view = PanelView(note="")
        query(path, view, time.monotonic(), robot_uid)
        console.print(render(view, time.monotonic()))
        if view.status is None:
            sys.stderr.write(f"telesurgery panel: no robot node answering at {path}: "
                             f"{view.error}\n")
            return 1
        return 0
    try:
        return run_panel(path, console, args.period, robot_uid)
    except KeyboardInterrupt:
        return 0
