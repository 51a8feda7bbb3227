"""Input devices against real files, FIFOs and pseudo-terminals; no hardware needed."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import struct
import termios
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from operator_console.devices import DEVICES, create_device, open_device
from operator_console.devices import gamepad as gp
from operator_console.devices import spacemouse as sm
from operator_console.devices.base import DeviceConfig, InputDevice
from operator_console.devices.haptic import HapticDevice, HapticState, VirtualHapticBackend
from operator_console.devices.scripted import (
    MOTION_COLUMNS,
    SHIPPED_SUTURING,
    load_motion,
)
from operator_console.teleop import TeleopConfig, TeleopMapper
from telesurgery.errors import ConfigError, DeviceError
from telesurgery.quat import quat_angle

MS = 1_000_000


def test_registry_rows_import_and_unknown_kinds_are_rejected() -> None:
    for kind, (module, cls) in DEVICES.items():
        device_cls = getattr(importlib.import_module(module), cls)
        assert issubclass(device_cls, InputDevice) and device_cls.name == kind
    with pytest.raises(ConfigError, match=r"device\.kind"):
        DeviceConfig(kind="theremin")
    with pytest.raises(ConfigError, match=r"device\.speed_m_s"):
        DeviceConfig(speed_m_s=-1.0)


# ------------------------------------------------------------------ scripted
ROWS = [
    [0.0, 0.0, 0.0, 0.0, 1, 0, 0, 0, 0.0, 0, 1],
    [1.0, 0.1, 0.0, -0.2, 1, 0, 0, 0, 1.0, 1, 1],
    [2.0, 0.1, 0.2, -0.2, math.cos(0.5), 0, 0, math.sin(0.5), 1.0, 0, 1],
]


def _csv(path: Path, rows: list[list[float]]) -> Path:
    path.write_text(",".join(MOTION_COLUMNS) + "\n"
                    + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_scripted_replays_its_file_interpolating(tmp_path: Path, fmt: str) -> None:
    if fmt == "csv":
        path = _csv(tmp_path / "m.csv", ROWS)
    else:
        path = tmp_path / "m.json"
        path.write_text(json.dumps({"samples": [
            {"t": r[0], "position": r[1:4], "quat": r[4:8], "grip": r[8], "clutch": bool(r[9]),
             "operator_present": bool(r[10])} for r in ROWS]}))
    t0 = 5_000 * MS  # the replay starts at the first read, whatever the clock says
    with open_device(DeviceConfig(path=path, loop=False)) as dev:
        s = dev.read(t0)
        assert s.position == (0.0, 0.0, 0.0) and not s.clutch and s.operator_present
        s = dev.read(t0 + 500 * MS)
        assert s.position == pytest.approx((0.05, 0.0, -0.1)) and s.grip == pytest.approx(0.5)
        assert not s.clutch  # flags hold from the earlier sample
        assert dev.read(t0 + 1000 * MS).clutch
        s = dev.read(t0 + 1500 * MS)
        assert quat_angle(s.quat, (1.0, 0.0, 0.0, 0.0)) == pytest.approx(0.5, abs=0.01)
        end = dev.read(t0 + 2500 * MS)  # past the end, not looping: the hand lets go
        assert not end.operator_present and end.position == pytest.approx((0.1, 0.2, -0.2))


def test_scripted_loops_with_a_clutch_at_the_seam(tmp_path: Path) -> None:
    with open_device(DeviceConfig(path=_csv(tmp_path / "m.csv", ROWS), loop=True)) as dev:
        assert not dev.read(0).clutch
        assert not dev.read(900 * MS).clutch
        seam = dev.read(2500 * MS)  # back at the start: the follower must not jump there
        assert seam.clutch and seam.operator_present
        assert seam.position == pytest.approx((0.05, 0.0, -0.1))
        assert not dev.read(2600 * MS).clutch


@pytest.mark.parametrize("waits", [True, False])
def test_a_scripted_hand_that_waits_while_held_goes_on_from_where_it_stopped(
        tmp_path: Path, waits: bool) -> None:
    """The HIL table's scripted surgeon: while the console is not engaged the motion's
    timeline stops, so a re-engage goes on from the same pose (no orientation walk)."""
    cfg = DeviceConfig(path=_csv(tmp_path / "m.csv", ROWS), loop=True, wait_while_held=waits)
    with open_device(cfg) as dev:
        dev.engaged(True, 0)
        dev.read(0)
        dev.engaged(True, 400 * MS)
        at_stop = dev.read(400 * MS)
        dev.engaged(False, 400 * MS)  # the robot stopped: the hand waits
        waited = dev.read(1400 * MS)
        dev.engaged(True, 1400 * MS)
        resumed = dev.read(1500 * MS)
    if waits:
        assert waited.position == at_stop.position and waited.quat == at_stop.quat
        assert waited.t_ns == 1400 * MS  # the sample's own time stays the real one
        assert resumed.position == dev_pose_at(cfg, 500 * MS)
    else:
        assert waited.position == dev_pose_at(cfg, 1400 * MS)


def dev_pose_at(cfg: DeviceConfig, t_ns: int) -> tuple[float, float, float]:
    """The scripted position ``t_ns`` into the motion (a fresh device)."""
    with open_device(DeviceConfig(path=cfg.path, loop=True)) as dev:
        dev.read(0)
        return dev.read(t_ns).position


@pytest.mark.parametrize(("rows", "why"), [
    ([ROWS[0], [1.0, math.nan, 0, 0, 1, 0, 0, 0, 0, 0, 1]], "sample 1: non-finite"),
    ([ROWS[0], [0.0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]], "sample 1: time not increasing"),
    ([ROWS[0], [1.0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1]], "sample 1: quaternion norm"),
    ([ROWS[0], [1.0, 0, 0, 0, 1, 0, 0, 0, 3, 0, 1]], "sample 1: grip"),
    ([ROWS[0]], "at least 2"),
])
def test_scripted_rejects_bad_files_naming_the_sample(tmp_path: Path, rows: list[list[float]],
                                                       why: str) -> None:
    with pytest.raises(DeviceError, match=why):
        open_device(DeviceConfig(path=_csv(tmp_path / "bad.csv", rows)))


def test_scripted_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match=r"cannot read motion file .*nowhere\.csv"):
        open_device(DeviceConfig(path=tmp_path / "nowhere.csv"))


def test_shipped_suturing_file_loads_and_is_a_suturing_motion() -> None:
    track = load_motion(SHIPPED_SUTURING)
    assert track.duration_s == pytest.approx(60.0)
    assert len(track.t) == 6001  # 100 Hz; replay interpolates to the loop rate
    assert track.clutch.any() and not track.clutch.all()
    assert track.grip.min() == 0.0 and track.grip.max() == 1.0  # needle released and regrasped
    assert track.present.all()
    roll = [quat_angle(tuple(q), tuple(track.quat[0])) for q in track.quat]
    assert max(roll) > 2.5  # the wrist turns the needle through its arc
    span = np.ptp(track.position, axis=0)
    assert 0.03 < span.max() < 0.2


# ------------------------------------------------------------------ gamepad
def _event(value: int, etype: int, number: int, time_ms: int = 0) -> bytes:
    return gp.JS_EVENT.pack(time_ms, value, etype, number)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "js0"
    os.mkfifo(path)
    return path


@pytest.fixture
def pad(fifo: Path) -> Iterator[tuple[InputDevice, int]]:
    dev = open_device(DeviceConfig(kind="gamepad", device=str(fifo), speed_m_s=0.05))
    writer = os.open(fifo, os.O_WRONLY)
    try:
        yield dev, writer
    finally:
        dev.close()
        with contextlib.suppress(OSError):  # already closed by a disconnect test
            os.close(writer)


def test_gamepad_missing_names_the_paths_tried(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DeviceError, match=r"tried .*js7: No such file"):
        open_device(DeviceConfig(kind="gamepad", device=str(tmp_path / "js7")))
    monkeypatch.setattr(gp, "SEARCH_GLOB", str(tmp_path / "js*"))
    with pytest.raises(DeviceError, match=r"no joystick found: nothing matches .*js\*"):
        open_device(DeviceConfig(kind="gamepad"))


def test_gamepad_integrates_velocity_into_a_pose(pad: tuple[InputDevice, int]) -> None:
    dev, w = pad
    init = gp.JS_EVENT_INIT
    os.write(w, _event(0, gp.JS_EVENT_AXIS | init, 0) + _event(0, gp.JS_EVENT_BUTTON | init, 4))
    s = dev.read(0)
    assert s.position == (0.0, 0.0, 0.0) and not s.operator_present
    # Dead-man held, full right on the left stick, half forward (negative Y is up).
    os.write(w, _event(1, gp.JS_EVENT_BUTTON, gp.BUTTON_PRESENT)
             + _event(32767, gp.JS_EVENT_AXIS, 0) + _event(-16384, gp.JS_EVENT_AXIS, 1))
    for i in range(1, 51):  # 0.5 s in 10 ms reads
        s = dev.read(i * 10 * MS)
    half = (16384 / 32767 - gp.DEADZONE) / (1 - gp.DEADZONE)
    assert s.operator_present
    assert s.position[0] == pytest.approx(0.05 * 0.5, rel=1e-9)  # 0.05 m/s for 0.5 s
    assert s.position[1] == pytest.approx(0.05 * half * 0.5, rel=1e-4)
    assert s.position[2] == 0.0
    # Centre the stick: the pose stays; yaw on the right stick turns it.
    os.write(w, _event(0, gp.JS_EVENT_AXIS, 0) + _event(0, gp.JS_EVENT_AXIS, 1)
             + _event(-32767, gp.JS_EVENT_AXIS, 3))
    for i in range(51, 101):
        s2 = dev.read(i * 10 * MS)
    assert s2.position == pytest.approx(s.position)
    assert quat_angle(s2.quat, (1.0, 0.0, 0.0, 0.0)) == pytest.approx(1.0 * 0.5, rel=1e-6)
    # Buttons: clutch and grip held; an event split across two writes still parses.
    os.write(w, _event(1, gp.JS_EVENT_BUTTON, gp.BUTTON_CLUTCH))
    grip = _event(1, gp.JS_EVENT_BUTTON, gp.BUTTON_GRIP)
    os.write(w, grip[:3])
    assert dev.read(1010 * MS).clutch
    os.write(w, grip[3:])
    s3 = dev.read(1020 * MS)
    assert s3.clutch and s3.grip == 1.0


def test_gamepad_stall_does_not_become_a_jump(pad: tuple[InputDevice, int]) -> None:
    dev, w = pad
    os.write(w, _event(32767, gp.JS_EVENT_AXIS, 0) + _event(1, gp.JS_EVENT_BUTTON, 4))
    dev.read(0)
    s = dev.read(5_000 * MS)  # the loop stalled for 5 s
    assert s.position[0] == pytest.approx(0.05 * 0.05)


def test_gamepad_disconnect_fails_safe_and_tells_why(pad: tuple[InputDevice, int]) -> None:
    dev, w = pad
    mapper = TeleopMapper(TeleopConfig())
    os.write(w, _event(1, gp.JS_EVENT_BUTTON, gp.BUTTON_PRESENT))
    assert mapper.update(dev.read(0)).valid
    os.close(w)  # unplugged mid-stream
    with pytest.raises(DeviceError, match="disconnected") as err:
        dev.read(10 * MS)
    out = mapper.device_fault(str(err.value))
    assert not out.valid and "js0 disconnected" in out.why and not out.operator_present


# ------------------------------------------------------------------ spacemouse
def _uevent(root: Path, node: str, hid_id: str) -> None:
    d = root / node / "device"
    d.mkdir(parents=True)
    (d / "uevent").write_text(f"DRIVER=hid-generic\nHID_ID={hid_id}\nHID_NAME=x\n")


def test_spacemouse_found_by_vendor_and_missing_named(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _uevent(tmp_path, "hidraw0", "0003:0000046D:0000C52B")  # a Logitech receiver, not a puck
    pattern = str(tmp_path / "*" / "device" / "uevent")
    assert sm.find_spacemouse(pattern) is None
    monkeypatch.setattr(sm, "SYSFS_GLOB", pattern)
    with pytest.raises(DeviceError, match=r"no 3Dconnexion device found: .*0x256f.*0x046d"):
        open_device(DeviceConfig(kind="spacemouse"))
    _uevent(tmp_path, "hidraw4", "0003:0000256F:0000C635")
    assert sm.find_spacemouse(pattern) == "/dev/hidraw4"


def test_spacemouse_reports_integrate_into_a_pose(fifo: Path) -> None:
    with open_device(DeviceConfig(kind="spacemouse", device=str(fifo), speed_m_s=0.1)) as dev:
        w = os.open(fifo, os.O_WRONLY)
        try:
            # One report per read, as hidraw delivers them.
            for report in (b"\x03" + bytes([sm.BIT_PRESENT, 0]),
                           b"\x01" + struct.pack("<hhh", 350, 0, -175)):
                os.write(w, report)
                dev.read(0)
            for i in range(1, 11):
                s = dev.read(i * 10 * MS)
            assert s.operator_present and not s.clutch
            assert s.position == pytest.approx((0.1 * 0.1, 0.0, 0.05 * 0.1))  # z: push is down
            os.write(w, b"\x01" + struct.pack("<hhhhhh", 0, 0, 0, 0, 0, 350))  # combined report
            for t_ms in range(110, 170, 10):
                s = dev.read(t_ms * MS)
            # Full yaw at 1 rad/s for the 60 ms since the report arrived.
            assert quat_angle(s.quat, (1.0, 0.0, 0.0, 0.0)) == pytest.approx(0.06, rel=1e-6)
        finally:
            os.close(w)
        with pytest.raises(DeviceError, match="disconnected"):
            dev.read(220 * MS)


# ------------------------------------------------------------------ keyboard
def test_keyboard_needs_a_terminal(tmp_path: Path) -> None:
    plain = tmp_path / "not-a-tty"
    plain.write_text("")
    with pytest.raises(DeviceError, match="not-a-tty is not a terminal"):
        open_device(DeviceConfig(kind="keyboard", device=str(plain)))


def test_keyboard_on_a_pseudo_terminal() -> None:
    master, slave = os.openpty()
    try:
        dev = open_device(DeviceConfig(kind="keyboard", device=os.ttyname(slave),
                                       speed_m_s=0.05, angular_speed_rad_s=1.0))
        assert not termios.tcgetattr(slave)[3] & termios.ICANON
        os.write(master, b"pww\x1b[A")  # present, forward twice, pitch up
        s = dev.read(0)
        assert s.operator_present and s.position == (0.0, 0.0, 0.0)  # glides, never jumps
        for i in range(1, 41):
            s = dev.read(i * 10 * MS)
        assert s.position == pytest.approx((0.0, 0.01, 0.0))
        assert quat_angle(s.quat, (1.0, 0.0, 0.0, 0.0)) == pytest.approx(math.radians(5.0))
        os.write(master, b" g")
        s = dev.read(410 * MS)
        assert s.clutch and s.grip == 1.0
        dev.close()
        assert termios.tcgetattr(slave)[3] & termios.ICANON  # terminal mode restored
        # The terminal hangs up mid-session: the next read says so.
        dev = open_device(DeviceConfig(kind="keyboard", device=os.ttyname(slave)))
        os.close(master)
        master = -1
        with pytest.raises(DeviceError, match=r"keyboard: terminal (gone|closed)"):
            dev.read(420 * MS)
        dev.close()
    finally:
        if master >= 0:
            os.close(master)
        os.close(slave)


# ------------------------------------------------------------------ haptic
def test_haptic_without_sdk_names_it() -> None:
    with pytest.raises(DeviceError, match=r"Force Dimension SDK .*not installed.*libdhd"):
        open_device(DeviceConfig(kind="haptic"))
    with pytest.raises(DeviceError, match="unknown backend 'phantom'"):
        create_device(DeviceConfig(kind="haptic", backend="phantom"))


def test_haptic_force_is_clamped_and_zeroed_on_close() -> None:
    backend = VirtualHapticBackend()
    dev = HapticDevice(DeviceConfig(kind="haptic", max_force_n=2.0), backend)
    with dev:
        dev.set_force((3.0, 4.0, 0.0))
        assert backend.forces[-1] == pytest.approx((1.2, 1.6, 0.0))
        dev.set_force((0.5, 0.0, 0.0))
        assert backend.forces[-1] == (0.5, 0.0, 0.0)
        dev.set_force((math.nan, 0.0, 0.0))
        assert backend.forces[-1] == (0.0, 0.0, 0.0) and dev.rejected_forces == 1
        dev.set_force((1.0, 0.0, 0.0))
    assert backend.forces[-1] == (0.0, 0.0, 0.0)  # closing never leaves the motors pushing


def test_device_yielding_nan_is_refused_with_a_reason() -> None:
    backend = VirtualHapticBackend()
    mapper = TeleopMapper(TeleopConfig())
    with HapticDevice(DeviceConfig(kind="haptic"), backend) as dev:
        assert mapper.update(dev.read(0)).valid
        backend.state = HapticState((math.nan, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0), 0x02)
        with pytest.raises(DeviceError, match="non-finite position") as err:
            dev.read(MS)
        assert dev.invalid_samples == 1
        out = mapper.device_fault(str(err.value))
        assert not out.valid and "non-finite" in out.why
        assert all(math.isfinite(v) for v in out.position)


def test_read_before_open_is_refused() -> None:
    dev = create_device(DeviceConfig())
    with pytest.raises(DeviceError, match="before open"):
        dev.read(0)
