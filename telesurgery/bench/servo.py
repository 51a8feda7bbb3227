"""``telesurgery bench loop --arm so101|dynamixel``: a smart-servo bus at its baud rate.

The emulated bus (``telesurgery servo-sim``, in its own process so it does not share
this one's GIL) paces every byte at the baud rate, 10 bits a byte, plus each servo's
return delay. The backend serves it as it would a real arm: a 1 kHz "control loop"
here writes a slow sine as joint targets through ``write()``, and the bus thread runs
sync write + sync read cycles as fast as the bus sustains. Printed: the rate the bus
sustains (estimated at open and achieved), the write and read time of each cycle, the
wire time a cycle needs at that baud rate (the floor no code removes), the cost of a
``write()`` to the control loop, and the bus's error counters. The last line is JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from robot_side.manipulator.base import Release, Targets
from robot_side.servos.calibrate import PRESETS, arm_class
from robot_side.servos.config import ArmCalibration, ServosConfig
from robot_side.servos.tables import FAMILIES, ServoFamily
from telesurgery.helptext import plain_help

ARMS = {"so101": "so101", "dynamixel": "omx", "omx": "omx"}
STATUS_OVERHEAD = {"dynamixel": 11, "feetech": 6}
SYNC_OVERHEAD = {"dynamixel": 14, "feetech": 8}
RETURN_DELAY_US = 20.0
"""The emulator's default return delay per status packet (the servos' own, set low)."""


def wire_time_us(family: ServoFamily, n: int, baud: int) -> float:
    """Bytes one cycle puts on the wire (sync write of goals + sync read of the block)."""
    name = family.name
    write = SYNC_OVERHEAD[name] + n * (1 + family.goal_position.size)
    read = SYNC_OVERHEAD[name] + n + n * (STATUS_OVERHEAD[name] + family.read_block[1])
    return (write + read) * 10 * 1e6 / baud + n * RETURN_DELAY_US


def _pct(values: list[int], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) / 1000.0, q)), 1) if values else -1.0


def _start_emulator(family: str, ids: tuple[int, ...], baud: int,
                    link: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_side.servos.sim_cli", "--family", family, "--ids",
         ",".join(map(str, ids)), "--baud", str(baud), "--link", str(link)], env=env)
    deadline = time.monotonic() + 30
    while not link.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"servo-sim did not come up at {link}")
        time.sleep(0.05)
    return proc


def run(seconds: float = 10.0, arm: str = "so101", baud: int = 1_000_000) -> dict[str, Any]:
    preset = PRESETS[ARMS[arm]]
    family = FAMILIES[preset.backend]
    with tempfile.TemporaryDirectory(prefix="ts-bench-servo-") as tmp:
        link = Path(tmp) / "ttySERVO0"
        emu = _start_emulator(preset.backend, preset.ids, baud, link)
        try:
            cfg = ServosConfig(port=str(link), baudrate=baud, ids=preset.ids,
                               gripper_id=preset.gripper_id, max_rate_hz=2000.0,
                               latency_ms=20.0, command_watchdog_ms=500.0,
                               bus_watchdog_ms=1000.0)
            with arm_class(preset.backend)(cfg, ArmCalibration.default(preset.backend, cfg)) \
                    as servo_arm:
                estimated = servo_arm.info.rate_hz
                n = len(cfg.joint_ids)
                servo_arm.write([Release()])
                write_ns: list[int] = []
                start = time.monotonic_ns()
                cycles0 = servo_arm.bus_counts["cycles"]
                first_cycle = len(servo_arm.cycles.start)
                period_ns = 1_000_000
                k = 0
                while (now := time.monotonic_ns()) - start < seconds * 1e9:
                    t = (now - start) / 1e9
                    q = tuple(0.3 * math.sin(2 * math.pi * 0.25 * t + j) for j in range(n))
                    t0 = time.monotonic_ns()
                    servo_arm.write([Targets(q, 0.5 + 0.4 * math.sin(t))])
                    write_ns.append(time.monotonic_ns() - t0)
                    k += 1
                    sleep = start + k * period_ns - time.monotonic_ns()
                    if sleep > 0:
                        time.sleep(sleep / 1e9)
                elapsed = (time.monotonic_ns() - start) / 1e9
                cycles = servo_arm.bus_counts["cycles"] - cycles0
                log = servo_arm.cycles
                writes = list(log.write)[first_cycle:]
                reads = list(log.read)[first_cycle:]
                starts = list(log.start)[first_cycle:]
                periods = [b - a for a, b in itertools.pairwise(starts)]
                counters = servo_arm.counters
        finally:
            emu.terminate()
            emu.wait(timeout=10)
    return {
        "arm": arm, "family": family.name, "servos": len(preset.ids), "baud": baud,
        "seconds": round(elapsed, 2),
        "bus_rate_estimated_hz": round(estimated or 0.0, 1),
        "bus_rate_achieved_hz": round(cycles / elapsed, 1),
        "wire_time_per_cycle_us": round(wire_time_us(family, len(preset.ids), baud), 1),
        "cycle_write_p50_us": _pct(writes, 50), "cycle_write_p99_us": _pct(writes, 99),
        "cycle_read_p50_us": _pct(reads, 50), "cycle_read_p99_us": _pct(reads, 99),
        "cycle_read_max_us": _pct(reads, 100),
        "cycle_period_p50_us": _pct(periods, 50), "cycle_period_p99_us": _pct(periods, 99),
        "loop_writes": len(write_ns), "loop_write_call_p50_us": _pct(write_ns, 50),
        "loop_write_call_p99_us": _pct(write_ns, 99),
        "rx_timeouts": counters["rx_timeouts"], "rx_corrupt": counters["rx_corrupt"],
        "rx_wrong_id": counters["rx_wrong_id"], "rx_short": counters["rx_short"],
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery bench loop --arm",
                                description=plain_help(__doc__))
    p.add_argument("--arm", choices=sorted(ARMS), required=True)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--baud", type=int, default=1_000_000)
    p.add_argument("--rate", type=float, default=1000.0, help="ignored: the loop runs 1 kHz")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    print(f"{args.arm}: emulated bus at {args.baud} baud, a 1 kHz writer for "
          f"{args.seconds:g} s", flush=True)
    r = run(args.seconds, args.arm, args.baud)
    print(f"bus sustains {r['bus_rate_achieved_hz']} cycles/s (estimated at open "
          f"{r['bus_rate_estimated_hz']}); wire time per cycle {r['wire_time_per_cycle_us']} us")
    print(f"per cycle: sync write p50 {r['cycle_write_p50_us']} us p99 "
          f"{r['cycle_write_p99_us']} us; sync read of {r['servos']} servos p50 "
          f"{r['cycle_read_p50_us']} us p99 {r['cycle_read_p99_us']} us max "
          f"{r['cycle_read_max_us']} us; period p50 {r['cycle_period_p50_us']} us p99 "
          f"{r['cycle_period_p99_us']} us")
    print(f"control loop: {r['loop_writes']} write() calls, p50 {r['loop_write_call_p50_us']} "
          f"us p99 {r['loop_write_call_p99_us']} us; bus errors: timeouts "
          f"{r['rx_timeouts']}, corrupt {r['rx_corrupt']}, wrong id {r['rx_wrong_id']}")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
