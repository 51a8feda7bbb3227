"""Teleop mapping with real numbers (the status view is tested in test_status_view.py)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from operator_console.devices.base import DeviceConfig, MasterSample
from operator_console.devices.scripted import ScriptedDevice
from operator_console.teleop import TeleopConfig, TeleopMapper, TeleopOutput
from telesurgery.errors import ConfigError
from telesurgery.quat import quat_angle, quat_from_rotvec, quat_mul

RATE = 1000.0
PERIOD_NS = int(1e9 / RATE)
ABOUT_Z = quat_from_rotvec((0.0, 0.0, math.pi / 2))
"""A registration: console x is robot y."""


def sample(i: int, pos: tuple[float, float, float] = (0.0, 0.0, 0.0),
           quat: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0), *,
           clutch: bool = False, present: bool = True, grip: float = 0.5) -> MasterSample:
    return MasterSample(t_ns=i * PERIOD_NS, position=pos, quat=quat, grip=grip, clutch=clutch,
                        operator_present=present)


def mapper(tremor: bool = False, **kw: object) -> TeleopMapper:
    return TeleopMapper(TeleopConfig(tremor_filter=tremor, rate_hz=RATE, **kw))  # type: ignore[arg-type]


def pos(out: TeleopOutput) -> np.ndarray:
    return np.array(out.position)


# ------------------------------------------------------------------ registration only
def test_the_console_sends_the_registered_pose_unscaled() -> None:
    """No anchoring and no gain on the console: the robot owns the one mapping."""
    m = mapper(frame_rotation=ABOUT_Z)
    roll = quat_from_rotvec((0.3, 0.0, 0.0))
    out = m.update(sample(0, (0.01, 0.02, 0.03), roll))
    assert out.valid and not out.why
    np.testing.assert_allclose(pos(out), [-0.02, 0.01, 0.03], atol=1e-12)
    np.testing.assert_allclose(out.quat, quat_mul(ABOUT_Z, roll), atol=1e-12)
    assert not hasattr(m, "set_scale") and not hasattr(m, "anchor")


def test_the_tremor_filter_passes_the_hand_exactly_once_settled() -> None:
    m = mapper(tremor=True)
    first = m.update(sample(0, (0.01, 0.02, 0.03)))
    np.testing.assert_allclose(pos(first), [0.01, 0.02, 0.03], atol=1e-15)  # starts at the hand
    out = None
    for i in range(1, 4000):  # 4 s: the notches have long settled
        out = m.update(sample(i, (0.02, 0.02, 0.03)))
    assert out is not None
    np.testing.assert_allclose(pos(out), [0.02, 0.02, 0.03], rtol=0, atol=1e-9)


def test_clutch_passes_through_valid_for_the_robot_to_hold() -> None:
    m = mapper()
    out = m.update(sample(0, (0.01, 0.0, 0.0), clutch=True))
    assert out.valid and out.clutch and out.why == "clutch"
    np.testing.assert_allclose(pos(out), [0.01, 0.0, 0.0])


# ------------------------------------------------------------------ fail-safe
def test_operator_absent_is_invalid_and_the_filter_restarts_at_the_hand() -> None:
    m = mapper(tremor=True)
    moving = m.update(sample(1, (0.01, 0.0, 0.0)))
    gone = m.update(sample(2, (0.05, 0.0, 0.0), present=False))
    assert not gone.valid and gone.why == "operator not present" and not gone.operator_present
    assert gone.position == moving.position  # the last good pose
    back = m.update(sample(3, (0.09, 0.0, 0.0)))  # the hand came back somewhere else
    assert back.valid
    np.testing.assert_allclose(pos(back), [0.09, 0.0, 0.0], atol=1e-15)  # no filter transient


@pytest.mark.parametrize(("bad", "words"), [
    ({"pos": (math.nan, 0.0, 0.0)}, "non-finite position"),
    ({"pos": (0.0, math.inf, 0.0)}, "non-finite position"),
    ({"quat": (math.nan, 0.0, 0.0, 1.0)}, "non-finite orientation"),
    ({"quat": (2.0, 0.0, 0.0, 0.0)}, "norm"),
    ({"grip": math.nan}, "grip"),
])
def test_bad_sample_is_invalid_with_a_reason(bad: dict[str, object], words: str) -> None:
    m = mapper(tremor=True)
    ok = m.update(sample(0, (0.01, 0.0, 0.0)))
    out = m.update(sample(1, **bad))  # type: ignore[arg-type]
    assert not out.valid and words in out.why and out.why.startswith("master device")
    assert all(math.isfinite(v) for v in (*out.position, *out.quat))
    assert out.position == ok.position
    assert m.invalid_samples == 1


@pytest.mark.parametrize(("kw", "key"), [
    ({"rate_hz": 20.0}, "teleop.rate_hz"),
    ({"frame_rotation": (1.0, 1.0, 0.0, 0.0)}, "teleop.frame_rotation"),
])
def test_config_is_validated(kw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        TeleopConfig(**kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ alignment (dVRK style)
def test_scripted_surgeon_aligns_the_hand_with_the_instrument() -> None:
    """The scripted hand turns (a grip offset, like regripping the pen) so the registered
    orientation equals the instrument's; the recorded motion keeps its axes afterwards."""
    device = ScriptedDevice(DeviceConfig())
    m = mapper(frame_rotation=ABOUT_Z)
    instrument = quat_from_rotvec((0.0, 2.5, 0.4))
    with device:
        before = m.update(device.read(0))
        assert quat_angle(before.quat, instrument) > 1.0
        assert m.align(device, instrument)
        first = m.update(device.read(PERIOD_NS))
        assert quat_angle(first.quat, instrument) < 1e-3
        later = m.update(device.read(200 * PERIOD_NS))
    unaligned = ScriptedDevice(DeviceConfig())
    ref = mapper(frame_rotation=ABOUT_Z)
    with unaligned:
        r1 = ref.update(unaligned.read(0))
        r1 = ref.update(unaligned.read(PERIOD_NS))
        r2 = ref.update(unaligned.read(200 * PERIOD_NS))
    # Same relative rotation of the hand, aligned or not.
    assert quat_angle(first.quat, later.quat) == pytest.approx(quat_angle(r1.quat, r2.quat),
                                                               abs=1e-9)


def test_shipped_suturing_replay_is_continuous() -> None:
    device = ScriptedDevice(DeviceConfig())
    m = TeleopMapper(TeleopConfig(rate_hz=RATE))
    poses, clutched = [], []
    with device:
        for i in range(int(RATE * 30)):
            out = m.update(device.read(i * PERIOD_NS))
            assert out.valid, out.why
            poses.append(out.position)
            clutched.append(out.clutch)
    steps = np.linalg.norm(np.diff(np.array(poses), axis=0), axis=1)
    print(f"\nsuturing replay, 30 s at {RATE:g} Hz: largest master step {steps.max() * 1e6:.1f} um "
          f"per period; {int(np.sum(clutched))} clutched periods")
    assert any(clutched)
    # At the robot's scale 0.2 a step stays under its 0.25 m/s bound.
    assert 0.2 * steps.max() < 0.25 / RATE


def test_mapper_cost_per_update_is_printed() -> None:
    """A figure, not a timed assertion: the cost of one update with the filter tracking."""
    device = ScriptedDevice(DeviceConfig())
    m = TeleopMapper(TeleopConfig(rate_hz=1000.0))
    with device:
        samples = [device.read(i * 1_000_000) for i in range(5000)]
    start = time.perf_counter_ns()
    outputs = [m.update(s) for s in samples]
    per_update_us = (time.perf_counter_ns() - start) / len(samples) / 1e3
    print(f"\nteleop update with tremor filter: {per_update_us:.1f} us per call "
          f"({per_update_us / 10:.1f} % of one core at 1 kHz)")
    assert all(o.valid for o in outputs)


