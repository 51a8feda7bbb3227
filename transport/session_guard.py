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
from collections import Counter, deque
from collections.abc import Callable

from telesurgery.ratelog import RateLimitedLog
from transport.handoff import (
    Admission,
    HandoffRules,
    PendingHandoff,
    Session,
    new_token,
)
from transport.intake import AuditAlert
from transport.keys import Identity
from transport.schema import HANDOFF_OPS, ControlReply, ControlRequest, Ping, Pong

log = logging.getLogger(__name__)

OPEN_WITHOUT_SESSION = frozenset({"arm", "disarm", "disengage", "clear_fault", "set_scale"})
"""Before anyone holds a session these may come from any surgeon console: none moves the arm."""
ALERT_INTERVAL_NS = 1_000_000_000
"""At most one audit record per kind of refusal per second; the rest are counted."""
MAX_PENDING = 256

LATCH_REFUSED_OPS = frozenset({"arm", "disarm", "engage", "disengage", "clear_fault"})
"""What the supervisor refuses as ``latched`` in an e-stop, whoever asks."""
SESSION_REFUSALS = frozenset({"session_busy", "no_session"})

__all__ = ["Admission", "SessionGuard", "new_token", "refusal_reason"]


def refusal_reason(reason: str, op: str, robot_state: str) -> str:
    """The reason a refused request's reply names.

    During an e-stop no console's arm, engage, clear_fault... can succeed: only the
    local e-stop socket clears it. A second console refused for the session (or for
    having none) is then told ``latched``, the reason that stands whoever asks, not
    that someone else holds the session. The guard's own refusal is still counted
    and audited under its code."""
    if robot_state == "estop" and op in LATCH_REFUSED_OPS and reason in SESSION_REFUSALS:
        return "latched"
    return reason


class SessionGuard(HandoffRules):
    """Admits control requests and pongs of the one surgeon session; see the module doc."""

    def __init__(self, idle_ms: float = 3000.0, token: Callable[[], int] = new_token,
                 handoff_ms: float = 10_000.0) -> None:
        self.idle_ns = int(idle_ms * 1e6)
        self.handoff_ns = int(handoff_ms * 1e6)
        self.identify: Callable[[str | None], Identity | None] = lambda key: None
        """Name and mentor flag of a surgeon key (the authenticator's ``identity``)."""
        self._request: PendingHandoff | None = None
        self._closed: dict[int, str] = {}
        self._outbox: deque[tuple[bytes, int, str]] = deque(maxlen=16)
        self._token = token
        self._session: Session | None = None
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

    @property
    def ping_targets(self) -> list[bytes]:
        """Every connection of the holder (one per network path), newest last."""
        if self._session is None:
            return [] if self._unbound_peer is None else [self._unbound_peer]
        return list(self._session.peers)

    def forget(self, peer: bytes) -> None:
        """A connection of the holder is gone (a failed ping); the session stays while
        another path of it is left."""
        s = self._session
        if s is not None and len(s.peers) > 1 and s.peers.pop(peer, 0) is None \
                and s.peer == peer:
            s.peer = next(reversed(s.peers))

    def is_holder(self, peer: bytes) -> bool:
        s = self._session
        return self.ping_target == peer or (s is not None and peer in s.peers)

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
        if has_token or peer in s.peers:
            if req.req_id <= s.last_req_id:
                self._alert(now_ns, "request_replayed",
                            f"{req.op} with request id {req.req_id} refused: ids up to "
                            f"{s.last_req_id} are used in this session")
                return Admission(False, "request_replayed")
            if req.op == "arm" and not has_token:  # a new run of the same console
                return self._grant(peer, req, now_ns, "session_renewed",
                                   level=logging.INFO, why="re-armed by the holder")
            if not has_token:
                self._alert(now_ns, "session_token_mismatch",
                            f"{req.op} without the session's token refused")
                return Admission(False, "session_token_mismatch")
            if s.join(peer):
                self._alert(now_ns, "session_moved",
                            "the holder reconnected: the session follows its token",
                            logging.INFO)
                s.key = self._key
            s.last_req_id, s.last_seen_ns = req.req_id, now_ns
            if req.op == "arm":
                # The holder's own run arming again (a ROS "enable" sent twice): no new
                # token, so the command intake and the motion go on; the robot answers
                # "already_armed".
                self.counters["already_armed"] += 1
                self._alert(now_ns, "already_armed", "arm from the holder with its token: "
                            "the session and its command intake are kept", logging.INFO)
            return Admission(True)
        idle_ms = (now_ns - s.last_seen_ns) / 1e6
        revoked = s.key is not None and not self._key_allowed(s.key)
        gone = revoked or all(peer_gone(p) for p in s.peers)
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
        self._session = Session(token, peer, req.req_id, now_ns, self._key, self._who())
        self._unbound_peer = None
        self.counters[code] += 1
        # Never the token itself in the audit: the log is readable by the staff.
        self._alert(now_ns, code, why, level, rate_limited=False)
        return Admission(True, granted=token)

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
        if s.join(peer):  # a reconnect, or the holder's connection on another path
            self._alert(now_ns, "session_moved",
                        "a new connection of the holder (reconnected, or another network "
                        "path): the session follows its token", logging.INFO)

    def pong_ok(self, peer: bytes, pong: Pong, now_ns: int) -> bool:
        """Only the holder's pongs, with its token, measure the link."""
        s = self._session
        if s is None:
            ok = peer == self._unbound_peer
        else:
            ok = peer in s.peers and pong.session == s.token
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
