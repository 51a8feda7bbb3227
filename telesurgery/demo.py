"""``telesurgery demo``: the whole system on one machine with nothing plugged in.

The firmware emulator on a pseudo-terminal, the robot node (DDS backend on),
the fault proxy and the console driven by the scripted suturing motion, each a
real process. Part-way through, the link blacks out: the watchdog must halt the
arm within its bound, and the scripted surgeon re-engages deliberately once the
picture is back. The run ends with a readable report and a JSON file; the exit
code is non-zero when any safety expectation failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from hil_tests.rig import RigOptions, SimRig
from operator_console.video.display import screen_available
from telesurgery.helptext import plain_help

log = logging.getLogger(__name__)

ROTATION_SCALE = 0.3


def cpu_seconds(rig: SimRig) -> dict[str, float]:
    out = {}
    for name, proc in rig.procs.items():
        try:
            t = psutil.Process(proc.pid).cpu_times()
            out[name] = round(t.user + t.system, 2)
        except psutil.Error:
            continue
    return out


def _trips(robot: dict[str, Any], blackout_ns: int | None) -> list[dict[str, Any]]:
    trips = []
    for t in robot.get("trips", []):
        base = blackout_ns if blackout_ns is not None else t["last_command_ns"]
        trips.append({
            "reason": t["reason"],
            "detected_ms": round((t["detected_ns"] - base) / 1e6, 2) if base else None,
            "since_last_command_ms": round((t["detected_ns"] - t["last_command_ns"]) / 1e6, 2)
            if t.get("last_command_ns") else None,
            "hold_ms": round((t["hold_sent_ns"] - t["detected_ns"]) / 1e6, 3),
        })
    return trips


def evaluate(report: dict[str, Any], timeout_ms: float, period_ms: float) -> list[str]:
    """The safety expectations of the run; each failure is one line."""
    failures = []
    trips = report["trips"]
    if not trips:
        failures.append("the link blackout caused no trip")
    for t in trips:
        since = t["since_last_command_ms"]
        if since is not None and since > timeout_ms + 2 * period_ms:
            failures.append(f"trip {t['reason']} detected {since} ms after the last command "
                            f"(bound {timeout_ms + 2 * period_ms} ms)")
        if t["hold_ms"] < 0 or t["hold_ms"] > period_ms:
            failures.append(f"hold sent {t['hold_ms']} ms after detection (bound {period_ms})")
    if not report["resumed_after_reengage"]:
        failures.append("motion did not resume after the surgeon's re-engage")
    if report["following_periods"] == 0:
        failures.append("the arm never followed the surgeon")
    return failures


def run_demo(seconds: float, headless: bool, report_path: Path, run_dir: Path, *,
             blackout_at: float, blackout_s: float) -> int:
    opts = RigOptions(run_dir=run_dir, console_seconds=seconds, headless=headless,
                      hud_every_n=60, reengage_after_s=1.0, rotation_scale=ROTATION_SCALE)
    print(f"telesurgery demo: {seconds:g} s of scripted suturing; link blackout of "
          f"{blackout_s:g} s at t={blackout_at:g} s; run folder {run_dir}", flush=True)
    blackout_ns: int | None = None
    with SimRig(opts) as rig:
        rig.start()
        print("  firmware emulator, robot node, fault proxy and console are up", flush=True)
        done = threading.Event()
        t0 = time.monotonic()
        while rig.procs["console"].poll() is None:
            if blackout_ns is None and time.monotonic() - t0 >= blackout_at:
                blackout_ns = time.monotonic_ns()
                rig.proxy({"blackout": blackout_s})
                print(f"  t={time.monotonic() - t0:4.1f} s: link blackout for {blackout_s:g} s",
                      flush=True)
            time.sleep(0.02)
        done.set()
        cpu = cpu_seconds(rig)
        rig.stop()
        console_code = rig.procs["console"].returncode
        robot = rig.summary("robot")
        console = rig.summary("console")
    report = build_report(robot, console, blackout_ns, cpu, console_code)
    failures = evaluate(report, timeout_ms=50.0, period_ms=1000.0 / opts.rate_hz)
    report["failures"] = failures
    report["run_dir"] = str(run_dir)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"  report: {report_path}")
    return 1 if failures else 0


def build_report(robot: dict[str, Any], console: dict[str, Any], blackout_ns: int | None,
                 cpu: dict[str, float], console_code: int | None) -> dict[str, Any]:
    lat = {k: round(v, 1) for k, v in robot.get("command_latency", {}).items()}
    g2g = {k: round(v, 2) for k, v in console.get("g2g_ms", {}).items()}
    trips = robot.get("trips", [])
    first_trip = next((t["detected_ns"] for t in trips
                       if blackout_ns is None or t["detected_ns"] >= blackout_ns), None)
    # Judged on the robot's record: motion started again after the blackout's trip.
    resumed = first_trip is not None and any(r > first_trip for r in robot.get("resumes_ns", []))
    return {
        "command_latency_p50_us": lat.get("p50_us"),
        "command_latency_p99_us": lat.get("p99_us"),
        "commands_received": lat.get("n"),
        "g2g_p50_ms": g2g.get("p50"),
        "g2g_p99_ms": g2g.get("p99"),
        "frames_shown": g2g.get("n"),
        "trips": _trips(robot, blackout_ns),
        "resumed_after_reengage": resumed,
        "surgeon_reengaged": any(e.get("after_trip") for e in console.get("engagements", [])),
        "tracking_error_max_mm": round(1000 * robot.get("tracking_error_max_m", 0.0), 3),
        "following_periods": robot.get("following_periods", 0),
        "loop_period_err_p99_us": round(robot.get("loop", {}).get("err_p99_us", 0.0), 1),
        "loop_overruns": robot.get("loop", {}).get("overruns"),
        "cpu_seconds": cpu,
        "console_exit_code": console_code,
        "robot_final_state": robot.get("final_state"),
        "audit_records": robot.get("audit_records"),
    }


def print_report(r: dict[str, Any]) -> None:
    print("\n== telesurgery demo report")
    print(f"  command latency   p50 {r['command_latency_p50_us']} us, "
          f"p99 {r['command_latency_p99_us']} us ({r['commands_received']} commands)")
    print(f"  glass-to-glass    p50 {r['g2g_p50_ms']} ms, p99 {r['g2g_p99_ms']} ms "
          f"({r['frames_shown']} frames shown)")
    for t in r["trips"]:
        print(f"  trip              {t['reason']}: detected {t['detected_ms']} ms after the "
              f"blackout began ({t['since_last_command_ms']} ms after the last command), "
              f"hold sent {t['hold_ms']} ms after detection")
    print(f"  re-engaged        {'yes, motion resumed' if r['resumed_after_reengage'] else 'NO'}")
    print(f"  tracking error    max {r['tracking_error_max_mm']} mm")
    print(f"  control loop      period error p99 {r['loop_period_err_p99_us']} us, "
          f"overruns {r['loop_overruns']}")
    print(f"  cpu seconds       {r['cpu_seconds']}")
    verdict = "all safety expectations met" if not r["failures"] else "FAILED"
    print(f"  verdict           {verdict}")
    for f in r["failures"]:
        print(f"    - {f}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery demo", description=plain_help(__doc__))
    p.add_argument("--seconds", type=float, default=20.0, help="length of the surgery")
    p.add_argument("--headless", action="store_true", help="no video window (HUD to files)")
    p.add_argument("--report", type=Path, default=Path("out/demo/report.json"))
    p.add_argument("--run-dir", type=Path, help="keep logs, configs and HUD frames here")
    p.add_argument("--blackout-at", type=float, help="seconds into the run (default 40 %%)")
    p.add_argument("--blackout-s", type=float, default=0.5, help="blackout length")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    headless = args.headless or not screen_available()
    blackout_at = args.blackout_at if args.blackout_at is not None else 0.4 * args.seconds
    if args.run_dir is not None:
        return run_demo(args.seconds, headless, args.report, args.run_dir,
                        blackout_at=blackout_at, blackout_s=args.blackout_s)
    run_dir = Path(tempfile.mkdtemp(prefix="telesurgery-demo-"))
    try:
        return run_demo(args.seconds, headless, args.report, run_dir,
                        blackout_at=blackout_at, blackout_s=args.blackout_s)
    except KeyboardInterrupt:
        print("\ninterrupted: every process of the demo was stopped", file=sys.stderr)
        return 130
