"""Console pieces with real sockets: no device, a device yielding NaN, a device failing mid-stream.

The command thread is the real one; the robot end is a real ``RobotLink`` on
random ports behind the real authenticator. The two failing devices are real
``InputDevice`` drivers for this test (the base class's validation runs on
them as on any device), not mocks of the system under test.
"""

from __future__ import annotations

import glob
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil_tests.rig import toml_text
from operator_console.command_loop import CommandThread
from operator_console.config import SessionConfig
from operator_console.devices.base import DeviceConfig, InputDevice, MasterSample
from operator_console.devices.gamepad import SEARCH_GLOB
from operator_console.devices.scripted import MOTION_COLUMNS, ScriptedDevice
from operator_console.devices.spacemouse import find_spacemouse
from operator_console.session import ConsoleShared, SessionThread
from operator_console.teleop import TeleopConfig, TeleopMapper
from telesurgery.errors import DeviceError
from transport.config import LinkConfig
from transport.keys import ClientKeys, ServerKeys, init_keys
from transport.link import ConsoleLink, RobotLink
from transport.schema import (
    Command,
    ControlReply,
    ControlRequest,
    LinkReport,
    Pose,
    Telemetry,
)

RATE_HZ = 200.0
GOOD_READS = 60
"""Valid samples before the device goes bad: enough for the robot to see it present."""
HOME = ((0.35, 0.0, 0.25), (0.0, 1.0, 0.0, 0.0))


# ------------------------------------------------------------------ no device
@pytest.mark.parametrize(("kind", "looked_for"), [("gamepad", SEARCH_GLOB),
                                                  ("spacemouse", "/sys/class/hidraw")])
def test_console_without_device_exits_naming_what_it_looked_for(
        tmp_path: Path, kind: str, looked_for: str) -> None:
    if kind == "gamepad" and glob.glob(SEARCH_GLOB):
        pytest.skip("a joystick is attached to this machine")
    if kind == "spacemouse" and find_spacemouse() is not None:
        pytest.skip("a 3D mouse is attached to this machine")
    init_keys(tmp_path / "keys")
    cfg = tmp_path / "console.toml"
    cfg.write_text(toml_text({"link": {"keys_dir": tmp_path / "keys"}, "device": {"kind": kind}}))
    done = subprocess.run([sys.executable, "-m", "telesurgery.cli", "console", "--config",
                           str(cfg), "--seconds", "5"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2
    assert "console cannot start" in done.stderr
    assert f"{kind}: no " in done.stderr
    assert looked_for in done.stderr


def test_motion_file_with_a_nan_row_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "nan.csv"
    rows = [",".join(MOTION_COLUMNS),
            "0.0,0,0,0,1,0,0,0,0.5,0,1",
            "0.1,nan,0,0,1,0,0,0,0.5,0,1",
            "0.2,0,0,0,1,0,0,0,0.5,0,1"]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DeviceError, match=r"sample 1: non-finite value"):
        ScriptedDevice(DeviceConfig(path=path)).open()


# ------------------------------------------------------------------ bad devices mid-stream
class TurnsBad(InputDevice):
    """Steady valid samples with the operator present, then NaN or a disconnect."""

    name = "turns-bad"

    def __init__(self, failure: str) -> None:
        super().__init__(DeviceConfig())
        self.failure = failure
        self.reads = 0

    def _open(self) -> None:
        self.reads = 0

    def _read(self, now_ns: int) -> MasterSample:
        self.reads += 1
        x = 0.001 * math.sin(self.reads / 50)
        if self.reads > GOOD_READS:
            if self.failure == "disconnect":
                raise DeviceError(f"{self.name}: /dev/test0 disconnected (end of file)")
            x = math.nan
        return MasterSample(now_ns, (x, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0), 0.5, False, True)

    def _close(self) -> None:
        pass


@pytest.fixture
def links(tmp_path: Path) -> Iterator[tuple[RobotLink, ConsoleLink]]:
    keys = tmp_path / "keys"
    init_keys(keys)
    robot_cfg = LinkConfig(host="127.0.0.1", keys_dir=keys, command_port=0, control_port=0,
                           telemetry_port=0, video_port=0)
    with RobotLink(robot_cfg, ServerKeys.load(keys)) as robot:
        ports = {f"{c}_port": p for c, p in robot.endpoints.items()}
        with ConsoleLink(LinkConfig(host="127.0.0.1", keys_dir=keys, **ports),
                         ClientKeys.load_surgeon(keys)) as console:
            yield robot, console


def receive_until(robot: RobotLink, n_bad: int, timeout_s: float = 20.0) -> list[Command]:
    """Commands as they arrive, until ``n_bad`` in a row came with the operator absent."""
    got: list[Command] = []
    deadline = time.monotonic() + timeout_s
    absent_run = 0
    while time.monotonic() < deadline and absent_run < n_bad:
        for item in robot.poll(50):
            if isinstance(item.msg, Command):
                got.append(item.msg)
                absent_run = 0 if item.msg.operator_present else absent_run + 1
    return got


@pytest.mark.parametrize(("failure", "why"), [("nan", "non-finite position"),
                                              ("disconnect", "/dev/test0 disconnected")])
def test_bad_device_sends_operator_absent_and_says_why(
        links: tuple[RobotLink, ConsoleLink], failure: str, why: str) -> None:
    robot, console = links
    device = TurnsBad(failure)
    device.open()
    shared = ConsoleShared(video_stale=False)
    thread = CommandThread(console, device, TeleopMapper(TeleopConfig(rate_hz=RATE_HZ)),
                           shared, period_ns=int(1e9 / RATE_HZ), realtime=False)
    thread.start()
    try:
        got = receive_until(robot, n_bad=20)
    finally:
        thread.stop()
        thread.join(5.0)
    present = [c.operator_present for c in got]
    assert True in present, "the device never produced valid motion"
    first_absent = present.index(False, present.index(True))
    # Once the device went bad, it never came back: every later command says absent ...
    assert not any(present[first_absent:])
    assert len(present) - first_absent >= 20
    for c in got[first_absent:]:
        # ... carries the last good pose and nothing non-finite.
        assert all(math.isfinite(v) for v in (*c.position, *c.orientation, c.grip))
        assert c.grip == 0.0
    assert got[first_absent].position == pytest.approx(got[first_absent - 1].position,
                                                       abs=1e-3)
    out = shared.last_output
    assert out is not None and not out.valid and not out.operator_present
    assert why in out.why
    if failure == "disconnect":
        assert thread.device_errors > 0
        assert out.why.startswith("master device:")
    else:
        assert device.invalid_samples > 0


def test_the_command_thread_tells_the_scripted_hand_when_it_may_move(
        links: tuple[RobotLink, ConsoleLink]) -> None:
    """Hook-up of ``wait_while_held`` (the HIL table's scripted surgeon): while the
    console is not engaged the commands carry one unchanging pose; engaged, it moves."""
    robot, console = links
    device = ScriptedDevice(DeviceConfig(wait_while_held=True))
    device.open()
    shared = ConsoleShared(video_stale=False)
    thread = CommandThread(console, device, TeleopMapper(TeleopConfig(rate_hz=RATE_HZ)),
                           shared, period_ns=int(1e9 / RATE_HZ), realtime=False)
    shared.engaged = True
    thread.start()

    def travel_m(seconds: float) -> float:
        """The largest distance between two commanded positions over ``seconds``."""
        seen: list[tuple[float, ...]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            seen.extend(tuple(i.msg.position) for i in robot.poll(20)
                        if isinstance(i.msg, Command) and i.msg.operator_present)
        lo = [min(p[k] for p in seen) for k in range(3)]
        hi = [max(p[k] for p in seen) for k in range(3)]
        return math.dist(lo, hi)

    try:
        assert travel_m(0.5) > 1e-3, "engaged: the scripted hand moves"
        shared.engaged = False
        # The commands in flight, then the tremor filter settling on the still hand.
        deadline = time.monotonic() + 10.0
        while travel_m(0.5) >= 2e-5:
            assert time.monotonic() < deadline, "not engaged: the hand waits where it was"
        shared.engaged = True
        assert travel_m(0.5) > 1e-3, "engaged again: it goes on"
    finally:
        thread.stop()
        thread.join(5.0)


# ------------------------------------------------------------------ the scripted surgeon
def test_session_clears_a_fault_it_finds_before_arming(
        links: tuple[RobotLink, ConsoleLink]) -> None:
    """A console that meets a robot already in FAULT (e.g. a serial hiccup at start-up)
    must ask to clear it: the robot refuses "arm" while latched, for ever."""
    robot, console = links
    shared = ConsoleShared(video_stale=False)
    session = SessionThread(console, SessionConfig(auto_engage=True), shared,
                            int(1e9 / RATE_HZ))
    session.start()
    state, ops, seq = "fault", [], 0
    try:
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and state == "fault":
            seq += 1
            robot.publish_telemetry(Telemetry(
                seq=seq, t_ns=time.monotonic_ns(), state=state, reason="serial_fault",
                measured_js=(0.0,) * 6, setpoint_js=(0.0,) * 6, measured_cp=Pose(*HOME),
                setpoint_cp=Pose(*HOME), link=LinkReport(), scale=0.2, estop=False))
            for item in robot.poll(20):
                if not isinstance(item.msg, ControlRequest):
                    continue
                op = item.msg.op
                ops.append(op)
                ok = op in ("clear_fault", "set_scale")  # what a latched robot accepts
                robot.reply(item.peer, ControlReply(req_id=item.msg.req_id, ok=ok, state=state,
                                                    reason="fault_cleared" if ok else "latched"))
                if op == "clear_fault":
                    state = "ready"
    finally:
        session.stop()
        session.join(5.0)
    assert "clear_fault" in ops, f"the console only asked {sorted(set(ops))}"
    assert "arm" not in ops[:ops.index("clear_fault")]


def test_telemetry_queued_during_engage_is_no_trip(links: tuple[RobotLink, ConsoleLink]) -> None:
    """Telemetry published before the robot answered "engage" still says ready (or the
    hold being resumed); read after the reply it must not count as the robot stopping,
    or the console thinks itself disengaged while the arm follows (and its stale-picture
    lockout, which acts only while engaged, would be off)."""
    _, console = links
    shared = ConsoleShared(video_stale=False)
    session = SessionThread(console, SessionConfig(), shared, int(1e9 / RATE_HZ))

    def tlm(seq: int, state: str, reason: str) -> Telemetry:
        return Telemetry(seq=seq, t_ns=0, state=state, reason=reason, measured_js=(0.0,) * 6,
                         setpoint_js=(0.0,) * 6, measured_cp=Pose(*HOME),
                         setpoint_cp=Pose(*HOME), link=LinkReport(), scale=0.2, estop=False)

    session._inbound(tlm(1, "hold", "command_timeout"), 1)
    shared.engaged = True  # the engage reply arrived; these were queued before it
    session._inbound(tlm(2, "hold", "command_timeout"), 2)
    session._inbound(tlm(3, "ready", "armed"), 3)
    assert shared.engaged and shared.trips == []
    session._inbound(tlm(4, "following", "engaged"), 4)
    session._inbound(tlm(5, "hold", "loss_burst"), 5)
    assert not shared.engaged and [t["reason"] for t in shared.trips] == ["loss_burst"]
    assert shared.telemetry_ns == 5
