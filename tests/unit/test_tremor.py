"""Tremor filter: real sines and the real suturing motion pushed through ``apply``.

Run with ``-s`` to see the measured figures.
"""

from __future__ import annotations

import numpy as np
import pytest

from operator_console.devices.scripted import generate_suturing
from operator_console.tremor import TremorFilter, measure_attenuation
from telesurgery.errors import ConfigError

RATES = (100.0, 500.0, 1000.0)


@pytest.mark.parametrize("rate_hz", RATES)
def test_attenuation_and_delay_measured_with_sines(rate_hz: float) -> None:
    rows = []
    for f_hz in (8.0, 9.0, 10.0, 11.0, 12.0):
        att_db, _ = measure_attenuation(rate_hz, f_hz, seconds=8.0)
        rows.append(f"{f_hz:g} Hz {att_db:.1f} dB")
        assert att_db >= 20.0, f"{f_hz} Hz attenuated only {att_db:.1f} dB at {rate_hz} Hz"
    loss_1hz_db, delay_ms = measure_attenuation(rate_hz, 1.0, seconds=8.0)
    print(f"\ntremor filter @ {rate_hz:g} Hz: attenuation {', '.join(rows)}; "
          f"1 Hz: delay {delay_ms:.2f} ms, gain {-loss_1hz_db:+.3f} dB")
    assert 0.0 < delay_ms <= 10.0
    assert abs(loss_1hz_db) < 0.1, "intent at 1 Hz must pass at unity gain"


def test_fixed_design_alone_leaves_gaps_between_its_notches() -> None:
    """Why the filter tracks: fixed notches cannot cover 8-12 Hz within the delay budget."""
    filt = TremorFilter(500.0, adaptive=False)
    at_9_db, _ = measure_attenuation(500.0, 9.0, seconds=8.0, adaptive=False)
    _, delay_ms = filt.frequency_response(1.0)
    print(f"\nfixed notches {[round(f, 2) for f, _ in filt.notches_hz]} Hz: "
          f"weakest point in 8-12 Hz {filt.band_floor_db():.1f} dB, 9 Hz {at_9_db:.1f} dB, "
          f"1 Hz group delay {delay_ms:.2f} ms")
    assert filt.band_floor_db() < 20.0 and at_9_db < 20.0
    assert delay_ms <= 10.0


def test_analytic_response_matches_measurement() -> None:
    filt = TremorFilter(500.0, adaptive=False)
    for f_hz in (1.0, 2.0, 9.0, 11.0, 20.0):
        gain_db, _ = filt.frequency_response(f_hz)
        att_db, _ = measure_attenuation(500.0, f_hz, seconds=8.0, adaptive=False)
        assert gain_db == pytest.approx(-att_db, abs=0.05)
    _, group_delay_ms = filt.frequency_response(1.0)
    _, phase_delay_ms = measure_attenuation(500.0, 1.0, seconds=8.0, adaptive=False)
    assert 0.0 < group_delay_ms <= 10.0
    assert group_delay_ms == pytest.approx(phase_delay_ms, abs=0.5)


def _fit(y: np.ndarray, t: np.ndarray, f_hz: float) -> tuple[float, float]:
    """Amplitude and lag (ms) of the f_hz component of y."""
    basis = np.column_stack([np.sin(2 * np.pi * f_hz * t), np.cos(2 * np.pi * f_hz * t)])
    (s, c), *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.hypot(s, c)), float(-np.arctan2(c, s) / (2 * np.pi * f_hz) * 1e3)


def test_intent_delay_while_tracking_a_tremor() -> None:
    rate = 500.0
    t = np.arange(int(rate * 8)) / rate
    intent = 5e-3 * np.sin(2 * np.pi * 1.0 * t)
    x = 0.3 + intent + 0.5e-3 * np.sin(2 * np.pi * 9.3 * t)
    filt = TremorFilter(rate)
    y = np.array([filt.apply(float(v)) for v in x])
    half = slice(len(t) // 2, None)
    amp_1hz, delay_ms = _fit(y[half] - 0.3, t[half], 1.0)
    amp_tremor, _ = _fit(y[half] - 0.3, t[half], 9.3)
    tremor_db = 20 * np.log10(0.5e-3 / amp_tremor)
    print(f"\n1 Hz intent + 9.3 Hz tremor: tracking {filt.tracking_hz:.2f} Hz, intent delay "
          f"{delay_ms:.2f} ms (gain {amp_1hz / 5e-3:.4f}), tremor down {tremor_db:.1f} dB")
    assert filt.tracking_hz == pytest.approx(9.3, abs=0.1)
    assert 0.0 < delay_ms <= 10.0 and amp_1hz == pytest.approx(5e-3, rel=0.01)
    assert tremor_db >= 20.0


def test_retuning_never_jumps_and_dc_stays_exact() -> None:
    """Far from the origin, tremor starts, drifts and stops: output never leaves the input."""
    rate = 500.0
    n = int(rate * 12)
    t = np.arange(n) / rate
    f = np.where(t < 4, 8.5, 11.5)  # the tremor peak moves: the notches must follow
    phase = 2 * np.pi * np.cumsum(f) / rate
    tremor = np.where(t < 8, 0.4e-3 * np.sin(phase), 0.0)
    x = 0.45 + tremor
    filt = TremorFilter(rate)
    tracked = []
    y = np.empty(n)
    for i, v in enumerate(x):
        y[i] = filt.apply(float(v))
        tracked.append(filt.tracking_hz)
    assert 8.4 < (tracked[int(rate * 3.9)] or 0) < 8.6
    assert 11.4 < (tracked[int(rate * 7.9)] or 0) < 11.6
    assert tracked[-1] is None  # back to the fixed design once the tremor stops
    assert np.abs(y - 0.45).max() <= 0.8e-3  # never beyond twice the tremor itself
    assert y[-1] == pytest.approx(0.45, abs=1e-12)


def test_reset_leaves_no_transient_and_dc_passes_exactly() -> None:
    filt = TremorFilter(500.0)
    start = np.array([0.1, -0.2, 0.3])
    filt.reset(start)
    for _ in range(50):
        np.testing.assert_allclose(filt.apply(start), start, rtol=0, atol=1e-12)
    # A 10 mm step settles to exactly the new value: scaling downstream stays exact.
    target = start + np.array([0.01, 0.0, 0.0])
    out = start
    for _ in range(3000):
        out = filt.apply(target)
    np.testing.assert_allclose(out, target, rtol=0, atol=1e-9)


def test_axes_are_filtered_independently_and_scalars_stay_scalars() -> None:
    vec, scalar = TremorFilter(500.0), TremorFilter(500.0)
    t = np.arange(500) / 500.0
    xs = np.sin(2 * np.pi * 3.0 * t)
    for x in xs:
        y_vec = vec.apply(np.array([x, 0.0, -x]))
        y = scalar.apply(float(x))
        assert isinstance(y, float)
        assert y_vec[0] == pytest.approx(y, abs=1e-12)
        assert y_vec[1] == 0.0
        assert y_vec[2] == pytest.approx(-y, abs=1e-12)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"rate_hz": 0.0}, "rate_hz"),
    ({"rate_hz": 20.0}, "band"),
    ({"rate_hz": 500.0, "band": (13.0, 7.0)}, "band"),
    ({"rate_hz": 500.0, "notches": 0}, "notches"),
])
def test_bad_design_is_rejected_by_name(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        TremorFilter(**kwargs)  # type: ignore[arg-type]


def _band_energy(x: np.ndarray, rate_hz: float, lo: float = 8.0, hi: float = 12.0) -> float:
    x = x - x.mean(axis=0)
    spectrum = np.fft.rfft(x * np.hanning(len(x))[:, None], axis=0)
    f = np.fft.rfftfreq(len(x), 1.0 / rate_hz)
    return float((np.abs(spectrum[(f >= lo) & (f <= hi)]) ** 2).sum())


@pytest.mark.parametrize("tremor_hz", [8.0, 9.0, 10.0, 11.3, 12.0])
def test_suturing_tremor_is_removed(tremor_hz: float) -> None:
    rate = 500.0
    tremor = generate_suturing(30.0, rate, tremor_hz=tremor_hz, seed=3)
    clean = generate_suturing(30.0, rate, tremor_amp_m=0.0, tremor_hz=tremor_hz, seed=3)
    filt = TremorFilter(rate)
    filtered = np.array([filt.apply(p) for p in tremor.position])
    present_db = 10 * np.log10(_band_energy(tremor.position, rate)
                               / _band_energy(clean.position, rate))
    removed_db = 10 * np.log10(_band_energy(tremor.position, rate)
                               / _band_energy(filtered, rate))
    print(f"\nsuturing with {tremor_hz:g} Hz tremor: band 8-12 Hz holds {present_db:.1f} dB "
          f"more energy than without tremor; the filter removes {removed_db:.1f} dB "
          f"(tracking {filt.tracking_hz:.2f} Hz)")
    assert present_db >= 20.0
    assert removed_db >= 20.0


def test_tracking_keeps_plain_float_coefficients_and_the_list_path_matches() -> None:
    """A tracked frequency comes out of numpy; coefficients that stayed numpy scalars
    made every later step numpy-scalar arithmetic (the console's 1 kHz cost), with the
    same doubles. The list path (``apply_list``, the command thread's) gives what
    ``apply`` gives."""
    import math

    by_array, by_list = TremorFilter(1000.0), TremorFilter(1000.0)
    for k in range(2500):
        x = [1e-3 * math.sin(2 * math.pi * 9.7 * k / 1000.0), 0.05, -0.02 + 1e-6 * k]
        a = by_array.apply(np.array(x))
        b = by_list.apply_list(list(x))
        assert a.tolist() == b
        assert all(type(v) is float for v in b)
    assert by_list.tracking_hz is not None
    assert all(type(c) is float for s in by_list._notches for c in s.c)
