"""``telesurgery bench loop``: the real control period at 1 kHz, idle and under video load.

Each period is the robot node's own read -> update -> write
(``robot_side.period.run_period``: supervisor, watchdog, limits, IK, joint
limits) following a synthetic circle, on the ``virtual`` manipulator backend
(the firmware model in process), so the figures are the control core's own and
not the pty's. It runs once alone and once while another process encodes 720p30
H.264, and reports the period error (actual wake-up minus deadline), compute
time per period, overruns and CPU. The final line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import psutil

from robot_side.config import ControlConfig, ManipulatorConfig, RobotConfig
from robot_side.control import CommandSample, ControlCore, LinkView, PendingRequest
from robot_side.control_io import ControlInputs
from robot_side.kinematics import IkResult, Kinematics, bench_ik
from robot_side.manipulator import open_manipulator
from telesurgery.helptext import plain_help
from telesurgery.pacer import Pacer, enter_realtime
from telesurgery.quat import Quat
from transport.linkstats import LinkStats
from transport.schema import Command, ControlRequest

ENCODE_LOAD = """
import time
import numpy as np
from robot_side.video.config import VideoConfig
from robot_side.video.encoder import H264Encoder, select_encoder
from robot_side.video.synthetic import SyntheticScene
cfg = VideoConfig(width=1280, height=720, fps=30.0, encoder="libx264")
enc = H264Encoder(cfg, select_encoder(cfg))
scene = SyntheticScene(1280, 720, 30.0)
i, t0 = 0, time.monotonic()
while True:
    enc.encode(scene.render(i, time.monotonic_ns()), i)
    i += 1
    time.sleep(max(0.0, t0 + i / 30 - time.monotonic()))
"""


def _policy_name(pid: int) -> str:
    policy = os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK
    return {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO",
            os.SCHED_RR: "SCHED_RR"}.get(policy, str(policy))


def _command(seq: int, t: float, centre: tuple[float, float, float], quat: Quat) -> Command:
    # A 2 cm circle at 0.5 Hz in master space: typical slow surgical motion.
    r = 0.02
    return Command(seq=seq, t_send_ns=time.monotonic_ns(),
                   position=(centre[0] + r * math.cos(math.pi * t) - r,
                             centre[1] + r * math.sin(math.pi * t), centre[2]),
                   orientation=quat, grip=0.5, clutch=False,
                   operator_present=True, video_age_us=30_000)


class _TimedIk:
    """``Kinematics.ik_trusted`` with a stopwatch, so the bench can split ``update``'s
    cost into IK and the rest without a clock read inside the pure core."""

    def __init__(self, kin: Kinematics) -> None:
        self._ik = kin.ik_trusted
        self.ns = 0

    def __call__(self, *args: Any, **kwargs: Any) -> IkResult:
        t0 = time.monotonic_ns()
        try:
            return self._ik(*args, **kwargs)
        finally:
            self.ns += time.monotonic_ns() - t0


def _pct(values: list[int], q: float) -> float:
    return round(float(np.percentile(np.array(values[100:] or [0], dtype=float) / 1000, q)), 1)


def _run_loop(cfg: RobotConfig, seconds: float, realtime: bool = True) -> dict[str, Any]:
    kin = Kinematics.from_urdf()
    timed_ik = _TimedIk(kin)
    kin.ik_trusted = timed_ik  # type: ignore[method-assign]
    manip = open_manipulator(cfg)
    try:
        core = ControlCore(cfg, kin)
        stats = LinkStats()
        # The hand holds the instrument's orientation: engaging requires them aligned.
        centre, quat = kin.fk(kin.home)
        # As the robot node paces its loop (robot_side/control_loop.py).
        realtime = realtime and enter_realtime(50)
        pacer = Pacer(cfg.control.period_ns,
                      spin_ns=cfg.control.spin_us * 1000 if realtime else 0)
        proc = psutil.Process()
        proc.cpu_percent(None)
        steps: list[int] = []
        updates: list[int] = []
        iks: list[int] = []
        seq = 0
        t0 = time.monotonic_ns()
        end = t0 + int(seconds * 1e9)
        while time.monotonic_ns() < end:
            tick = pacer.wait()
            seq += 1
            cmd = _command(seq, (tick.actual_ns - t0) / 1e9,
                           tuple(centre), quat)  # type: ignore[arg-type]
            stats.on_message(seq, cmd.t_send_ns, tick.actual_ns, 0)
            view = LinkView(stats.snapshot(tick.actual_ns), 200_000, True)
            reqs = []
            # Arm, then engage until accepted (the link must be healthy for settle_ms).
            op = "arm" if seq == 30 else "engage" if seq % 100 == 0 and (
                core.supervisor.state != "following") else None
            if op is not None:
                reqs = [PendingRequest(b"bench", ControlRequest(req_id=seq, op=op),
                                       tick.actual_ns)]
            # robot_side.period.run_period, with the pure update timed on its own: the
            # virtual arm's model (read/write) is the simulated firmware's cost, not ours.
            start = time.monotonic_ns()
            reading = manip.read()
            timed_ik.ns = 0
            t_update = time.monotonic_ns()
            out = core.update(tick.actual_ns, reading, ControlInputs(
                CommandSample(cmd, tick.actual_ns), view, tuple(reqs)))
            updates.append(time.monotonic_ns() - t_update)
            iks.append(timed_ik.ns)
            manip.write(out.frames)
            steps.append(time.monotonic_ns() - start)
        cpu = proc.cpu_percent(None)
        p = pacer.stats()
        st = np.array(steps[100:] or [0], dtype=float) / 1000
        up = np.array(updates[100:] or [0], dtype=float) / 1000
        rest = [u - k for u, k in zip(updates, iks, strict=True)]
        return {
            "period_err_p50_us": round(p.err_p50_us, 1),
            "period_err_p99_us": round(p.err_p99_us, 1),
            "period_err_max_us": round(p.err_max_us, 1),
            "overruns": p.overruns,
            "step_p50_us": round(float(np.percentile(st, 50)), 1),
            "step_p99_us": round(float(np.percentile(st, 99)), 1),
            "update_p50_us": round(float(np.percentile(up, 50)), 1),
            "update_p99_us": round(float(np.percentile(up, 99)), 1),
            "update_ik_p50_us": _pct(iks, 50),
            "update_ik_p99_us": _pct(iks, 99),
            "update_rest_p50_us": _pct(rest, 50),
            "update_rest_p99_us": _pct(rest, 99),
            "cpu_pct": round(cpu, 1),
            "sched_fifo": realtime,
            "spin_lead_us": pacer.spin_ns // 1000,
            "final_state": str(core.supervisor.state),
            "following_periods": core.following_periods,
            "ticks": p.ticks,
        }
    finally:
        manip.close()


def run(seconds: float = 10.0, rate_hz: float = 1000.0,
        spin_us: int | None = None) -> dict[str, Any]:
    spin = ControlConfig().spin_us if spin_us is None else spin_us
    cfg = RobotConfig(manipulator=ManipulatorConfig(backend="virtual"),
                      control=ControlConfig(rate_hz=rate_hz, spin_us=spin))
    ik = bench_ik(2000)
    alone = _run_loop(cfg, seconds)
    load = subprocess.Popen([sys.executable, "-c", ENCODE_LOAD], stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        # The load must compete as an ordinary process: spawned at the loop's
        # FIFO priority it would measure priority inheritance, not the loop.
        load_policy = _policy_name(load.pid)
        loaded = _run_loop(cfg, seconds)
    finally:
        load.kill()
        load.wait()
    out: dict[str, Any] = {"rate_hz": rate_hz, "bench_ik_p50_us": round(ik["p50_us"], 1),
                           "bench_ik_p99_us": round(ik["p99_us"], 1),
                           "bench_ik_mean_iterations": round(ik["mean_iterations"], 2),
                           **alone}
    out.update({f"{k}_load": v for k, v in loaded.items()})
    out["load_sched_policy"] = load_policy
    return out


def main(argv: list[str]) -> int:
    if any(a == "--arm" or a.startswith("--arm=") for a in argv):
        from telesurgery.bench import servo  # a smart-servo bus instead of the virtual arm

        return servo.main(argv)
    if any(a == "--simulated" or a.startswith("--simulated=") for a in argv):
        from telesurgery.bench import loopcost  # CPU work per period, simulated clock

        return loopcost.main(argv)
    p = argparse.ArgumentParser(prog="telesurgery bench loop", description=plain_help(__doc__))
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--simulated", type=int, metavar="N",
                   help="instead: N periods on a simulated clock, CPU per period only "
                        "(telesurgery/bench/loopcost.py; for callgrind)")
    p.add_argument("--spin-us", type=int, default=None,
                   help="spin this long before each deadline (default: the node's "
                        "control.spin_us)")
    args = p.parse_args(argv)
    print(f"control loop at {args.rate:g} Hz, {args.seconds:g} s alone then under a 720p30 "
          "encode in another process", flush=True)
    result = run(args.seconds, args.rate, args.spin_us)
    print(f"the encode ran at {result['load_sched_policy']}, the loop at "
          f"{'SCHED_FIFO' if result['sched_fifo'] else 'normal priority'}, spinning the "
          f"last {result['spin_lead_us']} us before each deadline")
    print(f"warm-started IK alone (checked entry, 0.25 mm steps): p50 "
          f"{result['bench_ik_p50_us']} us, p99 {result['bench_ik_p99_us']} us, "
          f"{result['bench_ik_mean_iterations']} iterations on average")
    for phase, sfx in (("alone", ""), ("720p30 encode", "_load")):
        print(f"{phase:>14}: period error p50 {result['period_err_p50' + '_us' + sfx]} us, "
              f"p99 {result['period_err_p99_us' + sfx]} us, max "
              f"{result['period_err_max_us' + sfx]} us, overruns {result['overruns' + sfx]}, "
              f"period (read+update+write) p99 {result['step_p99_us' + sfx]} us, update "
              f"p99 {result['update_p99_us' + sfx]} us (IK p50 {result['update_ik_p50_us' + sfx]}"
              f" p99 {result['update_ik_p99_us' + sfx]} us, the rest p50 "
              f"{result['update_rest_p50_us' + sfx]} p99 {result['update_rest_p99_us' + sfx]}"
              f" us), state {result['final_state' + sfx]}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
