"""A scripted master: replays a recorded or generated motion file, interpolating.

A recorded session's folder plays too: the surgeon's master motion as the robot
received it (``operator_console.devices.recorded``).

Like python-can's virtual bus, this is a real registered device used by tests,
demos and the HIL rig, not a mock. Files are CSV (header ``MOTION_COLUMNS``) or
JSON (``{"samples": [{"t": s, "position": [..], "quat": [w, x, y, z], "grip": g,
"clutch": b, "operator_present": b}, ...]}``); times in seconds from the start.

``generate_suturing`` makes a realistic suturing pattern with physiological
tremor; ``python -m operator_console.devices.scripted OUT.csv`` regenerates the
shipped ``operator_console/motions/suturing.csv``.
"""

from __future__ import annotations

import bisect
import csv
import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from operator_console.devices.base import DeviceConfig, InputDevice, MasterSample
from telesurgery.errors import DeviceError
from telesurgery.quat import quat_conj, quat_from_rotvec, quat_mul

log = logging.getLogger(__name__)

MOTION_COLUMNS = ("t_s", "x_m", "y_m", "z_m", "qw", "qx", "qy", "qz", "grip", "clutch",
                  "operator_present")
SHIPPED_SUTURING = Path(__file__).resolve().parent.parent / "motions" / "suturing.csv"

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MotionTrack:
    """Timed master samples: t (N,), position (N, 3), quat (N, 4), grip, clutch, present (N,)."""

    t: F64
    position: F64
    quat: F64
    grip: F64
    clutch: npt.NDArray[np.bool_]
    present: npt.NDArray[np.bool_]

    @property
    def duration_s(self) -> float:
        return float(self.t[-1] - self.t[0])

    def validate(self, where: str) -> None:
        """Raise ``DeviceError`` naming ``where`` and the first bad row."""
        n = len(self.t)
        if n < 2:
            raise DeviceError(f"{where}: needs at least 2 samples, has {n}")
        shapes = (self.position.shape == (n, 3) and self.quat.shape == (n, 4)
                  and self.grip.shape == self.clutch.shape == self.present.shape == (n,))
        if not shapes:
            raise DeviceError(f"{where}: columns have different lengths")
        checks: list[tuple[str, npt.NDArray[np.bool_]]] = [
            ("non-finite value", np.asarray(~np.isfinite(np.column_stack(
                [self.t, self.position, self.quat, self.grip])).all(axis=1), dtype=np.bool_)),
            ("time not increasing", np.concatenate([[False], np.diff(self.t) <= 0])),
            ("quaternion norm is not 1", np.abs(np.linalg.norm(self.quat, axis=1) - 1) > 1e-3),
            ("grip outside 0..1", (self.grip < 0) | (self.grip > 1)),
        ]
        for why, bad in checks:
            if bad.any():
                raise DeviceError(f"{where}: sample {int(np.argmax(bad))}: {why}")


# ------------------------------------------------------------------ files
def load_motion(path: Path) -> MotionTrack:
    """Load and validate a CSV or JSON motion file, or a recorded session's master motion
    (a rosbag2 folder: ``operator_console.devices.recorded``)."""
    if path.is_dir():
        from operator_console.devices.recorded import load_session_motion

        return load_session_motion(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DeviceError(f"scripted: cannot read motion file {path}: {err}") from err
    try:
        if path.suffix.lower() == ".json":
            rows = [[s["t"], *s["position"], *s["quat"], s["grip"], s["clutch"],
                     s["operator_present"]] for s in json.loads(text)["samples"]]
        else:
            reader = csv.reader(text.splitlines())
            header = tuple(next(reader))
            if header != MOTION_COLUMNS:
                raise DeviceError(f"{path}: header {header} is not {MOTION_COLUMNS}")
            rows = [row for row in reader if row]
        data = np.array(rows, dtype=np.float64)
    except (ValueError, KeyError, TypeError, StopIteration) as err:
        raise DeviceError(f"{path}: not a motion file: {type(err).__name__}: {err}") from err
    if data.ndim != 2 or data.shape[1] != len(MOTION_COLUMNS):
        raise DeviceError(f"{path}: expected {len(MOTION_COLUMNS)} columns per sample")
    track = MotionTrack(t=data[:, 0] - data[0, 0], position=data[:, 1:4], quat=data[:, 4:8],
                        grip=data[:, 8], clutch=data[:, 9] != 0, present=data[:, 10] != 0)
    track.validate(str(path))
    return track


def write_motion_csv(path: Path, track: MotionTrack) -> None:
    """Write ``track`` as a compact CSV motion file (10 micrometre resolution)."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(MOTION_COLUMNS)
        for i in range(len(track.t)):
            out.writerow([f"{track.t[i]:.3f}", *(f"{v:.5f}" for v in track.position[i]),
                          *(f"{v:.5f}" for v in track.quat[i]), f"{track.grip[i]:.3f}",
                          int(track.clutch[i]), int(track.present[i])])


# ------------------------------------------------------------------ suturing
def _min_jerk(s: float) -> float:
    s = min(max(s, 0.0), 1.0)
    return s * s * s * (10.0 - 15.0 * s + 6.0 * s * s)


def _v(*c: float) -> F64:
    return np.array(c, dtype=np.float64)


Segment = tuple[float, Callable[[float], tuple[F64, float, float, bool]]]
"""(duration s, progress 0..1 -> (position, wrist roll rad, grip, clutch))."""


def _suturing_segments(n_stitches: int, radius_m: float, spacing_m: float) -> list[Segment]:
    segs: list[Segment] = []
    pos = np.zeros(3)

    def line(to: F64, dur: float, roll: tuple[float, float] = (0.0, 0.0),
             grip: tuple[float, float] = (1.0, 1.0), clutch: bool = False) -> None:
        nonlocal pos
        start = pos.copy()

        def f(s: float) -> tuple[F64, float, float, bool]:
            m = _min_jerk(s)
            return (start + (to - start) * m, roll[0] + (roll[1] - roll[0]) * m,
                    grip[0] + (grip[1] - grip[0]) * m, clutch)

        segs.append((dur, f))
        pos = to.copy()

    def arc(centre: F64, dur: float) -> None:
        # Needle driving: the tip follows a half circle under the wound while the
        # wrist supinates through the same angle.
        nonlocal pos

        def f(s: float) -> tuple[F64, float, float, bool]:
            phi = math.pi * _min_jerk(s)
            offset = np.array([0.0, -radius_m * math.cos(phi), -radius_m * math.sin(phi)])
            return centre + offset, phi, 1.0, False

        segs.append((dur, f))
        pos = centre + np.array([0.0, radius_m, 0.0])

    x = 0.0
    for i in range(n_stitches):
        centre = np.array([x, 0.0, 0.0])
        line(centre + _v(0.0, -radius_m, 0.0), 1.2)               # approach the entry
        arc(centre, 2.0)                                                 # drive the needle
        line(pos, 0.4, roll=(math.pi, math.pi), grip=(1.0, 0.0))         # let go
        line(pos + _v(0.0, 0.006, 0.004), 0.6, roll=(math.pi, 0.0), grip=(0.0, 0.0))
        line(pos, 0.4, grip=(0.0, 1.0))                                  # regrasp the tip
        line(centre + _v(0.0, radius_m * 1.5, 0.035), 1.4)         # pull the thread
        x += spacing_m
        if i % 3 == 2:
            # Clutch: the hand returns to the middle of the workspace, the tool stays.
            line(pos, 0.3, clutch=True)
            line(pos - _v(3.0 * spacing_m, 0.0, 0.0), 1.2, clutch=True)
            x -= 3.0 * spacing_m
            line(pos, 0.3, clutch=True)
    return segs


def generate_suturing(duration_s: float = 60.0, rate_hz: float = 100.0,
                      tremor_amp_m: float = 0.0005, tremor_hz: float = 10.0,
                      seed: int = 0) -> MotionTrack:
    """A running suture, master-side (five times the tool motion at scale 0.2).

    Half-circle needle-driving arcs with wrist supination, grip release and regrasp,
    thread pulls, and a clutch repositioning every third stitch; the operator is
    present throughout. Physiological tremor is added to the position: a narrow
    line at ``tremor_hz`` on each axis with its own phase and a slow amplitude
    wander, as measured hand tremor shows one dominant peak in 8-12 Hz.
    """
    rng = np.random.default_rng(seed)
    segs = _suturing_segments(n_stitches=64, radius_m=0.04, spacing_m=0.02)
    ends = np.cumsum([d for d, _ in segs])
    n = round(duration_s * rate_hz) + 1
    t = np.arange(n) / rate_hz
    pos = np.empty((n, 3))
    quat = np.empty((n, 4))
    grip = np.empty(n)
    clutch = np.zeros(n, dtype=bool)
    base = quat_from_rotvec((0.0, 0.3, 0.0))  # the hand pitched a little, as on a master
    k = 0
    for i, ti in enumerate(t % ends[-1]):
        while ends[k] < ti:
            k += 1
        dur, f = segs[k]
        p, roll, g, c = f((ti - (ends[k] - dur)) / dur)
        pos[i], grip[i], clutch[i] = p, g, c
        quat[i] = quat_mul(quat_from_rotvec((roll, 0.0, 0.0)), base)
    phase = rng.uniform(0.0, 2.0 * math.pi, size=3)
    wander = rng.uniform(0.0, 2.0 * math.pi, size=3)
    envelope = 0.8 + 0.2 * np.sin(2.0 * math.pi * 0.05 * t[:, None] + wander)
    pos += tremor_amp_m * envelope * np.sin(2.0 * math.pi * tremor_hz * t[:, None] + phase)
    return MotionTrack(t=t, position=pos, quat=quat, grip=grip, clutch=clutch,
                       present=np.ones(n, dtype=bool))


# ------------------------------------------------------------------ the device
@dataclass(frozen=True)
class _Rows:
    """A ``MotionTrack`` as Python lists, for the 1 kHz read."""

    t: list[float]
    position: list[list[float]]
    quat: list[list[float]]
    grip: list[float]
    clutch: list[bool]
    present: list[bool]
    duration_s: float

    @classmethod
    def of(cls, tr: MotionTrack) -> _Rows:
        return cls(t=tr.t.tolist(), position=tr.position.tolist(), quat=tr.quat.tolist(),
                   grip=tr.grip.tolist(), clutch=[bool(c) for c in tr.clutch],
                   present=[bool(p) for p in tr.present], duration_s=tr.duration_s)


class ScriptedDevice(InputDevice):
    """Replays ``cfg.path`` (default: the shipped suturing file) from the first read."""

    name = "scripted"

    def __init__(self, cfg: DeviceConfig, track: MotionTrack | None = None) -> None:
        super().__init__(cfg)
        self._given = track
        self._track: MotionTrack | None = None
        self._rows: _Rows | None = None
        self._t0_ns: int | None = None
        self._cycle = 0
        self._ended = False
        self._align: tuple[float, float, float, float] | None = None
        self._waiting_since_ns: int | None = None
        self._grip_offset: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)

    def align_to(self, quat: tuple[float, float, float, float]) -> bool:
        """The scripted surgeon turns the pen in the hand to match the instrument (applied
        at the next read: a right-multiplied offset keeps the recorded motion's axes)."""
        self._align = quat
        return True

    def engaged(self, engaged: bool, now_ns: int) -> None:
        """With ``wait_while_held``: the timeline stops while not engaged and goes on
        from the same point at the next engage (the hand waited)."""
        if not self.cfg.wait_while_held or self._t0_ns is None:
            return
        if not engaged and self._waiting_since_ns is None:
            self._waiting_since_ns = now_ns
        elif engaged and self._waiting_since_ns is not None:
            self._t0_ns += now_ns - self._waiting_since_ns
            self._waiting_since_ns = None

    def restart(self) -> None:
        """Start the motion over at the next read (e.g. once the console holds a session)."""
        self._t0_ns = None
        self._cycle = 0
        self._ended = False

    def _open(self) -> None:
        if self._given is not None:
            self._given.validate("scripted track")
            self._track = self._given
        else:
            self._track = load_motion(self.cfg.path or SHIPPED_SUTURING)
        self._rows = _Rows.of(self._track)
        self._t0_ns = None
        self._cycle = 0
        self._ended = False

    def _read(self, now_ns: int) -> MasterSample:
        rows = self._rows
        if rows is None:
            raise DeviceError("scripted: no motion loaded")
        if self._t0_ns is None:
            self._t0_ns = now_ns
        at_ns = now_ns if self._waiting_since_ns is None else self._waiting_since_ns
        t = (at_ns - self._t0_ns) / 1e9  # waiting: the hand stays where it was
        present, wrapped = True, False
        duration_s = rows.duration_s
        if self.cfg.loop:
            cycle = int(t // duration_s)
            wrapped, self._cycle = cycle != self._cycle, cycle
            t %= duration_s
        elif t > duration_s:
            # The recording is over: the scripted surgeon lets go of the master.
            if not self._ended:
                log.info("scripted: motion ended after %.1f s", duration_s)
                self._ended = True
            t, present = duration_s, False
        # Python floats, not numpy scalars and 3-vectors: this runs at 1 kHz on the
        # console's command thread, where each small numpy call costs microseconds
        # (the track's rows are converted once, at open; the same values).
        i = min(max(bisect.bisect_right(rows.t, t) - 1, 0), len(rows.t) - 2)
        t0, t1 = rows.t[i], rows.t[i + 1]
        w = min(max((t - t0) / (t1 - t0), 0.0), 1.0)
        p0, p1 = rows.position[i], rows.position[i + 1]
        q0, q1 = rows.quat[i], rows.quat[i + 1]
        if q0[0] * q1[0] + q0[1] * q1[1] + q0[2] * q1[2] + q0[3] * q1[3] < 0:
            q1 = [-b for b in q1]  # nlerp, the short way
        q = [a + (b - a) * w for a, b in zip(q0, q1, strict=True)]
        norm = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
        recorded = (q[0] / norm, q[1] / norm, q[2] / norm, q[3] / norm)
        if self._align is not None:
            self._grip_offset = quat_mul(quat_conj(recorded), self._align)
            self._align = None
        g0, g1 = rows.grip[i], rows.grip[i + 1]
        return MasterSample(
            t_ns=now_ns,
            position=(p0[0] + (p1[0] - p0[0]) * w, p0[1] + (p1[1] - p0[1]) * w,
                      p0[2] + (p1[2] - p0[2]) * w),
            quat=quat_mul(recorded, self._grip_offset),
            grip=g0 + (g1 - g0) * w,
            # The end and the start of a file rarely meet: a loop is a clutch episode.
            clutch=rows.clutch[i] or wrapped,
            operator_present=present and rows.present[i],
        )

    def _close(self) -> None:
        self._track = None
        self._rows = None


def main(argv: list[str] | None = None) -> int:
    """Write the suturing motion to the path given (default: the shipped file)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else SHIPPED_SUTURING
    write_motion_csv(out, generate_suturing())
    return 0


if __name__ == "__main__":
    sys.exit(main())
