"""``telesurgery bench link``: the secured command path against raw pyzmq, in one run.

Two processes on this machine: the console side (this process) sends one
command per period, paced by absolute deadlines on the monotonic clock; the
robot side (a spawned process) receives through the real ``RobotLink``
(CurveZMQ, ZAP authenticator, heartbeats, drain-to-newest poll). The
baseline is a raw, unauthenticated PUSH/PULL pair carrying the same encoded
``Command``. The two paths alternate in half-second blocks on a shared
schedule, so a busy machine loads both alike; each gets ``seconds`` in total.

One-way latency is receive time minus the send stamp in the message, both
CLOCK_MONOTONIC. CPU is each process's CPU time over the blocks of a path, as
a percentage of one core. The last line printed is a single JSON object.

``--paths 2 [--trials N]``: two network paths vs one in the same run, and N
failover trials with one path blacked out (``telesurgery.bench.dualpath``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from telesurgery.cli import setup_logging
from telesurgery.errors import LinkError
from telesurgery.helptext import plain_help
from transport.keys import ClientKeys, init_keys
from transport.link import COMMAND_SNDHWM, ConsoleLink
from transport.schema import encode
from transport.selftest import (
    Receiver,
    Schedule,
    lower_timer_slack,
    make_command,
    percentiles_us,
    stream,
    wait_connected,
)

log = logging.getLogger(__name__)

BLOCK_S = 0.5
RATIO_P99_LIMIT = 1.2
"""The secured link should stay within this factor of raw pyzmq at p99."""


def raw_push(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.SNDHWM, COMMAND_SNDHWM)
    sock.connect(endpoint)
    return sock


def send_raw(sock: zmq.Socket[Any], seq: int) -> bool:
    try:
        sock.send(encode(make_command(seq)), zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


def run(seconds: float = 10.0, rate_hz: float = 1000.0) -> dict[str, float]:
    """Measure both paths for ``seconds`` each at ``rate_hz``; returns the figures."""
    per_path = max(1, round(seconds / BLOCK_S))
    with tempfile.TemporaryDirectory(prefix="telesurgery-bench-") as tmp:
        root = Path(tmp)
        init_keys(root)
        receiver = Receiver.start(root)
        ctx: zmq.Context[Any] = zmq.Context()
        try:
            console = ConsoleLink(receiver.cfg, ClientKeys.load_surgeon(root), ctx=ctx)
            raw = raw_push(ctx, receiver.raw_endpoint)
            wait_connected(console)
            deadline = time.monotonic() + 10.0
            while not send_raw(raw, 0):  # warm-up, stamped before the schedule starts
                if time.monotonic() > deadline:
                    raise LinkError("raw baseline socket never connected")
                time.sleep(0.01)
            schedule = Schedule(time.monotonic_ns() + 300_000_000,
                                round(seconds * 1e9 / per_path), 2 * per_path)
            receiver.begin(schedule)
            sent = stream(schedule, rate_hz, {
                "secured": lambda seq: console.send_command(make_command(seq)),
                "raw": lambda seq: send_raw(raw, seq)})
            result = receiver.result(schedule)
        finally:
            ctx.destroy(linger=0)
            receiver.close()
    active_ns = schedule.block_ns * per_path
    secured = percentiles_us(result["latencies_ns"]["secured"])
    baseline = percentiles_us(result["latencies_ns"]["raw"])
    return {
        **secured,
        **{f"baseline_{k}": v for k, v in baseline.items()},
        "ratio_p99": secured["p99_us"] / baseline["p99_us"],
        "ratio_p50": secured["p50_us"] / baseline["p50_us"],
        "delivered": float(len(result["latencies_ns"]["secured"])),
        "sent": float(sent["secured"]["sent"]),
        "send_drops": float(sent["secured"]["send_drops"]),
        "baseline_delivered": float(len(result["latencies_ns"]["raw"])),
        "baseline_sent": float(sent["raw"]["sent"]),
        "baseline_send_drops": float(sent["raw"]["send_drops"]),
        "cpu_sender_pct": 100.0 * sent["secured"]["cpu_ns"] / active_ns,
        "cpu_receiver_pct": 100.0 * result["cpu_ns"]["secured"] / active_ns,
        "baseline_cpu_sender_pct": 100.0 * sent["raw"]["cpu_ns"] / active_ns,
        "baseline_cpu_receiver_pct": 100.0 * result["cpu_ns"]["raw"] / active_ns,
        "seconds": seconds,
        "rate_hz": rate_hz,
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.paths > 1:
        return dual_main(args)
    lower_timer_slack()
    print(f"bench link: secured CurveZMQ vs raw PUSH/PULL, {args.rate:.0f} Hz, "
          f"{args.seconds:.0f} s each, interleaved in {BLOCK_S} s blocks ...", flush=True)
    try:
        r = run(args.seconds, args.rate)
    except LinkError as err:
        print(f"bench link FAILED: {err}")
        return 1
    for name, prefix in (("secured", ""), ("raw    ", "baseline_")):
        print(f"  {name} p50 {r[prefix + 'p50_us']:7.1f} us  p99 {r[prefix + 'p99_us']:7.1f} us"
              f"  p99.9 {r[prefix + 'p999_us']:8.1f} us  max {r[prefix + 'max_us']:8.1f} us  "
              f"delivered {r[prefix + 'delivered']:.0f}/{r[prefix + 'sent']:.0f}  "
              f"cpu tx {r[prefix + 'cpu_sender_pct']:.1f}% "
              f"rx {r[prefix + 'cpu_receiver_pct']:.1f}%")
    verdict = "within" if r["ratio_p99"] <= RATIO_P99_LIMIT else "ABOVE"
    print(f"  p99 ratio {r['ratio_p99']:.2f} ({verdict} the {RATIO_P99_LIMIT}x target)")
    print(json.dumps(r))
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options of both modes in one parser, so ``--help`` lists them all."""
    parser = argparse.ArgumentParser(prog="telesurgery bench link",
                                     description=plain_help(__doc__).split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per path")
    parser.add_argument("--rate", type=float, default=1000.0, help="commands per second")
    parser.add_argument("--paths", type=int, choices=(1, 2), default=1,
                        help="2: two network paths vs one, then failover trials")
    parser.add_argument("--trials", type=int, default=100,
                        help="failover trials with one path blacked out (--paths 2)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.seconds) and args.seconds > 0 and 0 < args.rate <= 10_000):
        parser.error("--seconds must be > 0 and --rate in (0, 10000]")
    if args.trials < 0:
        parser.error("--trials must be >= 0")
    return args


def dual_main(args: argparse.Namespace) -> int:
    """Two paths vs one in the same run, then failover trials (``bench.dualpath``)."""
    # Imported here: only this mode needs the fault proxies.
    from telesurgery.bench import dualpath

    trials = args.trials
    lower_timer_slack()
    print(f"bench link --paths 2: one path vs two, {args.rate:.0f} Hz, {args.seconds:.0f} s "
          f"each in {dualpath.BLOCK_S} s blocks; then {trials} failover trials ...", flush=True)
    try:
        r = dualpath.run(args.seconds, args.rate, trials)
    except (LinkError, TimeoutError) as err:
        print(f"bench link FAILED: {err}")
        return 1
    for line in dualpath.report(r):
        print(line)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main(sys.argv[1:]))
