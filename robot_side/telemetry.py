"""Telemetry as the robot sends it: built from one period's report and the link view."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from robot_side.control import LinkView, StepReport
from transport.schema import MAX_JOINTS, LinkReport, Pose, Telemetry

JOINT_VALUE_MAX = 1e6
"""The schema's bound on a joint value: telemetry must always encode."""


def _us(ns: int | None) -> int | None:
    return None if ns is None else int(ns // 1000)


def _joint_values(values: Sequence[float]) -> tuple[float, ...]:
    """Velocities or efforts as reported, clamped to what encodes; () if none or not finite."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) > MAX_JOINTS or not np.all(np.isfinite(array)):
        return ()
    return tuple(np.clip(array, -JOINT_VALUE_MAX, JOINT_VALUE_MAX).tolist())


def telemetry_from(seq: int, r: StepReport, link: LinkView, loop_jitter_us: int,
                   video_age_us: int | None, *, audit_head: str | None = None) -> Telemetry:
    s = link.stats
    return Telemetry(
        seq=seq, t_ns=r.t_ns, state=str(r.state), reason=str(r.reason)[:64],
        measured_js=r.measured_q, setpoint_js=r.setpoint_q,
        measured_cp=Pose(*r.measured_cp), setpoint_cp=Pose(*r.setpoint_cp),
        link=LinkReport(rtt_us=_us(link.rtt_ns), latency_us=s.latency_us,
                        jitter_us=s.jitter_us, loss=min(1.0, max(0.0, s.loss)),
                        video_age_us=video_age_us),
        scale=min(10.0, r.scale), estop=r.estop, firmware_flags=r.firmware_flags & 0xFFFFFFFF,
        loop_jitter_us=min(loop_jitter_us, 2**32 - 1),
        tracking_error_m=min(r.tracking_error_m, 1e3),
        measured_jv=_joint_values(r.measured_v),
        measured_jf=_joint_values(r.measured_effort),
        audit_head=audit_head,
    )
