"""The demo's mentor takeover (issue 15): a second surgeon console takes command mid-suturing.

The rig makes a second surgeon key, ``mentor``, with the mentor flag. Once the
blackout has been recovered from, the demo starts a second ``telesurgery console``
process holding it, scripted with ``[session] takeover_after_s``: it watches, then
takes command without a grant (the emergency override; the scripted first surgeon
has no hand to press G, and a takeover is the harder case, the old console still
streaming when its command goes). The arm holds, the mentor engages (re-anchored:
no jump) and its scripted suturing moves the arm.

Every figure comes from what the robot itself wrote: its audit (the network
thread's admission of the takeover, the control thread's hold and the engage that
followed), its summary (the periods re-anchored at each engage, stamped in the
control loop, and the command gate's counters). The reference for "held" is the
control thread's transition out of following, not the admission: the old surgeon
is in command until the control thread's next period.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from hil_tests.rig import SimRig
from safety.audit import read_records

MENTOR = "mentor"
TAKEOVER_AFTER_S = 2.0
"""The mentor console watches this long after its start before it takes command."""
MENTOR_START_AFTER_RECOVERY_S = 2.0
"""The mentor console starts this long after the blackout ended (the first surgeon has
re-engaged by then: ``reengage_after_s`` 1 s)."""
FIRST_MOTION_BOUND_MS = 1000.0
"""Issue 15's goal: handoff request -> the new surgeon's first executed motion <= 1 s."""
MENTOR_DISPLAY = {"enabled": True, "headless": True, "out_dir": None, "every_n": 0,
                  "status_view": False}
"""The mentor decodes the robot's video (the robot requires a fresh picture on the
commander's display) but draws no HUD frames to disk: CPU on two shared cores."""


def mentor_start_s(blackout_at: float, blackout_s: float) -> float:
    """When (seconds into the demo) the mentor's console starts."""
    return blackout_at + blackout_s + MENTOR_START_AFTER_RECOVERY_S


def finish_mentor(rig: SimRig) -> int | None:
    """Let the mentor's console end its run (it writes its summary), then stop it."""
    proc = rig.procs.get(MENTOR)
    if proc is None:
        return None
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.terminate()  # it disengages and writes its summary on SIGTERM
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)


def _t(rec: Any) -> int:
    return int(rec.fields.get("t_ns") or rec.mono_ns)


def handoff_from_audit(audit: Path, robot: dict[str, Any]) -> dict[str, Any]:
    """The takeover as the robot recorded it; ``{"took_over": False}`` without one."""
    records = list(read_records(audit))
    t_takeover = next((_t(r) for r in records if r.kind == "alert"
                       and r.fields.get("code") == "handoff_takeover"), None)
    controls = [r for r in records if r.kind == "control"]
    taken = next((r for r in controls if r.fields.get("op") == "takeover"
                  and r.fields.get("ok")), None)
    if t_takeover is None or taken is None:
        return {"took_over": False}
    # Consoles by the connection the robot's control socket saw (never a claim): the
    # mentor's is the takeover's; the old console's, those accepted before it.
    mentor_peer = taken.fields.get("peer")
    old_peers = {r.fields.get("peer") for r in controls
                 if r.fields.get("ok") and _t(r) < _t(taken)} - {mentor_peer}
    transitions = [r for r in records if r.kind == "transition" and _t(r) >= t_takeover]
    # The control thread acts on the takeover in its next period (the takeover's control
    # record): out of following then, or the arm was already held (the hold is that period).
    hold = next((r for r in transitions if r.fields.get("from") == "following"
                 and _t(r) <= _t(taken)), None)
    t_held = _t(hold) if hold is not None else _t(taken)
    held_reason = (str(hold.fields.get("reason")) if hold is not None
                   else f"already held: {taken.fields.get('state')}")
    after = t_held
    t_engaged = next((_t(r) for r in transitions if r.fields.get("to") == "following"
                      and _t(r) > after), None)
    # The robot's own stamp of each re-anchored period (engage): the mentor's first
    # period of motion, the Release and first targets written to the serial port.
    first_motion = next((t for t in robot.get("resumes_ns", []) if t > after), None)
    # Every stretch of following after the hold begins with an accepted engage; one by
    # the old console's connection would be its frames reaching the arm again.
    old_engages = [r for r in controls if r.fields.get("op") == "engage"
                   and r.fields.get("ok") and _t(r) > after
                   and r.fields.get("peer") in old_peers]
    old_accepted = [r for r in controls if r.fields.get("ok") and _t(r) >= _t(taken)
                    and r.fields.get("peer") in old_peers]
    gate = robot.get("gate") or {}

    def ms(a: int | None, b: int | None) -> float | None:
        return None if a is None or b is None else round((b - a) / 1e6, 2)

    return {
        "took_over": True,
        "detail": next((str(r.fields.get("detail") or "") for r in records
                        if r.kind == "alert" and r.fields.get("code") == "handoff_takeover"),
                       ""),
        "takeover_to_held_ms": ms(t_takeover, t_held),
        "takeover_to_engaged_ms": ms(t_takeover, t_engaged),
        "takeover_to_first_motion_ms": ms(t_takeover, first_motion),
        "held_reason": held_reason,
        "old_console_engages_after_takeover": len(old_engages),
        "old_console_accepted_after_takeover": len(old_accepted),
        "foreign_commands_refused": int(gate.get("foreign", 0)),
        "t_takeover_ns": t_takeover,
    }


def evaluate_handoff(h: dict[str, Any], period_ms: float) -> list[str]:
    """Issue 15's expectations of the takeover; each failure is one line."""
    if not h.get("took_over"):
        return ["the mentor never took over (no handoff_takeover in the audit)"]
    failures = []
    held, engaged = h["takeover_to_held_ms"], h["takeover_to_engaged_ms"]
    first = h["takeover_to_first_motion_ms"]
    if held is None:
        failures.append("the arm never held after the takeover (it was not following?)")
    if engaged is None:
        failures.append("the mentor never engaged after the takeover")
    if first is None or first > FIRST_MOTION_BOUND_MS:
        failures.append(f"takeover -> the mentor's first executed motion {first} ms "
                        f"(bound {FIRST_MOTION_BOUND_MS:g} ms)")
    if h["old_console_engages_after_takeover"] or h["old_console_accepted_after_takeover"]:
        failures.append(f"the old console engaged {h['old_console_engages_after_takeover']} "
                        f"times ({h['old_console_accepted_after_takeover']} accepted "
                        "requests) after the takeover")
    if h["foreign_commands_refused"] == 0:
        failures.append("no command of the old console was refused as foreign after the "
                        "takeover (it streams until its end)")
    return failures


def handoff_rows(h: dict[str, Any], period_ms: float) -> list[tuple[str, str, str, str]]:
    """(figure, measured, bound, verdict) rows for the demo's report."""
    if not h.get("took_over"):
        return [("mentor takeover", "none", "the mentor takes over mid-run", "FAILED")]
    held = h["takeover_to_held_ms"]
    first = h["takeover_to_first_motion_ms"]
    return [
        ("mentor takeover", "without a grant", "(the robot's audit)", h.get("detail", "")),
        ("  -> held", f"{held} ms ({h.get('held_reason')})",
         f"control thread's next period ({period_ms:g} ms)", "ok" if held is not None else
         "FAILED"),
        ("  -> mentor engaged", f"{h['takeover_to_engaged_ms']} ms",
         "(re-anchored to its master)", ""),
        ("  -> first motion", f"{first} ms", f"<= {FIRST_MOTION_BOUND_MS:g} ms (issue 15)",
         "ok" if first is not None and first <= FIRST_MOTION_BOUND_MS else "FAILED"),
        ("  old console frames", f"{h['old_console_engages_after_takeover']} engages, "
         f"{h['foreign_commands_refused']} foreign",
         "0 engages; its commands refused", "ok" if not (
             h["old_console_engages_after_takeover"]
             or h["old_console_accepted_after_takeover"])
         and h["foreign_commands_refused"] else "FAILED"),
    ]
