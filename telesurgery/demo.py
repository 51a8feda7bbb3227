"""``telesurgery demo``: the whole system on one machine with nothing plugged in.

The firmware emulator on a pseudo-terminal, the robot node (DDS backend on),
the fault proxy and the console driven by the scripted suturing motion, each a
real process. Part-way through, the link blacks out: the watchdog must halt the
arm within its bound, and the scripted surgeon re-engages deliberately once the
picture is back. With ``--mentor``, a mentor's console (a second surgeon key with
the mentor flag) then takes command: the arm holds, the mentor engages and moves
it (issue 15's handoff figures; on two cores the second console can starve the
rig's other processes, see the README). The run ends
with a readable report and a JSON file; the exit code is non-zero when any safety
expectation failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from hil_tests.rig import RigOptions, SimRig
from hil_tests.scenarios import FIRMWARE_FIFO
from operator_console.video.display import screen_available
from safety.audit import read_records
from safety.config import MotionLimits, WatchdogLimits
from safety.states import LINK_TRIPS
from telesurgery.demo_handoff import (
    MENTOR,
    MENTOR_DISPLAY,
    TAKEOVER_AFTER_S,
    evaluate_handoff,
    finish_mentor,
    handoff_from_audit,
    handoff_rows,
    mentor_start_s,
)
from telesurgery.demo_vitals import ROBOT_OVERRIDES, alarm_latency, alarm_row, start_monitor
from telesurgery.helptext import plain_help

log = logging.getLogger(__name__)

ROTATION_SCALE = 0.3
RATE_HZ = 500.0
"""The demo puts every process on this machine (emulator, robot node with video, ROS 2
bridge, page, recorder, fault proxy, console); on two cores at 1 kHz it missed its own
verdict (stale pictures, an unexpected serial_fault), so it runs at 500 Hz until the
control period costs less. `telesurgery bench path` and the soak measure 1 kHz."""
MENTOR_ENDS_BEFORE_S = 3.0
"""The mentor's console ends its run (disengages) this long before the first console's:
two consoles exiting together with the robot on two cores starved the mentor's command
stream of 50 ms (a command_timeout) in one of three runs; on their own machines they
would not share cores."""
MENTOR_VIDEO: dict[str, Any] = {"width": 960, "height": 540, "fps": 30.0}
"""With ``--mentor`` the demo decodes the picture in two consoles on the same two cores
that encode it and run the robot, so the picture is smaller than the default 720p."""
TIMEOUT_MS = WatchdogLimits().command_timeout_ms
LATENCY_MS = WatchdogLimits().latency_halt_ms
STALE_PICTURE_MS = 250.0
"""The console's disengage bound (``display.stale_ms``)."""
TRACKING_MM = 1000 * MotionLimits().tracking_error_m
PATH_GOAL_P99_US = 1000.0
"""The goal for console sample -> serial frame written: p99 within 1 ms."""


def cpu_seconds(rig: SimRig) -> dict[str, float]:
    out = {}
    for name, proc in rig.procs.items():
        try:
            t = psutil.Process(proc.pid).cpu_times()
            out[name] = round(t.user + t.system, 2)
        except psutil.Error:
            continue
    return out


class CpuSampler:
    """CPU seconds of every rig process (with its children: the robot's video), sampled
    while they run: a process that already exited (the console, at the end) keeps the
    last figure it was seen with. ``percent()``: each one's share of one core between
    its first and last sample, so the report shows where the two cores go."""

    def __init__(self, rig: SimRig) -> None:
        self.rig = rig
        self._procs: dict[str, psutil.Process] = {}
        self.seconds: dict[str, float] = {}
        self._first: dict[str, tuple[float, float]] = {}
        self._last: dict[str, tuple[float, float]] = {}

    def sample(self) -> None:
        for name, popen in self.rig.procs.items():
            try:
                proc = self._procs.setdefault(name, psutil.Process(popen.pid))
                total = sum(t.user + t.system for t in (
                    proc.cpu_times(), *(c.cpu_times() for c in proc.children(recursive=True))))
            except psutil.Error:
                continue
            now = time.monotonic()
            self._first.setdefault(name, (now, total))
            self._last[name] = (now, total)
            self.seconds[name] = round(max(total, self.seconds.get(name, 0.0)), 2)

    def percent(self) -> dict[str, float]:
        """% of one core per process over the sampled window (none for a single sample)."""
        out = {}
        for name, (t0, c0) in self._first.items():
            t1, c1 = self._last[name]
            if t1 > t0:
                out[name] = round(100.0 * (c1 - c0) / (t1 - t0), 1)
        return out


def _ms(ns: int) -> float:
    return round(ns / 1e6, 2)


def _relative(t_ns: int, blackout_ns: int | None) -> str:
    """When, in words: never a negative "after the blackout began"."""
    if blackout_ns is None:
        return "(no blackout)"
    d = (t_ns - blackout_ns) / 1e6
    return f"{d:.1f} ms after the blackout began" if d >= 0 else (
        f"{-d:.1f} ms BEFORE the blackout")


def _trips(robot: dict[str, Any], blackout_ns: int | None,
           blackout_s: float = 0.0) -> list[dict[str, Any]]:
    """Every trip the robot recorded; the scripted one is the first link trip the
    blackout caused (detected between its start and one second after its end)."""
    trips = []
    scripted_found = False
    for t in robot.get("trips", []):
        detected = t["detected_ns"]
        in_window = blackout_ns is not None and (
            blackout_ns <= detected <= blackout_ns + int((blackout_s + 1.0) * 1e9))
        scripted = not scripted_found and in_window and t["reason"] in LINK_TRIPS
        scripted_found = scripted_found or scripted
        last = t.get("last_command_ns")
        trips.append({
            "reason": t["reason"],
            "scripted": scripted,
            "detected_after_blackout_ms": None if blackout_ns is None
            else _ms(detected - blackout_ns),
            "when": _relative(detected, blackout_ns),
            "since_last_command_ms": _ms(detected - last) if last else None,
            "hold_ms": round((t["hold_sent_ns"] - detected) / 1e6, 3),
        })
    return trips


def transitions_from_audit(path: Path, blackout_ns: int | None) -> list[dict[str, Any]]:
    """Every supervisor transition of the run, from the audit log, in order."""
    out = []
    for rec in read_records(path):
        if rec.kind != "transition":
            continue
        f = rec.fields
        t_ns = int(f.get("t_ns") or rec.mono_ns)
        out.append({"from": f.get("from"), "to": f.get("to"), "reason": f.get("reason"),
                    "detail": f.get("detail") or "", "when": _relative(t_ns, blackout_ns),
                    "t_ns": t_ns})
    return out


def evaluate(report: dict[str, Any], timeout_ms: float, period_ms: float) -> list[str]:
    """The safety expectations of the run; each failure is one line."""
    failures = []
    trips = report["trips"]
    if not any(t.get("scripted", True) for t in trips):
        failures.append("the link blackout caused no trip")
    for t in trips:
        if not t.get("scripted", True):
            failures.append(f"unexpected trip {t['reason']} {t.get('when', '')}: only the "
                            "blackout's trip belongs in this run")
        since = t["since_last_command_ms"]
        if t.get("scripted", True) and since is not None and since > timeout_ms + 2 * period_ms:
            failures.append(f"trip {t['reason']} detected {since} ms after the last command "
                            f"(bound {timeout_ms + 2 * period_ms} ms)")
        if t["hold_ms"] < 0 or t["hold_ms"] > period_ms:
            failures.append(f"hold sent {t['hold_ms']} ms after detection (bound {period_ms})")
    if not report["resumed_after_reengage"]:
        failures.append("motion did not resume after the surgeon's re-engage")
    if report["following_periods"] == 0:
        failures.append("the arm never followed the surgeon")
    code = report.get("console_exit_code")
    if code not in (0, None):
        failures.append(f"the console exited with code {code}")
    return failures


def _progress(t: float, seconds: float, blackout_at: float, blackout_s: float,
              done: bool, *, mentor_at: float) -> str:
    if not done:
        nxt = f"next: link blackout of {blackout_s:g} s at t={blackout_at:g} s"
    elif t < blackout_at + blackout_s:
        nxt = "link blacked out now"
    elif t < mentor_at:
        nxt = "the surgeon re-engages by itself" + (
            "" if math.isinf(mentor_at) else f"; next: the mentor's console at t={mentor_at:g} s")
    else:
        nxt = f"the mentor takes over {TAKEOVER_AFTER_S:g} s after its console is up"
    return f"  t={t:5.1f} s of {seconds:g} s ({max(0.0, seconds - t):4.1f} s left); {nxt}"


def run_demo(seconds: float, headless: bool, report_path: Path, run_dir: Path, *,
             blackout_at: float, blackout_s: float, mentor: bool = False,
             rate_hz: float = RATE_HZ) -> int:
    opts = RigOptions(run_dir=run_dir, observers=True, console_seconds=seconds, headless=headless,
                      hud_every_n=60, reengage_after_s=1.0, rotation_scale=ROTATION_SCALE,
                      rate_hz=rate_hz, firmware_fifo=FIRMWARE_FIFO, mentor=mentor,
                      robot_overrides={**ROBOT_OVERRIDES,
                                       **({"video": MENTOR_VIDEO} if mentor else {})})
    mentor_at = mentor_start_s(blackout_at, blackout_s) if mentor else math.inf
    video = MENTOR_VIDEO if mentor else {"width": 1280, "height": 720, "fps": 30.0}
    print(f"telesurgery demo: {seconds:g} s of scripted suturing at {rate_hz:g} Hz; link "
          f"blackout of "
          f"{blackout_s:g} s at t={blackout_at:g} s"
          f"{'; a mentor takes over' if mentor else ''}; video {video['width']}x"
          f"{video['height']} at {video['fps']:g} fps; run folder {run_dir}", flush=True)
    blackout_ns: int | None = None
    tty = sys.stdout.isatty()
    with SimRig(opts) as rig:
        rig.start()
        rig.procs["monitor"] = start_monitor(run_dir, seconds)  # the patient (issue 17)
        print("  firmware emulator, robot node, fault proxy, console and patient monitor "
              "are up", flush=True)
        cpu = CpuSampler(rig)
        t0 = time.monotonic()
        next_note = 0.0
        while rig.procs["console"].poll() is None:
            t = time.monotonic() - t0
            if blackout_ns is None and t >= blackout_at:
                blackout_ns = time.monotonic_ns()
                rig.proxy({"blackout": blackout_s})
                print(f"{chr(13) if tty else ''}  t={t:4.1f} s: link blackout for "
                      f"{blackout_s:g} s{' ' * 30}", flush=True)
            if MENTOR not in rig.procs and t >= mentor_at:
                rig.start_console(MENTOR, {"surgeon": MENTOR, "takeover_after_s":
                                           TAKEOVER_AFTER_S, "reengage_after_s": 0.2},
                                  display=MENTOR_DISPLAY,
                                  seconds=max(1.0, seconds - t - MENTOR_ENDS_BEFORE_S))
                print(f"{chr(13) if tty else ''}  t={t:4.1f} s: the mentor's console starts "
                      f"(takes over {TAKEOVER_AFTER_S:g} s after it is up){' ' * 10}",
                      flush=True)
            if t >= next_note:
                cpu.sample()
                line = _progress(t, seconds, blackout_at, blackout_s, blackout_ns is not None,
                                 mentor_at=mentor_at)
                print(f"\r{line}   " if tty else line, end="" if tty else "\n", flush=True)
                next_note = t + (1.0 if tty else 5.0)
            time.sleep(0.02)
        if tty:
            print(flush=True)
        cpu.sample()
        mentor_code = finish_mentor(rig)
        # The fault proxy's own added latency, where this rig can measure it.
        added: dict[str, Any] = getattr(rig, "proxy_added_latency", dict)()
        rig.stop()
        console_code = rig.procs["console"].returncode
        robot = rig.summary("robot")
        console = rig.summary("console")
    report = build_report(robot, console, blackout_ns, cpu.seconds, console_code,
                          blackout_s=blackout_s)
    report["cpu_pct"] = cpu.percent()
    report["console_thread_cpu_s"] = console.get("thread_cpu_s")
    report["transitions"] = transitions_from_audit(run_dir / "audit" / "robot.audit",
                                                   blackout_ns)
    report["proxy_added_latency_us"] = added or None
    period_ms = 1000.0 / opts.rate_hz
    report["bounds"] = {"command_timeout_ms": TIMEOUT_MS, "period_ms": period_ms,
                        "detect_ms": TIMEOUT_MS + 2 * period_ms,
                        "stale_picture_ms": STALE_PICTURE_MS, "latency_halt_ms": LATENCY_MS,
                        "path_goal_p99_us": PATH_GOAL_P99_US,
                        "tracking_error_mm": TRACKING_MM}
    report["vitals_alarm_to_hud"] = alarm_latency(run_dir, console)
    report["handoff"] = (handoff_from_audit(run_dir / "audit" / "robot.audit", robot)
                         if mentor else None)
    report["mentor_exit_code"] = mentor_code
    failures = evaluate(report, timeout_ms=TIMEOUT_MS, period_ms=period_ms)
    if report["handoff"] is not None:
        failures += evaluate_handoff(report["handoff"], period_ms)
    if mentor_code not in (0, None):
        failures.append(f"the mentor's console exited with code {mentor_code}")
    label, measured, bound, verdict = alarm_row(report)
    if verdict != "ok":
        failures.append(f"{label}: {measured} ({bound})")
    report["failures"] = failures
    report["run_dir"] = str(run_dir)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"  report: {report_path}")
    return 1 if failures else 0


def build_report(robot: dict[str, Any], console: dict[str, Any], blackout_ns: int | None,
                 cpu: dict[str, float], console_code: int | None, *,
                 blackout_s: float = 0.0) -> dict[str, Any]:
    lat = {k: round(v, 1) for k, v in robot.get("command_latency", {}).items()}
    g2g = {k: round(v, 2) for k, v in console.get("g2g_ms", {}).items()}
    trips = _trips(robot, blackout_ns, blackout_s)
    scripted = [t for t in trips if t["scripted"]]
    first_trip = next((raw["detected_ns"] for t, raw in zip(trips, robot.get("trips", []),
                                                            strict=True) if t["scripted"]),
                      None)
    # Judged on the robot's record: motion started again after the blackout's trip.
    resumed = first_trip is not None and any(r > first_trip for r in robot.get("resumes_ns", []))
    path = robot.get("path") or None
    return {
        "command_latency_p50_us": lat.get("p50_us"),
        "command_latency_p99_us": lat.get("p99_us"),
        "commands_received": lat.get("n"),
        "g2g_p50_ms": g2g.get("p50"),
        "g2g_p99_ms": g2g.get("p99"),
        "frames_shown": g2g.get("n"),
        "path": path,
        "trips": trips,
        "scripted_trips": len(scripted),
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


def _row(label: str, measured: str, bound: str, verdict: str = "") -> str:
    return f"  {label:<22} {measured:<28} {bound:<34} {verdict}"


def print_report(r: dict[str, Any]) -> None:
    b = r.get("bounds", {})
    print("\n== telesurgery demo report")
    print(_row("figure", "measured", "bound", "verdict"))
    print(_row("command latency", f"p50 {r['command_latency_p50_us']} us, "
               f"p99 {r['command_latency_p99_us']} us",
               f"age limit {b.get('latency_halt_ms', LATENCY_MS):g} ms (halt)",
               f"({r['commands_received']} commands)"))
    path = r.get("path")
    if path:
        goal = b.get("path_goal_p99_us", PATH_GOAL_P99_US)
        met = "met" if path.get("p99_us", math.inf) <= goal else "NOT met"
        print(_row("command path", f"p50 {path.get('p50_us', 0):.0f} us, p99 "
                   f"{path.get('p99_us', 0):.0f} us", f"goal p99 <= {goal / 1000:g} ms",
                   f"{met} (p99.9 {path.get('p999_us', 0):.0f} us, max "
                   f"{path.get('max_us', 0):.0f} us, n {path.get('n')})"))
    added = r.get("proxy_added_latency_us")
    if added:
        print(_row("  of it, fault proxy", f"p50 {added.get('p50_us')} us, "
                   f"p99 {added.get('p99_us')} us", "(the rig's, not the system's)"))
    print(_row("glass-to-glass", f"p50 {r['g2g_p50_ms']} ms, p99 {r['g2g_p99_ms']} ms",
               f"stale picture {b.get('stale_picture_ms', STALE_PICTURE_MS):g} ms (disengage)",
               f"({r['frames_shown']} frames shown)"))
    if "vitals_alarm_to_hud" in r:
        print(_row(*alarm_row(r)))
    if r.get("handoff") is not None:
        for row in handoff_rows(r["handoff"], b.get("period_ms", 0.0)):
            print(_row(*row))
    for t in r["trips"]:
        tag = "scripted" if t.get("scripted", True) else "UNEXPECTED"
        print(_row(f"trip ({tag})", t["reason"], "", t.get("when", "")))
        since = t["since_last_command_ms"]
        detect = b.get("detect_ms")
        print(_row("  detected", f"{since} ms after the last command",
                   f"<= {detect:g} ms (timeout + 2 periods)" if detect else "",
                   "ok" if since is None or detect is None or since <= detect else "TOO LATE"))
        period = b.get("period_ms")
        print(_row("  hold sent", f"{t['hold_ms']} ms after detection",
                   f"<= {period:g} ms (one period)" if period else "",
                   "ok" if period is None or 0 <= t["hold_ms"] <= period else "TOO LATE"))
    if not r["trips"]:
        print(_row("trip", "none", "the blackout must cause one", "FAILED"))
    print(_row("re-engaged", "yes, motion resumed" if r["resumed_after_reengage"] else "NO",
               "motion resumes after the trip", "ok" if r["resumed_after_reengage"] else "FAILED"))
    print(_row("tracking error", f"max {r['tracking_error_max_mm']} mm",
               f"fault above {b.get('tracking_error_mm', TRACKING_MM):g} mm"))
    print(_row("control loop", f"period error p99 {r['loop_period_err_p99_us']} us",
               f"one period {b.get('period_ms', 0) * 1000:.0f} us",
               f"overruns {r['loop_overruns']}"))
    cpu = r["cpu_seconds"]
    print(_row("cpu seconds", ", ".join(f"{k} {v:g}" for k, v in cpu.items()),
               "(robot includes its video process)"))
    if r.get("cpu_pct"):
        print(_row("cpu % of one core", ", ".join(f"{k} {v:g}" for k, v in r["cpu_pct"].items()),
                   "(during the surgery; two cores in all)"))
    if r.get("console_thread_cpu_s"):
        print(_row("  console threads", ", ".join(
            f"{k} {v:g}" for k, v in r["console_thread_cpu_s"].items() if v >= 0.05), "(CPU-s)"))
    transitions = r.get("transitions") or []
    if transitions:
        print(f"  transitions ({len(transitions)}):")
        for tr in transitions:
            print(f"    {tr['from']:>9} -> {tr['to']:<9} {tr['reason']:<16} {tr['when']}"
                  f"{'  ' + str(tr['detail']) if tr['detail'] else ''}")
    verdict = "all safety expectations met" if not r["failures"] else "FAILED"
    print(f"  verdict: {verdict}")
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
    p.add_argument("--mentor", action="store_true",
                   help="a mentor's console takes command after the blackout (issue 15's "
                        "handoff figures); on two cores it can starve the rig (see README)")
    p.add_argument("--rate-hz", type=float, default=RATE_HZ,
                   help=f"control rate of the robot and console (default {RATE_HZ:g}; the "
                        "node's own default is 1000: every bound follows the period)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if not 50.0 <= args.rate_hz <= 2000.0:
        p.error(f"--rate-hz {args.rate_hz:g}: must be in [50, 2000]")
    headless = args.headless or not screen_available()
    blackout_at = args.blackout_at if args.blackout_at is not None else 0.4 * args.seconds
    if args.run_dir is not None:
        return run_demo(args.seconds, headless, args.report, args.run_dir,
                        blackout_at=blackout_at, blackout_s=args.blackout_s,
                        mentor=args.mentor, rate_hz=args.rate_hz)
    run_dir = Path(tempfile.mkdtemp(prefix="telesurgery-demo-"))
    try:
        return run_demo(args.seconds, headless, args.report, run_dir,
                        blackout_at=blackout_at, blackout_s=args.blackout_s,
                        mentor=args.mentor, rate_hz=args.rate_hz)
    except KeyboardInterrupt:
        print("\ninterrupted: every process of the demo was stopped", file=sys.stderr)
        return 130
