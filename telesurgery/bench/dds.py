"""``telesurgery bench dds``: the command path over DDS, secured ZeroMQ and raw pyzmq, one run.

What a ROS 2 user would otherwise put on this link: a plain DDS topic
(``cyclonedds``, the ROS 2 wire format: topic ``rt/bench_command``, type
``telesurgery::msg::dds_::Command_`` in XCDR1) carrying the fields of our
``Command``, with the teleop QoS a ROS 2 user picks: reliable, keep last 1 (the
main figure) and best effort, keep last 1 (on ``rt/bench_command_best_effort``).
The readers keep as many samples as the robot link's receive queue
(``COMMAND_RCVHWM``): the robot link times every arrival, superseded ones
included, so a reader one sample deep would hide exactly the late samples that
make the tail.

Two processes, as in ``telesurgery bench link`` whose harness this reuses: the
console side (this process) sends one command per period on absolute
monotonic deadlines; the robot side (a spawned process) receives on the real
``RobotLink`` (CurveZMQ, ZAP), a raw PULL socket and two DDS readers, each in
its own thread, as rclpy's executor would wait on a DDS wait set. The four
paths take turns in half-second blocks on one shared schedule, so machine load
hits all alike; each path gets ``seconds`` in total. One-way latency is
receive time minus the send stamp in the message, both CLOCK_MONOTONIC. CPU is
each process's CPU time over the blocks of a path, as a percentage of one core.
A random DDS domain id keeps concurrent runs apart. The last line printed is
one JSON object.
"""

# No ``from __future__ import annotations``: cyclonedds reads DdsCommand's
# field annotations as real types.
import json
import logging
import multiprocessing
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
from cyclonedds.core import DDSException, Policy, Qos, ReadCondition, SampleState, WaitSet
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import array, float64, int64, uint64
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from robot_side.ros.dds_backend import MAX_DOMAIN_ID
from telesurgery.bench.link import BLOCK_S, raw_push, send_raw
from telesurgery.cli import setup_logging
from telesurgery.errors import LinkError, SchemaError
from transport.config import LinkConfig
from transport.keys import ClientKeys, ServerKeys, init_keys
from transport.link import COMMAND_RCVHWM, ConsoleLink, RobotLink
from transport.schema import Command, decode_as, encode
from transport.selftest import (
    Receiver,
    Schedule,
    bind_raw_baseline,
    book_cpu,
    lower_timer_slack,
    make_command,
    path_bench_args,
    percentiles_us,
    stream,
    wait_connected,
)

if TYPE_CHECKING:
    # For mypy a CDR array is the list it holds at run time (as in robot_side.ros.msgs).
    Vec3 = list[float]
    Quat = list[float]
else:
    Vec3 = array[float64, 3]
    Quat = array[float64, 4]

log = logging.getLogger(__name__)

PATHS = ("dds", "secured", "raw", "dds_best_effort")
"""Turn order of the blocks."""
FIGURE_PREFIX = {"dds": "dds_", "secured": "zmq_secured_", "raw": "raw_",
                 "dds_best_effort": "dds_be_"}
"""Path name -> prefix of its figures in the JSON."""
RATIOS = {"dds_over_secured": ("dds_", "zmq_secured_"), "dds_over_raw": ("dds_", "raw_"),
          "secured_over_raw": ("zmq_secured_", "raw_"),
          "dds_be_over_secured": ("dds_be_", "zmq_secured_")}
"""Ratio name -> the figure prefixes of its numerator and denominator."""
TOPICS = {"dds": "rt/bench_command", "dds_best_effort": "rt/bench_command_best_effort"}
TAKE_BATCH = 64
_WAIT_MS = 20
_STARTUP_S = 20.0
_GRACE_S = 0.2


@dataclass
class DdsCommand(IdlStruct, typename="telesurgery::msg::dds_::Command_"):
    """``transport.schema.Command`` field for field, as a ROS 2 message type would carry it."""

    seq: uint64
    t_send_ns: int64
    position: Vec3
    orientation: Quat
    grip: float64
    clutch: bool
    operator_present: bool
    video_age_us: int64


def dds_command(seq: int) -> DdsCommand:
    """The same payload as ``make_command``, stamped at send time."""
    c = make_command(seq)
    return DdsCommand(seq=c.seq, t_send_ns=c.t_send_ns, position=list(c.position),
                      orientation=list(c.orientation), grip=c.grip, clutch=c.clutch,
                      operator_present=c.operator_present, video_age_us=c.video_age_us or 0)


def teleop_qos(reliable: bool, depth: int = 1) -> Qos:
    """Keep last ``depth``, volatile, XCDR1; a reliable writer never blocks."""
    reliability = (Policy.Reliability.Reliable(max_blocking_time=0) if reliable
                   else Policy.Reliability.BestEffort)
    return Qos(reliability, Policy.History.KeepLast(depth), Policy.Durability.Volatile,
               Policy.DataRepresentation(use_cdrv0_representation=True))


def _topics(participant: DomainParticipant) -> dict[str, Topic[Any]]:
    return {path: Topic(participant, name, DdsCommand) for path, name in TOPICS.items()}


# ---------------------------------------------------------------- robot side (child)
def robot_side(keys_root: str, domain_id: int, conn: Connection) -> None:
    """Child process: receive on every path, then report latencies, CPU and counters."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    lower_timer_slack()
    cfg = LinkConfig(command_port=0, control_port=0, telemetry_port=0, video_port=0)
    participant = DomainParticipant(domain_id)
    readers = {path: DataReader(participant, topic,
                                teleop_qos(path == "dds", depth=COMMAND_RCVHWM))
               for path, topic in _topics(participant).items()}
    latencies: dict[str, list[int]] = {p: [] for p in PATHS}
    errors: Counter[str] = Counter()
    ctx: zmq.Context[Any] = zmq.Context()
    with RobotLink(cfg, ServerKeys.load(Path(keys_root)), ctx=ctx) as link:
        raw = bind_raw_baseline(ctx, link, conn)
        rotation: Schedule = conn.recv()
        stop = threading.Event()

        def keep(path: str, recv_ns: int, t_send_ns: int) -> None:
            if t_send_ns >= rotation.start_ns:  # warm-up messages predate the schedule
                latencies[path].append(recv_ns - t_send_ns)

        def secured_loop() -> None:  # owns ``link`` until joined
            while not stop.is_set():
                link.poll(_WAIT_MS)
                for a in link.command_arrivals():
                    keep("secured", a.recv_ns, a.t_send_ns)

        def raw_loop() -> None:  # owns ``raw`` until joined
            while not stop.is_set():
                if not raw.poll(_WAIT_MS):
                    continue
                while True:
                    try:
                        data = raw.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    recv_ns = time.monotonic_ns()
                    try:
                        keep("raw", recv_ns, decode_as(data, Command).t_send_ns)
                    except SchemaError as err:
                        errors["raw_schema_error"] += 1
                        log.warning("raw baseline: dropped bad message: %s", err)

        def dds_loop() -> None:  # owns the readers until joined
            waitset = WaitSet(participant)
            # Held here: cyclonedds deletes a condition when its last Python reference goes.
            conditions = [ReadCondition(r, SampleState.Any) for r in readers.values()]
            for condition in conditions:
                waitset.attach(condition)
            while not stop.is_set():
                waitset.wait(duration(milliseconds=_WAIT_MS))
                for path, reader in readers.items():
                    try:
                        samples = reader.take(N=TAKE_BATCH)
                    except DDSException as err:
                        errors[f"{path}_take_error"] += 1
                        log.warning("%s: take failed: %s", path, err)
                        continue
                    recv_ns = time.monotonic_ns()
                    for s in samples:
                        if isinstance(s, DdsCommand):  # not a dispose/unregister notice
                            keep(path, recv_ns, s.t_send_ns)

        threads = [threading.Thread(target=f) for f in (secured_loop, raw_loop, dds_loop)]
        for t in threads:
            t.start()
        cpu_ns = book_cpu(rotation)
        time.sleep(_GRACE_S)
        stop.set()
        for t in threads:
            t.join()
        raw.close(0)
        conn.send({"latencies_ns": latencies, "cpu_ns": cpu_ns, "errors": dict(errors)})
    ctx.destroy(linger=0)


# ---------------------------------------------------------------- console side (parent)
def _start_robot_side(keys_root: Path, domain_id: int) -> Receiver:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=robot_side, args=(str(keys_root), domain_id, child), daemon=True)
    proc.start()
    hello = Receiver.recv(parent, proc, _STARTUP_S)
    ports = {f"{name}_port": port for name, port in hello["endpoints"].items()}
    return Receiver(proc, parent, LinkConfig(**ports), hello["raw_endpoint"])


def _wait_matched(writers: dict[str, DataWriter[Any]], timeout_s: float = _STARTUP_S) -> None:
    """Wait until every writer has discovered its reader in the robot-side process."""
    deadline = time.monotonic() + timeout_s
    while any(w.get_publication_matched_status().current_count < 1  # type: ignore[no-untyped-call]
              for w in writers.values()):
        if time.monotonic() > deadline:
            raise LinkError(f"DDS discovery found no reader within {timeout_s:.0f} s")
        time.sleep(0.01)


def _dds_sender(writer: DataWriter[Any]) -> Callable[[int], bool]:
    """A send that fails is counted by ``stream`` as a send drop."""

    def send(seq: int) -> bool:
        try:
            writer.write(dds_command(seq))
        except DDSException as err:
            log.warning("DDS write on %s failed: %s", writer.topic.name, err)
            return False
        return True

    return send


def _measure(seconds: float, rate_hz: float, domain_id: int) -> tuple[Schedule, dict[str, Any],
                                                                      dict[str, Any]]:
    per_path = max(1, round(seconds / BLOCK_S))
    with tempfile.TemporaryDirectory(prefix="telesurgery-bench-dds-") as tmp:
        root = Path(tmp)
        init_keys(root)
        receiver = _start_robot_side(root, domain_id)
        ctx: zmq.Context[Any] = zmq.Context()
        try:
            participant = DomainParticipant(domain_id)
            writers = {path: DataWriter(participant, topic, teleop_qos(path == "dds"))
                       for path, topic in _topics(participant).items()}
            console = ConsoleLink(receiver.cfg, ClientKeys.load_surgeon(root), ctx=ctx)
            raw = raw_push(ctx, receiver.raw_endpoint)
            wait_connected(console)
            _wait_matched(writers)
            deadline = time.monotonic() + _STARTUP_S
            while not send_raw(raw, 0):  # warm-up, stamped before the schedule starts
                if time.monotonic() > deadline:
                    raise LinkError("raw baseline socket never connected")
                time.sleep(0.01)
            senders = {path: _dds_sender(w) for path, w in writers.items()}
            for send in senders.values():
                send(0)
            rotation = Schedule(time.monotonic_ns() + 300_000_000,
                                round(seconds * 1e9 / per_path), len(PATHS) * per_path, PATHS)
            receiver.begin(rotation)
            sent = stream(rotation, rate_hz, {
                **senders,
                "secured": lambda seq: console.send_command(make_command(seq)),
                "raw": lambda seq: send_raw(raw, seq)})
            result = receiver.result(rotation)
        finally:
            ctx.destroy(linger=0)
            receiver.close()
    return rotation, sent, result


def run(seconds: float = 10.0, rate_hz: float = 1000.0) -> dict[str, float]:
    """Measure the four paths for ``seconds`` each at ``rate_hz``; returns the figures."""
    domain_id = random.randint(1, MAX_DOMAIN_ID)
    rotation, sent, result = _measure(seconds, rate_hz, domain_id)
    active_ns = rotation.block_ns * (rotation.blocks // len(rotation.paths))
    out: dict[str, float] = {}
    for path in PATHS:
        prefix = FIGURE_PREFIX[path]
        lat = result["latencies_ns"][path]
        out.update({prefix + k: v for k, v in percentiles_us(lat).items()})
        out[prefix + "delivered"] = float(len(lat))
        out[prefix + "sent"] = float(sent[path]["sent"])
        out[prefix + "send_drops"] = float(sent[path]["send_drops"])
        out[prefix + "cpu_sender_pct"] = 100.0 * sent[path]["cpu_ns"] / active_ns
        out[prefix + "cpu_receiver_pct"] = 100.0 * result["cpu_ns"][path] / active_ns
    for name, (a, b) in RATIOS.items():
        for q in ("p50", "p99"):
            out[f"ratio_{name}_{q}"] = out[f"{a}{q}_us"] / out[f"{b}{q}_us"]
    return {**out,
            "receive_errors": float(sum(result["errors"].values())),
            "dds_payload_bytes": float(len(dds_command(0).serialize())),
            "msgpack_payload_bytes": float(len(encode(make_command(0)))),
            "domain_id": float(domain_id), "seconds": seconds, "rate_hz": rate_hz}


def main(argv: list[str]) -> int:
    args = path_bench_args("telesurgery bench dds", __doc__, argv)
    lower_timer_slack()
    print(f"bench dds: DDS (cyclonedds) vs secured CurveZMQ vs raw PUSH/PULL, "
          f"{args.rate:.0f} Hz, {args.seconds:g} s each, taking turns in {BLOCK_S} s "
          f"blocks ...", flush=True)
    try:
        r = run(args.seconds, args.rate)
    except (LinkError, DDSException) as err:
        print(f"bench dds FAILED: {err}")
        return 1
    names = {"dds_": "DDS reliable, keep last 1", "dds_be_": "DDS best effort, keep last 1",
             "zmq_secured_": "ZeroMQ secured (CurveZMQ)", "raw_": "raw pyzmq PUSH/PULL"}
    print("| path | p50 us | p99 us | p99.9 us | max us | delivered/sent | cpu tx % | cpu rx % |")
    print("|---|---|---|---|---|---|---|---|")
    for p, name in names.items():
        print(f"| {name} | {r[p + 'p50_us']:.1f} | {r[p + 'p99_us']:.1f} | "
              f"{r[p + 'p999_us']:.1f} | {r[p + 'max_us']:.1f} | "
              f"{r[p + 'delivered']:.0f}/{r[p + 'sent']:.0f} | "
              f"{r[p + 'cpu_sender_pct']:.1f} | {r[p + 'cpu_receiver_pct']:.1f} |")
    print(f"  DDS reliable over secured ZMQ: p50 x{r['ratio_dds_over_secured_p50']:.2f}, "
          f"p99 x{r['ratio_dds_over_secured_p99']:.2f}; payload "
          f"{r['dds_payload_bytes']:.0f} B CDR vs {r['msgpack_payload_bytes']:.0f} B msgpack")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main(sys.argv[1:]))
