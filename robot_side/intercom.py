"""The intercom's hub on the robot: Opus packets from consoles allowed to talk, out to all.

A thread of the robot node with its own two CURVE sockets (``talk_port`` in,
``listen_port`` out), so audio shares nothing with commands: not a socket, not a
queue, not a thread. Who may talk is a list of ZAP user ids in
``<keys_dir>/intercom_rights`` (re-read on change); every packet is checked like
a stroke (``robot_side.telestration.KeyedRelay``) and carries the speaker's id as
the robot saw it: ``<name>#<connection>``, where ``<name>`` is what the robot
authenticated (a surgeon key's name, e.g. ``surgeon`` or ``mentor``; else the ZAP
user id, ``observer:<name>``) and ``<connection>`` the talker's per-connection
token (up to ``TOKEN_HEX`` hex digits it sends as ``speaker``; anything else is
dropped). Every surgeon key shares the ZAP user ``surgeon``: without the name and
the token, a mentor's and a surgeon's console skipped each other's voice as their
own echo. The token only tells apart connections of one authenticated name (a
talker can claim another's token, and then its own voice is skipped by that one,
nothing more); the rate bucket is the name's.

The on-site staff talk through the supervision page, a local process: its packets
come in on a 0600 ipc PULL in the runtime folder (``ONSITE_SOCKET``) as the user
``onsite``, which needs its line in ``intercom_rights`` like any console; every
relayed packet also goes out on a local ipc PUB (``LOCAL_SOCKET``) the page plays.

Refused packets (no right, rate, invalid, a revoked key) are audited: the first
``AUDIT_BURST`` of each speaker per second one by one, the rest counted and
audited as one aggregate per speaker and second (``safety.audit_limit``), as
control refusals are, so a flood can neither fill the audit queue nor push other
alerts out of it.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from robot_side.telestration import POLL_MS, KeyedRelay, _Bucket
from safety.audit_limit import OVERFLOW_PEER, RefusalLimiter, RefusalSummary
from telesurgery.config import check
from telesurgery.errors import SchemaError
from transport.auth import Authenticator, session_key
from transport.intake import AuditAlert
from transport.keys import SURGEON_USER, ServerKeys
from transport.schema import MAX_MESSAGE_BYTES, AudioPacket, Message, decode_as, encode

RIGHTS_FILE = "intercom_rights"
ONSITE_USER = "onsite"
"""The speaker id of the on-site staff (the supervision page)."""
ONSITE_SOCKET = "intercom-onsite.sock"
LOCAL_SOCKET = "intercom.sock"
AUDIT_BURST = 4
TOKEN_HEX = 6
"""A talker's connection token: ``observer:`` + a 32-character name + ``#`` + 6 fits the
48 characters of ``AudioPacket.speaker``."""
_TOKEN = re.compile(f"[0-9a-f]{{1,{TOKEN_HEX}}}")
"""Refused packets audited one by one per speaker and second; the rest aggregated."""


@dataclass(frozen=True)
class IntercomConfig:
    enabled: bool = False
    talk_port: int = 47106
    listen_port: int = 47107
    max_per_s: float = 60.0
    """Packets per speaker per second (20 ms frames are 50)."""

    def __post_init__(self) -> None:
        for name in ("talk_port", "listen_port"):
            port = getattr(self, name)
            check(0 <= port <= 65535, f"intercom.{name}", port, "must be in 0..65535")
        check(50 <= self.max_per_s <= 500, "intercom.max_per_s", self.max_per_s,
              "must be in 50..500 (one 20 ms frame is 50 per second)")


def _bind_local(ctx: zmq.Context[Any], kind: int, path: Path) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM if kind == zmq.PULL else zmq.SNDHWM, 50)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    path.unlink(missing_ok=True)
    old = os.umask(0o177)  # 0600: only the robot's own user (its page) may talk here
    try:
        sock.bind(f"ipc://{path}")
    finally:
        os.umask(old)
    return sock


class IntercomRelay(KeyedRelay):
    msg_type = AudioPacket
    author_field = "speaker"
    rights_file = RIGHTS_FILE
    what = "audio"

    def __init__(self, ctx: zmq.Context[Any], cfg: IntercomConfig, *, host: str,
                 keys: ServerKeys, auth: Authenticator, keys_dir: Path,
                 runtime: Path | None = None,
                 alerts: collections.deque[AuditAlert] | None = None) -> None:
        """``runtime``: where the page's two local sockets go (None: no page endpoint);
        ``alerts``: the node's audit alerts (None: refusals only counted and logged)."""
        super().__init__(ctx, (cfg.talk_port, cfg.listen_port), cfg.max_per_s, host=host,
                         keys=keys, auth=auth, keys_dir=keys_dir,
                         local_path=None if runtime is None else runtime / LOCAL_SOCKET)
        self.talk_port, self.listen_port = self.in_port, self.out_port
        self._onsite = None if runtime is None else _bind_local(ctx, zmq.PULL,
                                                                 runtime / ONSITE_SOCKET)
        self._alerts = alerts
        self.audit_limit = RefusalLimiter(burst=AUDIT_BURST, what="refused audio")
        self.audited = 0

    def _sender(self, user: str, frame: zmq.Frame, msg: Message) -> tuple[str, str]:
        """(the authenticated name, ``<name>#<connection token>``)."""
        identity = self._auth.identity(session_key(frame)) if user == SURGEON_USER else None
        name = identity.name if identity is not None else user
        claim = getattr(msg, "speaker", None)
        token = claim if isinstance(claim, str) and _TOKEN.fullmatch(claim) else None
        return name, name if token is None else f"{name}#{token}"

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._in, zmq.POLLIN)
        if self._onsite is not None:
            poller.register(self._onsite, zmq.POLLIN)
        try:
            while not self._halt.is_set():
                ready = dict(poller.poll(POLL_MS))
                if self._in in ready:
                    self._drain()
                if self._onsite is not None and self._onsite in ready:
                    self._drain_onsite(self._onsite)
                if self.audit_limit.active:
                    self._audit_floods(time.monotonic_ns())
        finally:
            for sock in (self._in, self._out, self._local, self._onsite):
                if sock is not None:
                    sock.close(0)

    def _drain_onsite(self, sock: zmq.Socket[Any]) -> None:
        while True:
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.relay_onsite(data)

    def relay_onsite(self, data: bytes) -> None:
        """The page's packet: the same checks as a console's, but for the user ``onsite``
        (the local socket is the robot user's own: there is no key to check)."""
        if ONSITE_USER not in self.rights.users():
            self._refuse("no right", ONSITE_USER)
            return
        try:
            msg = decode_as(data, AudioPacket)
        except SchemaError as err:
            self._refuse("invalid", ONSITE_USER, str(err))
            return
        now = time.monotonic_ns()
        bucket = self._buckets.setdefault(ONSITE_USER, _Bucket(self.max_per_s, now))
        if not bucket.take(now):
            self._refuse("rate", ONSITE_USER)
            return
        out = encode(dataclasses.replace(msg, speaker=ONSITE_USER))
        self._out.send(out, zmq.NOBLOCK)
        if self._local is not None:
            self._local.send(out, zmq.NOBLOCK)
        self.relayed += 1

    def _refuse(self, why: str, user: str, detail: str = "") -> None:
        super()._refuse(why, user, detail)
        if self._alerts is None:
            return
        now = time.monotonic_ns()
        if self.audit_limit.allow(user.encode(), now):
            self._alert(AuditAlert(now, "intercom_refused",
                                   f"audio from {user} refused: {why}"
                                   + (f" ({detail[:160]})" if detail else "")))

    def _audit_floods(self, now_ns: int) -> None:
        for summary in self.audit_limit.due(now_ns):
            self._alert(AuditAlert(now_ns, "intercom_refused_flood", _describe(summary)))

    def _alert(self, alert: AuditAlert) -> None:
        if self._alerts is not None:
            self._alerts.append(alert)
            self.audited += 1


def _describe(s: RefusalSummary) -> str:
    who = "several speakers" if s.peer == OVERFLOW_PEER else s.peer.decode(errors="replace")
    return (f"{s.suppressed} refused audio packets from {who} in the last "
            f"{s.span_ns / 1e9:.1f} s (counted, not recorded one by one)")

