"""A ZAP authenticator that fails closed, with two domains for two roles.

The robot's server sockets ask this handler (RFC 27, ``inproc://zeromq.zap.01``)
about every CURVE handshake. It answers 200 only when the mechanism is CURVE,
the domain is one of ours and the client's public key is authorised for it:

* domain ``surgeon`` (command and control sockets): surgeon keys only;
* domain ``observer`` (telemetry and video): surgeon and observer keys.

Anything else (an unknown key, an observer on the command socket, another
mechanism, an unknown domain, a malformed request) gets 400. The user id in
the reply is ``surgeon`` or ``observer:<name>``, so the robot can read who
sent a message from the frame's ``User-Id`` property. Plaintext peers never
reach this handler: the CURVE server rejects them at the handshake, which the
link logs from its socket monitors.

A surgeon key also has an identity (``transport.keys.Identity``: its name and
whether a mentor), asked with ``identity(key)``: the handoff between surgeon
consoles names who is in command by it. An observer key that tries the surgeon
domain (it asked for command) is refused at the handshake and leaves an audit
alert (``alerts``, at most one per observer per second, the rest counted in it).

Every accepted session also carries its key (z85) as the ZAP metadata property
``X-Key``, so the robot can ask ``allows(key)`` about each message: after a
``reload()`` that removed a key, the live session of that key is refused message
by message (a CURVE session cannot be re-authenticated in place), and
``revoked`` is set so the robot node holds the arm with an audited trip
(``Reason.KEY_REVOKED``).

The handler runs in its own thread and owns its REP socket; ``reload()`` and
``stop()`` are called from the owner's thread and only swap a dict or set an
event.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import zmq
from zmq.utils import z85

from telesurgery.errors import AuthError
from telesurgery.ratelog import RateLimitedLog
from transport.intake import AuditAlert
from transport.keys import OBSERVER_PREFIX, SURGEON_USER, Identity, ServerKeys

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAINS = ("surgeon", "observer")
KEY_PROPERTY = "X-Key"
"""ZAP metadata property carrying the session's z85 public key (read with ``frame.get``)."""
_STOP_POLL_MS = 50
OBSERVER_ALERT_INTERVAL_NS = 1_000_000_000


@dataclass(frozen=True)
class ReloadResult:
    keys: int
    """Authorised keys after the reload (0: every new peer is refused)."""
    revoked: tuple[str, ...]
    """Users whose key had a session since start and is no longer authorised."""

    def describe(self) -> str:
        gone = f"; revoked live sessions: {', '.join(self.revoked)}" if self.revoked else ""
        return f"{self.keys} authorised key(s){gone}"


def session_key(frame: zmq.Frame) -> str | None:
    """The z85 key of the session that sent ``frame`` (ZAP metadata), or None."""
    try:
        return str(frame.get(KEY_PROPERTY))
    except zmq.ZMQError:  # no key attached: nobody vouched for this sender
        return None


def _metadata(props: dict[str, bytes]) -> bytes:
    """ZMTP metadata encoding (RFC 23): name length, name, value length, value."""
    out = b""
    for name, value in props.items():
        raw = name.encode("ascii")
        out += bytes([len(raw)]) + raw + struct.pack(">I", len(value)) + value
    return out


class Authenticator:
    """The running ZAP handler; use ``start_authenticator`` to create one."""

    def __init__(self, ctx: zmq.Context[Any], keys: ServerKeys) -> None:
        self._keys = keys
        self._users = keys.authorized()
        self._identities = keys.identities()
        self.alerts: deque[AuditAlert] = deque(maxlen=64)
        """Observers that asked for command (refused at the handshake): the robot's
        network thread moves them to the audit. Appended by the handler thread only."""
        self._observer_next_ns: dict[str, int] = {}
        self._observer_skipped: Counter[str] = Counter()
        self._live: dict[bytes, str] = {}
        """Keys accepted since start -> their user: a session may still be up."""
        self._live_lock = threading.Lock()
        self.revoked = threading.Event()
        """Set when a reload removed the key of a surgeon session: hold the arm."""
        self.revoked_users: tuple[str, ...] = ()
        self.counters: Counter[str] = Counter()
        """accepted, rejected and rejected:<reason>; written by the handler thread only."""
        self._stop = threading.Event()
        self._throttled = RateLimitedLog(log)
        self._zap: zmq.Socket[Any] = ctx.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        try:
            self._zap.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as err:
            self._zap.close(0)
            raise AuthError(f"cannot start the authenticator ({err}); is another one "
                            "running in this ZeroMQ context?") from err
        self._thread = threading.Thread(target=self._run, name="zap-authenticator", daemon=True)
        self._thread.start()
        log.info("authenticator started: %d surgeon, %d observer key(s)",
                 sum(u == SURGEON_USER for u in self._users.values()),
                 sum(u != SURGEON_USER for u in self._users.values()))

    def reload(self) -> ReloadResult:
        """Re-read the authorised-keys folders: new sessions at once, live ones per message.

        If the folders are gone every new peer is refused (fail closed). A key that had
        a session and is no longer authorised is revoked: ``allows`` refuses its
        messages from now on, and a surgeon's sets ``revoked``.
        """
        if self._keys.surgeon_dir.is_dir() and self._keys.observer_dir.is_dir():
            users = self._keys.authorized()
        else:
            log.error("authorised-keys folder missing on reload: refusing every new peer")
            users = {}
        self._users = users  # one reference swap: the handler sees the old or the new map
        self._identities = self._keys.identities() if users else {}
        with self._live_lock:
            gone = {k: u for k, u in self._live.items() if users.get(k) != u}
            for key in gone:
                del self._live[key]
        revoked = tuple(sorted(set(gone.values())))
        if revoked:
            log.warning("keys revoked with a session since start: %s", ", ".join(revoked))
            self.revoked_users = revoked
            if SURGEON_USER in revoked:
                self.revoked.set()
        log.info("authenticator reloaded: %d authorised key(s)", len(users))
        return ReloadResult(len(users), revoked)

    def allows(self, key: str | bytes | None, user: str = SURGEON_USER) -> bool:
        """Whether a message from the session of ``key`` (its ``X-Key``) may still act."""
        if key is None:
            return False
        raw = key.encode("ascii") if isinstance(key, str) else key
        return self._users.get(raw) == user

    def identity(self, key: str | bytes | None) -> Identity | None:
        """The name and mentor flag of an authorised surgeon key (its ``X-Key``)."""
        if key is None:
            return None
        raw = key.encode("ascii") if isinstance(key, str) else key
        return self._identities.get(raw)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()

    def __enter__(self) -> Authenticator:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._zap.poll(_STOP_POLL_MS):
                    self._handle(self._zap.recv_multipart())
        except zmq.ZMQError as err:
            # The context was terminated under us: no handler means no new sessions.
            log.error("authenticator stopped by a ZeroMQ error: %s", err)
        finally:
            self._zap.close(0)

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) < 6:
            # REP must answer something; a reply without a request id is dropped by libzmq.
            self._reply(b"", b"500", f"malformed ZAP request ({len(frames)} frames)", "")
            return
        version, request_id, domain, address, _identity, mechanism = frames[:6]
        credentials = frames[6:]
        peer = address.decode(errors="replace")
        dom = domain.decode(errors="replace")
        user, why = self._decide(version, dom, mechanism, credentials)
        if user is None:
            if why.startswith(OBSERVER_PREFIX):
                self._observer_asked(why.split(" ")[0])
            self.counters["rejected"] += 1
            self.counters[f"rejected:{why}"] += 1
            self._throttled(logging.WARNING, f"reject:{why}",
                            "rejected peer %s on domain %r: %s", peer, dom, why)
            self._reply(request_id, b"400", why, "")
            return
        self.counters["accepted"] += 1
        key = z85.encode(credentials[0])
        with self._live_lock:
            if key not in self._live and len(self._live) < 4096:
                self._live[key] = user
        log.info("authenticated %s from %s on domain %r", user, peer, dom)
        self._reply(request_id, b"200", "OK", user, _metadata({KEY_PROPERTY: key}))

    def _observer_asked(self, user: str) -> None:
        """An observer key on the command or control socket: an attempt to take command."""
        self.counters["observer_command_refused"] += 1
        now = time.monotonic_ns()
        if now < self._observer_next_ns.get(user, now):
            self._observer_skipped[user] += 1
            return
        self._observer_next_ns[user] = now + OBSERVER_ALERT_INTERVAL_NS
        skipped = self._observer_skipped.pop(user, 0)
        more = f" ({skipped} more since the last record)" if skipped else ""
        self.alerts.append(AuditAlert(now, "observer_command_refused",
                                      f"{user} asked for command: refused at the handshake"
                                      + more))

    def _decide(self, version: bytes, domain: str, mechanism: bytes,
                credentials: list[bytes]) -> tuple[str | None, str]:
        if version != b"1.0":
            return None, "unsupported ZAP version"
        if domain not in DOMAINS:
            return None, "unknown domain"
        if mechanism != b"CURVE":
            return None, f"mechanism {mechanism.decode(errors='replace')} not allowed"
        if len(credentials) != 1 or len(credentials[0]) != 32:
            return None, "malformed CURVE credentials"
        user = self._users.get(z85.encode(credentials[0]))
        if user is None:
            return None, "unknown key"
        if domain == "surgeon" and user != SURGEON_USER:
            return None, f"{user} may not command"
        return user, "OK"

    def _reply(self, request_id: bytes, code: bytes, text: str, user: str,
               metadata: bytes = b"") -> None:
        self._zap.send_multipart([b"1.0", request_id, code, text.encode(), user.encode(),
                                  metadata])


def start_authenticator(ctx: zmq.Context[Any], keys: ServerKeys) -> Authenticator:
    """Start the fail-closed ZAP handler for ``ctx``; stop it with ``.stop()`` or ``with``."""
    return Authenticator(ctx, keys)
