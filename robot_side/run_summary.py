"""The run summary: the JSON figures a node writes at exit (``--summary``).

Apart from the loop and the node's assembly because it only reads, once, after the
loop has stopped: every figure the benches, the demo and the HIL rig read by key
(``telesurgery.bench.path``, ``telesurgery.demo``, ``hil_tests``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from robot_side.control_loop import ControlLoop
from robot_side.netio import NetworkThread
from robot_side.ros.process import RosProcess
from robot_side.video_process import VideoProcess
from robot_side.workers import AuditThread
from telesurgery.gcpolicy import PAUSES as GC_PAUSES
from telesurgery.threadcpu import describe, thread_cpu_seconds
from transport.linkstats import LinkStats

log = logging.getLogger(__name__)


def write_summary(path: Path, loop: ControlLoop, *, net: NetworkThread,
                  auditor: AuditThread, video: VideoProcess, ros: RosProcess | None,
                  lifted: list[str], vitals: Any) -> None:
    """Gather the run's figures (the loop's, the threads' and the children's) and write
    them to ``path``; the CPU per thread, the GC pauses and the late periods are logged."""
    stats = loop.pacer.stats()
    snap = (loop.port.stats if loop.port else LinkStats()).snapshot(time.monotonic_ns())
    # Per thread, over the loop's run: where the control process's CPU goes (issue 11).
    t0, cpu0 = loop.cpu_start
    run_s = (time.monotonic_ns() - t0) / 1e9
    cpu = {k: round(v - cpu0.get(k, 0.0), 2) for k, v in thread_cpu_seconds().items()}
    log.info("CPU per thread over %.1f s: %s", run_s, describe(cpu, run_s, stats.ticks))
    log.info("control process: %s", GC_PAUSES.describe())
    log.info("%s", loop.late.describe())
    summary = {
        "gc": GC_PAUSES.summary(),
        "helpers_lifted": lifted,
        "thread_cpu": {"seconds": round(run_s, 2), "periods": stats.ticks,
                       "cpu_s": cpu},
        "trips": [asdict(t) for t in loop.trips],
        "loop": asdict(stats),
        "late_periods": loop.late.summary(),
        "helpers_deferred": {"chunks": loop.window.deferred,
                             "ms": round(loop.window.deferred_ns / 1e6, 1)},
        "link": asdict(snap),
        "command_latency": loop.port.latency.percentiles() if loop.port else {"n": 0},
        "command_period_take_us": (loop.port.period_takes.percentiles() if loop.port
                                   else {"n": 0}),
        "path": loop.path.ring.percentiles(),
        "path_sessions": loop.path.by_session(),
        "path_parts": {"console_sample_to_send": loop.path.console.percentiles(),
                       "robot_receive_to_written": loop.path.robot.percentiles(),
                       "period_start_to_written": loop.start_to_written.percentiles()},
        "phase_lock": {"lead_us": loop.phase.lead_ns // 1000,
                       "adjustments": loop.phase.adjustments,
                       "shifted_us": loop.phase.shifted_ns // 1000,
                       "before_us": loop.phase.before_us()},
        "telemetry_built": net.telemetry_built,
        "tracking_error_max_m": loop.core.max_tracking_error_m,
        "following_periods": loop.core.following_periods,
        "ik_branch_keeps": loop.core.branch_keeps,
        "resumes_ns": loop.core.resumes_ns,
        "gate": loop.port.intake.counters if loop.port else {},
        "session": dict(net.guard.counters),
        "control_records_aggregated": {"refused": loop.refusals.suppressed_total,
                                       "accepted": loop.accepted.suppressed_total},
        "link_counters": {**(dict(net.link.counters) if net.link else {}),
                          **(loop.port.counters if loop.port else {})},
        "audit_records": auditor.persisted,
        "serial": dict(loop.manipulator.counters),
        "video": video.summary(),
        "ros": None if ros is None else ros.summary(),
        "final_state": str(loop.core.supervisor.state),
        "vitals": None if vitals is None else dict(vitals.counters),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str))
