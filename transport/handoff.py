"""The handoff between surgeon consoles: the rules ``SessionGuard`` applies to them.

Part of ``transport.session_guard`` (its module doc has the rule in full; this
module keeps that one under the house size): a mixin with the ``HANDOFF_OPS``
(``request_command``, ``grant``, ``deny``, ``takeover``) and the types both share.
Pure logic with time passed in, like the guard.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from transport.keys import Identity
from transport.schema import U64, ControlRequest

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
class PendingHandoff:
    id: int
    peer: bytes
    req: ControlRequest
    recv_ns: int
    key: str | None
    who: Identity


MAX_PEERS = 8
"""Connections kept per session: its network paths plus a few reconnects' worth."""


@dataclass(slots=True)
class Session:
    token: int
    peer: bytes
    last_req_id: int
    last_seen_ns: int
    key: str | None = None
    """The holder's session key (z85), to end the session when a reload revokes it."""
    who: Identity = ANONYMOUS
    peers: dict[bytes, None] = field(default_factory=dict)
    """Every connection that proved the token (one per network path, and a reconnect's
    new one), in order; ``peer`` is the newest. Dual path: the robot pings each."""

    def __post_init__(self) -> None:
        self.peers.setdefault(self.peer, None)

    def join(self, peer: bytes) -> bool:
        """Add a connection of the holder; True if it is new. Bounded: the oldest goes."""
        new = peer not in self.peers
        if new and len(self.peers) >= MAX_PEERS:
            self.peers.pop(next(iter(self.peers)))
        self.peers[peer] = None
        self.peer = peer
        return new


class HandoffRules:
    """``SessionGuard``'s handoff half; the guard owns the state declared here."""

    _session: Session | None
    _request: PendingHandoff | None
    _closed: dict[int, str]
    _outbox: deque[tuple[bytes, int, str]]
    _pending: dict[tuple[bytes, int], tuple[str, int | None]]
    _key: str | None
    _key_allowed: Callable[[str], bool]
    _token: Callable[[], int]
    identify: Callable[[str | None], Identity | None]
    handoff_ns: int
    counters: Counter[str]

    def _alert(self, now_ns: int, code: str, detail: str, level: int = logging.WARNING,
               *, rate_limited: bool = True) -> None:
        raise NotImplementedError

    def _grant(self, peer: bytes, req: ControlRequest, now_ns: int, code: str, *,
               level: int, why: str) -> Admission:
        raise NotImplementedError

    @property
    def commander(self) -> str | None:
        """The name of the surgeon in command, for the telemetry; None: no session."""
        return None if self._session is None else self._session.who.name

    @property
    def request_pending(self) -> tuple[str, int] | None:
        """(who asks, request id) of the pending command request, for the telemetry."""
        r = self._request
        return None if r is None else (r.who.name, r.id)

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
        self._request = PendingHandoff(new_token(), peer, req, now_ns, self._key, who)
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
        self._session = Session(token, r.peer, r.req.req_id, now_ns, r.key, r.who)
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
