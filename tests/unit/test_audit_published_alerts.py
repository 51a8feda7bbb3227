"""The audit thread publishes the alerts the staff and surgeon must see (down to one path).

Hook-up of issue 16's warning: a ``redundancy_lost`` alert from the command port is
audited *and* leaves as a ``SafetyEvent`` in the state the robot is in (no transition), so
the page, the consoles, ROS 2 and the recording carry it; other alerts stay audit-only.
"""

from __future__ import annotations

import time
from pathlib import Path

from robot_side.netio import Mailbox
from robot_side.workers import AuditThread
from safety.audit import AuditLog, read_records
from safety.config import AuditConfig
from transport.intake import AuditAlert


def _run(tmp_path: Path, *alerts: AuditAlert) -> tuple[Mailbox, list[str]]:
    mailbox = Mailbox()
    path = tmp_path / "audit" / "robot.audit"
    with AuditLog(AuditConfig(path=path)) as audit:
        thread = AuditThread(audit, mailbox)
        mailbox.alerts.extend(alerts)
        thread.start()
        thread.stop()
        thread.join(5.0)
        assert not thread.is_alive()
    codes = [str(r.fields.get("code")) for r in read_records(path) if r.kind == "alert"]
    return mailbox, codes


def test_redundancy_alerts_leave_as_safety_events_without_a_transition(tmp_path: Path) -> None:
    now = time.monotonic_ns()
    mailbox, audited = _run(
        tmp_path,
        AuditAlert(now, "redundancy_lost", "path b silent for 52 ms; 1 of 2 paths live"),
        AuditAlert(now + 1, "command_foreign_session", "a command with another token"),
        AuditAlert(now + 2, "redundancy_restored", "2 of 2 paths live"))
    assert audited == ["redundancy_lost", "command_foreign_session", "redundancy_restored"]
    events = list(mailbox.events)
    assert [e.code for e in events] == ["redundancy_lost", "redundancy_restored"]
    lost = events[0]
    assert lost.state_from == lost.state_to == "disabled", "no report yet: the start state"
    assert "1 of 2 paths live" in lost.detail
    assert lost.t_ns == now
