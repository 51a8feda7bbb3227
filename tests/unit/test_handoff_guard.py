"""SessionGuard's handoff between surgeon consoles: request, grant, deny, takeover, timeout.

Pure logic on the robot's clock (``now_ns`` passed in); the same rules are driven over
real CurveZMQ sockets and a real robot node in ``tests/system/test_handoff.py``.
"""

from __future__ import annotations

import itertools

from transport.keys import Identity
from transport.schema import ControlReply, ControlRequest, Pong
from transport.session_guard import Admission, SessionGuard

MS = 1_000_000
A, B, C = b"console-a", b"console-b", b"console-c"
NAMES = {"key-a": Identity("alice"), "key-b": Identity("bob"),
         "key-m": Identity("mentor", mentor=True)}
KEY = {A: "key-a", B: "key-b", C: "key-m"}


def alive(peer: bytes) -> bool:
    return False


def guard(handoff_ms: float = 5000.0) -> SessionGuard:
    tokens = itertools.count(1001)
    g = SessionGuard(idle_ms=3000.0, token=lambda: next(tokens), handoff_ms=handoff_ms)
    g.identify = lambda key: NAMES.get(key or "")
    return g


def send(g: SessionGuard, peer: bytes, req_id: int, op: str, now_ns: int,
         *, session: int | None = None, handoff: int | None = None) -> Admission:
    return g.admit(peer, ControlRequest(req_id=req_id, op=op, session=session, handoff=handoff),
                   now_ns, alive, key=KEY[peer])


def armed(g: SessionGuard) -> int:
    adm = send(g, A, 1, "arm", 0)
    assert adm.granted is not None
    g.on_reply(A, ControlReply(req_id=1, ok=True, state="ready", reason="armed"), 0)
    return adm.granted


def codes(g: SessionGuard) -> list[str]:
    return [a.code for a in g.drain_alerts()]


def test_grant_moves_the_session_and_revokes_the_old_token_at_once() -> None:
    g = guard()
    old = armed(g)
    assert g.commander == "alice"
    asked = send(g, B, 1, "request_command", 10 * MS)
    assert asked.deferred and not asked.ok, "the requester's reply waits for the grant"
    assert g.request_pending is not None and g.request_pending[0] == "bob"
    rid = g.request_pending[1]
    adm = send(g, A, 2, "grant", 20 * MS, session=old, handoff=rid)
    assert adm.ok and adm.granted is None, "the granting console gets no token"
    assert adm.handoff is not None
    peer, req, _, new = adm.handoff
    assert peer == B and req.op == "request_command" and new != old
    assert g.token == new and g.commander == "bob" and g.ping_target == B
    # The new token leaves in the reply to the requester's waiting request, only there.
    reply = g.on_reply(B, ControlReply(req_id=1, ok=True, state="ready", reason="x"), 21 * MS)
    assert reply.session == new
    assert g.on_reply(A, ControlReply(req_id=2, ok=True, state="ready", reason="x"),
                      21 * MS).session is None
    # The old console is refused from now on, with its token, and its pongs do not count.
    refused = send(g, A, 3, "engage", 22 * MS, session=old)
    assert not refused.ok and refused.reason == "session_busy"
    assert not g.pong_ok(A, Pong(seq=1, t1_ns=0, t2_ns=1, t3_ns=2, session=old), 23 * MS)
    assert {"handoff_requested", "handoff_granted", "session_busy"} <= set(codes(g))


def test_a_second_request_while_one_is_pending_is_refused_first_wins() -> None:
    g = guard()
    old = armed(g)
    assert send(g, B, 1, "request_command", 10 * MS).deferred
    second = send(g, C, 1, "request_command", 11 * MS)
    assert not second.ok and second.reason == "handoff_busy"
    assert g.request_pending is not None and g.request_pending[0] == "bob"
    assert g.token == old
    assert "handoff_refused" in codes(g)


def test_a_stale_grant_is_refused_and_the_request_times_out() -> None:
    g = guard(handoff_ms=1000.0)
    old = armed(g)
    send(g, B, 1, "request_command", 10 * MS)
    assert g.request_pending is not None
    rid = g.request_pending[1]
    g.expire(1011 * MS)  # the robot's own clock: 1001 ms after the request
    assert g.take_refusals() == [(B, 1, "handoff_timeout")]
    late = send(g, A, 2, "grant", 1020 * MS, session=old, handoff=rid)
    assert not late.ok and late.reason == "grant_stale"
    assert g.token == old and g.commander == "alice"
    assert {"handoff_timeout", "handoff_refused"} <= set(codes(g))


def test_a_replayed_grant_is_refused() -> None:
    g = guard()
    old = armed(g)
    send(g, B, 1, "request_command", 10 * MS)
    assert g.request_pending is not None
    rid = g.request_pending[1]
    assert send(g, A, 2, "grant", 20 * MS, session=old, handoff=rid).ok
    new = g.token
    # The same grant again: the old token is no longer in command.
    again = send(g, A, 3, "grant", 30 * MS, session=old, handoff=rid)
    assert not again.ok and again.reason == "not_in_command"
    # Bob hands back, then a grant naming the first (used) request is a replay.
    send(g, A, 4, "request_command", 40 * MS)
    assert g.request_pending is not None
    replay = send(g, B, 2, "grant", 50 * MS, session=new, handoff=rid)
    assert not replay.ok and replay.reason == "grant_replayed"
    unknown = send(g, B, 3, "grant", 51 * MS, session=new, handoff=12345)
    assert not unknown.ok and unknown.reason == "handoff_unknown"
    assert g.token == new


def test_deny_ends_the_request_and_the_requester_is_told() -> None:
    g = guard()
    old = armed(g)
    send(g, B, 1, "request_command", 10 * MS)
    assert g.request_pending is not None
    adm = send(g, A, 2, "deny", 20 * MS, session=old, handoff=g.request_pending[1])
    assert adm.ok and adm.handoff is None and g.token == old
    assert g.take_refusals() == [(B, 1, "handoff_denied")]


def test_mentor_takes_over_without_a_grant_a_plain_surgeon_may_not() -> None:
    g = guard()
    old = armed(g)
    plain = send(g, B, 1, "takeover", 10 * MS)
    assert not plain.ok and plain.reason == "not_mentor" and g.token == old
    send(g, B, 2, "request_command", 11 * MS)  # pending: the takeover supersedes it
    adm = send(g, C, 1, "takeover", 12 * MS)
    assert adm.ok and adm.granted is not None and adm.granted != old
    assert g.commander == "mentor" and g.ping_target == C and g.request_pending is None
    assert g.take_refusals() == [(B, 2, "handoff_superseded")]
    assert {"takeover_refused", "handoff_takeover", "handoff_superseded"} <= set(codes(g))


def test_only_the_commander_may_grant_and_nobody_may_ask_without_a_commander() -> None:
    g = guard()
    assert send(g, B, 1, "request_command", 0).reason == "no_commander"
    old = armed(g)
    send(g, B, 2, "request_command", 10 * MS)
    assert g.request_pending is not None
    rid = g.request_pending[1]
    forged = send(g, C, 1, "grant", 11 * MS, handoff=rid)
    assert not forged.ok and forged.reason == "not_in_command"
    assert send(g, A, 2, "request_command", 12 * MS, session=old).reason == "already_in_command"
    assert g.token == old


def test_refusals_are_rate_limited_in_the_audit() -> None:
    g = guard()
    armed(g)
    send(g, B, 1, "request_command", 10 * MS)
    codes(g)
    for i in range(1000):
        send(g, C, i + 1, "request_command", 20 * MS + i * 1000)
    assert codes(g) == ["handoff_refused"], "one record per second, the rest counted"
    assert g.counters["handoff_busy"] == 1000


def test_a_grant_to_a_requester_whose_link_dropped_keeps_the_commander() -> None:
    """A handoff during a link fault: the requester is gone when the grant comes; the
    command stays where it is (never split, never to nobody)."""
    g = guard()
    old = armed(g)
    send(g, B, 1, "request_command", 10 * MS)
    assert g.request_pending is not None
    rid = g.request_pending[1]
    adm = g.admit(A, ControlRequest(req_id=2, op="grant", session=old, handoff=rid), 20 * MS,
                  lambda peer: peer == B, key=KEY[A])
    assert not adm.ok and adm.reason == "requester_gone"
    assert g.token == old and g.commander == "alice" and g.request_pending is None
    assert g.take_refusals() == [(B, 1, "handoff_requester_gone")]
