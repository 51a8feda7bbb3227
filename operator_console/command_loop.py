"""The console's command thread: device -> registered, filtered master pose -> Command.

Whatever goes wrong on the surgeon's side (no device, a disconnected one, NaN
from it) the command still goes out, but never as valid motion:
``operator_present`` is False and the pose is the last good one, so the robot
holds at once instead of waiting for its command timeout. The robot anchors and
scales (``safety.anchor``); this thread only samples, filters and registers.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from operator_console.devices.base import InputDevice
from operator_console.session import ConsoleShared
from operator_console.teleop import TeleopMapper
from telesurgery.errors import DeviceError
from telesurgery.gaps import GapCounter
from telesurgery.pacer import (
    HELPER_PRIORITY,
    Pacer,
    lower_timer_slack,
    realtime_permitted,
    try_realtime,
    zmq_context,
)
from transport.link import ConsoleLink
from transport.schema import Command

log = logging.getLogger(__name__)


COMMAND_PRIORITY = 40
IO_THREAD_PRIORITY = 39
"""libzmq's I/O thread encrypts and writes every command: just below the command
thread, above everything at normal priority (a preempted I/O thread held commands
back however punctually the command thread sent them)."""
LATE_GAP_NS = 5_000_000
"""A send interval above this (5 periods at 1 kHz) is split into where it went."""


class LateSplit:
    """Where the late send intervals went, summed over all of them (ns) and for the worst.

    ``wake_late``: the pacer's wake-up after its deadline (the kernel's scheduling and
    the GIL taken back after the sleep); ``work_wait``: building and sending the command
    took longer than its own CPU (waiting for the GIL, or preempted); ``work_cpu``: the
    thread's own CPU for it. What is left of a gap beyond the period is the previous
    command's early end, i.e. nothing this thread did.
    """

    def __init__(self) -> None:
        self.n = 0
        self.wake_late_ns = self.work_wait_ns = self.work_cpu_ns = 0
        self.worst: tuple[int, int, int, int] = (0, 0, 0, 0)

    def add(self, gap_ns: int, wake_late_ns: int, work_wall_ns: int, work_cpu_ns: int) -> None:
        wait = max(0, work_wall_ns - work_cpu_ns)
        self.n += 1
        self.wake_late_ns += wake_late_ns
        self.work_wait_ns += wait
        self.work_cpu_ns += work_cpu_ns
        if gap_ns > self.worst[0]:
            self.worst = (gap_ns, wake_late_ns, wait, work_cpu_ns)

    def summary(self) -> dict[str, float | int]:
        gap, wake, wait, cpu = self.worst
        return {"n": self.n, "wake_late_ms": round(self.wake_late_ns / 1e6, 2),
                "work_wait_ms": round(self.work_wait_ns / 1e6, 2),
                "work_cpu_ms": round(self.work_cpu_ns / 1e6, 2),
                "worst_gap_ms": round(gap / 1e6, 2), "worst_wake_late_ms": round(wake / 1e6, 2),
                "worst_work_wait_ms": round(wait / 1e6, 2),
                "worst_work_cpu_ms": round(cpu / 1e6, 2)}


def console_context(realtime: bool) -> zmq.Context[Any]:
    """The console's ZeroMQ context: its I/O thread at ``IO_THREAD_PRIORITY`` when
    ``realtime`` and permitted (libzmq aborts when it cannot apply the option)."""
    return zmq_context(IO_THREAD_PRIORITY if realtime and realtime_permitted(IO_THREAD_PRIORITY)
                       else 0)


def keep_gil_holders_running(realtime: bool) -> bool:
    """The calling thread (the console's main thread: decode, HUD) at a low SCHED_FIFO
    priority, as the robot's helpers: not for its own sake, but because a thread
    preempted by an unrelated busy process *while holding the GIL* stalls the command
    thread until it runs again (measured: the command thread woke 30 ms late, its own
    work 0.2 ms, on a loaded two-core machine). Threads started from here inherit it:
    the H.264 decoder's own threads (libavcodec's), which at normal priority kept a
    decode waiting up to 466 ms for them on the same machine."""
    return try_realtime(HELPER_PRIORITY, children_inherit=True) if realtime else False


def thread_priorities() -> dict[str, int]:
    """{thread name: its SCHED_FIFO priority, 0 for normal} of this process (Linux), for
    the run summary: the scheduling the rig actually got, not the one it asked for."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    out: dict[str, int] = {}
    try:
        tids = [int(p) for p in os.listdir("/proc/self/task")]
    except OSError:
        return out
    for tid in tids:
        try:
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            fifo = os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO
            out[names.get(tid) or comm] = os.sched_getparam(tid).sched_priority if fifo else 0
        except OSError:  # the thread ended meanwhile
            continue
    return out


class CommandThread(threading.Thread):
    def __init__(self, link: ConsoleLink, device: InputDevice, mapper: TeleopMapper,
                 shared: ConsoleShared, *, period_ns: int, realtime: bool,
                 gil_switch_s: float | None = None) -> None:
        super().__init__(name="console-command", daemon=True)
        self.link = link
        self.device = device
        self.mapper = mapper
        self.shared = shared
        self.pacer = Pacer(period_ns)
        self.realtime = realtime
        self.gil_switch_s = gil_switch_s
        """``sys.setswitchinterval`` for the whole console (None: Python's 5 ms)."""
        self._halt = threading.Event()
        self.sent = 0
        self.device_errors = 0
        self._seq = 0
        self.send_gaps = GapCounter()
        """Intervals between commands sent: what the robot's command timeout judges."""
        self.late = LateSplit()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        # The GIL switch interval too (process-wide): at Python's 5 ms a main-thread
        # decode or a session-thread burst held the GIL for up to 5 ms while this FIFO
        # thread, awake, could not send (the robot's own loop uses the same 0.5 ms).
        lower_timer_slack()
        if self.gil_switch_s is not None:
            sys.setswitchinterval(self.gil_switch_s)
        if self.realtime:
            try_realtime(COMMAND_PRIORITY)
        self.pacer.restart()
        while not self._halt.is_set():
            tick = self.pacer.wait()
            cpu0 = time.thread_time_ns()
            # The link's session now, so that the link need not copy the command to add it.
            self.link.send_command(self._next_command(self.link.session))
            sent_ns = time.monotonic_ns()
            self.sent += 1
            gap = self.send_gaps.event(sent_ns)
            if gap > LATE_GAP_NS:
                self.late.add(gap, tick.error_ns, sent_ns - tick.actual_ns,
                              time.thread_time_ns() - cpu0)

    def _next_command(self, session: int | None = None) -> Command:
        sh = self.shared
        align, sh.align_to = sh.align_to, None  # the session's one-way request
        if align is not None and not self.mapper.align(self.device, align):
            # A leader arm engages on its joints (robot_side/follow_joint.py), not on the
            # hand's orientation.
            last = sh.last_output
            sh.message = ("move the leader arm to the robot arm's pose to engage"
                          if last is not None and last.joints is not None
                          else "turn your hand to the instrument's orientation to engage")
        now = time.monotonic_ns()
        sampled_ns: int | None = None
        try:
            self.device.engaged(sh.engaged, now)
            sample = self.device.read(now)
            sampled_ns = sample.t_ns  # the robot measures sample -> frame written from it
            out = self.mapper.update(sample)
        except DeviceError as err:
            self.device_errors += 1
            if self.device_errors == 1 or self.device_errors % 500 == 0:
                log.error("input device: %s (%d errors); sending hold", err,
                          self.device_errors)
            out = self.mapper.device_fault(str(err))
        sh.last_output = out
        present = out.valid and out.operator_present
        if not (all(map(math.isfinite, out.position)) and all(map(math.isfinite, out.quat))
                and math.isfinite(out.grip)):
            log.error("teleop produced a non-finite pose; sending hold")
            present = False
        position, quat = (out.position, out.quat) if present else self.mapper.last_pose
        self._seq += 1
        return Command(seq=self._seq, t_send_ns=time.monotonic_ns(), session=session,
                       position=position, orientation=quat,
                       grip=min(1.0, max(0.0, out.grip)) if present else 0.0,
                       clutch=out.clutch, operator_present=present,
                       video_age_us=sh.video_age_us, t_sample_ns=sampled_ns,
                       joints=out.joints)
