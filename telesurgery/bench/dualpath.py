"""``telesurgery bench link --paths 2``: the cost of two network paths, and failover trials.

One process, real CurveZMQ sockets on loopback, the robot's real ``CommandPort``
(one socket bound on every path's address, each command judged by the intake):

1. **Cost**, one path vs two in the same run: two console/robot pairs, one with a
   single path (127.0.0.1), one with two (127.0.0.8 -> 127.0.0.2, 127.0.0.9 -> 127.0.0.3); commands
   alternate between them in half-second blocks at ``rate`` so a busy machine
   loads both alike. Printed: one-way command latency (send stamp to the robot's
   receive of the first fresh copy, one clock) and the process's CPU time per
   block as a percentage of one core (console and robot sides together, libzmq's
   I/O threads included).
2. **Failover trials**: two paths, each through its own fault proxy (a process of its
   own, ``telesurgery faultproxy``, so its relaying does not share this one's GIL); in each trial
   one path (A and B in turn) is blacked out for ``BLACKOUT_S`` in the middle of a
   command stream. Per trial: commands sent and executed fresh (missed = the
   difference), the gaps between fresh arrivals, and whether one exceeded the
   command timeout (a trip). Goal: 0 missed, 0 trips in every trial, and no gap
   the link lengthened by more than one period (hitless).

Gaps are printed as distributions (p50/p99/max) in three groups: *at the switch*
(the first fresh command after a blackout began or ended: where a failover would
show), *one path down* (during the blackout) and *both up*, each also with the
*link's share* of the gap (the gap less the console's own send interval, which is
the second command's one-way latency less the first's): a gap the console made by
sending late is no failover gap. On a loaded machine every group shows the same
stalls; the failover's own cost is the switch group's excess over the others.

Run as the system runs: the robot's command thread at SCHED_FIFO 50 with the GIL
switch interval of the node (``pacer.enter_realtime``) and its libzmq I/O thread
at 49 (``command_port.link_context``), the console's sender at 40 as its command
loop, and the fault proxies (stand-ins for switches and cables, which no other job
can starve) at ``PROXY_FIFO``, where permitted. Measured before (all at normal
priority, the default 5 ms switch interval, load 2 on two cores): a no-blackout
control run had the same 3-15 ms gaps as the failover trials, with both paths'
copies of a command late together: the bench's own scheduling, not the failover.

The last line printed is a single JSON object.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import zmq

from robot_side.command_port import IO_THREAD_PRIORITY, CommandPort, link_context
from telesurgery.bench import videoswitch
from telesurgery.bench.failovergaps import (
    classify_gaps,
    gap_figures,
    per_trial_figures,
    switch_against_up,
)
from telesurgery.errors import LinkError
from telesurgery.pacer import enter_realtime, realtime_permitted, try_realtime
from transport.config import LinkConfig, LinkPath
from transport.console_link import ConsoleLink
from transport.gate import Verdict
from transport.keys import ClientKeys, ServerKeys, init_keys
from transport.link import RobotLink
from transport.schema import Command

BLOCK_S = 0.5
BLACKOUT_S = 0.2
TRIAL_S = 0.6
COMMAND_TIMEOUT_NS = 50_000_000
"""The safety config's default command timeout: a longer gap is a trip."""
DIRECT = (LinkPath("A", "127.0.0.2", "127.0.0.8"), LinkPath("B", "127.0.0.3", "127.0.0.9"))
"""Both ends name the same paths: the console sends from .8/.9 (``tcp://src;dst``)."""
PROXIED_ROBOT = (LinkPath("A", "127.0.0.2", "127.0.0.4"), LinkPath("B", "127.0.0.3", "127.0.0.5"))
PROXIED_CONSOLE = (LinkPath("A", "127.0.0.6"), LinkPath("B", "127.0.0.7"))
ROBOT_FIFO = 50
"""The robot's control thread's priority in the node."""
CONSOLE_FIFO = 40
"""The console's command loop's priority (``operator_console.command_loop``)."""
PROXY_FIFO = 45
"""The fault proxies stand in for the network: above the console, below the robot."""


def make_command(seq: int) -> Command:
    return Command(seq=seq, t_send_ns=time.monotonic_ns(), position=(0.3, 0.0, 0.2),
                   orientation=(1.0, 0.0, 0.0, 0.0), grip=0.0, clutch=False,
                   operator_present=True)


class Robot:
    """A robot's link and command port; the port lives in its own thread, as in the node."""

    def __init__(self, stack: ExitStack, keys: Path, paths: tuple[LinkPath, ...]) -> None:
        self.realtime = realtime_permitted(IO_THREAD_PRIORITY)
        self.ctx: zmq.Context[Any] = link_context(self.realtime)
        stack.callback(self.ctx.destroy, 0)
        self.cfg = LinkConfig(command_port=0, control_port=0, telemetry_port=0, video_port=0,
                              keys_dir=keys, paths=paths)
        server = ServerKeys.load(keys)
        self.link = stack.enter_context(RobotLink(self.cfg, server, self.ctx, video=False,
                                                  command=False))
        self.arrivals: list[tuple[int, int, int]] = []
        """(seq, console send stamp, robot receive time) of each fresh command."""
        self.port_no = 0
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.port: CommandPort | None = None
        self._thread = threading.Thread(target=self._run, args=(server,), daemon=True)
        self._thread.start()
        stack.callback(self._thread.join, 2.0)
        stack.callback(self._stop.set)
        self._ready.wait(10.0)

    def _run(self, server: ServerKeys) -> None:
        enter_realtime(ROBOT_FIFO, self.realtime)  # as the node's control thread
        with CommandPort(self.ctx, self.cfg, server, age_limit_ns=200_000_000,
                         loss_window_ns=10**9) as port:
            port.offset_ns = lambda: 0  # one machine, one monotonic clock
            port.on_accepted = lambda cmd, recv_ns: self.arrivals.append(
                (cmd.seq, cmd.t_send_ns, recv_ns))
            self.port, self.port_no = port, port.port
            self._ready.set()
            while not self._stop.is_set():
                port.wait_until(time.monotonic_ns() + 1_000_000)

    @property
    def ports(self) -> dict[str, int]:
        return {"command": self.port_no, **self.link.endpoints}

    def fresh(self) -> int:
        return 0 if self.port is None else self.port.intake.counters[Verdict.FRESH.value]


def console_for(stack: ExitStack, keys: Path, ports: dict[str, int],
                paths: tuple[LinkPath, ...] = ()) -> ConsoleLink:
    cfg = LinkConfig(command_port=ports["command"], control_port=ports["control"],
                     telemetry_port=ports["telemetry"], video_port=ports.get("video", 0),
                     paths=paths)
    return stack.enter_context(ConsoleLink(cfg, ClientKeys.load_surgeon(keys)))


def stream(send: Callable[[int], object], seconds: float, rate_hz: float, seq: int) -> int:
    """Send at ``rate_hz`` on absolute deadlines for ``seconds``; returns the last seq."""
    period = int(1e9 / rate_hz)
    t = time.monotonic_ns()
    end = t + int(seconds * 1e9)
    while t < end:
        seq += 1
        send(seq)
        t += period
        left = t - time.monotonic_ns()
        if left > 0:
            time.sleep(left / 1e9)
    return seq


def warm_up(robot: Robot, console: ConsoleLink, want_paths: int) -> int:
    seq = 0
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        seq = stream(lambda s: console.send_command(make_command(s)), 0.05, 500.0, seq)
        port = robot.port
        live = 1 if port is None or port.paths is None else len(
            port.paths.live(time.monotonic_ns()))
        if robot.fresh() and live >= want_paths:
            return seq
    raise TimeoutError("the paths did not come up")


def cost(stack: ExitStack, keys: Path, seconds: float, rate_hz: float) -> dict[str, Any]:
    one, two = Robot(stack, keys, ()), Robot(stack, keys, DIRECT)
    c1 = console_for(stack, keys, one.ports)
    c2 = console_for(stack, keys, two.ports, DIRECT)
    seqs = {"one": warm_up(one, c1, 1), "two": warm_up(two, c2, 2)}
    for r in (one, two):
        assert r.port is not None
        r.port.latency.n = 0
    cpu = {"one": 0, "two": 0}
    for _ in range(max(1, round(seconds / BLOCK_S))):
        for name, console in (("one", c1), ("two", c2)):
            t0 = time.process_time_ns()
            seqs[name] = stream(lambda s, c=console: c.send_command(make_command(s)),  # type: ignore[misc]
                                BLOCK_S, rate_hz, seqs[name])
            cpu[name] += time.process_time_ns() - t0
    time.sleep(0.1)
    active_ns = max(1, round(seconds / BLOCK_S)) * BLOCK_S * 1e9
    out: dict[str, Any] = {}
    for name, robot in (("one", one), ("two", two)):
        assert robot.port is not None
        out[name] = {**robot.port.latency.percentiles(),
                     "cpu_pct": 100.0 * cpu[name] / active_ns,
                     "duplicates": robot.port.intake.counters[Verdict.DUPLICATE.value]
                     + robot.port.intake.counters[Verdict.REPLAY.value]}
    return out


class ProxyProcess:
    """One path's fault proxy as its own process, driven over its IPC control socket."""

    def __init__(self, stack: ExitStack, run: Path, name: str, routes: list[str],
                 source: str) -> None:
        self.endpoint = f"ipc://{run}/proxy-{name}.ipc"
        argv = [sys.executable, "-m", "telesurgery.cli", "faultproxy", "--source", source,
                "--control", self.endpoint, *[a for r in routes for a in ("--listen", r)]]
        if realtime_permitted(PROXY_FIFO) and shutil.which("chrt"):
            argv = ["chrt", "-f", str(PROXY_FIFO), *argv]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        stack.callback(self._stop)
        assert self.proc.stdout is not None
        ready = 0
        for line in self.proc.stdout:
            ready += line.startswith("faultproxy ready")
            if ready == len(routes):
                break
        if ready < len(routes):
            raise LinkError(f"fault proxy {name} did not start")
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.req: zmq.Socket[Any] = self.ctx.socket(zmq.REQ)
        self.req.setsockopt(zmq.LINGER, 0)
        self.req.setsockopt(zmq.RCVTIMEO, 5000)
        self.req.connect(self.endpoint)

    def ask(self, body: dict[str, Any]) -> None:
        self.req.send_json(body)
        if not self.req.recv_json().get("ok"):  # type: ignore[union-attr]
            raise LinkError(f"fault proxy refused {body}")

    def _stop(self) -> None:
        if hasattr(self, "req"):
            self.req.close(0)
            self.ctx.term()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def keep_scheduling(stack: ExitStack) -> None:
    """Give the calling thread its scheduling policy, and the process its GIL switch
    interval, back at the end: the bench raises both as the node does, and a caller
    (pytest) that runs it in-process must not go on at SCHED_FIFO."""
    policy, param, switch = os.sched_getscheduler(0), os.sched_getparam(0), sys.getswitchinterval()
    stack.callback(sys.setswitchinterval, switch)
    stack.callback(os.sched_setscheduler, 0, policy, param)


def failover(stack: ExitStack, keys: Path, trials: int, rate_hz: float) -> dict[str, Any]:
    robot = Robot(stack, keys, PROXIED_ROBOT)
    proxies = {}
    for r, c in zip(PROXIED_ROBOT, PROXIED_CONSOLE, strict=True):
        routes = [f"{ch}@{c.robot}:{n}={r.robot}:{n}" for ch, n in robot.ports.items()]
        proxies[r.name] = ProxyProcess(stack, keys, r.name, routes, r.console)
    console = console_for(stack, keys, robot.ports, PROXIED_CONSOLE)
    sender_fifo = robot.realtime and try_realtime(CONSOLE_FIFO)  # as the console's loop
    seq = warm_up(robot, console, 2)
    results: list[dict[str, Any]] = []
    gaps: dict[str, list[tuple[int, int]]] = {"switch": [], "down": [], "up": []}

    def send(s: int) -> None:
        console.send_command(make_command(s))

    last_sent = [seq]

    def send_marked(s: int) -> None:
        send(s)
        last_sent[0] = s

    for i in range(trials):
        path = "AB"[i % 2]
        fresh0, seq0 = robot.fresh(), seq
        robot.arrivals.clear()
        marks: dict[str, int] = {}

        def drive(proxy: ProxyProcess, marks: dict[str, int] = marks) -> None:
            # Its own thread: the fault proxy's round trip must not delay the stream (it
            # did: the first command after each request was a millisecond late).
            time.sleep((TRIAL_S - BLACKOUT_S) / 2)
            proxy.ask({"blackout": BLACKOUT_S})
            marks["begin"] = last_sent[0]  # the proxy drops from here on
            time.sleep(BLACKOUT_S)
            proxy.ask({"end_blackout": True})
            marks["end"] = last_sent[0]

        driver = threading.Thread(target=drive, args=(proxies[path],), daemon=True)
        driver.start()
        seq = stream(send_marked, TRIAL_S, rate_hz, seq)
        driver.join(5.0)
        begin, end = marks.get("begin", seq), marks.get("end", seq)
        time.sleep(0.02)
        trial_gaps = classify_gaps(list(robot.arrivals), begin, end)
        for k, v in trial_gaps.items():
            gaps[k].extend(v)
        worst = max((g for v in trial_gaps.values() for g, _ in v), default=0)
        results.append({"path": path, "sent": seq - seq0, "fresh": robot.fresh() - fresh0,
                        "max_gap_ms": worst / 1e6, "trip": worst > COMMAND_TIMEOUT_NS,
                        **switch_against_up(list(robot.arrivals), trial_gaps, begin, end)})
    missed = [r["sent"] - r["fresh"] for r in results]
    period_ns = 1e9 / rate_hz
    return {"trials": trials, "rate_hz": rate_hz,
            "trials_without_miss": sum(1 for m in missed if m <= 0),
            "missed_total": sum(max(0, m) for m in missed),
            "trips": sum(1 for r in results if r["trip"]),
            "max_gap_ms": max((r["max_gap_ms"] for r in results), default=0.0),
            # A gap the link lengthened by more than a period (a command's slot lost).
            "gaps_over_period": sum(1 for v in gaps.values() for _, share in v
                                    if share > period_ns),
            "gaps": {k: gap_figures(v) for k, v in gaps.items()},
            "per_trial": per_trial_figures(results),
            "realtime": robot.realtime, "sender_fifo": sender_fifo,
            "period_ms": 1e3 / rate_hz}


def run(seconds: float, rate_hz: float, trials: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="telesurgery-bench-") as tmp, ExitStack() as stack:
        keys = Path(tmp)
        init_keys(keys)
        keep_scheduling(stack)
        paid = cost(stack, keys, seconds, rate_hz)
        trials_r = failover(stack, keys, trials, min(rate_hz, 500.0)) if trials else None
        video = videoswitch.run(stack, keys, max(trials, 5))
        video["pictures"] = videoswitch.pictures(keys, min(max(trials, 5), 20))
        result = {"cost": paid, "failover": trials_r, "cpus": os.cpu_count(),
                  "video_switch": video}
    return result


def report(r: dict[str, Any]) -> list[str]:
    lines = []
    for name in ("one", "two"):
        c = r["cost"][name]
        label = "two paths" if name == "two" else "one path "
        lines.append(f"  {label}: p50 {c.get('p50_us', 0):7.1f} us"
                     f"  p99 {c.get('p99_us', 0):7.1f} us  max {c.get('max_us', 0):8.1f} us"
                     f"  cpu {c['cpu_pct']:5.1f}% of a core  copies dropped {c['duplicates']}")
    f = r["failover"]
    if f is not None:
        lines.append(f"  failover: {f['trials_without_miss']}/{f['trials']} trials without a "
                     f"missed command, {f['missed_total']} missed, {f['trips']} trips, "
                     f"largest gap {f['max_gap_ms']:.2f} ms (period {f['period_ms']:.1f} ms), "
                     f"{f['gaps_over_period']} gaps the link lengthened by over a period")
        labels = {"switch": "at the switch", "down": "one path down", "up": "both paths up"}
        for key, label in labels.items():
            g = f["gaps"][key]
            if not g.get("n"):
                continue
            lines.append(f"    gaps {label:14}: n {g['n']:6.0f}  p50 {g['gap_p50_ms']:6.2f}  "
                         f"p99 {g['gap_p99_ms']:6.2f}  max {g['gap_max_ms']:6.2f} ms;  link's "
                         f"share p50 {g['link_p50_ms']:5.2f}  p99 {g['link_p99_ms']:5.2f}  "
                         f"max {g['link_max_ms']:5.2f} ms")
        t = f["per_trial"]
        lines.append(f"    per trial, the gap at the switch vs the same trial's largest gap "
                     f"with both paths up: larger in {t['switch_over_up']}/{f['trials']} "
                     f"trials (by at most {max(0.0, t['max_excess_ms']):.2f} ms; largest "
                     f"switch gap {t['max_switch_gap_ms']:.2f} ms)")
        lines.append(f"    commands of a blackout executed later than the same trial's "
                     f"both-up p99 one-way latency: {t['late_commands']} in "
                     f"{t['trials_with_late']}/{f['trials']} trials, chance alone "
                     f"{t['late_by_chance']:.1f} (more: commands only the dead path carried "
                     "in time)")
        if not f["realtime"]:
            lines.append("    (no SCHED_FIFO here: threads at normal priority, "
                         "not as the node runs)")
    if r.get("video_switch"):
        lines += videoswitch.report(r["video_switch"])
    return lines
