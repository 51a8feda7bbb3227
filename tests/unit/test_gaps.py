"""Where late commands and stale pictures lost their time: the per-stage counters."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest
import zmq

from hil_tests.faultproxy import PROXY_PRIORITY
from operator_console.command_loop import (
    IO_THREAD_PRIORITY,
    CommandThread,
    LateSplit,
    console_context,
    keep_gil_holders_running,
    thread_priorities,
)
from operator_console.config import ConsoleConfig, LoopConfig
from operator_console.session import ConsoleShared
from operator_console.teleop import TeleopConfig, TeleopMapper
from operator_console.video.decoder import Picture
from operator_console.video.receiver import DecodedFrame
from operator_console.video.stages import VideoStages
from telesurgery.errors import ConfigError
from telesurgery.gaps import AgeCounter, GapCounter
from telesurgery.pacer import HELPER_PRIORITY, realtime_permitted
from tests.unit.test_command_loop_wording import HeldMaster

MS = 1_000_000


def test_gap_counter_counts_each_interval_over_each_threshold() -> None:
    gaps = GapCounter((5.0, 10.0, 20.0))
    for t in (0, 1, 2, 8, 9, 21, 22, 43):  # intervals 1, 1, 6, 1, 12, 1, 21 ms
        gaps.event(t * MS)
    assert gaps.summary() == {"n": 7, "max_ms": 21.0, "over_5ms": 3, "over_10ms": 2,
                              "over_20ms": 1}
    gaps.restart()  # a deliberate pause is not a gap
    assert gaps.event(1000 * MS) == 0 and gaps.n == 7
    assert gaps.describe() == "max 21.0 ms, >5: 3, >10: 2, >20: 1"


def test_age_counter_and_bad_thresholds() -> None:
    ages = AgeCounter((120.0, 250.0))
    for age_ms in (20, 130, 260, -1):  # a negative age (clock offset) counts as 0
        ages.add(age_ms * MS)
    assert ages.summary() == {"n": 4, "max_ms": 260.0, "over_120ms": 2, "over_250ms": 1}
    with pytest.raises(ValueError):
        GapCounter(())
    with pytest.raises(ValueError):
        AgeCounter((0.0,))


def test_a_late_command_is_split_into_wake_up_wait_and_own_work() -> None:
    late = LateSplit()
    late.add(21 * MS, wake_late_ns=15 * MS, work_wall_ns=5 * MS, work_cpu_ns=1 * MS)
    late.add(7 * MS, wake_late_ns=6 * MS, work_wall_ns=MS // 10, work_cpu_ns=MS // 10)
    s = late.summary()
    assert s["n"] == 2 and s["wake_late_ms"] == 21.0 and s["work_wait_ms"] == 4.0
    assert (s["worst_gap_ms"], s["worst_wake_late_ms"], s["worst_work_wait_ms"],
            s["worst_work_cpu_ms"]) == (21.0, 15.0, 4.0, 1.0)


def test_the_console_stages_tell_a_late_arrival_from_a_late_display() -> None:
    stages = VideoStages()
    picture = Picture(av.VideoFrame(16, 16, "yuv420p"))  # only the timestamps matter

    def shown(capture_ms: int, recv_ms: int, decoded_ms: int, shown_ms: int) -> None:
        frame = DecodedFrame(1, capture_ms * MS, recv_ms * MS, decoded_ms * MS, picture)
        stages.on_shown(frame, shown_ms * MS)

    shown(0, 10, 15, 16)         # healthy: 16 ms glass to glass
    shown(33, 170, 172, 173)     # arrived 137 ms old: late before the console
    shown(66, 180, 182, 330)     # arrived fresh-ish, shown 264 ms old: the console was late
    stages.on_keyframe_request("gap")
    s = stages.summary()
    assert s["age_received"]["over_120ms"] == 1 and s["age_received"]["over_250ms"] == 0
    assert s["age_shown"]["over_120ms"] == 2 and s["age_shown"]["over_250ms"] == 1
    assert s["console_delay"]["max_ms"] == 150.0
    assert s["shown_gaps"]["over_120ms"] == 2 and s["keyframe_requests"] == {"gap": 1}


class RecordingLink:
    """Stands in for ``ConsoleLink`` (only ``session`` and ``send_command`` are used):
    what is tested is the thread's effect on its own process, not the network."""

    session = None

    def __init__(self) -> None:
        self.sent = 0

    def send_command(self, cmd: object) -> None:
        self.sent += 1


def test_the_command_thread_shortens_the_consoles_gil_switch_interval() -> None:
    """At Python's 5 ms, a main-thread decode could hold the GIL 5 ms while the FIFO
    command thread, awake, waited to send (the robot's loop uses 0.5 ms)."""
    assert ConsoleConfig().loop.gil_switch_ms == 0.5
    with pytest.raises(ConfigError):
        LoopConfig(gil_switch_ms=0.0)
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    device = HeldMaster(None)
    device.open()
    link = RecordingLink()
    mapper = TeleopMapper(TeleopConfig(rate_hz=500.0))
    thread = CommandThread(link, device, mapper, ConsoleShared(),  # type: ignore[arg-type]
                           period_ns=2_000_000, realtime=False, gil_switch_s=0.0005)
    try:
        thread.start()
        deadline = time.monotonic() + 10
        while link.sent < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert link.sent >= 3
        assert sys.getswitchinterval() == pytest.approx(0.0005)
        assert thread.send_gaps.n >= 2
    finally:
        thread.stop()
        thread.join(2)
        sys.setswitchinterval(before)


@pytest.mark.skipif(not realtime_permitted(30), reason="SCHED_FIFO not permitted here")
def test_the_fault_proxy_relays_at_its_real_time_priority(tmp_path: Path) -> None:
    """The proxy stands in for the network, which does not share the rig's CPUs: at
    normal priority it read commands tens of ms late on a loaded machine."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "telesurgery.cli", "faultproxy", "--listen",
         "command@127.0.0.1:0=127.0.0.1:9", "--listen", "video@127.0.0.1:0=127.0.0.1:9"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for _ in range(2):
            assert "faultproxy ready" in proc.stdout.readline()
        tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        relays = [t for t in tids if os.sched_getscheduler(t) & ~os.SCHED_RESET_ON_FORK
                  == os.SCHED_FIFO
                  and os.sched_getparam(t).sched_priority == PROXY_PRIORITY]
        assert len(relays) >= 3  # the main thread and one relay thread per channel
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_consoles_threads_that_carry_commands_run_at_their_priorities() -> None:
    """libzmq's I/O thread (it encrypts every command) below the command thread; the
    console's main thread at the helpers' low real-time priority (a GIL holder that is
    never preempted by ordinary processes). Hooked up in ``ConsoleApp.run``: the
    scripted console process's summary shows it (tests/system/test_handoff.py)."""
    if not realtime_permitted(IO_THREAD_PRIORITY):
        pytest.skip("SCHED_FIFO not permitted here")
    ctx = console_context(realtime=True)
    sock = ctx.socket(zmq.PUSH)
    try:
        sock.bind("tcp://127.0.0.1:*")  # the I/O thread runs once a socket has work
        deadline = time.monotonic() + 5
        while "ZMQbg/IO/0" not in thread_priorities() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert thread_priorities().get("ZMQbg/IO/0") == IO_THREAD_PRIORITY
    finally:
        sock.close(0)
        ctx.term()
    seen: list[int] = []

    def main_like() -> None:
        keep_gil_holders_running(True)
        seen.append(thread_priorities()[threading.current_thread().name])
        # What it starts inherits it: the decoder's libavcodec threads wait for nothing.
        helper = threading.Thread(target=lambda: seen.append(
            thread_priorities()[threading.current_thread().name]), name="decoder-like")
        helper.start()
        helper.join(5)

    t = threading.Thread(target=main_like, name="main-like")
    t.start()
    t.join(5)
    assert seen == [HELPER_PRIORITY, HELPER_PRIORITY]


def test_the_soak_names_the_stage_where_a_trips_time_went() -> None:
    from telesurgery.bench.soak import trip_causes

    sends = GapCounter()
    for t in (0, 1, 23):  # one 22 ms interval at the console's send
        sends.event(t * MS)
    console = {"command_send_gaps": sends.summary(),
               "command_late_split": {"n": 1, "wake_late_ms": 21.0, "work_wait_ms": 0.0,
                                      "work_cpu_ms": 0.2, "worst_gap_ms": 22.0,
                                      "worst_wake_late_ms": 21.0, "worst_work_wait_ms": 0.0,
                                      "worst_work_cpu_ms": 0.2},
               "video_stages": VideoStages().summary()}
    causes = trip_causes(console, {}, {})
    assert causes["console command sends"].startswith("max 22.0 ms, >5: 1, >10: 1, >20: 1")
    assert "worst 22.0 ms = wake 21.0" in causes["console command sends"]
    assert causes["proxy command arrivals"].startswith("n/a")  # no proxy: said, not guessed
    assert set(causes) == {"console command sends", "proxy command arrivals", "robot video",
                           "proxy video arrivals", "console video"}
