"""Two network paths in the rig: one blacked out in motion is no trip; both down trip as today.

The whole rig as real processes (firmware emulator, robot node, console, and one
fault proxy per path: ``RigOptions.dual_path``), console and robot in their own
network namespaces joined by two veth pairs where namespaces are available (else
on loopback). First the console's packets on path A's veth are captured in its
namespace and their TOS byte read: commands, control and telemetry EF, video
AF41 (what the robot sends is checked on loopback, tests/system/test_dscp.py: the
userspace proxies re-send it unmarked here). While the arm
follows the scripted surgeon, path A is blacked out (TCP up, every message
dropped both ways, on every channel): the robot must keep following (no trip, no
stop, no missed command at the robot: its gate saw every sequence number fresh by
path B) and audit one ``redundancy_lost`` warning. Then both paths are blacked
out: the command timeout trips, exactly as the one-path ``link_blackout`` row.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from hil_tests.netns import NetnsPair, netns_available
from hil_tests.rig import RigOptions, SimRig, poll
from hil_tests.scenarios import (
    CI_SLACK_MS,
    COMMAND_TIMEOUT_MS,
    FIRMWARE_FIFO,
    PERIOD_MS,
    RATE_HZ,
    RIG_NICE,
    ROTATION_SCALE,
)
from robot_side.observe import ObserverClient
from robot_side.video.config import VideoConfig
from transport.config import DSCP_AF41, DSCP_EF
from transport.schema import Message, Telemetry

CAPTURE = """
import json, socket, struct, sys, time
dev, ports, seconds = sys.argv[1], set(json.loads(sys.argv[2])), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((dev, 0))
s.settimeout(0.1)
seen = {}
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        frame = s.recv(65536)
    except TimeoutError:
        continue
    if frame[12:14] != b"\\x08\\x00" or frame[23] != 6:
        continue
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    dport = struct.unpack("!H", ip[ihl + 2:ihl + 4])[0]
    if dport in ports and total - ihl - (ip[ihl + 12] >> 4) * 4 > 0:
        seen.setdefault(str(dport), set()).add(ip[1])
print(json.dumps({p: sorted(t) for p, t in seen.items()}))
"""
"""Run in the console's namespace: TOS bytes of its payload packets to each port."""

BLACKOUT_S = 1.0
ATTEMPTS = 3
NOT_THE_LINK = frozenset({"serial_fault"})
"""Trips a starved firmware emulator causes on a loaded machine: interference, retried."""
NOT_THE_COMMANDS = NOT_THE_LINK | {"video_stale"}
"""Trips the loss-burst row's faults (on commands only) cannot cause: a console whose
picture starved on a loaded machine, or the emulator."""
SMALL_VIDEO = {"video": {"width": 640, "height": 360}}
VIDEO_FPS = VideoConfig().fps


@contextmanager
def dual_path_rig(run_dir: Path) -> Iterator[SimRig]:
    """The whole rig with two paths, started (network namespaces where available);
    also ``hil_tests.video_switch_loop``'s."""
    with ExitStack() as stack:
        pair = stack.enter_context(NetnsPair(paths=2)) if netns_available()[0] else None
        opts = RigOptions(run_dir=run_dir, console_seconds=3600.0,
                          ros_backend="none", rate_hz=RATE_HZ, reengage_after_s=0.3,
                          rotation_scale=ROTATION_SCALE, robot_overrides=SMALL_VIDEO,
                          nice=RIG_NICE, firmware_fifo=FIRMWARE_FIFO, dual_path=True,
                          netns=pair)
        r = stack.enter_context(SimRig(opts))  # as the scenario table's rig (make_rig)
        r.start()
        yield r


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[SimRig]:
    with dual_path_rig(tmp_path / "rig") as r:
        yield r


def check_marking(rig: SimRig) -> None:
    """The console's packets on path A's veth carry each channel's DSCP."""
    pair = rig.opts.netns
    if pair is None:
        return  # on loopback: tests/system/test_dscp.py
    ports = rig.proxy_ports
    out = pair.check_output("console", [sys.executable, "-c", CAPTURE, pair.path_devs[0][0],
                                        json.dumps(list(ports.values())), "1.0"])
    seen = {int(p): set(t) for p, t in json.loads(out).items()}
    ef, af41 = DSCP_EF << 2, DSCP_AF41 << 2
    for ch in ("command", "control"):
        assert seen.get(ports[ch]) == {ef}, (ch, seen)
    assert seen.get(ports["video"], {af41}) == {af41}, seen


def left_following(rig: SimRig, since: int) -> list[tuple[str, str, str]]:
    return [t for t in rig.transitions()[since:] if t[0] == "following" and t[2] != "clutch"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_one_path_down_is_hitless_and_both_down_trips(rig: SimRig) -> None:
    rig.wait_following()
    check_marking(rig)
    for attempt in range(1, ATTEMPTS + 1):
        rig.wait_following()
        time.sleep(0.5)  # both paths carry commands and pings
        n_trips, n_trans = len(rig.trips()), len(rig.transitions())
        assert rig.proxy({"blackout": BLACKOUT_S})["ok"]
        time.sleep(BLACKOUT_S + 0.3)
        trips = rig.trips()[n_trips:]
        if attempt < ATTEMPTS and trips and all(t["reason"] in NOT_THE_LINK for t in trips):
            continue  # the emulator starved on a loaded machine: no measurement, again
        assert trips == [], f"a trip with one path left: {trips}"
        assert left_following(rig, n_trans) == [], "the arm stopped with one path left"
        assert rig.state()[0] == "following"
        break
    log = rig.robot_log()
    assert "redundancy_lost" in log, "no warning when down to one path"
    poll("redundancy restored", 5.0, lambda: "redundancy_restored" in rig.robot_log())

    # Both paths down: the combined stream stops, and the command timeout trips.
    rig.wait_following()
    n_trips = len(rig.trips())
    start = time.monotonic_ns()
    assert rig.proxy({"blackout": 0.5})["ok"] and rig.proxy_b({"blackout": 0.5})["ok"]
    trips = poll("a trip with both paths down", 5.0, lambda: rig.trips()[n_trips:])
    assert trips[0]["reason"] == "command_timeout", json.dumps(trips[0])
    last = trips[0]["last_command_ns"]
    detect_ms = (trips[0]["detected_ns"] - (last or start)) / 1e6
    assert detect_ms <= COMMAND_TIMEOUT_MS + PERIOD_MS + CI_SLACK_MS, detect_ms


# ---------------------------------------------------------------- the other rows of issue 16
FLAP_S = 0.2
"""One flap: path A down for half of it, up for the other half."""
FLAPS = 10
BURSTS = {"ge_p": 0.0105, "ge_r": 0.2}
"""Gilbert-Elliott loss bursts (mean five commands long) at 5 % on average per path."""
BURST_S = 3.0
SLOW_MS, FAST_MS = 40.0, 5.0


def drain(obs: ObserverClient) -> list[Message]:
    """What the robot's observer feed brought since the last call."""
    out = []
    while (msg := obs.recv(0)) is not None:
        out.append(msg)
    return out


def loss_bursts(rig: SimRig, obs: ObserverClient) -> tuple[float, dict[str, float], float]:
    """``BURST_S`` of independent loss bursts on both paths' commands: the combined loss
    the robot measured (mean of its 1 s windows), each path's (its proxy's count), and
    the median latency skew between the paths (ms)."""
    for which in "AB":
        path_faults(rig, which, {"reset_stats": True})
        path_faults(rig, which, {"faults": {"upstream": BURSTS}, "only": ["command"]})
    start = time.monotonic()
    samples: list[Telemetry] = []
    while time.monotonic() - start < BURST_S:
        time.sleep(0.1)
        fresh = [m for m in drain(obs) if isinstance(m, Telemetry)]
        if time.monotonic() - start > 1.0:  # the robot's loss window is one second
            samples += fresh
    loss = {w: command_loss(rig, w) for w in "AB"}
    for which in "AB":
        path_faults(rig, which, {"faults": {}})
    combined = sum(t.link.loss for t in samples) / max(1, len(samples))
    product = loss["A"] * loss["B"]
    # A copy fills the other path's gap only if it comes before that path's next command
    # (the gate never goes back): the paths' latency skew, printed, must stay under a period.
    skew = [abs(p[0].latency_us - p[1].latency_us) for t in samples if t.paths
            and len(p := t.paths) == 2 and p[0].latency_us is not None
            and p[1].latency_us is not None]
    skew_ms = sorted(skew)[len(skew) // 2] / 1000 if skew else float("nan")
    print(f"loss bursts: path A {loss['A']:.2%}, B {loss['B']:.2%}, product {product:.3%}, "
          f"combined at the robot {combined:.3%} (mean of {len(samples)} 1 s windows; "
          f"path latency skew median {skew_ms:.2f} ms, period {PERIOD_MS:.1f} ms)")
    return combined, loss, skew_ms


def link_trips(rig: SimRig, since: int) -> list[dict[str, Any]]:
    """Trips since ``since`` but those a starved emulator causes on a loaded machine
    (``NOT_THE_LINK``: the serial side, not the network; the commands keep flowing)."""
    return [t for t in rig.trips()[since:] if t["reason"] not in NOT_THE_LINK]


def alerts(rig: SimRig, code: str) -> list[str]:
    """The robot's audited alerts of ``code`` so far (one log line per audit record)."""
    return re.findall(rf"audited alert: {code}: (.*)", rig.robot_log())


def path_faults(rig: SimRig, which: str, body: dict[str, Any]) -> None:
    ask = rig.proxy if which == "A" else rig.proxy_b
    assert ask(body)["ok"], body


def command_loss(rig: SimRig, which: str) -> float:
    """The fraction of command messages path ``which``'s proxy dropped (exact)."""
    stats = (rig.proxy if which == "A" else rig.proxy_b)({"stats": True})["stats"]
    up = stats["command"]["upstream"]
    return float(up["dropped"]) / max(1, int(up["messages"]))


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_flapping_loss_bursts_asymmetric_latency_and_the_video_gap(rig: SimRig) -> None:
    """One path flapping, both lossy, one slow, the video's path blacked out: no trip."""
    obs = ObserverClient(rig.run / "observe.sock")
    rig.wait_following()
    drain(obs)
    n_trips = len(rig.trips())
    n_lost = len(alerts(rig, "redundancy_lost"))
    n_restored = len(alerts(rig, "redundancy_restored"))

    # One path flapping: down/up every 200 ms. One redundancy_lost, not one per flap.
    for _ in range(FLAPS):
        path_faults(rig, "A", {"blackout": FLAP_S / 2})
        time.sleep(FLAP_S)
    assert link_trips(rig, n_trips) == [], "a trip with one path flapping"
    poll("redundancy restored after the flapping", 5.0,
         lambda: len(alerts(rig, "redundancy_restored")) > n_restored)
    lost = alerts(rig, "redundancy_lost")[n_lost:]
    print(f"\nflapping: {FLAPS} flaps of {FLAP_S * 1e3:.0f} ms, redundancy_lost records "
          f"{len(lost)}, trips 0")
    assert len(lost) == 1, lost

    # Both paths with independent 5 % loss bursts (commands): the robot loses only the
    # sequence numbers both paths lost, about the product of the two.
    for attempt in range(1, ATTEMPTS + 1):
        n_row = len(rig.trips())
        combined, loss, skew_ms = loss_bursts(rig, obs)
        interfered = [t["reason"] for t in rig.trips()[n_row:]]
        skewed = not skew_ms <= PERIOD_MS  # a path process starved: copies not comparable
        if attempt < ATTEMPTS and ((interfered and set(interfered) <= NOT_THE_COMMANDS)
                                   or skewed):
            # The console, the emulator or a proxy starved on a loaded machine: stalls make
            # both copies of a command late together, which no second path can help.
            print(f"(interference: trips {interfered}, skew {skew_ms:.1f} ms; the row again)")
            rig.wait_following()
            continue
        assert link_trips(rig, n_trips) == [], "a trip with both paths lossy"
        assert min(loss.values()) > 0.01, loss  # the faults were on
        assert combined <= 0.2 * min(loss.values()), (combined, loss, skew_ms)
        break

    # Asymmetric latency: A slow, B fast. Commands arrive by the fast path (the robot's
    # one-way latency is B's), and the video moves to it (it began on A).
    for which, ms in (("A", SLOW_MS), ("B", FAST_MS)):
        spec = {"delay_ms": ms}
        path_faults(rig, which, {"faults": {"upstream": spec, "downstream": spec}})
    # Where the video is now, by the console's log: the flapping may have moved it either
    # way, and a line logged then must not stand for a switch of this row.
    poll("video by the fast path", 6.0, lambda: video_path(rig) == "B")
    time.sleep(0.5)
    tlm = [m for m in drain(obs) if isinstance(m, Telemetry)][-1]
    assert tlm.paths is not None
    by = {p.name: p for p in tlm.paths}
    print(f"asymmetric latency: path A {by['A'].latency_us} us, B {by['B'].latency_us} us, "
          f"commands executed at {tlm.link.latency_us} us one way; video by path B")
    assert tlm.link.latency_us is not None and by["A"].latency_us is not None
    assert by["A"].latency_us > 0.7 * SLOW_MS * 1000 > tlm.link.latency_us
    assert link_trips(rig, n_trips) == [], "a trip with one slow path"
    for which in "AB":
        path_faults(rig, which, {"faults": {}})

    # The video's path (now B) blacked out: the picture moves to A; the gap between the
    # last picture shown before and the first after, against 2 frame intervals + a keyframe.
    time.sleep(1.0)
    here = video_path(rig)  # B, unless a round-trip spike moved it back with both clean
    other = "A" if here == "B" else "B"
    n_gaps = len(picture_gaps(rig))
    path_faults(rig, here, {"blackout": 1.0})
    poll(f"video moved to path {other}", 3.0, lambda: video_path(rig) == other)
    gaps = poll("a picture after the switch", 3.0, lambda: picture_gaps(rig)[n_gaps:])
    interval_ms = 1e3 / VIDEO_FPS
    print(f"video path switch: picture gap {gaps[0]:.1f} ms across a blackout of its path "
          f"(frame interval {interval_ms:.1f} ms; all switches: "
          f"{', '.join(f'{g:.0f}' for g in picture_gaps(rig))} ms)")
    for split in switch_splits(rig)[n_gaps:]:
        print(f"  where the gap went: {split}")
    time.sleep(1.2)
    others = [t["reason"] for t in rig.trips()[n_trips:] if t["reason"] in NOT_THE_LINK]
    if others:
        print(f"(not the link: {len(others)} {others[0]} trips of a starved emulator)")
    assert link_trips(rig, n_trips) == [], "a trip with the video's path blacked out"
    obs.close()


def video_path(rig: SimRig) -> str:
    """The path the console's video comes by now (its last "video now by path X" line;
    path A, the first, before any)."""
    found = re.findall(r"video now by path (\w+)", rig.log("console"))
    return found[-1] if found else "A"


def switch_splits(rig: SimRig) -> list[str]:
    """Each switch's split of its picture gap, as the console logged it."""
    return re.findall(r"picture gap [\d.]+ ms \((.*)\)", rig.log("console"))


def picture_gaps(rig: SimRig) -> list[float]:
    return [float(m) for m in re.findall(r"picture gap ([\d.]+) ms", rig.log("console"))]
