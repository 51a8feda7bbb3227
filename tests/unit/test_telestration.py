"""Telestration: strokes from a console with the draw right reach every console's HUD layer.

Real CURVE sockets, the real fail-closed authenticator and real keys (a surgeon,
the observer ``alice`` who may draw and ``bob`` who may not). Times given to
``render`` are injected so the fade and the TTL are checked without sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from helpers import wait_until

from operator_console.telestration import StrokeLayer, StrokePad, make_stroke, scripted_circle
from robot_side.telestration import RIGHTS_FILE, StrokeRelay, TelestrationConfig
from telesurgery.errors import SchemaError
from transport.auth import start_authenticator
from transport.keys import ClientKeys, ServerKeys, init_keys
from transport.schema import MAX_MESSAGE_BYTES, Stroke, decode, encode
from transport.sockets import client_socket


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    init_keys(tmp_path, ["alice", "bob"])
    (tmp_path / RIGHTS_FILE).write_text("# who may draw\nobserver:alice\n")
    return tmp_path


@pytest.fixture
def relay(keydir: Path, ctx: zmq.Context[Any]) -> Iterator[StrokeRelay]:
    auth = start_authenticator(ctx, ServerKeys.load(keydir))
    r = StrokeRelay(ctx, TelestrationConfig(draw_port=0, strokes_port=0), host="127.0.0.1",
                    keys=ServerKeys.load(keydir), auth=auth, keys_dir=keydir)
    r.start()
    yield r
    r.stop()
    r.join(2.0)
    auth.stop()


def endpoints(r: StrokeRelay) -> tuple[str, str]:
    return f"tcp://127.0.0.1:{r.draw_port}", f"tcp://127.0.0.1:{r.strokes_port}"


def first_delivery(pad: StrokePad, layer: StrokeLayer, frame_id: int = 10) -> Stroke:
    """Draw until the layer has one (CURVE handshakes and the SUB join take a moment)."""
    def got() -> bool:
        pad.draw(scripted_circle(), frame_id)
        time.sleep(0.02)
        return layer.poll(time.monotonic_ns()) > 0
    wait_until(got, 10.0, "a relayed stroke")
    return layer.strokes[-1].stroke


def test_stroke_schema_bounds() -> None:
    s = make_stroke(1, 7, scripted_circle(), 0x00FF00, 2000)
    assert decode(encode(s)) == s
    body = encode(s)
    for bad in ({"points": [0.1, 0.2, 1.5, 0.3]}, {"points": [0.1, 0.2, math.nan, 0.3]},
                {"points": [0.1, 0.2, 0.3]}, {"points": [0.5] * 514},
                {"colour": 0x1000000}, {"ttl_ms": 60_000}):
        import msgpack
        raw = msgpack.unpackb(body)
        raw.update(bad)
        with pytest.raises(SchemaError):
            decode(msgpack.packb(raw))
    # More points than allowed are thinned by the drawer, never sent as such.
    many = make_stroke(2, 7, [(i / 999, 0.5) for i in range(1000)], 0, 1000)
    assert len(many.points) == 2 * 256


def test_strokes_of_a_key_with_the_right_reach_the_surgeon_layer_with_its_author(
        relay: StrokeRelay, keydir: Path, ctx: zmq.Context[Any]) -> None:
    draw_ep, strokes_ep = endpoints(relay)
    layer = StrokeLayer.connect(ctx, strokes_ep, ClientKeys.load_surgeon(keydir))
    alice = StrokePad(ctx, draw_ep, ClientKeys.load_observer(keydir, "alice"))
    try:
        got = first_delivery(alice, layer)
        assert got.author == "observer:alice" and got.frame_id == 10
        # Shown on its frame and later ones, never on an older picture.
        now = layer.strokes[-1].recv_ns
        older = np.zeros((180, 320, 3), np.uint8)
        assert layer.render(older, 9, now) == 0 and not older.any()
        on_it = np.zeros((180, 320, 3), np.uint8)
        assert layer.render(on_it, 10, now) >= 1 and on_it.any()
        assert layer.latency_ns and all(x >= 0 for x in layer.latency_ns)
        # Fading near the end of its TTL, gone after it.
        ttl = got.ttl_ms * 1_000_000
        late = np.zeros_like(on_it)
        layer.render(late, 11, now + int(ttl * 0.95))
        assert 0 < late.max() < on_it.max()
        assert layer.render(np.zeros_like(on_it), 12, now + ttl) == 0
        assert not layer.strokes
    finally:
        alice.close()
        layer.close()


def test_strokes_without_the_right_or_invalid_are_refused_and_the_relay_keeps_going(
        relay: StrokeRelay, keydir: Path, ctx: zmq.Context[Any]) -> None:
    draw_ep, strokes_ep = endpoints(relay)
    layer = StrokeLayer.connect(ctx, strokes_ep, ClientKeys.load_surgeon(keydir))
    bob = StrokePad(ctx, draw_ep, ClientKeys.load_observer(keydir, "bob"))
    raw = client_socket(ctx, zmq.PUSH, draw_ep, ClientKeys.load_observer(keydir, "alice"),
                        MAX_MESSAGE_BYTES)
    alice = StrokePad(ctx, draw_ep, ClientKeys.load_observer(keydir, "alice"))
    try:
        wait_until(lambda: bob.draw(scripted_circle(), 3) is not None
                   and relay.refused["no right"] > 0, 10.0, "bob refused")
        body = encode(make_stroke(1, 3, scripted_circle(), 0, 1000))
        wait_until(lambda: (raw.send(body.replace(b"\xa6points", b"\xa6pointz"),
                                     zmq.NOBLOCK) if raw.poll(0, zmq.POLLOUT) else None,
                            time.sleep(0.02), relay.refused["invalid"] > 0)[-1],
                   10.0, "an invalid stroke refused")
        # A claimed author is replaced by the session's own user id.
        forged = make_stroke(2, 3, scripted_circle(), 0, 1000)
        raw.send(encode(Stroke(**{**{f: getattr(forged, f) for f in Stroke._SPEC},
                                  "author": "surgeon"})))
        got = first_delivery(alice, layer)
        assert all(s.stroke.author == "observer:alice" for s in layer.strokes)
        assert got.author == "observer:alice"
        assert layer.bad_messages == 0
        # Granting the right (the file is re-read when it changes) lets bob draw.
        before = relay.relayed
        (keydir / RIGHTS_FILE).write_text("observer:alice\nobserver:bob\n")
        wait_until(lambda: bob.draw(scripted_circle(), 4) is not None
                   and relay.relayed > before + 5, 10.0, "bob relayed once granted")
    finally:
        for s in (bob, alice):
            s.close()
        raw.close(0)
        layer.close()


def test_the_surgeon_consoles_hud_draws_the_mentors_strokes(tmp_path: Path,
                                                            ctx: zmq.Context[Any]) -> None:
    """The hook-up: the console's own video loop (ConsoleApp) shows relayed strokes."""
    from operator_console.app import ConsoleApp
    from operator_console.config import ConsoleConfig, DisplayConfig
    from operator_console.telestration import ConsoleTelestration
    from robot_side.video.capture import CapturedFrame
    from robot_side.video.config import VideoConfig
    from robot_side.video.encoder import H264Encoder, select_encoder
    from robot_side.video.sender import VideoSender
    from robot_side.video.synthetic import SyntheticScene
    from transport.config import LinkConfig
    from transport.link import ConsoleLink, RobotLink

    keys = tmp_path / "keys"
    init_keys(keys, ["mentor"])
    (keys / RIGHTS_FILE).write_text("observer:mentor\n")
    link_cfg = LinkConfig(host="127.0.0.1", keys_dir=keys, command_port=0, control_port=0,
                          telemetry_port=0, video_port=0)
    with RobotLink(link_cfg, ServerKeys.load(keys), ctx) as robot:
        relay = StrokeRelay(ctx, TelestrationConfig(draw_port=0, strokes_port=0),
                            host="127.0.0.1", keys=ServerKeys.load(keys), auth=robot.auth,
                            keys_dir=keys)
        relay.start()
        ports = {f"{c}_port": p for c, p in robot.endpoints.items()}
        out = tmp_path / "hud"
        cfg = ConsoleConfig(link=LinkConfig(host="127.0.0.1", keys_dir=keys, **ports),
                            display=DisplayConfig(headless=True, out_dir=out, every_n=1,
                                                  status_view=False),
                            telestration=ConsoleTelestration(strokes_port=relay.strokes_port))
        app = ConsoleApp(cfg)
        vcfg = VideoConfig(width=320, height=192, fps=30.0, bitrate_kbps=600, encoder="libx264")
        sender = VideoSender(robot.video_socket, H264Encoder(vcfg, select_encoder(vcfg)))
        scene = SyntheticScene(320, 192, 30.0)
        pad = StrokePad(ctx, f"tcp://127.0.0.1:{relay.draw_port}",
                        ClientKeys.load_observer(keys, "mentor"), colour=0xFF00FF)
        try:
            with ConsoleLink(cfg.link, ClientKeys.load_surgeon(keys)) as console:
                import threading
                loop = threading.Thread(target=app._video_loop, args=(console, 4.0))
                loop.start()
                for i in range(110):
                    now = time.monotonic_ns()
                    if i % 30 == 0:
                        sender.request_keyframe("test")
                    sender.send(CapturedFrame(i, now, scene.render(i, now)))
                    if i > 30:
                        pad.draw(scripted_circle(0.5, 0.5, 0.3), i)
                    time.sleep(1 / 30)
                loop.join(10.0)
        finally:
            pad.close()
            relay.stop()
            relay.join(2.0)
        assert relay.relayed > 0
    import cv2
    shots = sorted(out.glob("frame_*.png"))
    assert shots, "the console showed no pictures"
    magenta = [int(((np.abs(cv2.imread(str(p)).astype(int) - (255, 0, 255)).sum(axis=2))
                    < 60).sum()) for p in shots[-20:]]
    assert max(magenta) > 100, "the mentor's stroke is not on the surgeon's HUD"
