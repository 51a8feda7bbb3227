"""Telestration on the robot: strokes in from consoles with the draw right, out to all.

A thread of the robot node (never the control thread; strokes never reach the
control loop's inputs) owns two CURVE server sockets in the ZAP domain
``observer`` (surgeon and observer keys): a PULL where drawing consoles push
``Stroke`` messages, and a PUB every console subscribes to. Each stroke is
checked before it is relayed:

* the session's key is still authorised (``Authenticator.allows``: a revoked
  key's live session is refused message by message);
* its user id (``surgeon`` or ``observer:<name>``, from ZAP, not from the
  message) is listed in the draw-rights file (``<keys_dir>/draw_rights``, one
  user id per line, re-read when it changes): keys.py has no rights, only roles;
* it validates (``transport.schema.Stroke``: bounded points, finite, 0..1);
* its author does not exceed ``max_per_s`` strokes per second (token bucket).

The relayed copy carries ``author`` = that user id (a claimed one is replaced).
The same bytes go to a local ipc PUB (``strokes.sock`` in the runtime folder)
that the Zenoh fan-out republishes to watchers. Refusals are counted, logged
at a limited rate and audited (``<what>_refused`` alerts, through the node's
``Mailbox.alerts`` to the audit thread): the first ``AUDIT_BURST`` of each author
per second one by one, the rest as one ``<what>_refused_flood`` record per author
and second (``safety.audit_limit``, as refused control requests), so a flood of
strokes cannot fill the audit and trip the arm. The thread keeps running.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from safety.audit_limit import OVERFLOW_PEER, RefusalLimiter, RefusalSummary
from telesurgery.config import check
from telesurgery.errors import SchemaError
from telesurgery.ratelog import RateLimitedLog
from transport.auth import Authenticator, session_key
from transport.intake import AuditAlert
from transport.keys import ServerKeys
from transport.schema import MAX_MESSAGE_BYTES, Message, Stroke, decode_as, encode
from transport.sockets import bound_port, server_socket

log = logging.getLogger(__name__)
POLL_MS = 100
RIGHTS_FILE = "draw_rights"
AUDIT_BURST = 8
"""Refusals of one author audited one by one per second; the rest in one aggregate."""


@dataclass(frozen=True)
class TelestrationConfig:
    enabled: bool = False
    draw_port: int = 47104
    """Consoles push strokes here (0: a random free port, tests)."""
    strokes_port: int = 47105
    """Consoles subscribe to the relayed strokes here."""
    max_per_s: float = 60.0
    """Per author; a console drawing faster loses the excess (counted)."""

    def __post_init__(self) -> None:
        for name in ("draw_port", "strokes_port"):
            port = getattr(self, name)
            check(0 <= port <= 65535, f"telestration.{name}", port, "must be in 0..65535")
        check(0 < self.max_per_s <= 1000, "telestration.max_per_s", self.max_per_s,
              "must be in (0, 1000]")


class DrawRights:
    """The user ids that may draw, from a small file beside the keys (re-read on change)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: frozenset[str] = frozenset()

    def users(self) -> frozenset[str]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._users = None, frozenset()
            return self._users
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            lines = self.path.read_text().splitlines()
            self._users = frozenset(ln.split("#", 1)[0].strip() for ln in lines) - {""}
            self._stamp = stamp
        return self._users


class _Bucket:
    def __init__(self, rate: float, now_ns: int) -> None:
        self.rate, self.tokens, self.at_ns = rate, rate, now_ns

    def take(self, now_ns: int) -> bool:
        self.tokens = min(self.rate, self.tokens + (now_ns - self.at_ns) / 1e9 * self.rate)
        self.at_ns = now_ns
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class KeyedRelay(threading.Thread):
    """In on a CURVE PULL, checked (key, right, schema, rate), stamped with the sender's
    user id, out on a CURVE PUB (and a local ipc PUB). Owns its sockets; start(), then
    stop() and join(). The stroke relay and the intercom relay are two of these."""

    msg_type: type[Message] = Stroke
    author_field = "author"
    rights_file = RIGHTS_FILE
    what = "stroke"

    def __init__(self, ctx: zmq.Context[Any], ports: tuple[int, int], max_per_s: float, *,
                 host: str, keys: ServerKeys, auth: Authenticator, keys_dir: Path,
                 local_path: Path | None = None,
                 alerts: deque[AuditAlert] | None = None) -> None:
        super().__init__(name=f"{self.what}-relay", daemon=True)
        self.alerts: deque[AuditAlert] = deque(maxlen=256) if alerts is None else alerts
        """Where refusals go to be audited (the node passes ``Mailbox.alerts``)."""
        self._audit_limit = RefusalLimiter(burst=AUDIT_BURST)
        self.max_per_s = max_per_s
        self._auth = auth
        self.rights = DrawRights(keys_dir / self.rights_file)
        self._in = server_socket(ctx, zmq.PULL, ports[0], host, keys, "observer",
                                 MAX_MESSAGE_BYTES)
        try:
            self._out = server_socket(ctx, zmq.PUB, ports[1], host, keys, "observer",
                                      MAX_MESSAGE_BYTES)
        except Exception:
            self._in.close(0)
            raise
        self._local: zmq.Socket[Any] | None = None
        if local_path is not None:
            self._local = ctx.socket(zmq.PUB)
            self._local.setsockopt(zmq.LINGER, 0)
            local_path.unlink(missing_ok=True)
            old = os.umask(0o177)
            try:
                self._local.bind(f"ipc://{local_path}")
            finally:
                os.umask(old)
        self.in_port = bound_port(self._in)
        self.out_port = bound_port(self._out)
        self.relayed = 0
        self.refused: Counter[str] = Counter()
        self._buckets: dict[str, _Bucket] = {}
        self._ratelog = RateLimitedLog(log)
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                if self._in.poll(POLL_MS):
                    self._drain()
                if self._audit_limit.active:
                    for summary in self._audit_limit.due(time.monotonic_ns()):
                        self._audit_flood(summary)
        finally:
            for sock in (self._in, self._out, self._local):
                if sock is not None:
                    sock.close(0)

    def _refuse(self, why: str, user: str, detail: str = "") -> None:
        self.refused[why] += 1
        self._ratelog(logging.WARNING, why, "%s from %s refused (%s%s), %d so far", self.what,
                      user, why, f": {detail}" if detail else "", self.refused[why])
        # The author's user id is the ZAP one, never a claim; "?" when there was none.
        now = time.monotonic_ns()
        if self._audit_limit.allow(user.encode(), now):
            self.alerts.append(AuditAlert(
                now, f"{self.what}_refused",
                f"{self.what} from {user} refused ({why}{': ' + detail if detail else ''})"[:256]))

    def _audit_flood(self, s: RefusalSummary) -> None:
        who = "several authors" if s.peer == OVERFLOW_PEER else s.peer.decode(errors="replace")
        self.alerts.append(AuditAlert(
            time.monotonic_ns(), f"{self.what}_refused_flood",
            f"{s.suppressed} more {self.what}s from {who} refused in the last "
            f"{s.span_ns / 1e9:.1f} s (counted, not recorded one by one)"))

    def _drain(self) -> None:
        while True:
            try:
                frame = self._in.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.handle(frame)

    def handle(self, frame: zmq.Frame) -> None:
        try:
            user = str(frame.get("User-Id"))
        except zmq.ZMQError:
            user = ""
        if not user or not self._auth.allows(session_key(frame), user):
            self._refuse("key not authorised", user or "?")
            return
        if user not in self.rights.users():
            self._refuse("no right", user)
            return
        try:
            msg = decode_as(frame.bytes, self.msg_type)
        except SchemaError as err:
            self._refuse("invalid", user, str(err))
            return
        now = time.monotonic_ns()
        sender, author = self._sender(user, frame, msg)
        bucket = self._buckets.setdefault(sender, _Bucket(self.max_per_s, now))
        if not bucket.take(now):
            self._refuse("rate", sender)
            return
        data = encode(dataclasses.replace(msg, **{self.author_field: author}))
        self._out.send(data, zmq.NOBLOCK)
        if self._local is not None:
            self._local.send(data, zmq.NOBLOCK)
        self.relayed += 1


    def _sender(self, user: str, frame: zmq.Frame, msg: Message) -> tuple[str, str]:
        """Who sent ``msg`` (its rate bucket) and the author stamped on it: here the ZAP
        user id for both; the intercom tells its talkers apart."""
        return user, user


class StrokeRelay(KeyedRelay):
    """Telestration strokes; ``draw_port`` in, ``strokes_port`` out."""

    def __init__(self, ctx: zmq.Context[Any], cfg: TelestrationConfig, *, host: str,
                 keys: ServerKeys, auth: Authenticator, keys_dir: Path,
                 local_path: Path | None = None,
                 alerts: deque[AuditAlert] | None = None) -> None:
        super().__init__(ctx, (cfg.draw_port, cfg.strokes_port), cfg.max_per_s, host=host,
                         keys=keys, auth=auth, keys_dir=keys_dir, local_path=local_path,
                         alerts=alerts)
        self.cfg = cfg
        self.draw_port, self.strokes_port = self.in_port, self.out_port
