"""``telesurgery panel``: the on-site staff's supervision panel, on the robot machine.

What the robot does and why it stopped: supervisor state and reason, link health
as the robot measures it, firmware flags, tracking error and the latest safety
events, refreshed a few times a second. ``e`` presses the e-stop, ``c`` clears
it, ``q`` quits. It talks only to the local e-stop socket: there is no network
path to it, and it needs no keys.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import sys
import termios
import time
import tty
from pathlib import Path
from typing import Any, TextIO

from robot_side.estop import send
from robot_side.serial_protocol import FwFlags
from telesurgery.helptext import plain_help

RED, AMBER, GREEN, BOLD, RESET = "\033[31m", "\033[33m", "\033[32m", "\033[1m", "\033[0m"
STATE_COLOUR = {"following": GREEN, "ready": GREEN, "hold": AMBER, "disabled": AMBER,
                "fault": RED, "estop": RED}


def _flags(value: int) -> str:
    names = [f.name for f in FwFlags if f.name and value & f.value]
    return ", ".join(names) if names else "none"


def render_panel(status: dict[str, Any], color: bool) -> str:
    """The panel as text; pure, so it is tested without a terminal."""
    state = str(status.get("state", "unknown"))
    c = STATE_COLOUR.get(state, AMBER) if color else ""
    bold, reset = (BOLD, RESET) if color else ("", "")
    rtt = status.get("rtt_ms")
    loss = status.get("loss")
    lines = [
        f"{bold}{c}ROBOT {state.upper()}{reset}  reason: {status.get('reason', '-')}"
        + (f"  {bold}{RED if color else ''}E-STOP LATCHED{reset}" if status.get("estop") else ""),
        f"link: {'ok' if status.get('link_ok') else 'NOT OK'} {status.get('link_detail', '')}"
        f"  rtt {'-' if rtt is None else f'{rtt:.1f} ms'}"
        f"  loss {'-' if loss is None else f'{100 * loss:.1f} %'}",
        f"firmware: {_flags(int(status.get('firmware_flags', 0)))}"
        f"  tracking error {status.get('tracking_error_mm', '-')} mm"
        f"  scale {status.get('scale', '-')}",
        "recent safety events:",
        *[f"  {e}" for e in status.get("events", [])[-6:]],
    ]
    return "\n".join(lines) + "\n"


def _query(path: Path) -> dict[str, Any] | None:
    try:
        answer = send(path, "panel", timeout_s=1.0)
    except OSError:
        return None
    if not answer.startswith("ok "):
        return None
    body: dict[str, Any] = json.loads(answer[3:])
    return body


def run_panel(path: Path, out: TextIO, period_s: float) -> int:
    """Interactive loop: redraw, and act on single keys when stdin is a terminal."""
    interactive = sys.stdin.isatty()
    old = termios.tcgetattr(sys.stdin) if interactive else None
    note = "keys: e = press e-stop, c = clear e-stop (local), q = quit"
    try:
        if interactive:
            tty.setcbreak(sys.stdin.fileno())
        while True:
            status = _query(path)
            body = render_panel(status, out.isatty()) if status else (
                f"no robot node answering at {path}\n")
            out.write("\033[2J\033[H" + body + note + "\n")
            out.flush()
            end = time.monotonic() + period_s
            while (left := end - time.monotonic()) > 0:
                ready, _, _ = select.select([sys.stdin] if interactive else [], [], [], left)
                if not ready:
                    continue
                key = sys.stdin.read(1)
                if key == "q":
                    return 0
                if key in ("e", "c"):
                    with contextlib.suppress(OSError):
                        note = send(path, "press" if key == "e" else "clear")
    finally:
        if old is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, old)


def main(argv: list[str]) -> int:
    from robot_side.config import RobotConfig, default_runtime_dir
    from telesurgery.config import load

    p = argparse.ArgumentParser(prog="telesurgery panel", description=plain_help(__doc__))
    p.add_argument("--config", type=Path, help="robot config (for the socket path)")
    p.add_argument("--socket", type=Path, help="the robot node's local e-stop socket")
    p.add_argument("--once", action="store_true", help="print the panel once and exit")
    p.add_argument("--period", type=float, default=0.25, help="refresh period in seconds")
    args = p.parse_args(argv)
    path = args.socket or (load(RobotConfig, args.config).estop.socket if args.config
                           else default_runtime_dir() / "estop.sock")
    if args.once:
        status = _query(path)
        if status is None:
            sys.stderr.write(f"telesurgery panel: no robot node answering at {path}\n")
            return 1
        sys.stdout.write(render_panel(status, sys.stdout.isatty()))
        return 0
    try:
        return run_panel(path, sys.stdout, args.period)
    except KeyboardInterrupt:
        return 0
