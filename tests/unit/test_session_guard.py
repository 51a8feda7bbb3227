"""SessionGuard: one surgeon session at a time, single-use request ids, the takeover rule."""

from __future__ import annotations

import itertools

from transport.schema import ControlReply, ControlRequest, Ping, Pong
from transport.session_guard import SessionGuard

MS = 1_000_000
A, B = b"console-a", b"console-b"


def guard() -> SessionGuard:
    tokens = itertools.count(1001)
    return SessionGuard(idle_ms=3000.0, token=lambda: next(tokens))


def req(req_id: int, op: str, session: int | None = None) -> ControlRequest:
    return ControlRequest(req_id=req_id, op=op, session=session)


def alive(peer: bytes) -> bool:
    return False


def gone(peer: bytes) -> bool:
    return True


def armed(g: SessionGuard) -> int:
    adm = g.admit(A, req(1, "arm"), 0, alive)
    assert adm.ok and adm.granted is not None
    reply = g.on_reply(A, ControlReply(req_id=1, ok=True, state="ready", reason="armed"), 0)
    assert reply.session == adm.granted, "the token travels in the arm reply"
    return adm.granted


def test_arm_grants_a_session_and_only_its_holder_is_pinged() -> None:
    g = guard()
    g.admit(B, req(1, "set_scale"), 0, alive)  # before any session: allowed, pinged
    assert g.ping_target == B
    token = armed(g)
    assert g.token == token and g.ping_target == A
    assert [a.code for a in g.drain_alerts()] == ["session_granted"]


def test_a_second_console_is_refused_and_cannot_take_the_pings() -> None:
    g = guard()
    token = armed(g)
    for i, op in enumerate(("arm", "engage", "disengage", "set_scale", "clear_fault"), 1):
        adm = g.admit(B, req(i, op), 10 * MS, alive)
        assert not adm.ok and adm.reason == "session_busy", op
    # A guessed token from the second connection does not help either.
    assert not g.admit(B, req(9, "engage", token + 1), 10 * MS, alive).ok
    assert g.ping_target == A
    assert not g.pong_ok(B, Pong(seq=1, t1_ns=0, t2_ns=1, t3_ns=2, session=token), 11 * MS)
    assert g.pong_ok(A, Pong(seq=1, t1_ns=0, t2_ns=1, t3_ns=2, session=token), 11 * MS)
    # Audited, but rate-limited: one record, not one per message.
    assert [a.code for a in g.drain_alerts()] == ["session_granted", "session_busy"]


def test_request_ids_are_single_use_per_session() -> None:
    g = guard()
    token = armed(g)
    assert g.admit(A, req(2, "engage", token), 1 * MS, alive).ok
    assert g.admit(A, req(3, "disengage", token), 2 * MS, alive).ok
    replay = g.admit(A, req(2, "engage", token), 3 * MS, alive)  # the same engage bytes
    assert not replay.ok and replay.reason == "request_replayed"
    assert g.counters["request_replayed"] == 1
    assert "request_replayed" in [a.code for a in g.drain_alerts()]


def test_an_old_sessions_request_is_refused_after_a_re_arm() -> None:
    g = guard()
    old = armed(g)
    adm = g.admit(A, req(5, "arm"), 1 * MS, alive)  # a new run of the console: no token
    assert adm.ok and adm.granted not in (None, old)
    # Another connection replaying the old session's engage (a newer id, too).
    assert not g.admit(B, req(6, "engage", old), 2 * MS, alive).ok
    # The holder's own connection without the token: only arm renews.
    refused = g.admit(A, req(7, "engage", None), 3 * MS, alive)
    assert not refused.ok and refused.reason == "session_token_mismatch"


def test_the_holders_repeated_arm_with_its_token_keeps_the_session() -> None:
    """An ``enable`` sent twice (ROS) must not renew the token: a new token restarts
    the robot's command intake and the arm trips to hold in the middle of following."""
    g = guard()
    token = armed(g)
    g.drain_alerts()
    adm = g.admit(A, req(2, "arm", token), 1 * MS, alive)
    assert adm.ok and adm.granted is None, "no new session: nothing restarts"
    assert g.token == token
    assert g.on_reply(A, ControlReply(req_id=2, ok=True, state="following",
                                      reason="already_armed"), 1 * MS).session is None
    assert g.counters["already_armed"] == 1
    assert [a.code for a in g.drain_alerts()] == ["already_armed"]
    # Still single-use ids, and still only the holder.
    assert g.admit(A, req(2, "arm", token), 2 * MS, alive).reason == "request_replayed"
    assert g.admit(B, req(3, "arm"), 2 * MS, alive).reason == "session_busy"


def test_takeover_only_when_the_holder_is_gone_or_silent() -> None:
    g = guard()
    token = armed(g)
    assert not g.admit(B, req(1, "arm"), 2000 * MS, alive).ok  # answered 2 s ago: busy
    g.pong_ok(A, Pong(seq=1, t1_ns=0, t2_ns=1, t3_ns=2, session=token), 2500 * MS)
    assert not g.admit(B, req(2, "arm"), 5000 * MS, alive).ok  # pong 2.5 s ago: busy
    late = g.admit(B, req(3, "arm"), 5600 * MS, alive)  # silent for 3.1 s
    assert late.ok and late.granted is not None and g.ping_target == B
    assert "session_takeover" in [a.code for a in g.drain_alerts()]
    # Connection dropped: at once.
    adm = g.admit(A, req(9, "arm"), 5601 * MS, gone)
    assert adm.ok and g.ping_target == A


def test_a_new_console_may_clear_a_fault_once_the_holder_is_gone() -> None:
    """The console's order after a crash: set_scale, clear_fault, then arm."""
    g = guard()
    armed(g)
    assert not g.admit(B, req(1, "clear_fault"), 1 * MS, alive).ok
    assert g.admit(B, req(2, "set_scale"), 2 * MS, gone).ok  # the session ends
    assert g.token is None and g.ping_target == B
    assert g.admit(B, req(3, "clear_fault"), 3 * MS, alive).ok
    assert not g.admit(B, req(4, "engage"), 4 * MS, alive).ok, "engage needs a session"
    assert g.admit(B, req(5, "arm"), 5 * MS, alive).granted is not None


def test_the_holder_moves_with_its_token_after_a_reconnect() -> None:
    g = guard()
    token = armed(g)
    assert g.admit(B, req(2, "engage", token), 1 * MS, alive).ok
    assert g.ping_target == B


def test_the_holders_own_ping_moves_the_session_after_a_reconnect() -> None:
    g = guard()
    token = armed(g)
    g.on_ping(B, Ping(seq=1, t1_ns=0), 1 * MS)  # no token: nothing moves
    g.on_ping(B, Ping(seq=2, t1_ns=0, session=token + 1), 1 * MS)
    assert g.ping_target == A
    g.on_ping(B, Ping(seq=3, t1_ns=0, session=token), 2 * MS)
    assert g.ping_target == B


def test_engage_needs_a_session() -> None:
    g = guard()
    adm = g.admit(A, req(1, "engage"), 0, alive)
    assert not adm.ok and adm.reason == "no_session"


def test_a_remote_operation_refused_in_estop_is_an_audit_record() -> None:
    g = guard()
    token = armed(g)
    g.drain_alerts()
    assert g.admit(A, req(2, "clear_fault", token), 1 * MS, alive).ok
    g.on_reply(A, ControlReply(req_id=2, ok=False, state="estop", reason="latched"), 1 * MS)
    alerts = g.drain_alerts()
    assert [a.code for a in alerts] == ["refused_in_estop"]
    assert "clear_fault" in alerts[0].detail and alerts[0].level >= 30


def test_a_revoked_holders_session_ends_at_the_next_request_of_another_console() -> None:
    """Issue 12.7 with the session rule: a reload that revokes the holder's key drops its
    live session (its messages are refused from then on, so it could never answer); the
    next console gets in at once, not only after ``idle_ms``."""
    g = guard()
    authorised = {"key-a", "key-b"}
    allowed = authorised.__contains__
    adm = g.admit(A, req(1, "arm"), 0, alive, key="key-a", key_allowed=allowed)
    assert adm.ok and adm.granted is not None
    busy = g.admit(B, req(1, "clear_fault"), 1 * MS, alive, key="key-b", key_allowed=allowed)
    assert not busy.ok and busy.reason == "session_busy"
    authorised.discard("key-a")  # keys reload: A's key is gone, its connection is not
    taken = g.admit(B, req(2, "clear_fault"), 2 * MS, alive, key="key-b", key_allowed=allowed)
    assert taken.ok and g.token is None
    alerts = [a for a in g.drain_alerts() if a.code == "session_takeover"]
    assert alerts and "its key was revoked" in alerts[0].detail


def test_a_revoked_holders_session_ends_at_once_and_restoring_the_key_does_not_revive_it(
        ) -> None:
    g = guard()
    authorised = {"key-a"}
    adm = g.admit(A, req(1, "arm"), 0, alive, key="key-a", key_allowed=authorised.__contains__)
    assert adm.ok and adm.granted is not None
    assert not g.end_if_revoked(authorised.__contains__, 1 * MS)
    authorised.clear()  # a reload removed the key
    assert g.end_if_revoked(authorised.__contains__, 2 * MS)
    authorised.add("key-a")  # and a later reload put it back
    assert g.token is None and g.ping_target is None
    assert not g.end_if_revoked(authorised.__contains__, 3 * MS)
    # The old session's token is worth nothing now; anyone may clear the fault and arm.
    assert g.admit(B, req(1, "clear_fault", adm.granted), 4 * MS, alive).ok
    assert "session_revoked" in [a.code for a in g.drain_alerts()]
