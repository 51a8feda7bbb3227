"""``telesurgery bench soak``: a long healthy run of the whole rig must trip nothing.

The simulated rig of ``telesurgery demo`` (firmware emulator, robot node with
its DDS bridge, fault proxy left transparent, console driven by the scripted
suturing surgeon with the demo's rotation scale, video on), each part a real
process, for ``seconds`` of surgery with no fault injected. Every trip in the
robot's audit log is a false trip: the soak passes only with none, with the
arm following the surgeon and the console exiting cleanly. It reports command
latency, glass-to-glass latency, control-loop period error and overruns from
the processes' own summaries.

Ten minutes by default, so not part of ``telesurgery bench all``; run it as
``telesurgery bench soak [--seconds N]``. The last line printed is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hil_tests.rig import RigOptions, SimRig
from safety.audit import Record, read_records
from safety.states import Reason, State
from telesurgery.cli import setup_logging
from telesurgery.demo import ROTATION_SCALE, build_report, cpu_seconds
from telesurgery.helptext import plain_help

log = logging.getLogger(__name__)

_EXIT_GRACE_S = 120.0
"""Beyond ``seconds``: start-up of four processes and the console's orderly exit."""
STOPPED = frozenset({State.HOLD, State.FAULT, State.ESTOP})
NOT_TRIPS = frozenset({Reason.CLUTCH, Reason.DISENGAGED, Reason.DISARMED,
                       Reason.OPERATOR_ABSENT, Reason.HOLD_ESCALATED})
"""The surgeon's own stops, and the escalation of a trip already counted."""


def run(seconds: float = 600.0, run_dir: Path | None = None) -> dict[str, Any]:
    """Run the healthy rig for ``seconds`` of surgery; returns the figures and the verdict."""
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="telesurgery-soak-") as tmp:
            return run(seconds, Path(tmp))
    opts = RigOptions(run_dir=run_dir, console_seconds=seconds, headless=True,
                      rotation_scale=ROTATION_SCALE)
    t0 = time.monotonic()
    with SimRig(opts) as rig:
        rig.start()
        deadline = t0 + seconds + _EXIT_GRACE_S
        while rig.procs["console"].poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        cpu = cpu_seconds(rig)
        rig.stop()
        console_code = rig.procs["console"].returncode
        robot, console = rig.summary("robot"), rig.summary("console")
    report = build_report(robot, console, None, cpu, console_code)
    trips = count_trips(read_records(run_dir / "audit" / "robot.audit"),
                        robot.get("link", {}).get("last_recv_ns"))
    result: dict[str, Any] = {
        "false_trips": len(trips),
        "trip_reasons": sorted({str(t.fields.get("reason")) for t in trips}),
        "trips": [f"{t.fields.get('from')} -> {t.fields.get('to')} ({t.fields.get('reason')}) "
                  f"{t.fields.get('detail')}" for t in trips[:20]],
        **{k: report[k] for k in (
            "command_latency_p50_us", "command_latency_p99_us", "commands_received",
            "g2g_p50_ms", "g2g_p99_ms", "frames_shown", "loop_period_err_p99_us",
            "loop_overruns", "following_periods", "tracking_error_max_mm",
            "robot_final_state", "console_exit_code", "cpu_seconds")},
        "loop_ticks": robot.get("loop", {}).get("ticks"),
        "commands_expected": round(seconds * opts.rate_hz),
        "seconds": seconds,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    result["failures"] = evaluate(result)
    result["ok"] = not result["failures"]
    return result


def count_trips(records: Iterable[Record], session_end_ns: int | None) -> list[Record]:
    """Every trip of the run, from the audit log (the record of every safety event).

    A trip is a transition into hold, fault or e-stop that the surgeon did not
    ask for, the supervisor's own escalation of an earlier trip not counted
    twice. When the console's run is over it stops sending and the robot
    rightly holds on a command timeout: transitions after the last command the
    robot received (``session_end_ns``) end the session and are not trips.
    """
    return [r for r in records
            if r.kind == "transition" and r.fields.get("to") in STOPPED
            and r.fields.get("reason") not in NOT_TRIPS
            and (session_end_ns is None or int(r.fields.get("t_ns") or 0) <= session_end_ns)]


def evaluate(result: dict[str, Any]) -> list[str]:
    """Why the soak failed; empty when the healthy run stayed healthy throughout."""
    failures = []
    if result["false_trips"]:
        failures.append(f"{result['false_trips']} false trip(s): {result['trip_reasons']}")
    if not result["following_periods"]:
        failures.append("the arm never followed the surgeon (a soak that never engaged)")
    if result["console_exit_code"] != 0:
        failures.append(f"console exited with code {result['console_exit_code']}")
    if (result["commands_received"] or 0) < 0.5 * result["commands_expected"]:
        failures.append(f"the robot received {result['commands_received']} of "
                        f"{result['commands_expected']} commands")
    return failures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="telesurgery bench soak",
                                     description=plain_help(__doc__).split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the surgery")
    parser.add_argument("--run-dir", type=Path, help="keep logs, configs and summaries here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        parser.error("--seconds must be > 0")
    print(f"bench soak: healthy rig, scripted suturing, {args.seconds:g} s, no faults ...",
          flush=True)
    try:
        r = run(args.seconds, args.run_dir)
    except RuntimeError as err:  # the rig raises it when a part does not start
        print(f"bench soak FAILED: {err}")
        return 1
    print(f"  false trips       {r['false_trips']} {r['trip_reasons'] or ''}")
    print(f"  command latency   p50 {r['command_latency_p50_us']} us, "
          f"p99 {r['command_latency_p99_us']} us ({r['commands_received']} commands)")
    print(f"  glass-to-glass    p50 {r['g2g_p50_ms']} ms, p99 {r['g2g_p99_ms']} ms "
          f"({r['frames_shown']} frames)")
    print(f"  control loop      period error p99 {r['loop_period_err_p99_us']} us, "
          f"overruns {r['loop_overruns']} of {r['loop_ticks']} ticks")
    print("  verdict           " + ("PASSED" if r["ok"] else "FAILED: " + "; ".join(r["failures"])))
    print(json.dumps(r))
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    setup_logging()
    sys.exit(main(sys.argv[1:]))
