"""Who is in command, and a pending request, on the surgeon's HUD and the status block."""

from __future__ import annotations

import dataclasses

from operator_console.session import HANDOFF_KEYS
from operator_console.status_view import format_status
from operator_console.video.hud import AMBER, HudState, hud_lines
from operator_console.view import SurgeonView
from transport import schema

MS = 1_000_000


def telemetry(commander: str | None = None, handoff_from: str | None = None,
              handoff_id: int | None = None) -> schema.Telemetry:
    return schema.Telemetry(
        seq=1, t_ns=0, state="following", reason="engaged", measured_js=(), setpoint_js=(),
        measured_cp=schema.Pose(), setpoint_cp=schema.Pose(), link=schema.LinkReport(),
        scale=0.2, estop=False, commander=commander, handoff_from=handoff_from,
        handoff_id=handoff_id)


def hud(tlm: schema.Telemetry, now_ns: int = 10 * MS) -> HudState:
    return SurgeonView(stale_ms=250.0, telemetry_stale_ms=300.0).build(
        tlm=tlm, tlm_recv_ns=0, now_ns=now_ns, message="", message_ns=0, teleop_why="",
        clutch=False, operator_present=True, scale=0.2, video_age_ms=30.0)


def test_the_hud_names_the_commander_and_a_pending_request() -> None:
    in_command = hud(telemetry(commander="alice"))
    assert hud_lines(in_command)[-1][0] == "In command: alice"
    assert "In command: alice" in format_status(in_command, color=False)
    asked = hud(telemetry(commander="alice", handoff_from="bob", handoff_id=7))
    text, colour = hud_lines(asked)[-1]
    assert text == "Request from bob - press G to grant" and colour == AMBER
    assert "press G to grant" in format_status(asked, color=False)
    assert HANDOFF_KEYS[ord("G")] == "grant"


def test_stale_telemetry_names_nobody_and_old_bytes_stay_the_same() -> None:
    late = hud(telemetry(commander="alice"), now_ns=400 * MS)
    assert not any("In command" in t for t, _ in hud_lines(late))
    plain = telemetry()
    assert schema.encode(plain) == schema.encode(dataclasses.replace(plain, commander=None))
    assert b"commander" not in schema.encode(plain)
    back = schema.decode(schema.encode(telemetry("a", "b", 3)))
    assert isinstance(back, schema.Telemetry) and back.handoff_id == 3
