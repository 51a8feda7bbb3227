"""The on-site emergency stop: a local-only Unix socket, its protocol and its CLI.

``telesurgery estop`` presses it, ``--clear`` clears it, ``--status`` reports. This is
the only path that clears an e-stop (invariant 4); the network control channel has no
such operation. The socket lives in the robot's runtime folder (``robot_side.localsock``:
the folder and socket are the robot's uid's and 0700/0600, a live socket is never taken
over, and credentials are checked both ways with ``SO_PEERCRED``).

Protocol: one request line per connection, at most 256 ASCII bytes::

    ACTION SOURCE [DETAIL]\\n

* ``ACTION``: ``press``, ``clear``, ``status``, ``panel`` (a JSON snapshot for the
  staff's panel), ``reload-keys`` (re-read the authorised keys, as SIGHUP does) or
  ``refused`` (a local tool refused a clear itself, e.g. the supervision page on a wrong
  PIN: nothing changes, the robot audits it; ``DETAIL`` says why).
* ``SOURCE``: which tool asks (``cli``, ``panel``, ``page``...), 1-32 of ``a-z0-9_.-``.
* ``DETAIL``: free text up to 160 printable characters (``refused`` only).

The answer is one line: ``ok ...``, ``refused: ...`` or ``error: ...``. Every press,
clear, refused clear and key reload is an audit record (``estop_request``, fsync'd)
naming the action, the source and the peer's uid and pid before the answer is sent; a
client the server turns away is audited too (``estop_peer_refused``, at most once per
uid per 10 s). A client that gets no ``ok`` for a press must say so loudly: the staff
then use the hardware emergency stop.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robot_side.localsock import (
    LocalEndpointError,
    PeerCred,
    bind_private,
    claim_socket,
    in_group,
    peer_cred,
    release_socket,
    secure_runtime_dir,
)
from telesurgery.errors import AuditError, TelesurgeryError
from telesurgery.pacer import fifo_quietly
from telesurgery.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

ACTIONS = ("press", "clear", "status", "panel", "reload-keys", "refused")
AUDITED = frozenset({"press", "clear", "reload-keys", "refused"})
MAX_REQUEST = 256
MAX_CLIENTS = 4
_SOURCE_RE = re.compile(r"^[a-z0-9_.-]{1,32}$")
_PEER_AUDIT_EVERY_NS = 10_000_000_000

Scalar = str | int | float | bool | None
AuditFn = Callable[[str, dict[str, Scalar]], int]

NOT_DELIVERED = ("E-STOP NOT DELIVERED: the robot node did not confirm the stop. "
                 "USE THE HARDWARE EMERGENCY STOP NOW.")


class EstopUnreachable(ConnectionError):
    """No robot node answered on the e-stop socket."""


@dataclass
class EstopRequest:
    """One request for the control thread; it sets ``answer`` and then ``done``."""

    action: str
    source: str = "unknown"
    detail: str = ""
    peer: PeerCred | None = None
    done: threading.Event = field(default_factory=threading.Event)
    answer: str = ""


def parse_request(line: str) -> EstopRequest:
    """The request in ``line``, or ``ValueError`` with the reason."""
    parts = line.strip().split(" ", 2)
    action = parts[0]
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action[:32]!r}")
    source = parts[1] if len(parts) > 1 else "unknown"
    if not _SOURCE_RE.match(source):
        raise ValueError("source must be 1-32 of a-z 0-9 _ . -")
    detail = parts[2] if len(parts) > 2 else ""
    if len(detail) > 160 or not detail.isprintable():
        raise ValueError("detail must be at most 160 printable characters")
    return EstopRequest(action, source, detail)


class EstopServer(threading.Thread):
    """Accepts requests from allowed local peers; the control thread answers them."""

    def __init__(self, path: Path, panel: Callable[[], dict[str, Any]] | None = None, *,
                 group: int | None = None, audit: AuditFn | None = None,
                 reload_keys: Callable[[], str] | None = None,
                 client_priority: int = 0) -> None:
        """``client_priority``: SCHED_FIFO of each client's thread (0: the creator's)."""
        super().__init__(name="robot-estop", daemon=True)
        self.path = path
        self._panel = panel
        self._group = group
        self._audit = audit
        self._reload_keys = reload_keys
        self._client_priority = client_priority
        self.requests: queue.Queue[EstopRequest] = queue.Queue(maxsize=16)
        self.counters: dict[str, int] = {"served": 0, "peer_refused": 0, "bad_request": 0}
        self._halt = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._ratelog = RateLimitedLog(log, interval_s=5.0)
        self._peer_audited: dict[int, int] = {}
        secure_runtime_dir(path.parent, group)
        self._lock_fd = claim_socket(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            bind_private(self._sock, path, group)
        except OSError as err:
            self._sock.close()
            release_socket(path, self._lock_fd)
            raise LocalEndpointError(f"cannot create the e-stop socket {path}: {err}") from err
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        log.info("local e-stop socket at %s", path)

    def stop(self) -> None:
        if self._halt.is_set():
            return
        self._halt.set()
        self._sock.close()
        release_socket(self.path, self._lock_fd)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                self._ratelog(logging.WARNING, "busy", "e-stop socket: too many clients")
                conn.close()
                continue
            threading.Thread(target=self._client, args=(conn,), name="robot-estop-client",
                             daemon=True).start()

    def allowed(self, peer: PeerCred) -> bool:
        """The robot's own uid, root, or a member of the configured staff group."""
        if peer.uid in (os.geteuid(), 0):
            return True
        return self._group is not None and in_group(peer.uid, peer.gid, self._group)

    def _client(self, conn: socket.socket) -> None:
        if self._client_priority:
            # A press must not wait behind the machine's real-time load, nor stall the
            # control thread by being preempted while it holds the GIL.
            fifo_quietly(self._client_priority)
        try:
            with conn:
                self._serve(conn)
        except OSError as err:
            self._ratelog(logging.WARNING, "client", "e-stop client error: %s", err)
        finally:
            self._slots.release()

    def _serve(self, conn: socket.socket) -> None:
        peer = peer_cred(conn)
        if not self.allowed(peer):
            self._refuse_peer(peer)
            conn.sendall(f"error: uid {peer.uid} may not use the e-stop socket\n".encode())
            return
        conn.settimeout(1.0)
        try:
            req = parse_request(_read_line(conn))
        except ValueError as err:
            self.counters["bad_request"] += 1
            self._ratelog(logging.WARNING, "bad", "bad e-stop request from %s: %s",
                          peer.describe(), err)
            conn.sendall(f"error: {err}\n".encode())
            return
        req.peer = peer
        answer = self._answer(req)
        self.counters["served"] += 1
        conn.sendall((answer + "\n").encode())

    def _answer(self, req: EstopRequest) -> str:
        if req.action == "panel":
            # From the node's latest snapshot: the control loop is not asked.
            body = self._panel() if self._panel is not None else {}
            return "ok " + json.dumps(body)
        if req.action == "reload-keys":
            answer = self._reload_keys() if self._reload_keys else "error: no keys to reload"
        else:
            try:
                self.requests.put_nowait(req)
            except queue.Full:
                answer = "error: busy"
            else:
                answer = req.answer if req.done.wait(2.0) else (
                    "error: robot node did not answer")
        if req.action in AUDITED:
            answer = self._record(req, answer)
        return answer

    def _record(self, req: EstopRequest, answer: str) -> str:
        """Audit the request (fsync'd) before the client hears the answer."""
        if self._audit is None:
            return answer
        peer = req.peer
        try:
            self._audit("estop_request", {
                "action": req.action, "source": req.source, "detail": req.detail,
                "uid": peer.uid if peer else None, "pid": peer.pid if peer else None,
                "answer": answer[:200]})
        except AuditError as err:
            log.error("e-stop request not audited: %s", err)
            return f"{answer} (NOT AUDITED: {err})"
        return answer

    def _refuse_peer(self, peer: PeerCred) -> None:
        self.counters["peer_refused"] += 1
        self._ratelog(logging.WARNING, f"peer:{peer.uid}",
                      "e-stop socket: refused %s (not the robot's uid, root or staff group)",
                      peer.describe())
        now = time.monotonic_ns()
        if self._audit is None or now < self._peer_audited.get(peer.uid, 0):
            return
        if peer.uid not in self._peer_audited and len(self._peer_audited) >= 1024:
            return  # bounded: past 1024 refused uids only the counter and the log see more
        self._peer_audited[peer.uid] = now + _PEER_AUDIT_EVERY_NS
        try:
            self._audit("estop_peer_refused", {"uid": peer.uid, "pid": peer.pid,
                                               "count": self.counters["peer_refused"]})
        except AuditError as err:
            log.error("refused e-stop peer not audited: %s", err)


def _read_line(conn: socket.socket) -> str:
    data = b""
    while b"\n" not in data and len(data) < MAX_REQUEST:
        chunk = conn.recv(MAX_REQUEST - len(data))
        if not chunk:
            break
        data += chunk
    line = data.split(b"\n", 1)[0]
    if len(line) >= MAX_REQUEST:
        raise ValueError(f"request longer than {MAX_REQUEST - 1} bytes")
    try:
        return line.decode("ascii")
    except UnicodeDecodeError as err:
        raise ValueError("request is not ASCII") from err


def send(path: Path, action: str, source: str = "cli", *, detail: str = "",
         timeout_s: float = 3.0, robot_uid: int | None = None) -> str:
    """Send one request and return the robot's answer line.

    Raises ``EstopUnreachable`` when nothing answers at ``path`` and
    ``LocalEndpointError`` when the process answering is not the robot's uid
    (``robot_uid``, else our own) or root: that answer is never read.
    """
    line = f"{action} {source}" + (f" {detail}" if detail else "")
    expected = os.geteuid() if robot_uid is None else robot_uid
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(str(path))
        except OSError as err:
            raise EstopUnreachable(f"no robot node at {path}: {err.strerror or err}") from err
        server = peer_cred(s)
        if server.uid not in (expected, 0):
            raise LocalEndpointError(f"the process at {path} is {server.describe()}, not the "
                                     f"robot's uid {expected}: not trusting it")
        try:
            s.sendall((line + "\n").encode("ascii"))
            data = b""
            while not data.endswith(b"\n") and len(data) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as err:
            raise EstopUnreachable(f"robot node at {path} did not answer: {err}") from err
    if not data:
        raise EstopUnreachable(f"robot node at {path} closed without an answer")
    return data.decode("utf-8", "replace").strip()


def client_target(config: Path | None, socket_path: Path | None) -> tuple[Path, int | None]:
    """The socket path and the robot's uid a local tool should expect."""
    from robot_side.config import RobotConfig
    from robot_side.localsock import default_runtime_dir, user_id
    from telesurgery.config import load

    cfg = load(RobotConfig, config) if config else None
    path = socket_path or (cfg.estop.socket if cfg else default_runtime_dir() / "estop.sock")
    return path, user_id(cfg.estop.robot_user) if cfg else None


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery estop",
                                description="On-site emergency stop (local machine only).")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--clear", action="store_true", help="clear a latched e-stop (local only)")
    g.add_argument("--status", action="store_true", help="print the supervisor state")
    p.add_argument("--config", type=Path, help="robot config (for the socket path)")
    p.add_argument("--socket", type=Path, help="override the e-stop socket path")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    action = "clear" if args.clear else "status" if args.status else "press"
    try:
        path, robot_uid = client_target(args.config, args.socket)
        answer = send(path, action, "cli", robot_uid=robot_uid)
    except (OSError, TelesurgeryError) as err:
        sys.stderr.write(f"telesurgery estop: {err}\n")
        if action == "press":
            _alarm()
        return 1
    sys.stdout.write(answer + "\n")
    if action == "press" and not answer.startswith("ok"):
        _alarm()
    return 0 if answer.startswith("ok") else 1


def _alarm() -> None:
    red, reset = ("\033[1;97;41m", "\033[0m") if sys.stderr.isatty() else ("", "")
    sys.stderr.write(f"{red}{NOT_DELIVERED}{reset}\n")
