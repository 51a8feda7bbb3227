"""Physiological-tremor filter: notch biquads across the tremor band, tracking its peak.

Why notches and not a low-pass: by Bode's gain-phase relation the low-frequency
delay of a causal minimum-phase filter is (2/pi) times the integral of its
attenuation (in nepers) weighted by 1/omega^2. A low-pass that removes 8-12 Hz
removes everything above too and costs tens of milliseconds at 1 Hz. Even an
ideal brick-wall stop of exactly 20 dB over all of 8-12 Hz costs about 9.7 ms,
and a realisable one about 20 ms. So 20 dB over the whole band within ~10 ms is
out of reach for any fixed filter; 20 dB over a ~1-2 Hz wide window is not.

Hand tremor has one dominant peak somewhere in 8-12 Hz that drifts slowly, so the
filter spends its budget where the tremor is:

* untracked (start, or no tremor seen): three notches at the centres of three
  equal sub-bands of ``band`` (8, 10, 12 Hz for 7-13 Hz); deep at and near those
  frequencies, about 5 dB at the weakest point between them, 9.4 ms at 1 Hz.
* tracking (``adaptive``): a detector (band-pass 7-13 Hz, 4th-order high side)
  estimates the peak frequency from interpolated zero crossings every 0.25 s; the
  three notches then cluster around it, giving >= 20 dB over +-0.5 Hz (at 8 Hz)
  to +-1.1 Hz (at 12 Hz) around the peak, for 8.5 ms at 1 Hz.

Each notch is computed as ``x - bandpass(x)`` in direct form I, whose band-pass
sees only input differences: a held position passes exactly (unity DC gain, the
teleop scale stays exact) and re-tuning never makes the output jump, however far
the master is from the origin.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from telesurgery.config import check, finite_positive

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
X = TypeVar("X", float, FloatArray)
Coeffs = tuple[float, float, float, float, float]
"""b0, b1, b2, a1, a2 (a0 normalised to 1)."""

WINDOW_S = 1.0
"""Detector window for the frequency estimate."""
HOP_S = 0.25
MIN_TREMOR_M = 10e-6
"""Band RMS below this (at the master) is not tremor: fall back to the fixed design."""
CLUSTER_SPACING = 0.0065
"""Tracked notches sit at f -+ CLUSTER_SPACING * f^2 Hz ..."""
CLUSTER_WIDTH = 0.0175
"""... each CLUSTER_WIDTH * f^2 Hz wide: constant delay (8.5 ms) wherever f is."""
RETUNE_HZ = 0.05


def _rbj(kind: str, f0_hz: float, q: float, rate_hz: float) -> Coeffs:
    """RBJ audio-cookbook biquads: "bandpass" (0 dB peak), "highpass", "lowpass"."""
    w0 = 2.0 * math.pi * f0_hz / rate_hz
    alpha, c = math.sin(w0) / (2.0 * q), math.cos(w0)
    a0 = 1.0 + alpha
    if kind == "bandpass":
        b = (alpha, 0.0, -alpha)
    elif kind == "highpass":
        b = ((1.0 + c) / 2.0, -(1.0 + c), (1.0 + c) / 2.0)
    else:
        b = ((1.0 - c) / 2.0, 1.0 - c, (1.0 - c) / 2.0)
    return (b[0] / a0, b[1] / a0, b[2] / a0, -2.0 * c / a0, (1.0 - alpha) / a0)


def _as_floats(c: Coeffs) -> Coeffs:
    return (float(c[0]), float(c[1]), float(c[2]), float(c[3]), float(c[4]))


class _DF1:
    """One direct-form-I biquad with per-axis history; coefficients may change live.

    Plain Python floats, one list per history term: the console runs 6 of these
    per sample at 1 kHz on 3 axes, where each numpy operation on a 3-vector costs
    more than the arithmetic (the same expression, evaluated in the same order,
    gives the same IEEE doubles as the numpy form did).
    """

    def __init__(self, coeffs: Coeffs) -> None:
        self.c = coeffs
        self.x1: list[float] = []
        self.x2: list[float] = []
        self.y1: list[float] = []
        self.y2: list[float] = []

    def dc_gain(self) -> float:
        b0, b1, b2, a1, a2 = self.c
        return (b0 + b1 + b2) / (1.0 + a1 + a2)

    def reset(self, x: list[float]) -> None:
        g = self.dc_gain()
        self.x1, self.x2 = list(x), list(x)
        self.y1 = [g * v for v in x]
        self.y2 = list(self.y1)

    def step(self, x: list[float]) -> list[float]:
        return _cascade((self,), x, notch=False)


def _cascade(sections: Sequence[_DF1], x: list[float], *, notch: bool) -> list[float]:
    """Run ``x`` through ``sections`` in turn; ``notch``: each passes ``x - bandpass(x)``.

    The history is updated in place (``reset`` gives every section its own lists): one
    pass without a new list and a zip per section per sample, ~half the cost of the
    filter, which is most of the console's per-command work. Same expressions in the
    same order: the same doubles.
    """
    out = list(x)
    n = len(out)
    for s in sections:
        b0, b1, b2, a1, a2 = s.c
        x1s, x2s, y1s, y2s = s.x1, s.x2, s.y1, s.y2
        for j in range(n):
            xi = out[j]
            x1 = x1s[j]
            y1 = y1s[j]
            v = b0 * xi + b1 * x1 + b2 * x2s[j] - a1 * y1 - a2 * y2s[j]
            x2s[j] = x1
            x1s[j] = xi
            y2s[j] = y1
            y1s[j] = v
            out[j] = xi - v if notch else v
    return out


class TremorFilter:
    """Per-axis notch cascade; ``apply`` takes one sample (scalar or vector) per call."""

    def __init__(self, rate_hz: float, band: tuple[float, float] = (7.0, 13.0),
                 notches: int = 3, width: float = 0.9, adaptive: bool = True) -> None:
        finite_positive("tremor.rate_hz", rate_hz)
        lo, hi = band
        check(0.0 < lo < hi < rate_hz / 2.0, "tremor.band", band,
              f"must satisfy 0 < low < high < Nyquist ({rate_hz / 2.0:g} Hz)")
        check(1 <= notches <= 8, "tremor.notches", notches, "must be 1..8")
        check(0.0 < width <= 2.0, "tremor.width", width, "must be in (0, 2]")
        self.rate_hz = float(rate_hz)
        self.band = (float(lo), float(hi))
        self.adaptive = adaptive
        sub = (hi - lo) / notches
        self._fixed = [(lo + sub * (i + 0.5), width * sub) for i in range(notches)]
        self.notches_hz: list[tuple[float, float]] = []
        """(centre, -3 dB width) of each notch in use, Hz."""
        self._notches: list[_DF1] = []
        self.tracking_hz: float | None = None
        self._design(self._fixed)
        self._detector = [_DF1(_rbj("highpass", lo, math.sqrt(0.5), rate_hz)),
                          _DF1(_rbj("highpass", lo, math.sqrt(0.5), rate_hz)),
                          _DF1(_rbj("lowpass", hi, math.sqrt(0.5), rate_hz))]
        self._window = np.zeros((max(8, round(WINDOW_S * rate_hz)), 0))
        self._hop = max(1, round(HOP_S * rate_hz))
        self._n = 0

    # ------------------------------------------------------------ design
    def _design(self, notches: list[tuple[float, float]]) -> None:
        """Use these (centre, width) notches; each keeps its history, so nothing jumps."""
        # Plain floats: a tracked frequency comes from numpy, and numpy-scalar coefficients
        # made every later filter step numpy-scalar arithmetic (same doubles, ~3x the cost).
        coeffs = [_as_floats(_rbj("bandpass", float(f), float(f / w), self.rate_hz))
                  for f, w in notches]
        if not self._notches:
            self._notches = [_DF1(c) for c in coeffs]
        for section, c in zip(self._notches, coeffs, strict=True):
            section.c = c
        self.notches_hz = list(notches)

    def _track(self) -> None:
        """Re-estimate the tremor peak and move the notches to it (or back)."""
        # The window is a ring; order does not matter for RMS, it does for crossings.
        start = self._n % len(self._window)
        sig = np.roll(self._window, -start, axis=0)
        rms = np.sqrt(np.mean(sig * sig, axis=0))
        axis = int(np.argmax(rms))
        f_hz = None
        if rms[axis] >= MIN_TREMOR_M:
            s = sig[:, axis]
            idx = np.nonzero(np.signbit(s[1:]) != np.signbit(s[:-1]))[0]
            if len(idx) >= 4:
                t = idx + s[idx] / (s[idx] - s[idx + 1])
                f_hz = (len(t) - 1) / (2.0 * (t[-1] - t[0]) / self.rate_hz)
        lo, hi = self.band
        if f_hz is None or not lo <= f_hz <= hi:
            if self.tracking_hz is not None:
                log.info("tremor no longer detected: fixed notches %s", self._fixed)
                self.tracking_hz = None
                self._design(self._fixed)
            return
        if self.tracking_hz is None or abs(f_hz - self.tracking_hz) > RETUNE_HZ:
            if self.tracking_hz is None:
                log.info("tremor detected at %.2f Hz (%.0f um rms): tracking", f_hz,
                         rms[axis] * 1e6)
            self.tracking_hz = f_hz
            spacing, width = CLUSTER_SPACING * f_hz**2, CLUSTER_WIDTH * f_hz**2
            n = len(self._fixed)
            offsets = np.linspace(-spacing, spacing, n) if n > 1 else np.zeros(1)
            self._design([(f_hz + float(o), width) for o in offsets])

    # ------------------------------------------------------------ filtering
    def reset(self, value: float | FloatArray) -> None:
        """Set the state to a steady input ``value``: the next output equals it, no transient.

        The tracked frequency and the detector's recent window are kept: the tremor
        belongs to the surgeon's hand, which does not stop at a clutch release.
        """
        x = np.atleast_1d(np.asarray(value, dtype=np.float64)).tolist()
        if self._window.shape[1] != len(x):
            self._window = np.zeros((len(self._window), len(x)))
        for section in self._notches:
            section.reset(x)  # a band-pass at rest on a constant input outputs zero
        for section in self._detector:
            section.reset(x)
            gain = section.dc_gain()
            x = [gain * v for v in x]

    def apply(self, x: X) -> X:
        """Filter one sample per axis; the first call initialises the state from it."""
        scalar = np.ndim(x) == 0
        y: list[float] = [float(x)] if scalar else np.asarray(x, dtype=np.float64).tolist()
        y = self.apply_list(y)
        if scalar:
            return y[0]  # type: ignore[return-value]
        return np.array(y)  # type: ignore[return-value]

    def apply_list(self, y: list[float]) -> list[float]:
        """``apply`` on a list of floats, one per axis, without numpy at either end (the
        console's command thread calls it at 1 kHz: the conversions cost more than it)."""
        if self._window.shape[1] != len(y):
            self.reset(np.asarray(y))
        if self.adaptive:
            self._window[self._n % len(self._window)] = _cascade(self._detector, y, notch=False)
            self._n += 1
            if self._n % self._hop == 0 and self._n >= len(self._window):
                self._track()
        return _cascade(self._notches, y, notch=True)

    # ------------------------------------------------------------ analysis
    def frequency_response(self, f_hz: float) -> tuple[float, float]:
        """(gain in dB, group delay in ms) at ``f_hz`` for the notches now in use."""
        def response(f: float) -> complex:
            z = np.exp(-1j * 2.0 * math.pi * f / self.rate_hz)
            h = complex(1.0)
            for s in self._notches:
                b0, b1, b2, a1, a2 = s.c
                h *= 1.0 - (b0 + b1 * z + b2 * z * z) / (1.0 + a1 * z + a2 * z * z)
            return complex(h)

        df = 1e-4 * max(f_hz, 1.0)
        f_lo = max(f_hz - df, 0.0)
        d_phase = np.angle(response(f_hz + df) / response(f_lo))
        group_delay_ms = -float(d_phase) / (2.0 * math.pi * (f_hz + df - f_lo)) * 1e3
        gain_db = 20.0 * math.log10(max(abs(response(f_hz)), 1e-15))
        return gain_db, group_delay_ms

    def band_floor_db(self, lo_hz: float = 8.0, hi_hz: float = 12.0, steps: int = 401) -> float:
        """The least attenuation (dB, positive) anywhere in [lo_hz, hi_hz]."""
        gains = [self.frequency_response(float(f))[0] for f in np.linspace(lo_hz, hi_hz, steps)]
        return -max(gains)


def measure_attenuation(rate_hz: float, f_hz: float, seconds: float = 10.0,
                        band: tuple[float, float] = (7.0, 13.0),
                        adaptive: bool = True) -> tuple[float, float]:
    """Push a real sine through ``apply``; return (attenuation dB, delay ms) at ``f_hz``.

    Amplitude and phase are fitted by least squares over the second half of the run,
    after the start-up transient (and, when adaptive, the tracker) has settled.
    """
    filt = TremorFilter(rate_hz, band, adaptive=adaptive)
    n = round(seconds * rate_hz)
    t = np.arange(n) / rate_hz
    x = 1e-3 * np.sin(2.0 * math.pi * f_hz * t)  # 1 mm, a large tremor
    y = np.array([filt.apply(float(v)) for v in x])
    half = slice(n // 2, n)
    basis = np.column_stack([np.sin(2.0 * math.pi * f_hz * t[half]),
                             np.cos(2.0 * math.pi * f_hz * t[half])])
    (s_coef, c_coef), *_ = np.linalg.lstsq(basis, y[half] / 1e-3, rcond=None)
    amplitude = math.hypot(s_coef, c_coef)
    lag_rad = -math.atan2(c_coef, s_coef)
    attenuation_db = -20.0 * math.log10(max(amplitude, 1e-15))
    delay_ms = lag_rad / (2.0 * math.pi * f_hz) * 1e3
    return attenuation_db, delay_ms
