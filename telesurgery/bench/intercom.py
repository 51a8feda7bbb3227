"""``telesurgery bench intercom``: mouth-to-ear latency of the intercom, on loopback.

Generated speech (espeak-ng, sox) is spoken in real time (20 ms frames) by a console
with push-to-talk into the robot's real intercom hub (CURVE, authenticator, talk
rights); another console decodes it. Mouth-to-ear per packet = its first sample's
play-out time (decode + the 40 ms jitter buffer) - the time it was spoken, plus the
Opus lookahead (the frame's 20 ms of capture included). Goal: p99 <= 150 ms
(ITU-T G.114). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from operator_console.intercom import FRAME, FRAME_NS, IntercomClient
from operator_console.speech import speech_pcm
from robot_side.intercom import RIGHTS_FILE, IntercomConfig, IntercomRelay
from telesurgery.helptext import plain_help
from transport.auth import start_authenticator
from transport.keys import ClientKeys, ServerKeys, init_keys

TEXT = ("Mentor to surgeon. The bleeding is from the cystic artery. Place a clip proximal "
        "to the tear, then irrigate and look again.")


def run(repeats: int = 2) -> dict[str, Any]:
    ctx: zmq.Context[Any] = zmq.Context()
    heard: list[int] = []
    with tempfile.TemporaryDirectory(prefix="ts-ic-") as tmp:
        keys = Path(tmp)
        init_keys(keys, ["mentor"])
        (keys / RIGHTS_FILE).write_text("surgeon\nobserver:mentor\n")
        auth = start_authenticator(ctx, ServerKeys.load(keys))
        hub = IntercomRelay(ctx, IntercomConfig(talk_port=0, listen_port=0), host="127.0.0.1",
                            keys=ServerKeys.load(keys), auth=auth, keys_dir=keys)
        hub.start()
        eps = (f"tcp://127.0.0.1:{hub.talk_port}", f"tcp://127.0.0.1:{hub.listen_port}")
        surgeon = IntercomClient(ctx, *eps, keys=ClientKeys.load_surgeon(keys), me="surgeon",
                                 sink=lambda *a: heard.append(1))
        mentor = IntercomClient(ctx, *eps, keys=ClientKeys.load_observer(keys, "mentor"),
                                me="observer:mentor", sink=lambda *a: None)
        try:
            mentor.talk(True)
            end = time.monotonic() + 10.0
            while not heard and time.monotonic() < end:  # handshakes, not measured
                mentor.feed(np.zeros(FRAME, np.int16))
                time.sleep(0.02)
            time.sleep(0.2)
            surgeon.mouth_to_ear_ns.clear()
            speech = speech_pcm(TEXT)
            for _ in range(repeats):
                t = time.monotonic_ns()
                for i in range(len(speech) // FRAME):
                    t += FRAME_NS
                    time.sleep(max(0.0, (t - time.monotonic_ns()) / 1e9))
                    mentor.feed(speech[i * FRAME:(i + 1) * FRAME], t)
            time.sleep(0.3)
            mentor.talk(False)
        finally:
            for c in (surgeon, mentor):
                c.close()
            hub.stop()
            hub.join(2.0)
            auth.stop()
            ctx.destroy(0)
    lat = np.array(surgeon.mouth_to_ear_ns or [0], dtype=float) / 1e6
    return {"packets_sent": mentor.sent, "packets_heard": len(surgeon.mouth_to_ear_ns),
            "dropped": mentor.dropped,
            "mouth_to_ear_p50_ms": round(float(np.percentile(lat, 50)), 1),
            "mouth_to_ear_p99_ms": round(float(np.percentile(lat, 99)), 1),
            "mouth_to_ear_max_ms": round(float(lat.max()), 1), "speech_s": round(
                repeats * len(speech) / 48_000, 1)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery bench intercom",
                                description=plain_help(__doc__))
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    r = run(args.repeats)
    print(f"intercom on loopback, {r['speech_s']} s of generated speech, "
          f"{r['packets_heard']}/{r['packets_sent']} packets heard: mouth-to-ear p50 "
          f"{r['mouth_to_ear_p50_ms']} ms, p99 {r['mouth_to_ear_p99_ms']} ms, max "
          f"{r['mouth_to_ear_max_ms']} ms (goal p99 <= 150 ms)")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
