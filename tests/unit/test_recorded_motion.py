"""A session's recorded master motion as the scripted device's track (replay --drive)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from operator_console.devices.scripted import load_motion
from robot_side.observe import CommandRing
from robot_side.recording.bag import SessionBag
from robot_side.recording.playback import main_replay
from telesurgery.errors import DeviceError
from transport.schema import Command, decode


def _session(folder: Path, n: int) -> Path:
    ring = CommandRing()
    for i in range(n):
        a = 0.01 * i
        ring.add(Command(
            seq=i, t_send_ns=0, position=(0.01 * math.sin(a), 0.0, 0.001 * i),
            orientation=(math.cos(a / 2), math.sin(a / 2), 0.0, 0.0), grip=0.5,
            clutch=i >= n // 2, operator_present=True), 5_000_000_000 + i * 1_000_000)
    bag = SessionBag(folder, ("j1",))
    for batch in ring.batches():
        bag.commands_received(decode(batch))
    bag.close()
    return folder


def test_a_session_loads_as_a_motion_track(tmp_path: Path) -> None:
    track = load_motion(_session(tmp_path / "s", 120))
    assert len(track.t) == 120
    assert track.t[1] == pytest.approx(0.001) and track.duration_s == pytest.approx(0.119)
    assert track.position[-1] == pytest.approx((0.01 * math.sin(1.19), 0.0, 0.119))
    assert track.quat[10] == pytest.approx((math.cos(0.05), math.sin(0.05), 0.0, 0.0))
    assert int(track.clutch.sum()) == 60 and track.present.all()
    assert track.grip == pytest.approx(0.5)


def test_a_session_without_commands_is_one_clear_error(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    empty = _session(tmp_path / "empty", 0)
    with pytest.raises(DeviceError, match="recorded master poses"):
        load_motion(empty)
    assert main_replay([str(empty), "--drive", "--headless"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "master poses" in err
