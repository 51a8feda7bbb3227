"""One surgeon session at a time: who may use the control channel, whose pongs count.

Every console holding a surgeon key passes CurveZMQ, so authentication alone
cannot stop a second console from taking over the robot's pings (it tripped
the legit session with ``rtt_high``) or re-sending an old engage. The robot
therefore grants a **session**: a random 64-bit token in the reply to ``arm``,
bound to that control connection (its ROUTER identity). From then on:

* control requests count only from the holder: its connection, or the token
  (a console that reconnected proves itself with the token and the session
  moves to its new connection). Anyone else: ``session_busy``, audited.
* request ids are single-use per session: each must be above every earlier
  one, so a replayed request (same id) is refused, counted and audited.
* the robot pings only the holder and takes pongs only from it, with the token;
  commands must carry it (``transport.intake``). The console's own pings carry it
  too, so after a reconnect the robot's pings follow it at once.
* ``engage`` needs a session.

**Takeover rule** (docs/architecture.md): a request without the token is
admitted only when there is no session, or the holder is gone (then its
session ends): its control connection was dropped (ZMTP heartbeat timeout or
disconnect: the robot's ping to it fails), a key reload revoked its key (its
messages are refused from then on, so it could never answer), or it has
answered no ping for ``idle_ms``. Without a session, ``arm`` grants a new one. A gone or silent
holder has tripped ``rtt_unknown`` long before, so the arm is never taken over
in motion. Every grant, takeover and refusal is an audit record.

**Handoff** between two live surgeon consoles (remote teaching; ``HANDOFF_OPS``):
a surgeon not in command sends ``request_command``; its reply waits (deferred)
while the request is pending: one at a time, a second requester is refused
(``handoff_busy``: first wins). The holder's telemetry shows it (``handoff_from``,
``handoff_id``); the holder answers ``grant`` or ``deny`` naming that id, with its
token and a fresh request id. A grant older than ``handoff_ms`` on the robot's
clock is stale, one naming a closed or unknown request is refused. A **mentor**
key (``transport.keys.Identity``) may send ``takeover`` instead: no grant needed.
On a grant or takeover the session moves at once to the new console with a new
token (the old token is refused from here on), and the new holder's request goes
to the control thread with that token, which starts the command session with it
and holds the arm before the reply carrying the token leaves; the new console
must engage (re-anchoring to its own master) before anything moves. A pending
request that is not answered within ``handoff_ms`` times out. Each step is an
audit record; refusals are rate-limited per kind like every refusal here.

Pure logic with time passed in; the network thread asks it about each message.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from telesurgery.ratelog import RateLimitedLog
from transport.intake import AuditAlert
from transport.keys import Identity
from transport.schema import HANDOFF_OPS, U64, ControlReply, ControlRequest, Ping, Pong

log = logging.getLogger(__name__)

OPEN_WITHOUT_SESSION = frozenset({"arm", "disarm", "disengage", "clear_fault", "set_scale"})
"""Before anyone holds a session these may come from any surgeon console: none moves the arm."""
ALERT_INTERVAL_NS = 1_000_000_000
"""At most one audit record per kind of refusal per second; the rest are counted."""
MAX_PENDING = 256
MAX_CLOSED = 32
"""Handoff request ids remembered after they closed: a late grant is named stale/replayed."""
ANONYMOUS = Identity("surgeon")
"""Whom a key without a known identity stands for (the one-surgeon layout)."""


def new_token() -> int:
    """A random, non-zero 64-bit session id (the schema's range is 1..2**64-1)."""
    return secrets.randbelow(U64) + 1


@dataclass(frozen=True, slots=True)
class Admission:
    ok: bool
    reason: str = ""
    """Why it was refused (the reply's reason); empty when admitted."""
    granted: int | None = None
    """The new session token, when this admitted ``arm`` starts a session."""
    deferred: bool = False
    """A pending ``request_command``: no reply now; it comes with the grant or timeout."""
    handoff: tuple[bytes, ControlRequest, int, int] | None = None
    """A grant: the requester's waiting (peer, request, receive time, new token), to
    reach the control thread before the grant itself."""


@dataclass(frozen=True, slots=True)
class _Request:
    id: int
    peer: bytes
    req: ControlRequest
    recv_ns: int
    key: str | None
    who: Identity


@dataclass(slots=True)
class _Session:
    token: int
    peer: bytes
    last_req_id: int
    last_seen_ns: int
    key: str | None = None
    """The holder's session key (z85), to end the session when a reload revokes it."""
    who: Identity = ANONYMOUS


class SessionGuard:
    """Admits control requests and pongs of the one surgeon session; see the module doc."""

    def __init__(self, idle_ms: float = 3000.0, token: Callable[[], int] = new_token,
                 handoff_ms: float = 10_000.0) -> None:
        self.idle_ns = int(idle_ms * 1e6)
        self.handoff_ns = int(handoff_ms * 1e6)
        self.identify: Callable[[str | None], Identity | None] = lambda key: None
        """Name and mentor flag of a surgeon key (the authenticator's ``identity``)."""
        self._request: _Request | None = None
        self._closed: dict[int, str] = {}
        self._outbox: deque[tuple[bytes, int, str]] = deque(maxlen=16)
        self._token = token
        self._session: _Session | None = None
        self._unbound_peer: bytes | None = None
        self._key: str | None = None
        """The key of the request being admitted (``admit``)."""
        self._key_allowed: Callable[[str], bool] = lambda key: True
        """Before any session: the console that last used the control channel (pinged)."""
        self._pending: dict[tuple[bytes, int], tuple[str, int | None]] = {}
        self._alerts: deque[AuditAlert] = deque(maxlen=64)
        self._alert_next_ns: dict[str, int] = {}
        self._suppressed: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self._ratelog = RateLimitedLog(log)

    # ---------------------------------------------------------------- queries
    @property
    def token(self) -> int | None:
        return None if self._session is None else self._session.token

    @property
    def ping_target(self) -> bytes | None:
        """Whom the robot pings: the holder; before any session, the last console heard."""
        return self._unbound_peer if self._session is None else self._session.peer

    def is_holder(self, peer: bytes) -> bool:
        return self.ping_target == peer

    @property
    def commander(self) -> str | None:
        """The name of the surgeon in command, for the telemetry; None: no session."""
        return None if self._session is None else self._session.who.name

    @property
    def request_pending(self) -> tuple[str, int] | None:
        """(who asks, request id) of the pending command request, for the telemetry."""
        r = self._request
        return None if r is None else (r.who.name, r.id)

    # ---------------------------------------------------------------- control requests
    def admit(self, peer: bytes, req: ControlRequest, now_ns: int,
              peer_gone: Callable[[bytes], bool], *, key: str | None = None,
              key_allowed: Callable[[str], bool] = lambda key: True) -> Admission:
        """May this request reach the robot's control? Grants a session on ``arm``.

        ``key``: the sender's session key; ``key_allowed``: whether a key is still
        authorised (the authenticator's ``allows``)."""
        self._key, self._key_allowed = key, key_allowed
        self.expire(now_ns)
        if req.op in HANDOFF_OPS:
            adm = self._handoff(peer, req, now_ns, peer_gone)
        else:
            adm = self._admit(peer, req, now_ns, peer_gone)
        if adm.deferred:
            return adm
        if adm.ok:
            if len(self._pending) >= MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
            self._pending[(peer, req.req_id)] = (req.op, adm.granted)
        else:
            self.counters[adm.reason] += 1
            self._ratelog(logging.WARNING, adm.reason, "control request %s refused: %s",
                          req.op, adm.reason)
        return adm

    def _admit(self, peer: bytes, req: ControlRequest, now_ns: int,
               peer_gone: Callable[[bytes], bool]) -> Admission:
        s = self._session
        if s is None:
            self._unbound_peer = peer
            if req.op == "arm":
                return self._grant(peer, req, now_ns, "session_granted",
                                   level=logging.INFO, why="first session")
            if req.op in OPEN_WITHOUT_SESSION:
                return Admission(True)
            self._alert(now_ns, "no_session", f"{req.op} refused: nobody holds a session")
            return Admission(False, "no_session")
        has_token = req.session is not None and req.session == s.token
        if has_token or peer == s.peer:
            if req.req_id <= s.last_req_id:
                self._alert(now_ns, "request_replayed",
                            f"{req.op} with request id {req.req_id} refused: ids up to "
                            f"{s.last_req_id} are used in this session")
                return Admission(False, "request_replayed")
            if req.op == "arm":  # a new run of the same console: a fresh token
                return self._grant(peer, req, now_ns, "session_renewed",
                                   level=logging.INFO, why="re-armed by the holder")
            if not has_token:
                self._alert(now_ns, "session_token_mismatch",
                            f"{req.op} without the session's token refused")
                return Admission(False, "session_token_mismatch")
            if peer != s.peer:
                self._alert(now_ns, "session_moved",
                            "the holder reconnected: the session follows its token",
                            logging.INFO)
                s.peer, s.key = peer, self._key
            s.last_req_id, s.last_seen_ns = req.req_id, now_ns
            return Admission(True)
        idle_ms = (now_ns - s.last_seen_ns) / 1e6
        revoked = s.key is not None and not self._key_allowed(s.key)
        gone = revoked or peer_gone(s.peer)
        if gone or now_ns - s.last_seen_ns > self.idle_ns:
            # The takeover rule: the holder is gone, so its session ends and this
            # console is judged as if nobody held one (it may clear a fault, arm).
            why = ("its key was revoked" if revoked else "its connection was dropped"
                   if gone else f"it answered nothing for {idle_ms:.0f} ms")
            self._session = None
            self.counters["session_takeover"] += 1
            self._alert(now_ns, "session_takeover",
                        f"{req.op} from another console: the holder is gone ({why}); "
                        "its session ends", rate_limited=False)
            return self._admit(peer, req, now_ns, peer_gone)
        self._alert(now_ns, "session_busy",
                    f"{req.op} from a second surgeon console refused: the session holder "
                    f"answered {idle_ms:.0f} ms ago")
        return Admission(False, "session_busy")

    def _grant(self, peer: bytes, req: ControlRequest, now_ns: int, code: str, *,
               level: int, why: str) -> Admission:
        token = self._token()
        self._session = _Session(token, peer, req.req_id, now_ns, self._key, self._who())
        self._unbound_peer = None
        self.counters[code] += 1
        # Never the token itself in the audit: the log is readable by the staff.
        self._alert(now_ns, code, why, level, rate_limited=False)
        return Admission(True, granted=token)

    # ---------------------------------------------------------------- handoff
    def _who(self) -> Identity:
        return self.identify(self._key) or ANONYMOUS

    def _handoff(self, peer: bytes, req: ControlRequest, now_ns: int,
                 peer_gone: Callable[[bytes], bool]) -> Admission:
        s = self._session
        holder = s is not None and (peer == s.peer or req.session == s.token)
        if req.op in ("grant", "deny"):
            return self._answer(peer, req, now_ns, peer_gone)
        who = self._who()
        if req.op == "takeover" and not who.mentor:
            self._alert(now_ns, "takeover_refused",
                        f"takeover by {who.name} refused: not a mentor key")
            return Admission(False, "not_mentor")
        if holder:
            return Admission(False, "already_in_command")
        if req.op == "takeover":
            old = "nobody" if s is None else s.who.name
            if self._request is not None:
                self._close(now_ns, "superseded", "handoff_superseded",
                            f"by the takeover of {who.name}")
            if s is not None and peer_gone(s.peer):
                old += " (gone)"
            return self._grant(peer, req, now_ns, "handoff_takeover", level=logging.WARNING,
                               why=f"mentor {who.name} took command from {old}")
        # request_command
        if s is None:
            self._alert(now_ns, "handoff_refused",
                        f"command request from {who.name} refused: nobody is in command "
                        "(arm instead)")
            return Admission(False, "no_commander")
        r = self._request
        if r is not None:
            code = "handoff_pending" if r.peer == peer else "handoff_busy"
            self._alert(now_ns, "handoff_refused",
                        f"command request from {who.name} refused: the request of "
                        f"{r.who.name} is pending ({code})")
            return Admission(False, code)
        self._request = _Request(new_token(), peer, req, now_ns, self._key, who)
        self.counters["handoff_requested"] += 1
        self._alert(now_ns, "handoff_requested",
                    f"{who.name} asks {s.who.name} for command", logging.INFO,
                    rate_limited=False)
        return Admission(False, deferred=True)

    def _answer(self, peer: bytes, req: ControlRequest, now_ns: int,
                peer_gone: Callable[[bytes], bool]) -> Admission:
        """``grant`` or ``deny`` from the holder, naming the pending request."""
        s = self._session
        if s is None or req.session is None or req.session != s.token:
            self._alert(now_ns, "handoff_refused",
                        f"{req.op} from {self._who().name} refused: not in command")
            return Admission(False, "not_in_command")
        if req.req_id <= s.last_req_id:
            self._alert(now_ns, "request_replayed",
                        f"{req.op} with request id {req.req_id} refused: ids up to "
                        f"{s.last_req_id} are used in this session")
            return Admission(False, "request_replayed")
        s.last_req_id, s.last_seen_ns = req.req_id, now_ns
        r = self._request
        if r is None or req.handoff != r.id:
            closed = self._closed.get(req.handoff or 0)
            reason = ("grant_stale" if closed == "timed_out" else
                      "grant_replayed" if closed is not None else "handoff_unknown")
            self._alert(now_ns, "handoff_refused",
                        f"{req.op} from {s.who.name} refused ({reason}): it names no "
                        "pending request")
            return Admission(False, reason)
        gone = peer_gone(r.peer) or (r.key is not None and not self._key_allowed(r.key))
        if gone:
            self._close(now_ns, "gone", "handoff_requester_gone", "its console is gone")
            return Admission(False, "requester_gone")
        if req.op == "deny":
            self._close(now_ns, "denied", "handoff_denied", f"by {s.who.name}")
            return Admission(True)
        waited_ms = (now_ns - r.recv_ns) / 1e6
        self._request = None
        self._remember(r.id, "granted")
        old = s.who.name
        token = self._token()
        self._session = _Session(token, r.peer, r.req.req_id, now_ns, r.key, r.who)
        self.counters["handoff_granted"] += 1
        # The requester's deferred reply leaves with the control thread's answer.
        self._pending[(r.peer, r.req.req_id)] = (r.req.op, token)
        self._alert(now_ns, "handoff_granted",
                    f"{old} granted command to {r.who.name} after {waited_ms:.0f} ms; "
                    f"{old}'s session token is revoked", rate_limited=False)
        return Admission(True, handoff=(r.peer, r.req, r.recv_ns, token))

    def _remember(self, request_id: int, outcome: str) -> None:
        if len(self._closed) >= MAX_CLOSED:
            self._closed.pop(next(iter(self._closed)))
        self._closed[request_id] = outcome

    def _close(self, now_ns: int, outcome: str, reason: str, why: str) -> None:
        """End the pending request without a grant: its console gets ``reason``."""
        r = self._request
        if r is None:
            return
        self._request = None
        self._remember(r.id, outcome)
        self.counters[reason] += 1
        self._outbox.append((r.peer, r.req.req_id, reason))
        self._alert(now_ns, reason, f"the command request of {r.who.name} ended: {why}",
                    rate_limited=False)

    def expire(self, now_ns: int) -> None:
        """Time out a pending request (``handoff_ms`` on the robot's clock), or end it
        when nobody is in command any more. Asked on every wake-up of the network thread."""
        r = self._request
        if r is None:
            return
        if self._session is None:
            self._close(now_ns, "no_commander", "no_commander", "nobody is in command")
        elif now_ns - r.recv_ns > self.handoff_ns:
            self._close(now_ns, "timed_out", "handoff_timeout",
                        f"not granted within {self.handoff_ns / 1e6:.0f} ms")

    def take_refusals(self) -> list[tuple[bytes, int, str]]:
        """(peer, request id, reason) of deferred requests that ended without a grant."""
        out = list(self._outbox)
        self._outbox.clear()
        return out

    def end_if_revoked(self, key_allowed: Callable[[str], bool], now_ns: int) -> bool:
        """End the session at once if a key reload revoked its holder's key.

        Asked by the network thread on every wake-up: a revocation is an event, and
        restoring the key later must not bring the revoked session back."""
        s = self._session
        if s is None or s.key is None or key_allowed(s.key):
            return False
        self._session = None
        self.counters["session_revoked"] += 1
        self._alert(now_ns, "session_revoked",
                    "the holder's key was revoked: its session ends", rate_limited=False)
        return True

    # ---------------------------------------------------------------- replies and pongs
    def on_reply(self, peer: bytes, reply: ControlReply, now_ns: int) -> ControlReply:
        """The robot's answer to an admitted request: hands over a granted token, and
        makes a remote operation refused during an e-stop an audit record."""
        op, granted = self._pending.pop((peer, reply.req_id), ("?", None))
        if not reply.ok and reply.state == "estop":
            self._alert(now_ns, "refused_in_estop",
                        f"remote {op} refused during the e-stop: {reply.reason}")
        if granted is not None:
            return dataclasses.replace(reply, session=granted)
        return reply

    def on_ping(self, peer: bytes, ping: Ping, now_ns: int) -> None:
        """The holder pings the robot with its token: after a reconnect (a new ROUTER
        identity) the session, and the robot's pings, follow it at once."""
        s = self._session
        if s is None or ping.session is None or ping.session != s.token:
            return
        if peer != s.peer:
            self._alert(now_ns, "session_moved",
                        "the holder reconnected: the session follows its token",
                        logging.INFO)
            s.peer = peer

    def pong_ok(self, peer: bytes, pong: Pong, now_ns: int) -> bool:
        """Only the holder's pongs, with its token, measure the link."""
        s = self._session
        if s is None:
            ok = peer == self._unbound_peer
        else:
            ok = peer == s.peer and pong.session == s.token
            if ok:
                s.last_seen_ns = now_ns
        if not ok:
            self.counters["foreign_pong"] += 1
            self._ratelog(logging.WARNING, "foreign_pong",
                          "pong from a console that holds no session ignored")
        return ok

    # ---------------------------------------------------------------- alerts
    def _alert(self, now_ns: int, code: str, detail: str, level: int = logging.WARNING,
               *, rate_limited: bool = True) -> None:
        if rate_limited and now_ns < self._alert_next_ns.get(code, now_ns):
            self._suppressed[code] += 1
            return
        self._alert_next_ns[code] = now_ns + ALERT_INTERVAL_NS
        skipped = self._suppressed.pop(code, 0)
        if skipped:
            detail += f" ({skipped} more since the last record)"
        self._alerts.append(AuditAlert(now_ns, code, detail, level))

    @property
    def has_alerts(self) -> bool:
        return bool(self._alerts)

    def drain_alerts(self) -> list[AuditAlert]:
        out = list(self._alerts)
        self._alerts.clear()
        return out
