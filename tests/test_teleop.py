"""Teleop mapping with real numbers (the status view is tested in test_status_view.py)."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest

from operator_console.devices.base import DeviceConfig, MasterSample
from operator_console.devices.scripted import ScriptedDevice
from operator_console.teleop import TeleopConfig, TeleopMapper, TeleopOutput
from telesurgery.errors import ConfigError, SchemaError
from telesurgery.quat import quat_angle, quat_from_rotvec, quat_mul

RATE = 500.0
PERIOD_NS = int(1e9 / RATE)
FOLLOWER = (0.35, 0.02, 0.25)
FOLLOWER_Q = quat_from_rotvec((0.0, 0.4, 0.1))


def sample(i: int, pos: tuple[float, float, float] = (0.0, 0.0, 0.0),
           quat: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0), *,
           clutch: bool = False, present: bool = True, grip: float = 0.5) -> MasterSample:
    return MasterSample(t_ns=i * PERIOD_NS, position=pos, quat=quat, grip=grip, clutch=clutch,
                        operator_present=present)


def engaged(tremor: bool = False, **kw: object) -> TeleopMapper:
    m = TeleopMapper(TeleopConfig(tremor_filter=tremor, rate_hz=RATE, **kw))  # type: ignore[arg-type]
    m.anchor(FOLLOWER, FOLLOWER_Q)
    return m


def pos(out: TeleopOutput) -> np.ndarray:
    return np.array(out.position)


# ------------------------------------------------------------------ scaling
def test_scaling_is_exact_without_filter() -> None:
    m = engaged()
    first = m.update(sample(0, (0.01, 0.02, 0.03)))
    assert first.valid and first.position == pytest.approx(FOLLOWER, abs=0)
    out = m.update(sample(1, (0.02, 0.02, 0.03)))  # master +10 mm in x
    moved_mm = (pos(out) - FOLLOWER) * 1e3
    print(f"\nmaster +10.000 mm at scale 0.2 -> follower {moved_mm[0]:.6f} mm (filter off)")
    np.testing.assert_allclose(moved_mm, [2.0, 0.0, 0.0], rtol=0, atol=1e-9)


def test_scaling_is_exact_with_filter_after_settling() -> None:
    m = engaged(tremor=True)
    m.update(sample(0, (0.01, 0.02, 0.03)))
    out = None
    for i in range(1, 2000):  # 4 s: the notches have long settled
        out = m.update(sample(i, (0.02, 0.02, 0.03)))
    assert out is not None
    moved_mm = (pos(out) - FOLLOWER) * 1e3
    print(f"\nmaster +10.000 mm at scale 0.2 -> follower {moved_mm[0]:.6f} mm (filter on)")
    np.testing.assert_allclose(moved_mm, [2.0, 0.0, 0.0], rtol=0, atol=1e-9)


def ramp(m: TeleopMapper, start: int, n: int, p0: np.ndarray, v: np.ndarray,
         **kw: bool) -> tuple[list[np.ndarray], np.ndarray]:
    """Move the master at constant velocity v (m per period); return targets and end."""
    out, p = [], p0
    for i in range(start, start + n):
        p = p0 + v * (i - start)
        out.append(pos(m.update(sample(i, tuple(p), **kw))))  # type: ignore[arg-type]
    return out, p


@pytest.mark.parametrize("tremor", [False, True])
def test_clutch_holds_then_reanchors_without_jump(tremor: bool) -> None:
    m = engaged(tremor=tremor)
    v = np.array([20e-6, -10e-6, 5e-6])  # 10 mm/s on the master
    before, p = ramp(m, 0, 500, np.zeros(3), v)
    held = before[-1]
    during, p = ramp(m, 500, 500, p, np.array([-100e-6, 0.0, 0.0]), clutch=True)
    for target in during:  # the master travels 50 mm back; the follower does not move
        np.testing.assert_array_equal(target, held)
    after, p = ramp(m, 1000, 500, p, v)
    steps = np.linalg.norm(np.diff(np.array([*before, *during, *after]), axis=0), axis=1)
    nominal = 0.2 * float(np.linalg.norm(v))
    print(f"\nclutch ({'filter on' if tremor else 'filter off'}): step at release "
          f"{np.linalg.norm(after[0] - held) * 1e6:.3f} um, largest step "
          f"{steps.max() * 1e6:.3f} um, nominal {nominal * 1e6:.3f} um")
    np.testing.assert_allclose(after[0], held, rtol=0, atol=1e-12)  # re-anchored: no jump
    # The notches ring a little when a ramp starts; without the filter steps are exact.
    assert steps.max() <= nominal * (1.25 if tremor else 1.0 + 1e-9)
    # After release the follower moves with the master again, at 0.2 of its speed.
    np.testing.assert_allclose(after[-1] - after[-2], 0.2 * v, rtol=1e-3, atol=1e-12)
    if not tremor:
        np.testing.assert_allclose(after[-1] - held, 0.2 * v * 499, rtol=0, atol=1e-12)


def test_set_scale_and_link_scale_never_jump_and_take_effect() -> None:
    m = engaged()
    v = np.array([10e-6, 0.0, 0.0])
    a, p = ramp(m, 0, 100, np.zeros(3), v)
    m.set_scale(0.5)
    b, p = ramp(m, 100, 101, p + v, v)
    m.set_link_scale(0.4)  # effective 0.2
    c, p = ramp(m, 201, 101, p + v, v)
    track = np.array([*a, *b, *c])
    steps = np.diff(track[:, 0])
    np.testing.assert_allclose(steps[:99], 0.2 * 10e-6, rtol=1e-9)
    np.testing.assert_allclose(steps[100:200], 0.5 * 10e-6, rtol=1e-9)
    np.testing.assert_allclose(steps[201:], 0.2 * 10e-6, rtol=1e-9)
    assert m.effective_scale == pytest.approx(0.2)
    assert np.abs(steps).max() <= 0.5 * 10e-6 * (1 + 1e-9)  # no step beyond the largest scale


def test_bad_scale_is_rejected_counted_and_does_not_change_anything() -> None:
    m = engaged()
    for bad in (0.0, 5.0, math.nan):
        with pytest.raises(ConfigError, match=r"teleop\.scale"):
            m.set_scale(bad)
    with pytest.raises(ConfigError, match="link_scale"):
        m.set_link_scale(1.5)
    assert m.rejected_settings == 4
    assert m.scale == 0.2 and m.link_factor == 1.0


# ------------------------------------------------------------------ orientation
def test_relative_rotation_is_applied_to_the_follower_anchor() -> None:
    m = engaged()
    q_master0 = quat_from_rotvec((0.2, 0.0, 0.0))
    m.update(sample(0, quat=q_master0))
    turn = quat_from_rotvec((0.0, 0.0, math.radians(30)))
    out = m.update(sample(1, quat=quat_mul(turn, q_master0)))
    np.testing.assert_allclose(out.quat, quat_mul(turn, FOLLOWER_Q), atol=1e-12)


def test_frame_rotation_maps_console_axes_to_robot_axes() -> None:
    about_z = quat_from_rotvec((0.0, 0.0, math.pi / 2))  # console x is robot y
    m = engaged(frame_rotation=about_z)
    m.update(sample(0))
    roll = quat_from_rotvec((0.3, 0.0, 0.0))
    out = m.update(sample(1, (0.01, 0.0, 0.0), roll))
    np.testing.assert_allclose(pos(out) - FOLLOWER, [0.0, 0.002, 0.0], atol=1e-12)
    np.testing.assert_allclose(out.quat, quat_mul(quat_from_rotvec((0.0, 0.3, 0.0)), FOLLOWER_Q),
                               atol=1e-12)


def test_rotation_can_be_scaled_or_ignored() -> None:
    half = engaged(rotation_scale=0.5)
    fixed = engaged(align_rotation=False)
    for m in (half, fixed):
        m.update(sample(0))
    turn = quat_from_rotvec((0.0, 0.0, 0.8))
    np.testing.assert_allclose(half.update(sample(1, quat=turn)).quat,
                               quat_mul(quat_from_rotvec((0.0, 0.0, 0.4)), FOLLOWER_Q), atol=1e-12)
    np.testing.assert_allclose(fixed.update(sample(1, quat=turn)).quat, FOLLOWER_Q, atol=1e-12)


# ------------------------------------------------------------------ fail-safe
def test_operator_absent_is_invalid_and_return_reanchors() -> None:
    m = engaged()
    m.update(sample(0))
    moving = m.update(sample(1, (0.01, 0.0, 0.0)))
    gone = m.update(sample(2, (0.05, 0.0, 0.0), present=False))
    assert not gone.valid and gone.why == "operator not present" and not gone.operator_present
    assert gone.position == moving.position  # the follower holds
    back = m.update(sample(3, (0.09, 0.0, 0.0)))  # the hand came back somewhere else
    assert back.valid and back.position == moving.position  # no jump on return


@pytest.mark.parametrize(("bad", "words"), [
    ({"pos": (math.nan, 0.0, 0.0)}, "non-finite position"),
    ({"pos": (0.0, math.inf, 0.0)}, "non-finite position"),
    ({"quat": (math.nan, 0.0, 0.0, 1.0)}, "non-finite orientation"),
    ({"quat": (2.0, 0.0, 0.0, 0.0)}, "norm"),
    ({"grip": math.nan}, "grip"),
])
def test_bad_sample_is_invalid_with_a_reason(bad: dict[str, object], words: str) -> None:
    m = engaged(tremor=True)
    ok = m.update(sample(0, (0.01, 0.0, 0.0)))
    out = m.update(sample(1, **bad))  # type: ignore[arg-type]
    assert not out.valid and words in out.why and out.why.startswith("master device")
    assert all(math.isfinite(v) for v in (*out.position, *out.quat))
    assert out.position == ok.position
    assert m.invalid_samples == 1
    again = m.update(sample(2, (0.03, 0.0, 0.0)))  # good again, elsewhere: no jump
    assert again.valid and again.position == ok.position


def test_nothing_is_valid_before_engage() -> None:
    m = TeleopMapper(TeleopConfig())
    out = m.update(sample(0))
    assert not out.valid and "not anchored" in out.why
    with pytest.raises(SchemaError, match="orientation"):
        m.anchor(FOLLOWER, (0.5, 0.0, 0.0, 0.0))
    m.anchor(FOLLOWER, FOLLOWER_Q)
    assert m.anchored
    m.disengage()
    assert not m.update(sample(1)).valid


@pytest.mark.parametrize(("kw", "key"), [
    ({"scale": 2.0}, "teleop.scale"), ({"min_scale": 0.0}, "teleop.min_scale"),
    ({"rate_hz": 20.0}, "teleop.rate_hz"), ({"frame_rotation": (1.0, 1.0, 0.0, 0.0)},
                                            "teleop.frame_rotation"),
])
def test_config_is_validated(kw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        TeleopConfig(**kw)  # type: ignore[arg-type]


def test_shipped_suturing_replay_is_continuous_and_holds_during_clutch() -> None:
    device = ScriptedDevice(DeviceConfig())
    m = TeleopMapper(TeleopConfig(rate_hz=RATE))
    targets, clutched = [], []
    with device:
        m.anchor(FOLLOWER, FOLLOWER_Q)
        for i in range(int(RATE * 30)):
            out = m.update(device.read(i * PERIOD_NS))
            assert out.valid, out.why
            targets.append(out.position)
            clutched.append(out.clutch)
    steps = np.linalg.norm(np.diff(np.array(targets), axis=0), axis=1)
    held = np.array(clutched[1:]) & np.array(clutched[:-1])
    print(f"\nsuturing replay, 30 s at {RATE:g} Hz: largest target step {steps.max() * 1e6:.1f} um "
          f"per period; {int(np.sum(clutched))} clutched periods")
    assert held.any() and np.all(steps[held] == 0.0)
    assert steps.max() < 0.25 * 1.0 / RATE  # under the robot's 0.25 m/s step bound


def test_mapper_cost_per_update_is_printed() -> None:
    """A figure, not a timed assertion: the cost of one update with the filter tracking."""
    device = ScriptedDevice(DeviceConfig())
    m = TeleopMapper(TeleopConfig(rate_hz=1000.0))
    with device:
        samples = [device.read(i * 1_000_000) for i in range(5000)]
    m.anchor(FOLLOWER, FOLLOWER_Q)
    start = time.perf_counter_ns()
    outputs = [m.update(s) for s in samples]
    per_update_us = (time.perf_counter_ns() - start) / len(samples) / 1e3
    print(f"\nteleop update with tremor filter: {per_update_us:.1f} us per call "
          f"({per_update_us / 10:.1f} % of one core at 1 kHz)")
    assert all(o.valid for o in outputs)


def test_scaled_rotation_stays_continuous_through_a_full_turn() -> None:
    # Scaling a relative rotation takes the short way round: without re-basing, the
    # target would flip by rotation_scale x 2 pi when the master passes pi.
    m = engaged(rotation_scale=0.3)
    steps = 400
    outs = [m.update(sample(i, quat=quat_from_rotvec((0.0, 0.0, 2 * math.pi * i / steps))))
            for i in range(steps + 1)]
    worst = max(quat_angle(a.quat, b.quat) for a, b in itertools.pairwise(outs))
    assert worst <= 1.5 * 0.3 * 2 * math.pi / steps, f"target jumped {worst:.3f} rad"
    # And the turns add up: a full master turn is 0.3 of a turn of the follower.
    assert quat_angle(FOLLOWER_Q, outs[-1].quat) == pytest.approx(0.3 * 2 * math.pi, abs=1e-3)
