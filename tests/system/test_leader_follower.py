"""An SO-101 leader arm drives an SO-101 follower in joint space, all real processes.

Two Feetech STS buses emulated on ptys (``telesurgery servo-sim`` processes: the
leader's, torque off, moved "by hand" through its control socket; the follower's),
a robot node (``telesurgery robot``, ``feetech`` backend, SO-101
URDF) and a console (``telesurgery console``, ``so101_leader`` device, presence from
a pty standing in for the foot pedal). Moving the leader's servos moves the
follower's goal positions, joint for joint, and never past the follower's limits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import wait_until

from hil_tests.rig import free_ports, toml_text
from operator_console.devices.leader import URDF
from robot_side.estop import send
from robot_side.kinematics import Kinematics
from transport.keys import init_keys

pytestmark = pytest.mark.slow

RATE_HZ = 250.0
IDS = (1, 2, 3, 4, 5, 6)
START = (0.0, -0.6, 0.9, 0.3, 0.0, 0.0)
"""Both arms start bent, inside every limit, in the same pose (the leader put where the
follower is, as the engage rule asks)."""
CHANNELS = ("command", "control", "telemetry", "video")


@dataclass
class Servo:
    position_rad: float
    goal_rad: float
    torque_on: bool


class Bus:
    """A ``servo-sim`` process's control socket (robot_side.servos.sim_control)."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str) -> None:
        self._sock = ctx.socket(zmq.REQ)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVTIMEO, 10_000)
        self._sock.connect(endpoint)

    def ask(self, body: dict[str, Any]) -> dict[str, Any]:
        self._sock.send_json(body)
        reply: dict[str, Any] = self._sock.recv_json()  # type: ignore[assignment]
        return reply

    def snapshot(self, sid: int) -> Servo:
        s = self.ask({"state": True})["state"]
        i = s["ids"].index(sid)
        return Servo(s["positions"][i], s["goals"][i], s["torque_on"][i])

    def move_by_hand(self, sid: int, rad: float) -> bool:
        return bool(self.ask({"move_by_hand": [sid, rad]})["ok"])


@dataclass
class Rig:
    run: Path
    leader: Bus
    follower: Bus
    procs: dict[str, subprocess.Popen[bytes]]

    def log(self, name: str) -> str:
        return (self.run / f"{name}.log").read_text(errors="replace")

    def status(self) -> str:
        return send(self.run / "estop.sock", "status")

    def following(self) -> bool:
        return self.status().startswith("ok following")

    def goal(self, sid: int) -> float:
        return self.follower.snapshot(sid).goal_rad


def spawn(run: Path, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    with (run / f"{name}.log").open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "telesurgery.cli", *argv], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    run = tmp_path_factory.mktemp("leader-follower")
    run.chmod(0o700)
    keys = run / "keys"
    init_keys(keys)
    ports = dict(zip(CHANNELS, free_ports(4), strict=True))
    link = {"host": "127.0.0.1", "keys_dir": keys, **{f"{c}_port": p for c, p in ports.items()}}
    pedal, pedal_tty = os.openpty()
    tty.setraw(pedal_tty)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        for name in ("follower", "leader"):
            procs[name] = spawn(run, name, [
                "servo-sim", "--family", "feetech", "--link", str(run / f"tty{name}"),
                "--ids", ",".join(map(str, IDS)), "--initial", ",".join(map(str, START)),
                "--control", f"ipc://{run}/{name}.ipc"])
        rig = Rig(run, Bus(ctx, f"ipc://{run}/leader.ipc"),
                  Bus(ctx, f"ipc://{run}/follower.ipc"), procs)
        for name in ("follower", "leader"):
            wait_until(lambda n=name: "servo-sim:" in rig.log(n), 30.0, f"the {name}'s bus")
        fol_port, lead_port = run / "ttyfollower", run / "ttyleader"
        (run / "robot.toml").write_text(toml_text({
            "link": link,
            "manipulator": {"backend": "feetech"},
            "servos": {"port": fol_port, "ids": list(IDS), "gripper_id": 6,
                       "latency_ms": 20.0, "max_rate_hz": 200.0,
                       "command_watchdog_ms": 1000.0, "brake": "hold"},
            "kinematics": {"urdf": URDF, "tip_frame": "tool_tip"},
            "control": {"rate_hz": RATE_HZ, "realtime": False, "scale": 1.0},
            "ros": {"backend": "none"},
            "page": {"port": 0, "enabled": False},
            "record": {"folder": run / "recordings", "enabled": False},
            "video": {"width": 160, "height": 120, "fps": 10.0, "encoder": "libx264"},
            "safety.audit": {"path": run / "audit" / "robot.audit"},
            "safety.watchdog": {"require_video": False, "settle_ms": 100.0,
                                "command_timeout_ms": 200.0},
            "safety.motion": {"workspace_min": [-1.0, -1.0, -1.0],
                              "workspace_max": [1.0, 1.0, 1.0], "max_speed_m_s": 0.5,
                              "tracking_error_m": 0.05, "tracking_error_rad": 1.0},
            "estop": {"socket": run / "estop.sock"},
            "observe": {"socket": run / "observe.sock"},
        }))
        (run / "console.toml").write_text(toml_text({
            "link": link,
            "device": {"kind": "so101_leader", "device": lead_port,
                       "switches": os.ttyname(pedal_tty)},
            "loop": {"rate_hz": RATE_HZ, "realtime": False},
            "teleop": {"rate_hz": RATE_HZ},
            "display": {"enabled": False, "status_view": False},
            "session": {"auto_engage": True, "reengage_after_s": 1.0, "scale": 1.0},
        }))
        try:
            procs["robot"] = spawn(run, "robot", ["robot", "--config", str(run / "robot.toml"),
                                                  "--summary", str(run / "robot.json")])
            wait_until(lambda: "robot node up" in rig.log("robot")
                       or procs["robot"].poll() is not None, 90.0, "the robot node")
            assert procs["robot"].poll() is None, rig.log("robot")[-3000:]
            procs["console"] = spawn(run, "console", ["console", "--config",
                                                      str(run / "console.toml"),
                                                      "--seconds", "300", "--headless"])
            wait_until(lambda: "so101_leader on" in rig.log("console")
                       or procs["console"].poll() is not None, 60.0, "the leader device")
            assert procs["console"].poll() is None, rig.log("console")[-3000:]
            os.write(pedal, b"p")  # the surgeon is at the console
            yield rig
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            os.close(pedal)
            os.close(pedal_tty)
            print_path(run / "robot.json")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        ctx.destroy(linger=0)


def print_path(summary: Path) -> None:
    """Leader servo read -> follower bus frame written, as the robot measured it (a figure,
    not an assertion): the console's joint-space path, beside the ROS one
    (tests/system/test_ros_command.py)."""
    if summary.exists():
        data = json.loads(summary.read_text())
        print(f"\nleader joint-space path (console sample -> follower frame written): "
              f"{data.get('path', {})}")


def drive_leader(rig: Rig, sid: int, target: float, timeout_s: float = 60.0) -> None:
    """A hand turns one leader joint toward ``target`` at about 1 rad/s while the
    follower follows. When a trip of the loaded machine stops the follower, the
    surgeon does what the engage rule asks: puts the leader back where the follower
    is, and the console re-engages; then the hand goes on."""
    deadline = time.monotonic() + timeout_s
    at = rig.leader.snapshot(sid).position_rad
    while abs(at - target) > 1e-6:
        assert time.monotonic() < deadline, f"leader joint {sid} never reached {target}"
        if not rig.following():
            for i in IDS[:-1]:
                rig.leader.move_by_hand(i, rig.follower.snapshot(i).position_rad)
            at = rig.leader.snapshot(sid).position_rad
            time.sleep(0.3)
            continue
        at = at + max(-0.02, min(0.02, target - at))
        assert rig.leader.move_by_hand(sid, at)
        time.sleep(0.02)


def expect(rig: Rig, pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    if not wait_until(pred, timeout_s):
        tail = "\n".join(rig.log("robot").splitlines()[-15:])
        raise AssertionError(f"timed out waiting for {what}: {rig.status()}; goals "
                             f"{[round(rig.goal(i), 3) for i in IDS]}\n{tail}")


def test_the_leader_moves_the_follower_joint_for_joint_within_its_limits(rig: Rig) -> None:
    expect(rig, rig.following, 60.0,
           "the console to engage in joint space")
    assert rig.follower.snapshot(2).torque_on
    # Shoulder lift: -0.6 -> -0.2 rad on the leader; the follower's goal goes with it.
    drive_leader(rig, 2, -0.2)
    expect(rig, lambda: abs(rig.goal(2) - -0.2) < 0.02, 10.0, "the follower's shoulder goal")
    assert abs(rig.goal(3) - START[2]) < 0.02, "another joint moved"
    # Shoulder pan past the follower's upper limit: its goal stops inside the limit.
    upper = float(Kinematics.from_urdf(URDF).upper[0])
    drive_leader(rig, 1, upper + 0.4)
    expect(rig, lambda: rig.goal(1) > upper - 0.1, 10.0, "the pan goal to reach its limit")
    for _ in range(10):
        assert rig.goal(1) <= upper + 1e-3
        time.sleep(0.05)
    assert "joint_command" not in rig.log("robot")
