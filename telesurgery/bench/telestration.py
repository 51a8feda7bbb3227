"""``telesurgery bench telestration``: draw -> shown on the surgeon's HUD, on loopback.

A mentor's ``StrokePad`` (observer key with the draw right) pushes strokes to the
robot's real relay (CURVE, authenticator, rights file); the surgeon console's
``StrokeLayer`` takes them in a display loop shaped like the console's: a 720p
picture arrives at 30 fps, relayed strokes are polled, drawn on the picture with
the HUD, and the time from the draw to the first picture showing the stroke is
recorded (one machine, one monotonic clock). Prints p50/p99/max; the last line is
JSON. The goal is p99 <= 50 ms; a stroke waits for the next picture (<= 33 ms).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from operator_console.telestration import StrokeLayer, StrokePad, scripted_circle
from operator_console.video.hud import render_hud
from operator_console.view import SurgeonView
from robot_side.telestration import RIGHTS_FILE, StrokeRelay, TelestrationConfig
from telesurgery.helptext import plain_help
from transport.auth import start_authenticator
from transport.keys import ClientKeys, ServerKeys, init_keys

FPS = 30.0


def _display_loop(layer: StrokeLayer, stop: threading.Event) -> int:
    view = SurgeonView(250.0)
    image0 = np.full((720, 1280, 3), 60, np.uint8)
    frame_id = 0
    t_next = time.monotonic_ns()
    while not stop.is_set():
        t_next += int(1e9 / FPS)
        time.sleep(max(0.0, (t_next - time.monotonic_ns()) / 1e9))
        now = time.monotonic_ns()
        layer.poll(now)
        image = image0.copy()
        hud = view.build(tlm=None, tlm_recv_ns=None, now_ns=now, message="", message_ns=0,
                         teleop_why="", clutch=False, operator_present=True, scale=0.2,
                         video_age_ms=30.0)
        layer.render(image, frame_id, time.monotonic_ns())
        render_hud(image, hud)
        frame_id += 1
    return frame_id


def run(strokes: int = 200, rate_hz: float = 20.0) -> dict[str, Any]:
    ctx: zmq.Context[Any] = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="ts-tel-") as tmp:
        keys = Path(tmp)
        init_keys(keys, ["mentor"])
        (keys / RIGHTS_FILE).write_text("observer:mentor\n")
        auth = start_authenticator(ctx, ServerKeys.load(keys))
        relay = StrokeRelay(ctx, TelestrationConfig(draw_port=0, strokes_port=0),
                            host="127.0.0.1", keys=ServerKeys.load(keys), auth=auth,
                            keys_dir=keys)
        relay.start()
        layer = StrokeLayer.connect(ctx, f"tcp://127.0.0.1:{relay.strokes_port}",
                                    ClientKeys.load_surgeon(keys))
        pad = StrokePad(ctx, f"tcp://127.0.0.1:{relay.draw_port}",
                        ClientKeys.load_observer(keys, "mentor"), ttl_ms=500)
        stop = threading.Event()
        shown = threading.Thread(target=_display_loop, args=(layer, stop), daemon=True)
        shown.start()
        try:
            # Warm-up: handshakes and the SUB join, not measured.
            end = time.monotonic() + 10.0
            while relay.relayed == 0 and time.monotonic() < end:
                pad.draw(scripted_circle(), 0)
                time.sleep(0.05)
            time.sleep(0.6)
            layer.latency_ns.clear()
            rng = random.Random(5)
            sent = 0
            for _ in range(strokes):
                if pad.draw(scripted_circle(rng.random(), rng.random(), 0.05), 0):
                    sent += 1
                time.sleep(rng.uniform(0.5, 1.5) / rate_hz)
            time.sleep(0.6)
        finally:
            stop.set()
            shown.join(2.0)
            pad.close()
            layer.close()
            relay.stop()
            relay.join(2.0)
            auth.stop()
            ctx.destroy(0)
    lat = np.array(layer.latency_ns or [0], dtype=float) / 1e6
    return {"strokes_sent": sent, "strokes_shown": len(layer.latency_ns),
            "refused": sum(relay.refused.values()),
            "draw_to_shown_p50_ms": round(float(np.percentile(lat, 50)), 1),
            "draw_to_shown_p99_ms": round(float(np.percentile(lat, 99)), 1),
            "draw_to_shown_max_ms": round(float(lat.max()), 1), "display_fps": FPS}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery bench telestration",
                                description=plain_help(__doc__))
    p.add_argument("--strokes", type=int, default=200)
    p.add_argument("--rate", type=float, default=20.0, help="strokes per second")
    args = p.parse_args(argv)
    r = run(args.strokes, args.rate)
    print(f"telestration on loopback, {r['strokes_shown']}/{r['strokes_sent']} strokes shown: "
          f"draw -> shown on the HUD p50 {r['draw_to_shown_p50_ms']} ms, p99 "
          f"{r['draw_to_shown_p99_ms']} ms, max {r['draw_to_shown_max_ms']} ms "
          f"(display at {FPS:g} fps; goal p99 <= 50 ms)")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
