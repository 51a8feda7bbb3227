"""Observers at scale: a Zenoh router + the fan-out + watchers, all real, on loopback.

The robot side is the real one as far as the fan-out sees it: an ``ObserverFeed``
publishing telemetry and safety events, and the video sender's local mirror fed by
the real H.264 encoder (keyframe wishes through ``MirrorKeyframes``, as in the video
process). Routers listen on a unix socket in tmp_path (no port at all), the TLS test
on a random free loopback port.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zenoh
import zmq
from helpers import wait_until

from operator_console.telestration import make_stroke, scripted_circle
from operator_console.video.decoder import H264Decoder
from operator_console.video.display import Display
from operator_console.watch import watch
from robot_side.fanout import keys
from robot_side.fanout.config import FanoutConfig, FanoutTls
from robot_side.fanout.process import STATUS_FILE, FanoutProcess, serve
from robot_side.fanout.watcher import Watcher
from robot_side.fanout.zconf import fanout_config, watcher_config
from robot_side.observe import ObserverFeed
from robot_side.video.capture import CapturedFrame
from robot_side.video.config import VideoConfig
from robot_side.video.encoder import H264Encoder, select_encoder
from robot_side.video.mirror import MirrorKeyframes, open_local_mirror
from robot_side.video.sender import VideoSender
from robot_side.video.synthetic import SyntheticScene, read_frame_id
from telesurgery.config import build
from telesurgery.errors import ConfigError
from transport.schema import (
    LinkReport,
    Pose,
    SafetyEvent,
    Telemetry,
    VitalAlarm,
    Vitals,
    VitalValue,
    encode,
)

W, H = 320, 192
ROBOT = "r1"


def telemetry(seq: int) -> Telemetry:
    return Telemetry(seq=seq, t_ns=time.monotonic_ns(), state="following", reason="engaged",
                     measured_js=(0.0,) * 6, setpoint_js=(0.0,) * 6, measured_cp=Pose(),
                     setpoint_cp=Pose(), link=LinkReport(), scale=0.2, estop=False)


class FakeRobotOutputs(threading.Thread):
    """What the control process and the video process put on their local sockets.
    (A stand-in for the two robot processes, named as such: the fan-out only sees
    their sockets, and these are the real sockets with the real encoder behind.)"""

    def __init__(self, run_dir: Path, ctx: zmq.Context[Any]) -> None:
        super().__init__(daemon=True)
        self.feed = ObserverFeed(run_dir / "observe.sock", ctx)
        self.mirror = open_local_mirror(ctx, run_dir / "video.sock")
        self.strokes = ctx.socket(zmq.PUB)  # the telestration relay's local copy
        self.strokes.bind(f"ipc://{run_dir / 'strokes.sock'}")
        self._surgeon = ctx.socket(zmq.PUB)
        self._surgeon.bind(f"inproc://surgeon-{id(self)}")
        cfg = VideoConfig(width=W, height=H, fps=30.0, bitrate_kbps=800, encoder="libx264")
        self.sender = VideoSender(self._surgeon, H264Encoder(cfg, select_encoder(cfg)),
                                 mirror=self.mirror)
        self._keyframes = MirrorKeyframes(self.mirror)
        self._scene = SyntheticScene(W, H, 30.0)
        self.stop = threading.Event()

    def run(self) -> None:
        seq = 0
        while not self.stop.wait(0.03):
            now = time.monotonic_ns()
            self.feed.publish(telemetry(seq))
            if seq % 10 == 0:
                self.strokes.send(encode(make_stroke(seq, seq, scripted_circle(), 0xFF0000,
                                                     1000)))
                self.feed.publish(SafetyEvent(seq=seq, t_ns=now, code="test", state_from="ready",
                                              state_to="ready"))
                self.feed.publish(Vitals(  # the vitals relay's copy on the observer feed
                    seq=seq, t_ns=now, source="hl7", monitor="ok",
                    values=(VitalValue("hr", 138.0, "/min", 120, 5000),),
                    alarms=(VitalAlarm("HR_HIGH", "high", "Tachycardia 138/min", 900),)))
            self._keyframes.poll(self.sender, now)
            self.sender.send(CapturedFrame(seq, now, self._scene.render(seq, now)))
            seq += 1

    def close(self) -> None:
        self.stop.set()
        self.join(2.0)
        self.feed.close()
        assert self.mirror is not None
        self.mirror.close(0)
        self._surgeon.close(0)
        self.strokes.close(0)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


def start_fanout(cfg: FanoutConfig, run_dir: Path) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(cfg, run_dir / "observe.sock",
                                             run_dir / "video.sock", None, stop), daemon=True)
    t.start()
    return t, stop


@pytest.fixture
def robot(run_dir: Path, ctx: zmq.Context[Any]) -> Iterator[FakeRobotOutputs]:
    out = FakeRobotOutputs(run_dir, ctx)
    out.start()
    yield out
    out.close()


class Seen:
    """What one watcher has received and decoded so far."""

    def __init__(self, w: Watcher) -> None:
        self.w = w
        self.decoder = H264Decoder(threads=1)
        self.telemetry: list[Telemetry] = []
        self.events = 0
        self.vitals = 0
        self.strokes = 0
        self.decoded: list[tuple[int, int | None]] = []
        self.synced = False

    def pump(self) -> None:
        for m in self.w.state():
            if isinstance(m, Telemetry):
                self.telemetry.append(m)
            elif isinstance(m, Vitals):
                self.vitals += 1
            else:
                self.events += 1
        self.strokes += len(self.w.strokes())
        for f in self.w.frames():
            self.synced |= f.header.keyframe  # a decoder starts at a keyframe
            if not self.synced:
                continue
            image = self.decoder.decode(f.payload)
            if image is not None:
                self.decoded.append((f.header.frame_id, read_frame_id(image)))

    def count(self) -> int | None:
        self.pump()
        return self.telemetry[-1].observers if self.telemetry else None


def test_two_watchers_get_state_and_video_through_the_router_and_are_counted(
        run_dir: Path, robot: FakeRobotOutputs) -> None:
    ep = f"unixsock-stream/{run_dir}/z.sock"
    thread, stop = start_fanout(FanoutConfig(robot=ROBOT, listen=(ep,)), run_dir)
    try:
        assert wait_until((run_dir / "z.sock").exists, 10.0)
        a = Seen(Watcher.open(watcher_config((ep,)), ROBOT))
        b = Seen(Watcher.open(watcher_config((ep,)), ROBOT))
        try:
            wait_until(lambda: a.count() == 2 and b.count() == 2, 10.0,
                       "both watchers counted on the telemetry they receive")
            # Each decodes real pictures (a watcher joining asks for a keyframe), and
            # the picture is the frame the header names (the barcode in the image).
            wait_until(lambda: (a.pump(), b.pump(), len(a.decoded) >= 3
                                and len(b.decoded) >= 3)[-1], 10.0, "decoded video")
            wait_until(lambda: (a.pump(), b.pump(), a.events > 0 and b.events > 0
                                and a.strokes > 0 and b.strokes > 0
                                and a.vitals > 0 and b.vitals > 0)[-1], 10.0,
                       "safety events, vitals and telestration strokes")
            for s in (a, b):
                assert all(fid == bar for fid, bar in s.decoded)
                assert s.w.bad_messages == 0
            b.w.close()
            wait_until(lambda: a.count() == 1, 10.0, "the count after a watcher left")
            # The watch console: the console's decoder, display and HUD on this feed.
            # A newcomer's join asks for a keyframe (granted within a second).
            with Display(headless=True, out_dir=run_dir / "shots") as display, \
                    Watcher.open(watcher_config((ep,)), ROBOT) as c:
                assert watch(c, display, 2.5) > 0
            assert display.last_hud is not None and display.last_hud.state == "following"
            assert not display.last_hud.video_stale
            assert "observer: watch only (2 watching)" in display.last_hud.warnings
            # The patient's vitals reach a remote watcher's HUD too.
            strip = display.last_hud.vitals
            assert strip is not None and strip.monitor_ok
            assert [a.code for a in strip.alarms] == ["HR_HIGH"]
        finally:
            a.w.close()
    finally:
        stop.set()
        thread.join(5.0)
    assert not thread.is_alive()


def test_the_robot_nodes_fanout_process_publishes_and_writes_its_count(
        run_dir: Path, robot: FakeRobotOutputs) -> None:
    """The child process the node starts (spawned, as in the node), not only its loop."""
    ep = f"unixsock-stream/{run_dir}/z.sock"
    proc = FanoutProcess(FanoutConfig(robot=ROBOT, listen=(ep,)), run_dir / "observe.sock",
                         run_dir / "video.sock")
    proc.start()
    try:
        wait_until((run_dir / "z.sock").exists, 20.0, "the router")
        with Watcher.open(watcher_config((ep,)), ROBOT, name="alice/../*") as w:
            seen = Seen(w)
            wait_until(lambda: seen.count() == 1, 10.0, "counted on the telemetry")
            status = run_dir / STATUS_FILE
            wait_until(lambda: status.exists()
                       and json.loads(status.read_text())["observers"] == 1, 5.0,
                       "the count in fanout.json")
            # Who, for the page: the declared name, cleaned into one key chunk.
            assert json.loads(status.read_text())["who"] == ["alice"]
    finally:
        proc.stop()
    assert proc.pid is not None


def test_a_watcher_drops_what_does_not_validate(run_dir: Path) -> None:
    ep = f"unixsock-stream/{run_dir}/z.sock"
    router = zenoh.open(fanout_config(FanoutConfig(robot=ROBOT, listen=(ep,))))
    try:
        with Watcher.open(watcher_config((ep,)), ROBOT) as w:
            time.sleep(0.3)
            router.put(keys.telemetry(ROBOT), b"\x81\xa1v\x63")  # msgpack, wrong version
            router.put(keys.video(ROBOT), b"\x00\x00\x00\x01", attachment=encode(telemetry(1)))
            router.put(keys.telemetry(ROBOT), encode(telemetry(2)))
            got: list[Any] = []
            wait_until(lambda: got.extend(w.state()) or bool(got), 5.0, "the valid one")
            assert w.frames() == []
            assert [m.seq for m in got] == [2]
            assert w.bad_messages == 2
    finally:
        router.close()


@pytest.mark.parametrize(("data", "key"), [
    ({"listen": ["tcp/0.0.0.0:7447"]}, "fanout.listen"),
    ({"listen": ["udp/127.0.0.1:7447"]}, "fanout.listen"),
    ({"robot": "a/b"}, "fanout.robot"),
    ({"robot": "r*"}, "fanout.robot"),
    ({"tls": {"ca": "/x/ca.pem"}}, "fanout.tls"),
])
def test_config_refuses_open_or_malformed_setups(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build(FanoutConfig, data)


# ---------------------------------------------------------------- TLS + access control
def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path, *names: str) -> None:
    """A CA and one EC certificate per name (CN = name), x509 v3 as rustls wants."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
             "-days", "2", "-subj", "/CN=test-ca")
    for name in names:
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl("req", *ec, "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"),
                 "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(d / f"{name}.pem"),
                 "-days", "2", "-extfile", str(ext))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tls_router_admits_listed_observers_and_only_lets_them_watch(
        tmp_path: Path, run_dir: Path, robot: FakeRobotOutputs) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki, "router", "alice", "mallory")
    ep = f"tls/localhost:{free_port()}"
    cfg = FanoutConfig(robot=ROBOT, listen=(ep,), tls=FanoutTls(
        ca=pki / "ca.pem", cert=pki / "router.pem", key=pki / "router.key",
        observers=("alice",)))
    thread, stop = start_fanout(cfg, run_dir)

    def client(name: str | None) -> zenoh.Session:
        return zenoh.open(watcher_config(
            (ep,), pki / "ca.pem", pki / f"{name}.pem" if name else None,
            pki / f"{name}.key" if name else None))

    try:
        time.sleep(1.0)
        with pytest.raises(zenoh.ZError):
            client(None)  # no client certificate: no session (mutual TLS)
        alice = client("alice")
        seen = Seen(Watcher(alice, ROBOT))
        # A second alice session tries to inject telemetry; the ACL drops her put.
        forger = client("alice")
        mallory = Seen(Watcher(client("mallory"), ROBOT))  # valid cert, not listed
        try:
            wait_until(lambda: seen.count() == 1, 10.0, "alice counted; mallory not")
            for _ in range(20):
                forger.put(keys.telemetry(ROBOT), encode(telemetry(999_999)))
                time.sleep(0.02)
            time.sleep(0.5)
            seen.pump()
            mallory.pump()
            assert seen.telemetry and all(t.seq != 999_999 for t in seen.telemetry)
            assert mallory.telemetry == [] and mallory.decoded == []
        finally:
            forger.close()
            mallory.w.close()
            seen.w.close()
    finally:
        stop.set()
        thread.join(5.0)


def test_another_sites_router_relays_to_its_own_watchers_over_tls(
        tmp_path: Path, run_dir: Path, robot: FakeRobotOutputs) -> None:
    """Multi-site: site B's router connects to the robot's with its own certificate (a
    name in ``observers``); site B's watchers connect to B only and are counted."""
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki, "router", "siteb")
    ep = f"tls/localhost:{free_port()}"
    cfg = FanoutConfig(robot=ROBOT, listen=(ep,), tls=FanoutTls(
        ca=pki / "ca.pem", cert=pki / "router.pem", key=pki / "router.key",
        observers=("siteb",)))
    thread, stop = start_fanout(cfg, run_dir)
    site_b = f"unixsock-stream/{tmp_path}/b.sock"
    try:
        time.sleep(1.0)
        router_b = zenoh.open(site_router_config(site_b, ep, pki))
        try:
            with Watcher.open(watcher_config((site_b,)), ROBOT) as w:
                seen = Seen(w)
                wait_until(lambda: seen.count() == 1, 10.0, "site B's watcher counted")
                wait_until(lambda: (seen.pump(), bool(seen.decoded))[-1], 10.0,
                           "site B's watcher decodes the robot's video")
        finally:
            router_b.close()
    finally:
        stop.set()
        thread.join(5.0)


def site_router_config(listen: str, robot_router: str, pki: Path) -> zenoh.Config:
    """What ``zenohd`` at another site is configured with (here as a Python router)."""
    conf = zenoh.Config()
    conf.insert_json5("mode", '"router"')
    conf.insert_json5("listen/endpoints", json.dumps([listen]))
    conf.insert_json5("connect/endpoints", json.dumps([robot_router]))
    conf.insert_json5("scouting/multicast/enabled", "false")
    conf.insert_json5("transport/link/tls", json.dumps({
        "root_ca_certificate": str(pki / "ca.pem"), "enable_mtls": True,
        "connect_certificate": str(pki / "siteb.pem"),
        "connect_private_key": str(pki / "siteb.key")}))
    return conf
