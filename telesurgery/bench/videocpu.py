"""The robot node's own video process, alone: what it costs a core (issue 11).

``telesurgery bench video --video-process SECONDS`` runs ``VideoProcess`` exactly as
the node starts it (synthetic I420 camera, encoder, CURVE PUB with nobody
subscribed, control socket, report queue) and reads its CPU from the kernel
after start-up (imports, encoder probe) is over. ``cpu_pct_at_full_rate`` scales
the CPU per frame to the configured rate: on a busy machine the process may not
get to render every frame, and then its share of a core understates the cost.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

STARTUP_TIMEOUT_S = 30.0
REPORT_TIMEOUT_S = 5.0


def _on_next_report(proc: Any, child: psutil.Process) -> tuple[int, float, float]:
    """(frames sent, CPU-s, monotonic s) as soon as the child's next report arrives."""
    last = proc.stats
    deadline = time.monotonic() + REPORT_TIMEOUT_S
    while time.monotonic() < deadline:
        proc.poll()
        if proc.stats is not last:
            t = child.cpu_times()
            return int(proc.stats.get("sent", 0)), t.user + t.system, time.monotonic()
        time.sleep(0.005)
    raise RuntimeError(f"video process sent no report for {REPORT_TIMEOUT_S:.0f} s")


def video_process_cpu(seconds: float, width: int = 1280, height: int = 720, fps: float = 30.0,
                      *, encoder_threads: int = 0) -> dict[str, Any]:
    """The robot node's own video process (synthetic camera, encoder, PUB; nobody
    subscribed) for ``seconds`` after start-up: its CPU as a share of one core."""
    from robot_side.video.config import VideoConfig
    from robot_side.video_process import VideoProcess
    from transport.config import LinkConfig
    from transport.keys import init_keys

    with tempfile.TemporaryDirectory(prefix="bench-video-process-") as tmp:
        keys = Path(tmp) / "keys"
        init_keys(keys)
        cfg = VideoConfig(width=width, height=height, fps=fps, encoder_threads=encoder_threads)
        proc = VideoProcess(cfg, LinkConfig(video_port=0, keys_dir=keys), keys)
        proc.start()
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while proc.stats.get("sent", 0) == 0 and time.monotonic() < deadline:
                time.sleep(0.2)  # imports, encoder probe, first frames: not measured
                proc.poll()
            if proc.pid is None or proc.error or not proc.stats.get("sent", 0):
                raise RuntimeError(f"video process did not start: {proc.describe()}")
            child = psutil.Process(proc.pid)
            # The child reports its counters once a second: both ends are taken the
            # moment a report lands, so frames and CPU cover the same interval.
            sent0, cpu0, t0 = _on_next_report(proc, child)
            time.sleep(max(0.0, seconds - 1.0))
            sent1, cpu1, t1 = _on_next_report(proc, child)
            cpu, wall, frames = cpu1 - cpu0, t1 - t0, sent1 - sent0
        finally:
            proc.stop()
    return {"video_process_cpu_pct": round(100 * cpu / wall, 1),
            "frames_per_s": round(frames / wall, 1),
            "cpu_ms_per_frame": round(1000 * cpu / max(1, frames), 2),
            "cpu_pct_at_full_rate": round(100 * cpu / max(1, frames) * fps, 1),
            "size": f"{width}x{height}", "fps": fps, "encoder_threads": encoder_threads}
