"""Smoke tests of the benchmarks: real processes, real sockets, real DDS; no timed assertions.

They check that ``telesurgery bench dds`` produces every figure and that the
figures are finite, not how fast anything is: speed is what the benchmarks
print. The soak is checked only for its place in the dispatcher and its
verdict logic; a real soak takes minutes (``telesurgery bench soak``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from safety.audit import AuditLog, read_records
from safety.config import AuditConfig
from telesurgery.bench import BENCHES, IN_ALL
from telesurgery.bench.soak import count_trips, evaluate

DDS_KEYS = ("dds_p50_us", "dds_p99_us", "dds_p999_us", "dds_max_us", "dds_delivered",
            "dds_sent", "dds_cpu_sender_pct", "dds_cpu_receiver_pct",
            "dds_be_p50_us", "dds_be_p99_us",
            "zmq_secured_p50_us", "zmq_secured_p99_us", "raw_p50_us", "raw_p99_us",
            "ratio_dds_over_secured_p99", "ratio_dds_over_secured_p50")


@pytest.mark.slow
def test_bench_dds_prints_every_figure_finite() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "telesurgery.cli", "bench", "dds", "--seconds", "1"],
        capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    missing = [k for k in DDS_KEYS if k not in figures]
    assert not missing, f"missing figures: {missing}"
    assert all(math.isfinite(figures[k]) for k in DDS_KEYS), figures
    for path in ("dds", "dds_be", "zmq_secured", "raw"):
        # How many arrive is load-dependent (best effort may lose some): only that some do.
        assert figures[f"{path}_sent"] > 0 and figures[f"{path}_delivered"] > 0, path
    assert figures["dds_payload_bytes"] > 0


PATH_KEYS = ("path_n", "command_latency_p50_us", "command_latency_p99_us",
             "raw_p50_us", "raw_p99_us", "raw_delivered", "stall_sched_fifo",
             "stall_gap_p99_us", "stall_gap_max_us", "stall_gaps_over_1ms", "stall_top_gaps_us",
             "ratio_path_over_raw_p99", "loop_period_err_p99_us", "loop_overruns")


ROS_PATH_KEYS = ("ros_path_n", "ros_sent", "ros_take_command_s", "ros_raw_p50_us",
                 "ros_raw_p99_us", "ros_raw_delivered", "ratio_ros_path_over_raw_p99")


@pytest.mark.slow
def test_bench_path_prints_every_figure(tmp_path: Path) -> None:
    """The real rig (firmware emulator, robot node, console) with raw pyzmq and the stall
    baseline alongside, then (``--ros``, same run) an independent DDS participant that
    takes command and streams servo_cp; only the shape of what it prints and writes is
    checked."""
    proc = subprocess.run(
        [sys.executable, "-m", "telesurgery.cli", "bench", "path", "--seconds", "4", "--ros",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, check=False)
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    missing = [k for k in (*PATH_KEYS, *ROS_PATH_KEYS) if k not in figures]
    assert not missing, f"missing figures: {missing}\n{proc.stdout[-2000:]}"
    assert figures["raw_delivered"] > 0 and figures["stall_gap_max_us"] > 0
    if figures["path_n"]:  # the scripted surgeon engaged within the short run
        assert all(k in figures for k in ("path_p50_us", "path_p99_us", "path_p999_us"))
    # The ROS program took command (the console was gone) and moved the arm.
    assert figures["ros_sent"] > 0 and figures["ros_raw_delivered"] > 0, figures
    assert figures["ros_path_n"] > 0, figures
    assert 0 < figures["ros_path_p50_us"] <= figures["ros_path_p99_us"]
    assert figures["ratio_ros_path_over_raw_p99"] > 0
    assert proc.returncode == (0 if figures["path_n"] else 1)
    assert json.loads((tmp_path / "out" / "path.json").read_text()) == figures
    table = (tmp_path / "out" / "path.md").read_text()
    assert "console sample -> serial frame written" in table
    assert "ROS servo_cp publish stamp -> serial frame written" in table


def test_soak_is_named_only_never_in_all() -> None:
    assert "soak" in BENCHES and "record" in BENCHES
    assert "soak" not in IN_ALL and "record" not in IN_ALL  # each runs the rig twice or long
    assert set(IN_ALL) == set(BENCHES) - {"soak", "record"}


def _healthy() -> dict[str, object]:
    return {"false_trips": 0, "trip_reasons": [], "following_periods": 1000,
            "console_exit_code": 0, "commands_received": 5000, "commands_expected": 5000}


def test_soak_verdict_passes_a_healthy_run() -> None:
    assert evaluate(_healthy()) == []


@pytest.mark.parametrize(("change", "why"), [
    ({"false_trips": 1, "trip_reasons": ["latency"]}, "false trip"),
    ({"following_periods": 0}, "never followed"),
    ({"console_exit_code": 1}, "console exited"),
    ({"commands_received": 10}, "10 of 5000 commands"),
])
def test_soak_verdict_fails_each_unhealthy_run(change: dict[str, object], why: str) -> None:
    failures = evaluate({**_healthy(), **change})
    assert len(failures) == 1 and why in failures[0], failures


def _audit(tmp_path: Path, transitions: list[tuple[int, str, str, str]]) -> Path:
    """A real audit log holding these (t_ns, from, to, reason) transitions."""
    path = tmp_path / "audit" / "robot.audit"
    with AuditLog(AuditConfig(path=path)) as audit:
        audit.append("start", {"config": "{}"})
        for t_ns, state_from, state_to, reason in transitions:
            audit.append("transition", {"t_ns": t_ns, "from": state_from, "to": state_to,
                                        "reason": reason, "detail": ""})
        audit.append("stop", {"trips": 0})
    return path


def test_soak_counts_every_unasked_stop_before_the_session_ends(tmp_path: Path) -> None:
    path = _audit(tmp_path, [
        (1_000, "disabled", "fault", "serial_fault"),     # before any engage: still a trip
        (2_000, "fault", "ready", "fault_cleared"),
        (3_000, "ready", "following", "engaged"),
        (4_000, "following", "hold", "clutch"),           # the surgeon's own stop
        (5_000, "hold", "following", "clutch_released"),
        (6_000, "following", "hold", "latency_high"),
        (7_000, "hold", "fault", "hold_escalated"),       # the same trip, escalated
        (9_050, "following", "hold", "command_timeout"),  # the console stopped sending
    ])
    trips = count_trips(read_records(path), session_end_ns=9_000)
    assert [t.fields["reason"] for t in trips] == ["serial_fault", "latency_high"]


def test_soak_without_the_session_end_counts_the_final_timeout(tmp_path: Path) -> None:
    path = _audit(tmp_path, [(9_050, "following", "hold", "command_timeout")])
    assert len(count_trips(read_records(path), session_end_ns=None)) == 1


def test_bench_loop_runs_the_period_on_the_virtual_arm() -> None:
    """``bench loop`` drives read -> update -> write on the virtual backend and follows."""
    from robot_side.config import ControlConfig, ManipulatorConfig, RobotConfig
    from telesurgery.bench.loop import _run_loop

    cfg = RobotConfig(manipulator=ManipulatorConfig(backend="virtual"),
                      control=ControlConfig(rate_hz=1000.0, realtime=False))
    figures = _run_loop(cfg, 1.5, realtime=False)
    assert figures["final_state"] == "following", figures
    assert figures["following_periods"] > 0
    assert all(math.isfinite(figures[k]) for k in ("update_p50_us", "update_p99_us",
                                                   "step_p99_us", "period_err_p99_us"))


@pytest.mark.slow
def test_one_bench_writes_its_figures_under_out(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "telesurgery.cli", "bench", "link", "--seconds", "1",
         "--out", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = json.loads((out / "link.json").read_text())
    printed = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    assert written["link"] == json.loads(printed)
    assert "meta" in written and "| link | p99_us |" in (out / "link.md").read_text()
