"""The demo's report: figures beside their bounds, every trip judged, no negative times."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from safety.audit import AuditLog
from safety.config import AuditConfig
from telesurgery.demo import build_report, evaluate, print_report, transitions_from_audit

MS = 1_000_000
BLACKOUT_NS = 10_000 * MS


def robot(trips: list[tuple[str, int]], **extra: Any) -> dict[str, Any]:
    return {"trips": [{"reason": r, "detected_ns": t, "hold_sent_ns": t + MS // 2,
                       "last_command_ns": t - 40 * MS} for r, t in trips],
            "resumes_ns": [BLACKOUT_NS + 2000 * MS], "following_periods": 5000,
            "command_latency": {"n": 9000, "p50_us": 300.0, "p99_us": 800.0}, **extra}


def report(trips: list[tuple[str, int]], **extra: Any) -> dict[str, Any]:
    r = build_report(robot(trips, **extra), {"g2g_ms": {"n": 100, "p50": 40.0, "p99": 70.0}},
                     BLACKOUT_NS, {"console": 3.2, "robot": 9.1}, 0, blackout_s=0.5)
    r["bounds"] = {"detect_ms": 54.0, "period_ms": 2.0, "path_goal_p99_us": 1000.0}
    r["failures"] = evaluate(r, timeout_ms=50.0, period_ms=2.0)
    return r


def test_the_scripted_trip_alone_passes() -> None:
    r = report([("command_timeout", BLACKOUT_NS + 50 * MS)])
    assert r["failures"] == [] and r["trips"][0]["scripted"]


def test_a_trip_before_the_blackout_fails_the_verdict_and_reads_as_before(
        capsys: pytest.CaptureFixture[str]) -> None:
    r = report([("latency_high", BLACKOUT_NS - 3000 * MS),
                ("command_timeout", BLACKOUT_NS + 50 * MS)])
    assert len(r["failures"]) == 1 and "unexpected trip latency_high" in r["failures"][0]
    print_report(r)
    out = capsys.readouterr().out
    assert "3000.0 ms BEFORE the blackout" in out and "UNEXPECTED" in out
    assert "ms after the blackout began" in out and "-3000" not in out
    assert "FAILED" in out


def test_a_second_trip_after_the_blackout_also_fails() -> None:
    r = report([("command_timeout", BLACKOUT_NS + 50 * MS),
                ("rtt_high", BLACKOUT_NS + 5000 * MS)])
    assert [t["scripted"] for t in r["trips"]] == [True, False]
    assert len(r["failures"]) == 1 and "rtt_high" in r["failures"][0]


def test_figures_are_printed_beside_their_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    r = report([("command_timeout", BLACKOUT_NS + 50 * MS)],
               path={"n": 9000, "p50_us": 420.0, "p99_us": 870.0, "p999_us": 1300.0,
                     "max_us": 2100.0})
    print_report(r)
    out = capsys.readouterr().out
    assert "goal p99 <= 1 ms" in out and "p99 870 us" in out
    assert "<= 54 ms (timeout + 2 periods)" in out and "<= 2 ms (one period)" in out
    assert "console 3.2" in out


def test_every_transition_is_listed_with_the_escalation(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "robot.audit"
    with AuditLog(AuditConfig(path=path)) as audit:
        for t_ns, frm, to, why in [(BLACKOUT_NS - MS, "ready", "following", "engaged"),
                                   (BLACKOUT_NS + 50 * MS, "following", "hold",
                                    "command_timeout"),
                                   (BLACKOUT_NS + 1050 * MS, "hold", "fault",
                                    "hold_escalated")]:
            audit.append("transition", {"t_ns": t_ns, "from": frm, "to": to, "reason": why,
                                        "detail": ""})
    got = transitions_from_audit(path, BLACKOUT_NS)
    assert [(t["to"], t["reason"]) for t in got] == [
        ("following", "engaged"), ("hold", "command_timeout"), ("fault", "hold_escalated")]
    assert got[0]["when"] == "1.0 ms BEFORE the blackout"


def test_cpu_sampler_gives_each_rig_process_its_share_of_a_core() -> None:
    """Real processes: one busy, one asleep; the busy one's share is the larger, and a
    process seen only once (started after the first sample) gets no share."""
    import subprocess
    import sys
    import time
    from types import SimpleNamespace

    from telesurgery.demo import CpuSampler

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    late: subprocess.Popen[bytes] | None = None
    try:
        rig = SimpleNamespace(procs={"busy": busy, "idle": idle})
        sampler = CpuSampler(rig)  # type: ignore[arg-type]
        sampler.sample()
        time.sleep(0.5)
        late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        rig.procs["late"] = late
        sampler.sample()
        pct = sampler.percent()
    finally:
        for p in (busy, idle, late):
            if p is not None:
                p.kill()
                p.wait()
    assert set(pct) == {"busy", "idle"}
    assert pct["busy"] > pct["idle"] >= 0.0


def test_soak_reports_the_alongside_processes_as_shares_of_a_core() -> None:
    from telesurgery.bench.soak import _alongside_pct

    assert _alongside_pct({"stall_cpu_s": 6.0, "raw_send_cpu_s": 1.5, "raw_recv_cpu_s": 1.5},
                          60.0) == {"stall reader": 10.0, "raw pyzmq pair": 5.0}
    assert _alongside_pct({"stall_cpu_s": None}, 60.0) == {}
