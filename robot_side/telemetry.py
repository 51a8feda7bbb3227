"""Telemetry as the robot sends it: built from one period's report and the link view.

It always encodes. Every figure is clamped into the schema's range
(``transport.schema``) here, whatever the statistics or the arm report: a
latency that no longer fitted the schema once stopped *all* telemetry, and the
console kept showing the last state. A clamped figure is pinned at its bound
(a latency of "4295 s or more" still says "far too late"); a non-finite one
becomes 0 (NaN has no side), a degenerate quaternion the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from robot_side.control import LinkView, StepReport
from transport.schema import (
    I64_MAX,
    I64_MIN,
    MAX_JOINTS,
    MAX_POSITION_M,
    SUPERVISOR_STATES,
    U32,
    U64,
    LinkReport,
    Pose,
    Telemetry,
)

LATENCY_MIN_US = -(2**31)
JOINT_BOUND = 1e6
MAX_SCALE = 10.0
MAX_TRACKING_M = 1e3
AUDIT_HEAD_MAX = 48
RECORDING_MAX = 128


def _int(x: int | None, lo: int, hi: int) -> int:
    return 0 if x is None else min(hi, max(lo, int(x)))


def _opt_int(x: int | None, lo: int, hi: int) -> int | None:
    return None if x is None else _int(x, lo, hi)


def _float(x: float, lo: float, hi: float) -> float:
    f = float(x)
    if math.isnan(f):
        return 0.0 if lo <= 0.0 <= hi else lo
    return min(hi, max(lo, f))


def _us(ns: int | None) -> int | None:
    return None if ns is None else int(ns // 1000)


def _joints(q: Sequence[float]) -> tuple[float, ...]:
    return tuple(_float(x, -JOINT_BOUND, JOINT_BOUND) for x in q[:MAX_JOINTS])


def _pose(p: tuple[Sequence[float], Sequence[float]]) -> Pose:
    pos = tuple(_float(x, -MAX_POSITION_M, MAX_POSITION_M) for x in p[0][:3])
    q = [float(c) for c in p[1][:4]]
    norm = math.hypot(*q) if all(math.isfinite(c) for c in q) else 0.0  # no overflow
    quat = (1.0, 0.0, 0.0, 0.0) if len(q) != 4 or not 1e-9 < norm < math.inf else (
        q[0] / norm, q[1] / norm, q[2] / norm, q[3] / norm)
    return Pose((pos[0], pos[1], pos[2]), quat)


def _joint_values(values: Sequence[float]) -> tuple[float, ...]:
    """Velocities or efforts as reported, clamped to what encodes; () if none or not finite.

    Plain Python for the usual handful of floats: numpy's array, isfinite, clip and
    tolist cost ~4x this per call at telemetry rate (issue 11, network thread)."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            return ()
        values = values.tolist()
    if len(values) > MAX_JOINTS:
        return ()
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):  # not a flat sequence of numbers
        return ()
    if not all(map(math.isfinite, floats)):
        return ()
    bound = JOINT_BOUND
    return tuple(bound if v > bound else -bound if v < -bound else v for v in floats)


def telemetry_from(seq: int, r: StepReport, link: LinkView, loop_jitter_us: int,
                   video_age_us: int | None, *, audit_head: str | None = None,
                   recording: str | None = None, commander: str | None = None,
                   handoff_from: str | None = None,
                   handoff_id: int | None = None) -> Telemetry:
    """The period's report as telemetry; who commands and who asks for it
    (``SessionGuard``) given here rather than by a ``dataclasses.replace`` after."""
    s = link.stats
    state = str(r.state)
    return Telemetry(
        seq=_int(seq, 0, U64), t_ns=_int(r.t_ns, I64_MIN, I64_MAX),
        state=state if state in SUPERVISOR_STATES else "fault", reason=str(r.reason)[:64],
        measured_js=_joints(r.measured_q), setpoint_js=_joints(r.setpoint_q),
        measured_cp=_pose(r.measured_cp), setpoint_cp=_pose(r.setpoint_cp),
        link=LinkReport(rtt_us=_opt_int(_us(link.rtt_ns), 0, U32),
                        latency_us=_opt_int(s.latency_us, LATENCY_MIN_US, U32),
                        jitter_us=_opt_int(s.jitter_us, 0, U32),
                        loss=_float(s.loss, 0.0, 1.0),
                        video_age_us=_opt_int(video_age_us, 0, U64)),
        scale=_float(r.scale, 0.0, MAX_SCALE), estop=bool(r.estop),
        firmware_flags=int(r.firmware_flags) & U32,
        loop_jitter_us=_int(loop_jitter_us, 0, U32),
        tracking_error_m=_float(r.tracking_error_m, 0.0, MAX_TRACKING_M),
        measured_jv=_joint_values(r.measured_v),
        measured_jf=_joint_values(r.measured_effort),
        audit_head=None if audit_head is None else audit_head[:AUDIT_HEAD_MAX],
        recording=None if recording is None else recording[:RECORDING_MAX],
        commander=commander, handoff_from=handoff_from, handoff_id=handoff_id,
    )
