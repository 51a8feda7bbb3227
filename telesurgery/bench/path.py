"""``telesurgery bench path``: console sample -> serial frame written, the whole command path.

The simulated rig's real processes (firmware emulator on a pty, robot node,
console replaying the scripted suturing motion; no fault proxy) run at 1 kHz
for ``seconds``. Every command carries the time its master-device sample was
taken; the robot stamps when the serial frame carrying that command's motion
was written and keeps the difference (its run summary's ``"path"``).

In the same run, alongside, so the same machine load falls on all three:

* **raw pyzmq one-way**: a plain PUSH/PULL pair across two processes at the
  same rate (no CurveZMQ, no schema, no control loop): the floor of any ZeroMQ
  path here. The figure of merit is path p99 / raw p99. It sends for the whole
  run here; a long run (``bench soak``) sends in windows (``RawPair(window_s,
  every_s)``) because the pair costs a tenth of a core while it runs.
* **stall baseline**: a SCHED_FIFO process that only reads the clock in a loop
  (sleeping ``STALL_INTERVAL_NS`` between reads, as cyclictest does, so that it
  does not starve a core): its largest gaps are stalls of the machine itself
  (SMIs, the hypervisor, other jobs' kernel work) that no code here can remove.

One-way times use CLOCK_MONOTONIC, shared by every process on one machine (the
robot maps the console's stamps with its own clock-sync offset, ~0 here). The
last line printed is one JSON object; ``--out`` gets path.json and path.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import multiprocessing as mp
import random
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from hil_tests.rig import RigOptions, SimRig
from robot_side.lateperiods import describe_late
from telesurgery.bench.ros_segment import ProcessCpu, RosSegment, bridge_pid
from telesurgery.pacer import Pacer, lower_timer_slack, try_realtime
from transport.schema import Command, decode_as, encode
from transport.selftest import make_command, percentiles_us

log = logging.getLogger(__name__)

TAKES_OUT = True
"""``telesurgery bench path --out DIR`` writes path.json and path.md there."""
STALL_INTERVAL_NS = 500_000
"""Half the 1 ms gap it counts: any stall longer than 1 ms holds the reader off for
a whole read-to-read gap, so every one is counted, at 2000 wake-ups a second (each
one preempts the robot's loop when it lands on its core: it runs above it). 250 us
(4000 a second) cost 9 % of a core on this machine for nothing more: a gap > 1 ms
then also counts stalls of 0.5-1 ms (0.75-1 ms before), which is the baseline's
slack, not the robot's."""
STALL_PRIORITY = 60
"""Above the robot's control loop (50): it measures the machine, not our scheduling."""
STALL_GAP_NS = 1_000_000
RAW_SENDER_PRIORITY = 40
RAW_RECEIVER_PRIORITY = 50
"""The console's command thread and the robot's control thread run at these."""
_STARTUP_S = 120.0
_EXIT_GRACE_S = 60.0


# ---------------------------------------------------------------- stall baseline
def _stall_child(seconds: float, conn: Connection) -> None:
    fifo = try_realtime(STALL_PRIORITY)
    lower_timer_slack()
    n = int(seconds * 1e9 / STALL_INTERVAL_NS) + 16
    gaps = np.zeros(n, dtype=np.int64)
    count = 0
    start = prev = time.monotonic_ns()
    end = start + int(seconds * 1e9)
    deadline = start
    while prev < end and count < n:
        deadline += STALL_INTERVAL_NS
        left = deadline - time.monotonic_ns()
        if left > 0:
            time.sleep(left / 1e9)
        now = time.monotonic_ns()
        gaps[count] = now - prev
        count += 1
        prev = now
        if now > deadline + STALL_INTERVAL_NS:
            deadline = now  # never a burst of back-to-back reads to catch up
    g = gaps[:count]
    top = np.sort(g)[-5:][::-1] / 1000.0
    conn.send({
        "stall_sched_fifo": fifo,
        "stall_interval_us": STALL_INTERVAL_NS / 1000,
        "stall_reads": int(count),
        "stall_gap_p99_us": round(float(np.percentile(g, 99)) / 1000, 1) if count else None,
        "stall_gap_max_us": round(float(g.max()) / 1000, 1) if count else None,
        "stall_gaps_over_1ms": int(np.count_nonzero(g > STALL_GAP_NS)),
        "stall_top_gaps_us": [round(float(x), 1) for x in top],
        "stall_cpu_s": round(time.process_time(), 2),
    })


# ---------------------------------------------------------------- raw pyzmq
def _raw_receiver(seconds: float, conn: Connection) -> None:
    try_realtime(RAW_RECEIVER_PRIORITY)
    ctx: zmq.Context[Any] = zmq.Context()
    sock: zmq.Socket[Any] = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    conn.send(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    latencies: list[int] = []
    end = time.monotonic_ns() + int((seconds + 10.0) * 1e9)
    while time.monotonic_ns() < end:
        if not sock.poll(100):
            if conn.poll():  # the sender is done
                break
            continue
        data = sock.recv()
        recv_ns = time.monotonic_ns()
        cmd: Command = decode_as(data, Command)
        latencies.append(recv_ns - cmd.t_send_ns)
    sock.close(0)
    ctx.term()
    conn.send(round(time.process_time(), 2))
    conn.send(latencies)


def raw_windows(seconds: float, window_s: float | None,
                every_s: float | None) -> list[tuple[float, float]]:
    """(start, length) in seconds from the run's start of each window the raw pair sends in:
    the whole run without ``window_s``, else ``window_s`` every ``every_s``."""
    if window_s is None or every_s is None or window_s >= every_s:
        return [(0.0, seconds)]
    return [(start, min(window_s, seconds - start))
            for start in np.arange(0.0, seconds, every_s).tolist()]


def _raw_sender(seconds: float, rate_hz: float, endpoint: str, conn: Connection,
                windows: list[tuple[float, float]]) -> None:
    try_realtime(RAW_SENDER_PRIORITY)
    lower_timer_slack()
    ctx: zmq.Context[Any] = zmq.Context()
    sock: zmq.Socket[Any] = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100)
    sock.connect(endpoint)
    time.sleep(0.2)  # the TCP connection; nothing sent before it is measured anyway
    pacer = Pacer(int(1e9 / rate_hz))
    sent = drops = 0
    t0 = time.monotonic_ns()
    for start_s, length_s in windows:
        begin = t0 + int(start_s * 1e9)
        if (left := begin - time.monotonic_ns()) > 0:
            time.sleep(left / 1e9)  # between windows: asleep, no wake-ups at all
        end = begin + int(length_s * 1e9)
        pacer.restart()
        while time.monotonic_ns() < end:
            pacer.wait()
            try:
                sock.send(encode(make_command(sent)), zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                drops += 1
    sock.close(0)
    ctx.term()
    conn.send({"raw_sent": sent, "raw_send_drops": drops,
               "raw_send_cpu_s": round(time.process_time(), 2)})


class StallBaseline:
    """The SCHED_FIFO clock reader, in its own process for ``seconds``."""

    def __init__(self, seconds: float) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_stall_child, args=(seconds, child),
                                 name="bench-stall", daemon=True)
        self._proc.start()

    def results(self, timeout_s: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with contextlib.suppress(EOFError):  # the reader died: no figures, not a crash
            if self._conn.poll(timeout_s):
                out = self._conn.recv()
        self._proc.join(5.0)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(2.0)
        return out


class RawPair:
    """The raw pyzmq PUSH/PULL pair, sender and receiver each in its own process.

    It sends for the whole ``seconds``, or with ``window_s`` and ``every_s`` for
    ``window_s`` at the start of every ``every_s`` (both processes asleep in between).
    """

    def __init__(self, seconds: float, rate_hz: float, *, window_s: float | None = None,
                 every_s: float | None = None) -> None:
        windows = raw_windows(seconds, window_s, every_s)
        self.plan = {"raw_windows": len(windows),
                     "raw_window_s": round(max(length for _, length in windows), 1),
                     "raw_every_s": every_s if len(windows) > 1 else None,
                     "raw_seconds": round(sum(length for _, length in windows), 1)}
        ctx = mp.get_context("spawn")
        self._recv_conn, recv_child = ctx.Pipe()
        self._send_conn, send_child = ctx.Pipe()
        receiver = ctx.Process(target=_raw_receiver, args=(seconds, recv_child),
                               name="bench-raw-recv", daemon=True)
        receiver.start()
        endpoint = self._recv_conn.recv()
        sender = ctx.Process(target=_raw_sender,
                             args=(seconds, rate_hz, endpoint, send_child, windows),
                             name="bench-raw-send", daemon=True)
        sender.start()
        self._procs = [receiver, sender]

    def results(self, timeout_s: float) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.plan)
        if self._send_conn.poll(timeout_s):
            out.update(self._send_conn.recv())
        with contextlib.suppress(OSError):  # the receiver ended by itself (seconds + 10 s)
            self._recv_conn.send("done")
        if self._recv_conn.poll(timeout_s):
            out["raw_recv_cpu_s"] = self._recv_conn.recv()
        if self._recv_conn.poll(timeout_s):
            lat: list[int] = self._recv_conn.recv()
            out.update({f"raw_{k}": round(v, 1) for k, v in percentiles_us(lat).items()})
            out["raw_delivered"] = len(lat)
        for p in self._procs:
            p.join(5.0)
            if p.is_alive():
                p.terminate()
                p.join(2.0)
        return out


# ---------------------------------------------------------------- the run
def run(seconds: float = 10.0, rate_hz: float = 1000.0, *, video: bool = False,
        run_dir: Path | None = None, ros: bool = False) -> dict[str, Any]:
    """The path, the raw pyzmq baseline and the stall baseline of one run; with ``ros``
    the ROS 2 command path in the same run, after the console's segment."""
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="telesurgery-path-") as tmp:
            return run(seconds, rate_hz, video=video, run_dir=Path(tmp), ros=ros)
    domain, namespace = random.randint(1, 200), f"bench_{random.randrange(16**6):06x}"
    overrides = {"ros": {"command": True, "domain_id": domain, "namespace": namespace,
                         "backend": "dds"}} if ros else {}
    opts = RigOptions(run_dir=run_dir, console_seconds=seconds, rate_hz=rate_hz,
                      headless=True, video=video, proxy=False, ros_commander=ros,
                      robot_overrides=overrides)
    t0 = time.monotonic()
    ros_figures: dict[str, Any] = {}
    # The ROS program starts first: its imports and DDS discovery cost nothing measured.
    ros_side = RosSegment(domain, namespace, seconds, rate_hz) if ros else None
    with SimRig(opts) as rig:
        rig.start()
        stall = StallBaseline(seconds)
        raw = RawPair(seconds, rate_hz)
        deadline = time.monotonic() + seconds + _EXIT_GRACE_S
        while rig.procs["console"].poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        figures = {**raw.results(timeout_s=30.0), **stall.results(timeout_s=30.0)}
        if ros_side is not None:
            # The console has gone: the ROS program takes command by the takeover rule
            # (enable = arm once the holder is gone), resumes, and streams servo_cp.
            ros_figures.update({"ros_raw_p50_us": None, "ros_raw_p99_us": None,
                                "ros_raw_delivered": 0})
            # The bridge process (DDS, kinematics) may still be starting on a busy machine.
            until = time.monotonic() + _STARTUP_S
            while "ROS commander connected" not in rig.robot_log() \
                    and time.monotonic() < until:
                time.sleep(0.5)
            if ros_side.go():
                raw_ros = RawPair(seconds, rate_hz)
                bridge_cpu = ProcessCpu(bridge_pid(rig.robot_log()))
                ros_figures.update({f"ros_{k}": v
                                    for k, v in raw_ros.results(timeout_s=seconds + 30).items()})
                ros_figures["ros_bridge_cpu_pct"] = bridge_cpu.percent()
            ros_figures.update(ros_side.results(timeout_s=seconds + 30.0))
        rig.stop()
        robot = rig.summary("robot")
    path = robot.get("path", {"n": 0})
    if ros:
        # One ring, kept apart per command session: the console's first, the ROS
        # commander's last.
        sessions = robot.get("path_sessions", [])
        path = sessions[0] if sessions else {"n": 0}
        ros_path = sessions[-1] if len(sessions) >= 2 else {"n": 0}
        ros_figures["ros_path_n"] = ros_path.get("n", 0)
        bridge = robot.get("ros") or {}
        ros_figures["ros_bridge_received"] = (bridge.get("received") or {}).get("servo_cp")
        ros_figures["ros_superseded"] = (bridge.get("commander") or {}).get("superseded")
        ros_figures["ros_commands_sent"] = (bridge.get("commander") or {}).get("commands_sent")
        ros_figures.update({f"ros_path_{k}": round(ros_path[k], 1)
                            for k in ("p50_us", "p99_us", "p999_us", "max_us") if k in ros_path})
        rp99, rraw = ros_figures.get("ros_path_p99_us"), ros_figures.get("ros_raw_p99_us")
        ros_figures["ratio_ros_path_over_raw_p99"] = (
            round(rp99 / rraw, 2) if rp99 and rraw else None)
    result: dict[str, Any] = {
        "rate_hz": rate_hz, "seconds": seconds, "video": video,
        "path_n": path.get("n", 0),
        **{f"path_{k}": round(path[k], 1) for k in ("p50_us", "p99_us", "p999_us", "max_us")
           if k in path},
        **{f"command_latency_{k}": round(v, 1)
           for k, v in robot.get("command_latency", {}).items() if k != "n"},
        **{f"{part}_{k}": round(v, 1)
           for part, figs in robot.get("path_parts", {}).items()
           for k, v in figs.items() if k in ("p50_us", "p99_us")},
        **figures,
        "loop_period_err_p99_us": robot.get("loop", {}).get("err_p99_us"),
        "loop_overruns": robot.get("loop", {}).get("overruns"),
        "loop_ticks": robot.get("loop", {}).get("ticks"),
        "loop_late": describe_late(robot.get("late_periods", {})),
        "following_periods": robot.get("following_periods", 0),
        "wall_s": round(time.monotonic() - t0, 1),
        **ros_figures,
    }
    raw_p99 = result.get("raw_p99_us")
    path_p99 = result.get("path_p99_us")
    # None, not NaN, when a figure is missing: the JSON stays standard.
    result["ratio_path_over_raw_p99"] = (
        round(path_p99 / raw_p99, 2) if path_p99 and raw_p99 else None)
    return result


def _markdown(r: dict[str, Any]) -> str:
    rows = [("console sample -> serial frame written",
             f"{r.get('path_p50_us')} / {r.get('path_p99_us')} / {r.get('path_p999_us')}",
             f"{r.get('path_n')} commands"),
            ("  of which console sample -> send",
             f"{r.get('console_sample_to_send_p50_us')} / "
             f"{r.get('console_sample_to_send_p99_us')} / -", ""),
            ("  of which robot receive -> frame written",
             f"{r.get('robot_receive_to_written_p50_us')} / "
             f"{r.get('robot_receive_to_written_p99_us')} / -", "wait for the period + compute"),
            ("console send -> robot receive",
             f"{r.get('command_latency_p50_us')} / {r.get('command_latency_p99_us')} / "
             f"{r.get('command_latency_p999_us')}", ""),
            ("raw pyzmq one-way (PUSH/PULL, 2 processes)",
             f"{r.get('raw_p50_us')} / {r.get('raw_p99_us')} / {r.get('raw_p999_us')}",
             f"{r.get('raw_delivered')} messages"),
            ("stall baseline gaps (SCHED_FIFO clock reader)",
             f"p99 {r.get('stall_gap_p99_us')}, max {r.get('stall_gap_max_us')}",
             f"{r.get('stall_gaps_over_1ms')} gaps > 1 ms")]
    if "ros_path_n" in r:
        rows[5:5] = [
            ("ROS servo_cp publish stamp -> serial frame written",
             f"{r.get('ros_path_p50_us')} / {r.get('ros_path_p99_us')} / "
             f"{r.get('ros_path_p999_us')}",
             f"{r.get('ros_path_n')} commands, {r.get('ros_sent')} sent, same run after "
             "the console's segment"),
            ("  of which the ROS 2 bridge process",
             f"CPU {r.get('ros_bridge_cpu_pct')} % of a core",
             f"{r.get('ros_bridge_received')} servo_cp received, "
             f"{r.get('ros_superseded')} superseded, {r.get('ros_commands_sent')} "
             "commands sent"),
            ("raw pyzmq one-way during the ROS segment",
             f"{r.get('ros_raw_p50_us')} / {r.get('ros_raw_p99_us')} / "
             f"{r.get('ros_raw_p999_us')}", f"{r.get('ros_raw_delivered')} messages")]
    lines = ["| figure | p50 / p99 / p99.9 (us) | note |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.append(f"\npath p99 / raw pyzmq p99 = {r.get('ratio_path_over_raw_p99')}; "
                 f"control loop period error p99 {r.get('loop_period_err_p99_us')} us, "
                 f"overruns {r.get('loop_overruns')} of {r.get('loop_ticks')} ticks.")
    if r.get("loop_late"):
        lines.append(f"Control loop {r['loop_late']}.")
    if "ros_path_n" in r:
        lines.append(f"ROS path p99 / raw pyzmq p99 (its segment) = "
                     f"{r.get('ratio_ros_path_over_raw_p99')}"
                     + (f"; ROS error: {r['ros_error']}" if r.get("ros_error") else ""))
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery bench path", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="length of the scripted surgery")
    p.add_argument("--rate", type=float, default=1000.0, help="control and command rate (Hz)")
    p.add_argument("--video", action="store_true", help="with the 720p30 video stream on")
    p.add_argument("--ros", action="store_true",
                   help="then the ROS 2 command path in the same run: an independent DDS "
                   "participant takes command and streams servo_cp at the same rate")
    p.add_argument("--run-dir", type=Path, help="keep logs, configs and summaries here")
    p.add_argument("--out", type=Path, help="write path.json and path.md here")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if not (math.isfinite(args.seconds) and args.seconds > 0 and 20 <= args.rate <= 1000):
        p.error("--seconds must be > 0 and --rate in [20, 1000]")
    print(f"bench path: rig at {args.rate:g} Hz for {args.seconds:g} s, video "
          f"{'on' if args.video else 'off'}, with raw pyzmq and the stall baseline alongside",
          flush=True)
    try:
        r = run(args.seconds, args.rate, video=args.video, run_dir=args.run_dir,
                ros=args.ros)
    except RuntimeError as err:  # the rig raises it when a part does not start
        print(f"bench path FAILED: {err}")
        return 1
    table = _markdown(r)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "path.json").write_text(json.dumps(r, indent=2))
        (args.out / "path.md").write_text(table)
    print(json.dumps(r))
    return 0 if r["path_n"] and (not args.ros or r.get("ros_path_n")) else 1


if __name__ == "__main__":
    from telesurgery.cli import setup_logging

    setup_logging()
    sys.exit(main(sys.argv[1:]))
