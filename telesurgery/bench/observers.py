"""``telesurgery bench observers``: the control loop with 0 and then 10 observers watching.

The same run measures the real control period (``telesurgery.bench.loop``'s loop
on the virtual arm) twice while the robot's outputs flow as in the node: a
process publishes telemetry at 100 Hz on the local observer feed and encodes
720p30 H.264 onto the video mirror, and the fan-out process (``robot_side.fanout``)
publishes both into its Zenoh router. Phase 1: nobody watches. Phase 2: ten
watcher sessions (in one other process, receiving every message) subscribe
through the router. Prints both figures and their ratio; the last line is JSON.
Watchers on this machine are pessimistic: in a deployment they are elsewhere.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from robot_side.config import ControlConfig, ManipulatorConfig, RobotConfig
from robot_side.fanout.config import FanoutConfig
from robot_side.fanout.process import FanoutProcess
from telesurgery.bench.loop import _run_loop
from telesurgery.helptext import plain_help

ROBOT = "bench"
WATCHERS = 10


def _robot_outputs(run_dir: Path, stop: Any) -> None:
    """The network thread's feed and the video process's mirror, at their real rates."""
    import zmq

    from robot_side.observe import ObserverFeed
    from robot_side.video.capture import CapturedFrame
    from robot_side.video.config import VideoConfig
    from robot_side.video.encoder import H264Encoder, select_encoder
    from robot_side.video.mirror import MirrorKeyframes, open_local_mirror
    from robot_side.video.sender import VideoSender
    from robot_side.video.synthetic import SyntheticScene
    from transport.schema import LinkReport, Pose, Telemetry

    ctx: zmq.Context[Any] = zmq.Context()
    feed = ObserverFeed(run_dir / "observe.sock", ctx)
    mirror = open_local_mirror(ctx, run_dir / "video.sock")
    surgeon = ctx.socket(zmq.PUB)
    surgeon.bind("inproc://surgeon")
    cfg = VideoConfig(width=1280, height=720, fps=30.0, encoder="libx264")
    sender = VideoSender(surgeon, H264Encoder(cfg, select_encoder(cfg)), mirror=mirror)
    keyframes = MirrorKeyframes(mirror)
    scene = SyntheticScene(1280, 720, 30.0)
    seq = frame = 0
    t0 = time.monotonic_ns()
    while not stop.is_set():
        now = time.monotonic_ns()
        feed.publish(Telemetry(seq=seq, t_ns=now, state="following", reason="engaged",
                               measured_js=(0.0,) * 6, setpoint_js=(0.0,) * 6,
                               measured_cp=Pose(), setpoint_cp=Pose(), link=LinkReport(),
                               scale=0.2, estop=False))
        seq += 1
        if now - t0 >= frame * 1_000_000_000 // 30:
            keyframes.poll(sender, now)
            sender.send(CapturedFrame(frame, now, scene.render(frame, now)))
            frame += 1
        time.sleep(0.01)


def _watchers(endpoint: str, n: int, ready: Any, stop: Any, result: Any) -> None:
    import zenoh

    from robot_side.fanout.watcher import Watcher
    from robot_side.fanout.zconf import watcher_config

    zenoh.init_log_from_env_or("error")
    ws = [Watcher.open(watcher_config((endpoint,)), ROBOT) for _ in range(n)]
    ready.set()
    got = [0, 0]
    last_count: int | None = None
    while not stop.is_set():
        for w in ws:
            for m in w.state():
                got[0] += 1
                last_count = getattr(m, "observers", last_count)
            got[1] += len(w.frames())
        time.sleep(0.005)
    for w in ws:
        w.close()
    result.put({"telemetry": got[0], "frames": got[1], "count_seen": last_count})


def run(seconds: float = 10.0, rate_hz: float = 500.0) -> dict[str, Any]:
    cfg = RobotConfig(manipulator=ManipulatorConfig(backend="virtual"),
                      control=ControlConfig(rate_hz=rate_hz))
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="ts-obs-") as tmp:
        run_dir = Path(tmp)
        endpoint = f"unixsock-stream/{run_dir}/zenoh.sock"
        stop_out, stop_w, ready = ctx.Event(), ctx.Event(), ctx.Event()
        outputs = ctx.Process(target=_robot_outputs, args=(run_dir, stop_out), daemon=True)
        outputs.start()
        time.sleep(1.0)
        fanout = FanoutProcess(FanoutConfig(robot=ROBOT, listen=(endpoint,)),
                               run_dir / "observe.sock", run_dir / "video.sock")
        fanout.start()
        result: Any = ctx.Queue()
        watchers = None
        try:
            time.sleep(2.0)
            alone = _run_loop(cfg, seconds)
            watchers = ctx.Process(target=_watchers, daemon=True,
                                   args=(endpoint, WATCHERS, ready, stop_w, result))
            watchers.start()
            if not ready.wait(60.0):
                raise RuntimeError("the watchers did not connect within 60 s")
            time.sleep(1.0)
            watched = _run_loop(cfg, seconds)
            stop_w.set()
            seen = result.get(timeout=10.0)
        finally:
            stop_w.set()
            if watchers is not None:
                watchers.join(5.0)
            fanout.stop()
            stop_out.set()
            outputs.join(5.0)
            if outputs.is_alive():
                outputs.kill()
    out: dict[str, Any] = {"rate_hz": rate_hz, "watchers": WATCHERS}
    for k in ("period_err_p50_us", "period_err_p99_us", "overruns", "step_p99_us", "cpu_pct"):
        out[f"{k}_0"] = alone[k]
        out[f"{k}_{WATCHERS}"] = watched[k]
    # Ratios over a floor of 1 us: a spinning loop's error can be ~0 when alone.
    for k in ("period_err_p99_us", "step_p99_us"):
        out[f"{k}_ratio"] = round(max(watched[k], 1.0) / max(alone[k], 1.0), 2)
    out.update({f"watchers_{k}": v for k, v in seen.items()})
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery bench observers",
                                description=plain_help(__doc__))
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=500.0)
    args = p.parse_args(argv)
    print(f"control loop at {args.rate:g} Hz, {args.seconds:g} s with 0 then {WATCHERS} "
          "observers on the Zenoh fan-out (telemetry 100 Hz + 720p30 video)", flush=True)
    r = run(args.seconds, args.rate)
    for n in (0, WATCHERS):
        print(f"{n:>3} observers: period error p50 {r[f'period_err_p50_us_{n}']} us, p99 "
              f"{r[f'period_err_p99_us_{n}']} us, overruns {r[f'overruns_{n}']}, period p99 "
              f"{r[f'step_p99_us_{n}']} us, loop CPU {r[f'cpu_pct_{n}']} %")
    print(f"ratios ({WATCHERS} / 0): p99 period error {r['period_err_p99_us_ratio']}, p99 "
          f"period {r['step_p99_us_ratio']}; the "
          f"watchers received {r['watchers_telemetry']} telemetry and {r['watchers_frames']} "
          f"frames, count seen {r['watchers_count_seen']}")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
