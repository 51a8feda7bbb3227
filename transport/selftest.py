"""Two-process self-test of the secured link, and the harness the link benchmark reuses.

``telesurgery selftest`` generates throw-away keys, starts the robot side in a
spawned process, lets three intruders (an unknown key, an observer key and a
plaintext peer) try to send commands, streams 2000 commands at 1 kHz from the
surgeon's console and checks that every surgeon command and no intruder
command was delivered. It prints a short summary and one JSON line, and
exits non-zero on any failure.

One-way latency is ``recv_ns - t_send_ns``: both ends read CLOCK_MONOTONIC,
which all processes on one machine share, so no clock sync is needed here.

The harness: the parent (console side) and the child (robot side) agree on a
``Schedule`` of blocks on the shared monotonic clock. With a raw baseline,
even blocks use the secured link and odd blocks a raw, unauthenticated
PUSH/PULL pair, so both paths see the same machine load; CPU time is booked
per block to the path that was active.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

import zmq

from telesurgery.errors import LinkError, SchemaError
from telesurgery.helptext import plain_help
from transport.config import LinkConfig
from transport.keys import ClientKeys, ServerKeys, init_keys
from transport.link import ConsoleLink, RobotLink
from transport.schema import Command, decode_as, encode

log = logging.getLogger(__name__)

INTRUDER_SEQ = 10**9
"""Intruders send seq numbers from here; any such arrival at the robot is a failure."""
PATHS = ("secured", "raw")
_PR_SET_TIMERSLACK = 29
_PR_SET_PDEATHSIG = 1
_STARTUP_S = 20.0
_CHECK_S = 0.1
"""How often a wait for the robot-side child looks for Ctrl-C / SIGTERM."""
_GRACE_NS = 200_000_000


def lower_timer_slack() -> None:
    """Ask Linux for 1 us timer slack so sleeps to a deadline wake close to it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError) as err:
        log.debug("timer slack unchanged: %s", err)


def percentiles_us(latencies_ns: Sequence[int]) -> dict[str, float]:
    """p50, p99, p99.9 and max in microseconds (nearest rank); NaN when empty."""
    if not latencies_ns:
        return {k: float("nan") for k in ("p50_us", "p99_us", "p999_us", "max_us")}
    ordered = sorted(latencies_ns)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0

    return {"p50_us": rank(0.50), "p99_us": rank(0.99), "p999_us": rank(0.999),
            "max_us": ordered[-1] / 1000.0}


def make_command(seq: int) -> Command:
    """The payload both paths carry: a realistic setpoint stamped at send time."""
    return Command(seq=seq, t_send_ns=time.monotonic_ns(), position=(0.35, 0.01, 0.25),
                   orientation=(1.0, 0.0, 0.0, 0.0), grip=0.5, clutch=False,
                   operator_present=True, video_age_us=30_000)


@dataclass(frozen=True)
class Schedule:
    """Paths take turns block by block, so machine load falls on all of them alike."""

    start_ns: int
    block_ns: int
    blocks: int
    paths: tuple[str, ...] = PATHS

    def path_of(self, block: int) -> str:
        return self.paths[block % len(self.paths)]

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.block_ns * self.blocks


def path_bench_args(prog: str, doc: str | None, argv: list[str]) -> argparse.Namespace:
    """``--seconds`` per path and ``--rate``: the options of every command-path benchmark."""
    parser = argparse.ArgumentParser(prog=prog, description=plain_help(doc).split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per path")
    parser.add_argument("--rate", type=float, default=1000.0, help="commands per second")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.seconds) and args.seconds > 0 and 0 < args.rate <= 10_000):
        parser.error("--seconds must be > 0 and --rate in (0, 10000]")
    return args


# ---------------------------------------------------------------- robot side (child)
def bind_raw_baseline(ctx: zmq.Context[Any], link: RobotLink,
                      conn: Connection) -> zmq.Socket[Any]:
    """Bind the raw PULL baseline beside the secured link; tell the parent both endpoints."""
    raw: zmq.Socket[Any] = ctx.socket(zmq.PULL)
    raw.setsockopt(zmq.LINGER, 0)
    raw.bind("tcp://127.0.0.1:*")
    conn.send({"endpoints": link.endpoints,
               "raw_endpoint": raw.getsockopt_string(zmq.LAST_ENDPOINT)})
    return raw


def die_with_parent(parent_pid: int) -> None:
    """In a child: the kernel kills us when the parent dies, whatever killed it, so no
    child is ever orphaned; Ctrl-C is the parent's to handle (it stops us)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError) as err:
        log.debug("no parent-death signal: %s", err)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def robot_receiver(keys_root: str, conn: Connection, parent_pid: int) -> None:
    """Child process: serve the secured link (and a raw PULL), then report what arrived."""
    die_with_parent(parent_pid)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    lower_timer_slack()
    cfg = LinkConfig(command_port=0, control_port=0, telemetry_port=0, video_port=0)
    latencies: dict[str, list[int]] = {p: [] for p in PATHS}
    intruders = [0]
    ctx: zmq.Context[Any] = zmq.Context()
    with RobotLink(cfg, ServerKeys.load(Path(keys_root)), ctx=ctx) as link:
        raw = bind_raw_baseline(ctx, link, conn)
        schedule: Schedule = conn.recv()
        stop = threading.Event()

        def secured_loop() -> None:  # owns ``link`` until joined
            while not stop.is_set():
                link.poll(20)
                for a in link.command_arrivals():
                    if a.seq >= INTRUDER_SEQ:
                        intruders[0] += 1
                    elif a.t_send_ns >= schedule.start_ns:
                        latencies["secured"].append(a.recv_ns - a.t_send_ns)

        def raw_loop() -> None:  # owns ``raw`` until joined
            while not stop.is_set():
                if not raw.poll(20):
                    continue
                while True:
                    try:
                        data = raw.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    recv_ns = time.monotonic_ns()
                    with contextlib.suppress(SchemaError):  # a baseline sink, not a control path
                        cmd: Command = decode_as(data, Command)
                        if cmd.t_send_ns >= schedule.start_ns:
                            latencies["raw"].append(recv_ns - cmd.t_send_ns)

        threads = [threading.Thread(target=secured_loop), threading.Thread(target=raw_loop)]
        for t in threads:
            t.start()
        cpu_ns = book_cpu(schedule)
        time.sleep(_GRACE_NS / 1e9)
        stop.set()
        for t in threads:
            t.join()
        raw.close(0)
        conn.send({"latencies_ns": latencies, "cpu_ns": cpu_ns, "intruders": intruders[0],
                   "counters": dict(link.counters), "auth": dict(link.auth.counters)})
    ctx.destroy(linger=0)


def book_cpu(schedule: Schedule) -> dict[str, int]:
    """Sleep through the schedule, booking this process's CPU time per block to its path."""
    cpu = dict.fromkeys(schedule.paths, 0)
    sleep_until(schedule.start_ns)
    last = time.process_time_ns()
    for block in range(schedule.blocks):
        sleep_until(schedule.start_ns + (block + 1) * schedule.block_ns)
        now = time.process_time_ns()
        cpu[schedule.path_of(block)] += now - last
        last = now
    return cpu


def sleep_until(deadline_ns: int) -> None:
    delay = deadline_ns - time.monotonic_ns()
    if delay > 0:
        time.sleep(delay / 1e9)


# ---------------------------------------------------------------- console side (parent)
@dataclass
class Receiver:
    """The spawned robot side: its process, its pipe, and where it listens."""

    proc: multiprocessing.process.BaseProcess
    conn: Connection
    cfg: LinkConfig
    raw_endpoint: str

    @classmethod
    def start(cls, keys_root: Path) -> Receiver:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=robot_receiver, args=(str(keys_root), child, os.getpid()),
                           daemon=True)
        with _sigint_ignored():  # inherited through exec: the child is born deaf to Ctrl-C
            proc.start()
        hello = cls.recv(parent, proc, _STARTUP_S)
        ports = {f"{name}_port": port for name, port in hello["endpoints"].items()}
        return cls(proc, parent, LinkConfig(**ports), hello["raw_endpoint"])

    def begin(self, schedule: Schedule) -> None:
        self.conn.send(schedule)

    def result(self, schedule: Schedule) -> dict[str, Any]:
        wait_s = (schedule.end_ns - time.monotonic_ns()) / 1e9 + _STARTUP_S
        result: dict[str, Any] = self.recv(self.conn, self.proc, wait_s)
        return result

    def close(self, abort: bool = False) -> None:
        """Wait for the child to finish; ``abort``: stop it now (interrupted run)."""
        self.proc.join(0.0 if abort else 5.0)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5.0)
        self.conn.close()

    @staticmethod
    def recv(conn: Connection, proc: multiprocessing.process.BaseProcess,
              timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while not conn.poll(min(_CHECK_S, max(0.0, deadline - time.monotonic()))):
            check_stop()
            if time.monotonic() < deadline:
                continue
            raise LinkError(f"robot-side process silent for {timeout_s:.0f} s "
                            f"(alive: {proc.is_alive()}, exit code: {proc.exitcode})")
        try:
            return conn.recv()
        except EOFError as err:
            raise LinkError(f"robot-side process died (exit code {proc.exitcode})") from err


def stream(schedule: Schedule, rate_hz: float,
           senders: dict[str, Callable[[int], bool]]) -> dict[str, dict[str, int]]:
    """Send one command per period on the path the schedule says; count sends and CPU."""
    period_ns = round(1e9 / rate_hz)
    stats = {p: {"sent": 0, "send_drops": 0, "cpu_ns": 0} for p in schedule.paths}
    ticks = (schedule.end_ns - schedule.start_ns) // period_ns
    sleep_until(schedule.start_ns)
    block, cpu_mark = 0, time.process_time_ns()
    for i in range(ticks):
        deadline = schedule.start_ns + i * period_ns
        sleep_until(deadline)
        check_stop()
        now_block = (deadline - schedule.start_ns) // schedule.block_ns
        if now_block != block:
            cpu_now = time.process_time_ns()
            stats[schedule.path_of(block)]["cpu_ns"] += cpu_now - cpu_mark
            block, cpu_mark = now_block, cpu_now
        path = schedule.path_of(block)
        stats[path]["sent" if senders[path](i + 1) else "send_drops"] += 1
    stats[schedule.path_of(block)]["cpu_ns"] += time.process_time_ns() - cpu_mark
    return stats


def wait_connected(console: ConsoleLink, timeout_s: float = _STARTUP_S) -> None:
    """Warm-up commands (seq 0, stamped before the schedule) until a session is up."""
    deadline = time.monotonic() + timeout_s
    while not console.send_command(make_command(0)):
        check_stop()
        if time.monotonic() > deadline:
            raise LinkError(f"no secured session within {timeout_s:.0f} s")
        time.sleep(0.01)


# ---------------------------------------------------------------- the self-test
def _intruders(ctx: zmq.Context[Any], cfg: LinkConfig, keys_root: Path) -> list[ConsoleLink]:
    server_public = ClientKeys.load_surgeon(keys_root).server_public
    stranger = ClientKeys(*zmq.curve_keypair(), server_public)
    observer = ClientKeys.load_observer(keys_root, "watcher")
    return [ConsoleLink(cfg, k, ctx=ctx) for k in (stranger, observer)]


def run_selftest(count: int = 2000, rate_hz: float = 1000.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="telesurgery-selftest-") as tmp:
        root = Path(tmp)
        init_keys(root, ["watcher"])
        receiver = Receiver.start(root)
        ctx: zmq.Context[Any] = zmq.Context()
        try:
            console = ConsoleLink(receiver.cfg, ClientKeys.load_surgeon(root), ctx=ctx)
            intruders = _intruders(ctx, receiver.cfg, root)
            plain = ctx.socket(zmq.PUSH)
            plain.setsockopt(zmq.LINGER, 0)
            plain.connect(f"tcp://{receiver.cfg.host}:{receiver.cfg.command_port}")
            wait_connected(console)

            def intrude(seq: int) -> None:
                cmd = make_command(INTRUDER_SEQ + seq)
                for link in intruders:
                    link.send_command(cmd)
                with contextlib.suppress(zmq.Again):
                    plain.send(encode(cmd), zmq.NOBLOCK)

            def surgeon(seq: int) -> bool:
                if seq % 100 == 0:
                    intrude(seq)
                return console.send_command(make_command(seq))

            duration_ns = round(count * 1e9 / rate_hz)
            schedule = Schedule(time.monotonic_ns() + 300_000_000, duration_ns, 1, ("secured",))
            receiver.begin(schedule)
            sent = stream(schedule, rate_hz, {"secured": surgeon})["secured"]
            result = receiver.result(schedule)
            for link in [console, *intruders]:
                link.close()
            plain.close(0)
        finally:
            with contextlib.suppress(zmq.ZMQError):
                ctx.destroy(linger=0)
            receiver.close(abort=sys.exc_info()[0] is not None)
    lat = result["latencies_ns"]["secured"]
    rejected = result["auth"].get("rejected", 0) + result["counters"].get("handshake_failed", 0)
    return {**percentiles_us(lat), "sent": sent["sent"], "send_drops": sent["send_drops"],
            "delivered": len(lat), "intruders_delivered": result["intruders"],
            "rejected": rejected, "auth_rejected": result["auth"].get("rejected", 0),
            "handshake_failed": result["counters"].get("handshake_failed", 0)}


def check(result: dict[str, Any], count: int) -> list[str]:
    """Why the self-test failed; empty when it passed."""
    failures = []
    if result["intruders_delivered"]:
        failures.append(f"{result['intruders_delivered']} intruder command(s) delivered")
    if result["delivered"] < result["sent"] or result["sent"] < count * 0.99:
        failures.append(f"delivered {result['delivered']} of {result['sent']} sent "
                        f"({count} scheduled)")
    if result["auth_rejected"] < 2 or result["handshake_failed"] < 3:
        failures.append("intruders were not all seen and rejected "
                        f"(ZAP rejections {result['auth_rejected']}, "
                        f"failed handshakes {result['handshake_failed']})")
    return failures


class Interrupted(Exception):
    """Ctrl-C or SIGTERM, raised in the main thread at the run's next check
    (``check_stop``) so every ``finally`` runs and stops the child."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_STOP_SIGNAL: list[int] = []


def _note_stop(signum: int, frame: FrameType | None) -> None:
    # Only noted: an exception raised from a handler lands wherever the main thread is,
    # and inside a destructor or a callback from C Python prints it and drops it (the
    # run would go on for its whole length). The run's loops call check_stop().
    if not _STOP_SIGNAL:
        _STOP_SIGNAL.append(signum)


def check_stop() -> None:
    """Raise ``Interrupted`` once Ctrl-C or SIGTERM came (``main`` installs the handler)."""
    if _STOP_SIGNAL:
        raise Interrupted(_STOP_SIGNAL[0])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="telesurgery selftest",
                                     description=plain_help(__doc__).split("\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="commands to stream")
    parser.add_argument("--rate", type=float, default=1000.0, help="commands per second")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    lower_timer_slack()
    signal.signal(signal.SIGTERM, _note_stop)
    signal.signal(signal.SIGINT, _note_stop)
    try:
        result = run_selftest(args.count, args.rate)
    except LinkError as err:
        print(f"selftest FAILED: {err}")
        return 1
    except (KeyboardInterrupt, Interrupted) as why:
        said = ("SIGTERM" if isinstance(why, Interrupted) and why.signum == signal.SIGTERM
                else "Ctrl-C")
        print(f"selftest interrupted ({said}); the robot-side process is stopped")
        return 130
    except zmq.ZMQError as err:
        print(f"selftest FAILED: ZeroMQ: {err}")
        return 1
    failures = check(result, args.count)
    print(f"secured link: {result['delivered']}/{result['sent']} commands delivered, "
          f"one-way p50 {result['p50_us']:.0f} us, p99 {result['p99_us']:.0f} us, "
          f"max {result['max_us']:.0f} us")
    print(f"intruders: {result['intruders_delivered']} commands delivered, "
          f"{result['rejected']} sessions refused")
    print("selftest " + ("PASSED" if not failures else "FAILED: " + "; ".join(failures)))
    print(json.dumps({**result, "ok": not failures}))
    return 1 if failures else 0
