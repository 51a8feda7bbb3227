"""The on-site emergency stop: a local-only Unix socket and its CLI.

``telesurgery estop`` presses it, ``telesurgery estop --clear`` clears it and
``--status`` reports. The socket is a filesystem Unix socket with mode 0600: it
cannot be reached over the network, and only the robot machine's operator
account can use it. This is the only path that clears an e-stop (invariant 4);
the network control channel has no such operation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ACTIONS = ("press", "clear", "status", "panel")


@dataclass
class EstopRequest:
    action: str
    done: threading.Event = field(default_factory=threading.Event)
    answer: str = ""


class EstopServer(threading.Thread):
    """Accepts one-line requests; the control thread answers them each period."""

    def __init__(self, path: Path, panel: Callable[[], dict[str, Any]] | None = None) -> None:
        super().__init__(name="robot-estop", daemon=True)
        self.path = path
        self._panel = panel
        self.requests: queue.Queue[EstopRequest] = queue.Queue(maxsize=16)
        self._halt = threading.Event()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self._sock.bind(str(path))
        finally:
            os.umask(old)
        self._sock.listen(4)
        self._sock.settimeout(0.2)
        log.info("local e-stop socket at %s", path)

    def stop(self) -> None:
        self._halt.set()
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(1.0)
        try:
            action = conn.recv(64).decode("ascii", "replace").strip()
        except OSError as err:
            log.warning("e-stop client error: %s", err)
            return
        if action not in ACTIONS:
            conn.sendall(f"error: unknown action {action!r}\n".encode())
            return
        if action == "panel":
            # Answered here from the node's latest snapshot: the control loop is not asked.
            body = self._panel() if self._panel is not None else {}
            conn.sendall(("ok " + json.dumps(body) + "\n").encode())
            return
        req = EstopRequest(action)
        try:
            self.requests.put_nowait(req)
        except queue.Full:
            conn.sendall(b"error: busy\n")
            return
        answer = req.answer if req.done.wait(2.0) else "error: robot node did not answer"
        try:
            conn.sendall(f"{answer}\n".encode())
        except OSError as err:
            log.warning("e-stop client went away: %s", err)


def send(path: Path, action: str, timeout_s: float = 3.0) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(path))
        s.sendall(action.encode("ascii"))
        return s.recv(4096).decode("utf-8", "replace").strip()


def main(argv: list[str]) -> int:
    from robot_side.config import RobotConfig, default_runtime_dir
    from telesurgery.config import load

    p = argparse.ArgumentParser(prog="telesurgery estop",
                                description="On-site emergency stop (local machine only).")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--clear", action="store_true", help="clear a latched e-stop (local only)")
    g.add_argument("--status", action="store_true", help="print the supervisor state")
    p.add_argument("--config", type=Path, help="robot config (for the socket path)")
    p.add_argument("--socket", type=Path, help="override the e-stop socket path")
    args = p.parse_args(argv)
    path = args.socket or (load(RobotConfig, args.config).estop.socket if args.config
                           else default_runtime_dir() / "estop.sock")
    action = "clear" if args.clear else "status" if args.status else "press"
    try:
        answer = send(path, action)
    except OSError as err:
        sys.stderr.write(f"telesurgery estop: no robot node at {path}: {err}\n")
        return 1
    sys.stdout.write(answer + "\n")
    return 0 if answer.startswith("ok") else 1
