"""``telesurgery bench record``: what recording a session costs the robot.

Two parts, one report:

* **the control thread's share** (in-process, no rig): what the control thread pays per
  accepted command to have it recorded (``CommandRing.add``, a bounded-deque append),
  against the same hook without it, and what the network thread pays per batch
  (build + encode + publish on a real ipc PUB socket);
* **the whole rig, same run, recording off then on** (the healthy simulated rig of
  ``bench soak`` for ``seconds`` each, the page off in both): the control loop's period
  error p99 and overruns with and without the recorder, and from the recording: video
  frames in the file, frames missing in it (frame-id gaps the recorder saw), commands
  recorded, file size and write rate.

Short runs only prove it works on a shared machine; the goal (unchanged period error
within noise at 1 kHz + 720p30) is for ``--seconds 600`` on a quiet one. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from telesurgery.helptext import plain_help

log = logging.getLogger(__name__)

_EXIT_GRACE_S = 120.0
HOOK_CALLS = 200_000


def _percentiles(ns: np.ndarray) -> dict[str, float]:
    return {"p50_ns": round(float(np.percentile(ns, 50)), 1),
            "p99_ns": round(float(np.percentile(ns, 99)), 1)}


def hook_cost(calls: int = HOOK_CALLS) -> dict[str, Any]:
    """Per-command cost in the control thread (ring append) and per batch in the network
    thread (build, encode, publish), timed in blocks of 100 calls to see below the clock."""
    from robot_side.observe import CommandRing, ObserverFeed
    from transport.schema import Command

    cmd = Command(seq=1, t_send_ns=0, position=(0.1, 0.0, 0.2),
                  orientation=(1.0, 0.0, 0.0, 0.0), grip=0.5, clutch=False,
                  operator_present=True, video_age_us=30_000)
    ring = CommandRing(maxlen=calls + 1)
    block = 100
    base, added = [], []
    for _ in range(calls // block):
        t0 = time.perf_counter_ns()
        for _ in range(block):
            pass  # the loop alone: what the hook costs is the difference
        t1 = time.perf_counter_ns()
        for _ in range(block):
            ring.add(cmd, 0)
        t2 = time.perf_counter_ns()
        base.append((t1 - t0) / block)
        added.append((t2 - t1) / block)
    extra = np.array(added) - np.array(base)
    with tempfile.TemporaryDirectory(prefix="telesurgery-bench-rec-") as tmp, \
            ObserverFeed(Path(tmp) / "observe.sock") as feed:
        ring = CommandRing()
        per_batch = []
        for _ in range(2000):
            for _ in range(10):  # 10 ms of commands at 1 kHz: one observer period
                ring.add(cmd, 0)
            t0 = time.perf_counter_ns()
            for batch in ring.batches():
                feed.publish_encoded(batch)
            per_batch.append(time.perf_counter_ns() - t0)
    return {"control_per_command": _percentiles(extra),
            "network_per_batch_of_10": _percentiles(np.array(per_batch))}


RECORDER_START_S = 120.0
"""A spawned recorder imports rosbags and PyAV first: seconds on a loaded machine."""


def _rig_run(run_dir: Path, seconds: float, record: bool) -> dict[str, Any]:
    from hil_tests.rig import RigOptions, SimRig
    from telesurgery.demo import ROTATION_SCALE

    class RecordingRig(SimRig):
        """The console starts once the recorder records: the whole surgery is in the file."""

        def start_console(self, name: str = "console",
                          session: dict[str, Any] | None = None, **kw: Any) -> None:
            status = self.run / "recording.json"
            deadline = time.monotonic() + RECORDER_START_S
            while record and time.monotonic() < deadline:
                with contextlib.suppress(OSError, ValueError):
                    if json.loads(status.read_text()).get("state") == "recording":
                        break
                time.sleep(0.1)
            super().start_console(name, session, **kw)

    overrides: dict[str, dict[str, Any]] = {"page": {"enabled": False},
                                            "record": {"enabled": record}}
    opts = RigOptions(run_dir=run_dir, console_seconds=seconds, headless=True,
                      rotation_scale=ROTATION_SCALE, robot_overrides=overrides)
    with RecordingRig(opts) as rig:
        rig.start()
        deadline = time.monotonic() + seconds + _EXIT_GRACE_S
        while rig.procs["console"].poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        rig.stop()
        robot = rig.summary("robot")
    loop = robot.get("loop", {})
    out: dict[str, Any] = {
        "period_err_p99_us": round(loop.get("err_p99_us", 0.0), 1),
        "overruns": loop.get("overruns"), "ticks": loop.get("ticks"),
        "video_sent": robot.get("video", {}).get("sent"),
        "video_mirror_dropped": robot.get("video", {}).get("mirror_dropped"),
    }
    if record:
        out.update(_recording_figures(run_dir, seconds))
    return out


def _recording_figures(run_dir: Path, seconds: float) -> dict[str, Any]:
    from ruamel.yaml import YAML

    sessions = sorted((run_dir / "recordings").glob("session-*"))
    if not sessions:
        return {"recording": "no session folder"}
    session = sessions[-1]
    size = sum(f.stat().st_size for f in session.iterdir() if f.is_file())
    info = YAML(typ="safe").load((session / "metadata.yaml").read_text())
    counts = {t["topic_metadata"]["name"]: t["message_count"]
              for t in info["rosbag2_bagfile_information"]["topics_with_message_count"]}
    status_file = run_dir / "recording.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    recorded_s = info["rosbag2_bagfile_information"]["duration"]["nanoseconds"] / 1e9
    return {
        "recording_state": status.get("state"),
        "video_frames_in_file": counts.get("/video/compressed"),
        "video_frames_missing": status.get("video_frames_missing"),
        "commands_in_file": counts.get("/console/master_cp"),
        "commands_lost": status.get("commands_lost"),
        "messages_in_file": sum(counts.values()),
        "file_mb": round(size / 1e6, 2),
        "recorded_s": round(recorded_s, 1),
        "write_mb_s": round(size / 1e6 / recorded_s, 3) if recorded_s > 0 else None,
        "mb_per_minute": round(size / 1e6 / recorded_s * 60, 1) if recorded_s > 0 else None,
    }


def run(seconds: float = 20.0, run_dir: Path | None = None) -> dict[str, Any]:
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="telesurgery-bench-rec-") as tmp:
            return run(seconds, Path(tmp))
    hook = hook_cost()
    off = _rig_run(run_dir / "off", seconds, record=False)
    on = _rig_run(run_dir / "on", seconds, record=True)
    return {"hook": hook, "off": off, "on": on, "seconds": seconds,
            "period_err_p99_delta_us": round(on["period_err_p99_us"]
                                             - off["period_err_p99_us"], 1)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="telesurgery bench record",
                                     description=plain_help(__doc__).split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="length of each rig run (off, then on); the goal is for 600")
    parser.add_argument("--run-dir", type=Path, help="keep logs, configs and the session here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        parser.error("--seconds must be > 0")
    print(f"bench record: control-thread share, then the rig {args.seconds:g} s recording "
          "off, then on ...", flush=True)
    try:
        r = run(args.seconds, args.run_dir)
    except RuntimeError as err:  # the rig raises it when a part does not start
        print(f"bench record FAILED: {err}")
        return 1
    h, off, on = r["hook"], r["off"], r["on"]
    print(f"  control thread    per command recorded (CommandRing.add): p50 "
          f"{h['control_per_command']['p50_ns']} ns, p99 {h['control_per_command']['p99_ns']} ns"
          " (1 kHz: one per period)")
    print(f"  network thread    per batch of 10 (build, encode, publish): p50 "
          f"{h['network_per_batch_of_10']['p50_ns'] / 1000:.1f} us, p99 "
          f"{h['network_per_batch_of_10']['p99_ns'] / 1000:.1f} us")
    print(f"  control loop      period error p99 off {off['period_err_p99_us']} us, on "
          f"{on['period_err_p99_us']} us (delta {r['period_err_p99_delta_us']} us); overruns "
          f"off {off['overruns']}/{off['ticks']}, on {on['overruns']}/{on['ticks']}")
    print(f"  video in the file {on.get('video_frames_in_file')} frames, "
          f"{on.get('video_frames_missing')} missing (sent {on['video_sent']}, mirror "
          f"dropped {on['video_mirror_dropped']})")
    print(f"  commands          {on.get('commands_in_file')} in the file, "
          f"{on.get('commands_lost')} lost before recording")
    print(f"  file              {on.get('file_mb')} MB over {on.get('recorded_s')} s: "
          f"{on.get('write_mb_s')} MB/s ({on.get('mb_per_minute')} MB/min); state "
          f"{on.get('recording_state')}")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    from telesurgery.cli import setup_logging

    setup_logging()
    sys.exit(main(sys.argv[1:]))
