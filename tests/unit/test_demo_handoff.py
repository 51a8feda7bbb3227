"""The demo's takeover rows, judged from a real audit log written as the robot writes it."""

from __future__ import annotations

from pathlib import Path

from safety.audit import AuditLog
from safety.config import AuditConfig
from telesurgery.demo_handoff import evaluate_handoff, handoff_from_audit, handoff_rows

MS = 1_000_000
T = 5_000 * MS


def write_run(path: Path, *, old_engages_again: bool) -> None:
    with AuditLog(AuditConfig(path=path)) as log:
        def control(t: int, peer: str, op: str, ok: bool, result: str) -> None:
            log.append("control", {"t_ns": t, "peer": peer, "op": op, "req_id": 1,
                                   "value": None, "ok": ok, "result": result,
                                   "state": "ready"}, sync=False)

        def transition(t: int, frm: str, to: str, reason: str) -> None:
            log.append("transition", {"t_ns": t, "from": frm, "to": to, "reason": reason,
                                      "detail": ""})

        control(T - 2000 * MS, "aa", "arm", True, "armed")
        control(T - 1900 * MS, "aa", "engage", True, "engaged")
        transition(T - 1900 * MS, "ready", "following", "engaged")
        log.append("alert", {"t_ns": T, "code": "handoff_takeover",
                             "detail": "mentor mentor took command from surgeon",
                             "level": "WARNING"})
        control(T + 2 * MS, "bb", "takeover", True, "disengaged")
        transition(T + 2 * MS, "following", "ready", "disengaged")
        control(T + 10 * MS, "aa", "engage", False, "session_busy")
        control(T + 300 * MS, "bb", "engage", True, "engaged")
        transition(T + 300 * MS, "ready", "following", "engaged")
        if old_engages_again:
            transition(T + 400 * MS, "following", "hold", "clutch")
            control(T + 500 * MS, "aa", "engage", True, "engaged")
            transition(T + 500 * MS, "hold", "following", "engaged")


def test_a_clean_takeover_gives_the_rows_and_meets_the_expectations(tmp_path: Path) -> None:
    path = tmp_path / "robot.audit"
    write_run(path, old_engages_again=False)
    robot = {"resumes_ns": [T - 1900 * MS, T + 300 * MS], "gate": {"foreign": 40}}
    h = handoff_from_audit(path, robot)
    assert h["takeover_to_held_ms"] == 2.0 and h["held_reason"] == "disengaged"
    assert h["takeover_to_engaged_ms"] == 300.0
    assert h["takeover_to_first_motion_ms"] == 300.0
    assert h["old_console_engages_after_takeover"] == 0
    assert evaluate_handoff(h, 2.0) == []
    assert all(row[3] != "FAILED" for row in handoff_rows(h, 2.0))


def test_the_old_console_moving_the_arm_after_the_takeover_fails_the_demo(
        tmp_path: Path) -> None:
    path = tmp_path / "robot.audit"
    write_run(path, old_engages_again=True)
    h = handoff_from_audit(path, {"resumes_ns": [T + 300 * MS], "gate": {"foreign": 0}})
    assert h["old_console_engages_after_takeover"] == 1
    failures = evaluate_handoff(h, 2.0)
    assert any("old console engaged 1 times" in f for f in failures), failures
    assert any("foreign" in f for f in failures), failures
    assert handoff_rows(h, 2.0)[-1][3] == "FAILED"


def test_no_takeover_is_a_failure(tmp_path: Path) -> None:
    path = tmp_path / "robot.audit"
    with AuditLog(AuditConfig(path=path)) as log:
        log.append("transition", {"t_ns": T, "from": "disabled", "to": "ready",
                                  "reason": "armed", "detail": ""})
    h = handoff_from_audit(path, {})
    assert evaluate_handoff(h, 2.0) == [
        "the mentor never took over (no handoff_takeover in the audit)"]
