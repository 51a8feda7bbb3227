"""The robot's video process as the node runs it: spawned, stopped and orphaned for real."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from robot_side.video.config import VideoConfig
from robot_side.video_process import VideoProcess
from telesurgery.pacer import realtime_permitted
from transport.config import LinkConfig
from transport.keys import init_keys

# Two reports fill the queue: a run of a few seconds stands in for a long operation
# (the child reports its counters every second).
SMALL_OUTBOX = 2
VIDEO = VideoConfig(width=320, height=240, fps=15.0, encoder="libx264")

ORPHAN = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from robot_side.video.config import VideoConfig
    from robot_side.video_process import VideoProcess
    from transport.config import LinkConfig
    keys = Path(sys.argv[1])
    if __name__ == "__main__":
        vp = VideoProcess(VideoConfig(width=320, height=240, fps=15.0, encoder="libx264"),
                          LinkConfig(video_port=0, keys_dir=keys), keys, outbox_size=2)
        vp.start()
        time.sleep(4.0)  # never reads the child's reports: the queue is full
        print(vp.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
""")


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_stop_is_prompt_after_a_run_longer_than_the_report_queue(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys")
    vp = VideoProcess(VIDEO, LinkConfig(video_port=0, keys_dir=tmp_path / "keys"),
                      tmp_path / "keys", outbox_size=SMALL_OUTBOX)
    vp.start()
    try:
        time.sleep(3.5)
    finally:
        start = time.monotonic()
        vp.stop()
    took = time.monotonic() - start
    assert vp.exitcode == 0, f"the child had to be killed ({vp.exitcode}) after {took:.1f} s"
    summary = vp.summary()
    assert "libx264" in summary["encoder"], summary
    frames = summary["sent"] + summary["dropped_backpressure"] + summary["dropped_stale"]
    assert frames >= 30, summary  # the final counters, not those of the first seconds
    # Its own CPU and time up, so that a soak splits the robot's CPU into control and encode.
    assert summary["cpu_s"] > 0 and summary["up_s"] > 0, summary


def test_a_video_process_whose_node_was_killed_exits_by_itself(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys")
    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "keys")],
                         capture_output=True, text=True, timeout=60, check=False,
                         cwd=Path(__file__).parents[2])
    pid = int(out.stdout.split()[0])
    gone = _gone(pid, 5.0)
    if not gone:
        psutil.Process(pid).kill()
    assert gone, "the orphaned video process kept running after its node was killed"


def test_keyframe_requests_go_straight_to_the_video_process(tmp_path: Path) -> None:
    import zmq

    init_keys(tmp_path / "keys")
    vp = VideoProcess(VIDEO, LinkConfig(video_port=0, keys_dir=tmp_path / "keys"),
                      tmp_path / "keys", control_dir=tmp_path)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    vp.start()
    line = vp.control(ctx)
    try:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            line.request_keyframe("decode_error")
            line.report_video_age(40_000)
            time.sleep(0.2)
            vp.poll()
            if vp.stats.get("keyframe_requests", 0) >= 3:
                break
    finally:
        line.close()
        vp.stop()
        ctx.term()
    assert vp.stats.get("keyframe_requests", 0) >= 3, vp.summary()
    assert vp.exitcode == 0
    if os.geteuid() == 0:  # encoding preempted by ordinary processes made pictures stale
        assert vp.nice == VIDEO.nice == -10


def _threads_scheduling(pid: int) -> dict[int, tuple[int, int, int]]:
    """tid -> (policy, real-time priority, nice) of every thread of ``pid``."""
    out = {}
    for tid in (int(t) for t in os.listdir(f"/proc/{pid}/task")):
        with contextlib.suppress(OSError):  # a thread that just ended
            out[tid] = (os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK,
                        os.sched_getparam(tid).sched_priority,
                        os.getpriority(os.PRIO_PROCESS, tid))
    return out


def _encoding_scheduling(tmp_path: Path, video: VideoConfig) -> tuple[
        dict[int, tuple[int, int, int]], dict[str, Any]]:
    """Every thread's scheduling while ``video`` encodes (its libx264 slice threads up)."""
    init_keys(tmp_path / "keys")
    vp = VideoProcess(video, LinkConfig(video_port=0, keys_dir=tmp_path / "keys"),
                      tmp_path / "keys", control_dir=tmp_path)
    vp.start()
    try:
        deadline = time.monotonic() + 90.0  # start-up on a loaded two-core machine
        while time.monotonic() < deadline and vp.stats.get("sent", 0) < 5:
            time.sleep(0.1)
            vp.poll()
        assert vp.pid is not None and vp.stats.get("sent", 0) >= 5, vp.summary()
        threads = _threads_scheduling(vp.pid)
    finally:
        vp.stop()
    return threads, vp.summary()


@pytest.mark.skipif(not realtime_permitted(), reason="SCHED_FIFO not permitted here")
def test_the_video_process_and_all_its_threads_run_at_the_configured_realtime_priority(
        tmp_path: Path) -> None:
    # Sliced libx264 (2 threads): its slice threads must be real-time too, or a frame
    # waits for the one slice left behind on a busy CPU.
    video = dataclasses.replace(VIDEO, encoder_threads=2, realtime_priority=7)
    threads, summary = _encoding_scheduling(tmp_path, video)
    assert summary["realtime_priority"] == 7, summary
    assert len(threads) >= 4, threads  # main, capture, libzmq, libx264's
    assert all(policy == os.SCHED_FIFO and prio == 7 for policy, prio, _ in threads.values()), \
        threads


@pytest.mark.skipif(not realtime_permitted(), reason="SCHED_FIFO not permitted here")
def test_realtime_priority_zero_leaves_the_video_process_at_normal_scheduling_and_nice(
        tmp_path: Path) -> None:
    video = dataclasses.replace(VIDEO, encoder_threads=2, realtime_priority=0, nice=-5)
    threads, summary = _encoding_scheduling(tmp_path, video)
    assert summary["realtime_priority"] == 0 and summary["nice"] == -5, summary
    assert all(policy == os.SCHED_OTHER and nice == -5
               for policy, _, nice in threads.values()), threads
