"""``telesurgery bench video``: glass-to-glass latency over the real secured link.

Per picture size, two processes on this machine:

* robot: synthetic camera (I420, as the node's) -> H.264 encoder (auto-selected)
  -> ``VideoSender`` on the CURVE-secured ``RobotLink`` video socket; keyframe
  requests arrive on its control socket as in the real node. ``--bgr-source``
  makes the camera deliver BGR, as one read through OpenCV does, so the per-frame
  colour conversion a real camera costs is measured too;
* console: ``ConsoleLink`` -> ``VideoReceiver`` -> HUD -> headless ``Display``;
  keyframe requests go back over control.

Glass-to-glass is capture (the frame leaving the camera) to display (the
picture converted to BGR, the HUD drawn and handed to the display), for every
frame shown. Both
processes read the same CLOCK_MONOTONIC, so no offset is needed here.

The robot's CPU is split per frame: render (the camera), convert (hand-over to
the encoder, with a BGR->YUV conversion for a BGR camera), encode, send; and
``cpu_ms_per_frame`` is the whole process (threads, sockets, CURVE included).

In the same run, the bare codec on the same frames in one process with no
transport (camera format -> encode, decode, YUV->BGR) is the baseline, measured just
before and just after the pipeline; the lower p50 of the two is used, so load
from other processes inflates the ratio rather than flattering it:
``ratio_p50 = g2g_p50 / codec_p50``; the goal is g2g within codec + 3 ms.

The last stdout line is one JSON object: 720p figures at the top level
(``g2g_p50_ms``, ``g2g_p99_ms``, ``codec_p50_ms``, ``ratio_p50``, ...) and every
size under ``sizes``.
"""

from __future__ import annotations

import argparse
import json
import logging
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import psutil

from telesurgery.helptext import plain_help

log = logging.getLogger(__name__)

WARMUP_FRAMES = 15
"""Frames not measured: the first keyframe request and codec start-up."""
STARTUP_TIMEOUT_S = 30.0


def _pct(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else float("nan")


def _cpu_seconds() -> float:
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


# ---------------------------------------------------------------- robot process
def _sender(args: argparse.Namespace) -> int:
    from robot_side.video.config import VideoConfig
    from robot_side.video.encoder import H264Encoder, select_encoder
    from robot_side.video.sender import VideoSender
    from robot_side.video.synthetic import SyntheticBgrSource, SyntheticSource
    from transport.config import LinkConfig
    from transport.keys import ServerKeys
    from transport.link import RobotLink
    from transport.schema import KeyframeRequest

    cfg = VideoConfig(width=args.width, height=args.height, fps=args.fps,
                      encoder_threads=args.encoder_threads)
    choice = select_encoder(cfg)
    link_cfg = LinkConfig(command_port=0, control_port=0, telemetry_port=0, video_port=0,
                          keys_dir=args.keys)
    with RobotLink(link_cfg, ServerKeys.load(args.keys)) as link:
        _emit({"ports": link.endpoints, "encoder": choice.name, "tried": choice.tried})
        if sys.stdin.readline().strip() != "go":
            return 1
        source = SyntheticBgrSource(cfg) if args.bgr_source else SyntheticSource(cfg)
        if link.video_socket is None:  # RobotLink serves video unless told not to
            return 1
        sender = VideoSender(link.video_socket, H264Encoder(cfg, choice))
        encode_ms: list[float] = []
        captured_last: int | None = None
        cpu0, t0 = _cpu_seconds(), time.monotonic_ns()
        end = t0 + int(args.seconds * 1e9)
        with source:
            while time.monotonic_ns() < end:
                frame = source.wait_newer(captured_last, timeout_s=1.0)
                if frame is None:
                    continue
                captured_last = frame.frame_id
                if sender.send(frame):
                    encode_ms.append(sender.stats.last_encode_ns / 1e6)
                for item in link.poll(0):
                    if isinstance(item.msg, KeyframeRequest):
                        sender.request_keyframe(item.msg.reason)
        wall = (time.monotonic_ns() - t0) / 1e9
        cpu = _cpu_seconds() - cpu0
        st = sender.stats
        per_frame = max(1, st.sent)
        _emit({
            "sent": st.sent, "captured": (captured_last or 0) + 1,
            "source_format": source.pixel_format,
            "encode_ms_p50": _pct(encode_ms, 50), "encode_ms_p99": _pct(encode_ms, 99),
            "bitrate_kbps": round(st.bytes_sent * 8 / wall / 1000, 1),
            "final_bitrate_kbps": sender.controller.target_kbps,
            "dropped_backpressure": st.dropped_backpressure, "dropped_stale": st.dropped_stale,
            "keyframes": st.keyframes, "keyframe_requests": st.keyframe_requests,
            "render_ms_mean": round(
                source.render_ns_total / max(1, source.frames_captured) / 1e6, 3),
            "render_cpu_ms_mean": round(
                source.render_cpu_ns_total / max(1, source.frames_captured) / 1e6, 3),
            "convert_ms_mean": round(st.convert_ns_total / per_frame / 1e6, 3),
            "encode_ms_mean": round(
                (st.encode_ns_total - st.convert_ns_total) / per_frame / 1e6, 3),
            "send_ms_mean": round(st.send_ns_total / per_frame / 1e6, 3),
            "cpu_ms_per_frame": round(1000 * cpu / per_frame, 3),
            "cpu_pct": round(100 * cpu / wall, 1),
        })
    return 0


# ---------------------------------------------------------------- console process
def _set_on_input(event: threading.Event) -> None:
    """The parent says "stop" (or dies, closing the pipe): end the receive loop."""
    sys.stdin.readline()
    event.set()


def _receiver(args: argparse.Namespace) -> int:
    from operator_console.video.decoder import H264Decoder
    from operator_console.video.display import Display
    from operator_console.video.freshness import FreshnessMonitor
    from operator_console.video.hud import HudState
    from operator_console.video.receiver import VideoReceiver
    from transport.config import LinkConfig
    from transport.keys import ClientKeys
    from transport.link import ConsoleLink

    ports = json.loads(args.ports)
    link_cfg = LinkConfig(command_port=ports["command"], control_port=ports["control"],
                          telemetry_port=ports["telemetry"], video_port=ports["video"])
    stop = threading.Event()
    with ConsoleLink(link_cfg, ClientKeys.load_surgeon(args.keys)) as link:
        decoder = H264Decoder()
        receiver = VideoReceiver(link.video_socket, decoder)
        display = Display(headless=True, out_dir=args.out, every_n=0, draw_unseen=True)
        fresh = FreshnessMonitor(250.0)
        _emit({"ready": True})
        threading.Thread(target=_set_on_input, args=(stop,), daemon=True).start()
        g2g: list[float] = []
        decode_ms: list[float] = []
        transit_ms: list[float] = []
        hud_ms: list[float] = []
        bgr_ms: list[float] = []
        max_age_ms = 0.0
        last_g2g: float | None = None
        shown = 0
        cpu0, t0 = _cpu_seconds(), time.monotonic_ns()
        while not stop.is_set():
            request = receiver.take_keyframe_request()
            if request is not None:
                link.send_keyframe_request(request)
            picture = receiver.poll(20)
            now = time.monotonic_ns()
            age = fresh.age_us(now)
            if picture is None:
                continue
            if shown >= WARMUP_FRAMES and age is not None:
                max_age_ms = max(max_age_ms, age / 1000)
            hud = HudState(state="following", reason="bench", rtt_ms=None, latency_ms=None,
                           g2g_ms=last_g2g, video_age_ms=None if age is None else age / 1000,
                           loss=receiver.stats.loss, jitter_ms=None, scale=1.0, clutch=False,
                           operator_present=True, warnings=(), encoder=args.encoder,
                           fps=args.fps)
            display.show(picture.picture, hud)  # converted to BGR and drawn (draw_unseen)
            display_ns = time.monotonic_ns()
            fresh.on_displayed(picture.capture_local_ns, display_ns)
            last_g2g = picture.g2g_ns(display_ns) / 1e6
            shown += 1
            if shown > WARMUP_FRAMES:
                g2g.append(last_g2g)
                decode_ms.append(decoder.last_decode_ns / 1e6)
                transit_ms.append((picture.recv_ns - picture.capture_ns) / 1e6)
                hud_ms.append((display_ns - picture.decoded_ns) / 1e6)
                bgr_ms.append(picture.picture.convert_ns / 1e6)
        wall = (time.monotonic_ns() - t0) / 1e9
        cpu = _cpu_seconds() - cpu0
        display.close()
        st = receiver.stats
        _emit({
            "shown": st.shown, "measured": len(g2g),
            "g2g_ms_p50": _pct(g2g, 50), "g2g_ms_p99": _pct(g2g, 99),
            "g2g_ms_max": _pct(g2g, 100),
            "capture_to_recv_ms_p50": _pct(transit_ms, 50),
            "decode_ms_p50": _pct(decode_ms, 50), "decode_ms_p99": _pct(decode_ms, 99),
            "hud_display_ms_p50": _pct(hud_ms, 50), "to_bgr_ms_p50": _pct(bgr_ms, 50),
            "max_video_age_ms": round(max_age_ms, 1),
            "dropped": st.dropped, "lost": st.lost, "skipped": st.skipped,
            "bad_messages": st.bad_messages, "decode_errors": st.decode_errors,
            "keyframe_requests": st.keyframe_requests,
            "cpu_pct": round(100 * cpu / wall, 1),
        })
    return 0


# ---------------------------------------------------------------- parent
def _read_json(proc: subprocess.Popen[bytes], timeout_s: float, what: str) -> dict[str, Any]:
    stdout = proc.stdout
    if stdout is None:
        raise RuntimeError(f"{what}: no stdout pipe")
    with selectors.DefaultSelector() as sel:
        sel.register(stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise TimeoutError(f"{what}: nothing within {timeout_s:.0f} s")
    line = stdout.readline()
    if not line:
        raise RuntimeError(f"{what}: exited with {proc.wait(5)} before answering")
    result: dict[str, Any] = json.loads(line)
    return result


def _say(proc: subprocess.Popen[bytes], text: str) -> None:
    stdin: IO[bytes] | None = proc.stdin
    if stdin is not None:
        stdin.write(text.encode() + b"\n")
        stdin.flush()


def _spawn(role: str, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "telesurgery.bench.video", "--role", role, *extra]
    with log_path.open("wb") as err:
        # Unbuffered, so select() on the pipe never misses a line already read ahead.
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                bufsize=0)


def _pipeline(width: int, height: int, fps: float, seconds: float,
              work: Path, *, robot_args: Sequence[str] = ()) -> dict[str, Any]:
    common = ["--width", str(width), "--height", str(height), "--fps", str(fps),
              "--seconds", str(seconds), "--keys", str(work / "keys")]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        robot = _spawn("sender", work / f"sender-{width}.log", *common, *robot_args)
        procs.append(robot)
        hello = _read_json(robot, STARTUP_TIMEOUT_S, "robot process")
        console = _spawn("receiver", work / f"receiver-{width}.log", *common,
                         "--ports", json.dumps(hello["ports"]), "--encoder", hello["encoder"],
                         "--out", str(work / f"display-{width}"))
        procs.append(console)
        _read_json(console, STARTUP_TIMEOUT_S, "console process")
        time.sleep(0.5)  # CURVE handshake and subscription, so the first frames are not lost
        _say(robot, "go")
        sent = _read_json(robot, seconds + STARTUP_TIMEOUT_S, "robot process")
        time.sleep(0.2)  # the last frames in flight
        _say(console, "stop")
        shown = _read_json(console, STARTUP_TIMEOUT_S, "console process")
        for proc in procs:
            proc.wait(STARTUP_TIMEOUT_S)
    except (TimeoutError, RuntimeError, json.JSONDecodeError) as err:
        logs = "\n".join(p.read_text()[-2000:] for p in sorted(work.glob("*.log")))
        raise RuntimeError(f"video bench {width}x{height} failed: {err}\n{logs}") from err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"encoder": hello["encoder"], "encoders_rejected": hello["tried"],
            "robot": sent, "console": shown}


def codec_baseline(width: int, height: int, fps: float, frames: int, *,
                   bgr_source: bool = False, encoder_threads: int = 0) -> dict[str, float]:
    """Encode + decode (to BGR) the same synthetic frames in one process, paced at
    ``fps``, from the camera format the pipeline uses."""
    from operator_console.video.decoder import H264Decoder
    from robot_side.video.config import VideoConfig
    from robot_side.video.encoder import H264Encoder, select_encoder
    from robot_side.video.synthetic import SyntheticScene

    cfg = VideoConfig(width=width, height=height, fps=fps, encoder_threads=encoder_threads)
    encoder, decoder = H264Encoder(cfg, select_encoder(cfg)), H264Decoder()
    scene = SyntheticScene(width, height, fps)
    render = scene.render if bgr_source else scene.render_i420
    enc: list[float] = []
    dec: list[float] = []
    period = cfg.frame_period_ns
    next_due = time.monotonic_ns()
    for i in range(frames + WARMUP_FRAMES):
        image = render(i, next_due)
        delay = next_due - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
        next_due += period
        encoded = encoder.encode(image, i)
        t0 = time.monotonic_ns()
        decoder.decode(encoded.payload)
        if i >= WARMUP_FRAMES:
            enc.append(encoded.encode_ns / 1e6)
            dec.append((time.monotonic_ns() - t0) / 1e6)
    total = [e + d for e, d in zip(enc, dec, strict=True)]
    return {"codec_p50_ms": _pct(total, 50), "codec_p99_ms": _pct(total, 99),
            "encode_ms_p50": _pct(enc, 50), "decode_ms_p50": _pct(dec, 50)}


def run(seconds: float = 10.0, sizes: Sequence[tuple[int, int]] = ((1280, 720), (1920, 1080)),
        fps: float = 30.0, *, bgr_source: bool = False,
        encoder_threads: int = 0) -> dict[str, Any]:
    from transport.keys import init_keys

    per_size: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        work = Path(tmp)
        init_keys(work / "keys")
        for width, height in sizes:
            frames = max(45, int(fps * seconds / 4))
            robot_args = ["--encoder-threads", str(encoder_threads)]
            robot_args += ["--bgr-source"] if bgr_source else []
            before = codec_baseline(width, height, fps, frames, bgr_source=bgr_source,
                                    encoder_threads=encoder_threads)
            piped = _pipeline(width, height, fps, seconds, work, robot_args=robot_args)
            after = codec_baseline(width, height, fps, frames, bgr_source=bgr_source,
                                   encoder_threads=encoder_threads)
            base = min(before, after, key=lambda b: b["codec_p50_ms"])
            robot, console = piped["robot"], piped["console"]
            g2g50 = console["g2g_ms_p50"]
            per_size[f"{width}x{height}"] = {
                "g2g_p50_ms": g2g50, "g2g_p99_ms": console["g2g_ms_p99"],
                "codec_p50_ms": base["codec_p50_ms"],
                "ratio_p50": round(g2g50 / base["codec_p50_ms"], 3),
                "overhead_p50_ms": round(g2g50 - base["codec_p50_ms"], 3),
                "bare_codec": base,
                "bare_codec_p50_before_after_ms": [before["codec_p50_ms"], after["codec_p50_ms"]],
                "encoder": piped["encoder"],
                "encoders_rejected": [name for name, _ in piped["encoders_rejected"]],
                "robot": robot, "console": console,
            }
    first = next(iter(per_size.values()))
    top = {k: first[k] for k in ("g2g_p50_ms", "g2g_p99_ms", "codec_p50_ms", "ratio_p50",
                                 "overhead_p50_ms", "encoder")}
    top.update({
        "size": next(iter(per_size)), "fps": fps, "seconds": seconds,
        "bitrate_kbps": first["robot"]["bitrate_kbps"],
        "dropped": first["console"]["dropped"], "lost": first["console"]["lost"],
        "cpu_robot_pct": first["robot"]["cpu_pct"], "cpu_console_pct": first["console"]["cpu_pct"],
        "source_format": first["robot"]["source_format"],
        "encoder_threads": encoder_threads,
    })
    return {**top, "sizes": per_size}


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery bench video", description=plain_help(__doc__))
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--sizes", default="1280x720,1920x1080", help="e.g. 1280x720,1920x1080")
    p.add_argument("--bgr-source", action="store_true",
                   help="the camera delivers BGR (as through OpenCV): measures the "
                        "per-frame conversion a real camera costs")
    p.add_argument("--encoder-threads", type=int, default=0,
                   help="libx264 threads (video.encoder_threads; 0: its choice)")
    p.add_argument("--role", choices=("sender", "receiver"), help=argparse.SUPPRESS)
    p.add_argument("--width", type=int, default=1280, help=argparse.SUPPRESS)
    p.add_argument("--height", type=int, default=720, help=argparse.SUPPRESS)
    p.add_argument("--keys", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--ports", help=argparse.SUPPRESS)
    p.add_argument("--encoder", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--video-process", type=float, metavar="SECONDS",
                   help="instead: run the robot's own video process this long (first size) "
                        "and print its CPU as a share of one core")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.role == "sender":
        return _sender(args)
    if args.role == "receiver":
        return _receiver(args)
    if args.video_process is not None:
        width, height = _size(args.sizes.split(",")[0])
        from telesurgery.bench.videocpu import video_process_cpu

        vp = video_process_cpu(args.video_process, width, height, args.fps,
                               encoder_threads=args.encoder_threads)
        print(f"video process {vp['size']}@{args.fps:g}: {vp['video_process_cpu_pct']} % of a "
              f"core at {vp['frames_per_s']} frames/s, {vp['cpu_ms_per_frame']} ms CPU a frame "
              f"({vp['cpu_pct_at_full_rate']} % at the full rate)", flush=True)
        print(json.dumps(vp), flush=True)
        return 0
    result = run(args.seconds, [_size(s) for s in args.sizes.split(",")], args.fps,
                 bgr_source=args.bgr_source, encoder_threads=args.encoder_threads)
    for name, r in result["sizes"].items():
        print(f"{name}@{args.fps:g}: g2g p50 {r['g2g_p50_ms']} ms p99 {r['g2g_p99_ms']} ms | "
              f"bare codec p50 {r['codec_p50_ms']} ms | ratio {r['ratio_p50']} | "
              f"enc {r['robot']['encode_ms_p50']} dec {r['console']['decode_ms_p50']} ms | "
              f"{r['robot']['bitrate_kbps']} kbps | dropped {r['console']['dropped']} "
              f"lost {r['console']['lost']} | cpu robot {r['robot']['cpu_pct']} % "
              f"console {r['console']['cpu_pct']} %", flush=True)
        rb = r["robot"]
        print(f"  robot per frame ({rb['source_format']} camera), wall ms: render "
              f"{rb['render_ms_mean']} (CPU {rb['render_cpu_ms_mean']}) convert "
              f"{rb['convert_ms_mean']} encode {rb['encode_ms_mean']} send "
              f"{rb['send_ms_mean']}; process CPU {rb['cpu_ms_per_frame']} ms/frame | "
              f"console to BGR {r['console']['to_bgr_ms_p50']} ms", flush=True)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
