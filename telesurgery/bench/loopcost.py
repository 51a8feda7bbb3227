"""``telesurgery bench loop --simulated N``: the control thread's work per period, counted.

N periods of what the robot node's control thread does with a command a period
(the schema decode, ``CommandIntake.offer`` with its link statistics, the link
snapshot, read -> ``ControlCore.update`` -> write) on the ``virtual`` arm, on a
simulated clock: no sleeping, no pacing, so the figures are CPU work only. The
bench's 2 cm circle is followed after arm and engage, as in ``bench loop``.

It prints the minimum and p10 of ``time.thread_time_ns`` per period (the load of
other processes adds to percentiles, hardly to minima) for ``update`` alone and
for the whole period, split into following and holding periods, and one JSON
line. Under ``valgrind --tool=callgrind`` two runs with different N give the
instructions per period (the difference divided by the difference in N), which
no load can touch: the way issue 11's cuts are measured on a shared machine.
The cyclic garbage collector is frozen and off during the periods, so that its
timing does not land in one run's count and not the other's.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from typing import Any, cast

from robot_side.config import ControlConfig, ManipulatorConfig, RobotConfig
from robot_side.control import CommandSample, ControlCore, LinkView, PendingRequest
from robot_side.control_io import ControlInputs
from robot_side.firmware_model import default_params
from robot_side.kinematics import Kinematics
from robot_side.manipulator.base import Targets
from robot_side.manipulator.virtual import VirtualManipulator
from transport import schema
from transport.intake import CommandIntake
from transport.schema import Command, ControlRequest

PERIOD_NS = 1_000_000


def run(periods: int) -> dict[str, Any]:
    kin = Kinematics.from_urdf()
    clock = [1_000_000_000]
    params = default_params(kin.n, kin.lower.tolist(), kin.upper.tolist(),
                            kin.velocity.tolist())
    arm = VirtualManipulator(params, initial=kin.home.tolist(), clock=lambda: clock[0],
                             write_budget_ns=PERIOD_NS)
    arm.open()
    cfg = RobotConfig(manipulator=ManipulatorConfig(backend="virtual"),
                      control=ControlConfig(rate_hz=1e9 / PERIOD_NS, realtime=False))
    core = ControlCore(cfg, kin)
    intake = CommandIntake(50_000_000, 1_000_000_000, 1000.0)
    (cx, cy, cz), quat = kin.pose(kin.home)
    wires = []
    for seq in range(1, periods + 1):  # the console's side, before the counted periods
        t = seq * PERIOD_NS / 1e9
        wires.append(schema.encode(Command(
            seq=seq, t_send_ns=clock[0] + seq * PERIOD_NS - 300_000,
            position=(cx + 0.02 * math.cos(math.pi * t) - 0.02,
                      cy + 0.02 * math.sin(math.pi * t), cz),
            orientation=quat, grip=0.5, clutch=False, operator_present=True,
            video_age_us=30_000)))
    update_ns: list[tuple[int, bool]] = []
    period_ns: list[int] = []
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        for seq, wire in enumerate(wires, start=1):
            clock[0] += PERIOD_NS
            now = clock[0]
            t0 = time.thread_time_ns()
            cmd = cast(Command, schema.decode(wire))  # the node's decode
            intake.offer(cmd, now, 0)
            view = LinkView(intake.stats.snapshot(now), 200_000, True)
            op = "arm" if seq == 30 else "engage" if seq % 100 == 0 and (
                core.supervisor.state != "following") else None
            reqs = (PendingRequest(b"bench", ControlRequest(req_id=seq, op=op), now),
                    ) if op is not None else ()
            reading = arm.read()
            t1 = time.thread_time_ns()
            out = core.update(now, reading, ControlInputs(
                CommandSample(cmd, now), view, reqs))
            t2 = time.thread_time_ns()
            arm.write(out.frames)
            period_ns.append(time.thread_time_ns() - t0)
            update_ns.append((t2 - t1, isinstance(out.frames[-1], Targets)))
    finally:
        gc.enable()
        gc.unfreeze()
        arm.close()
    return _summary(update_ns, period_ns, core)


def _summary(update_ns: list[tuple[int, bool]], period_ns: list[int],
             core: ControlCore) -> dict[str, Any]:
    out: dict[str, Any] = {"periods": len(period_ns),
                           "following_periods": core.following_periods}
    for kind, following in (("following", True), ("holding", False)):
        ups = sorted(u for u, f in update_ns if f is following)
        whole = sorted(p for p, (_, f) in zip(period_ns, update_ns, strict=True)
                       if f is following)
        for name, values in (("update", ups), ("period", whole)):
            if values:
                out[f"{kind}_{name}_min_us"] = round(values[0] / 1000, 1)
                out[f"{kind}_{name}_p10_us"] = round(values[len(values) // 10] / 1000, 1)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery bench loop --simulated",
                                description=__doc__)
    p.add_argument("--simulated", type=int, required=True, metavar="N",
                   help="periods to run (>= 200: following starts after arm and engage)")
    args = p.parse_args(argv)
    if args.simulated < 1:
        p.error("--simulated N: N must be >= 1")
    result = run(args.simulated)
    for kind in ("following", "holding"):
        if f"{kind}_update_min_us" in result:
            print(f"{kind:>9}: update min {result[f'{kind}_update_min_us']} us, p10 "
                  f"{result[f'{kind}_update_p10_us']} us; whole period (decode, intake, "
                  f"snapshot, read, update, write) min {result[f'{kind}_period_min_us']} us, "
                  f"p10 {result[f'{kind}_period_p10_us']} us")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
