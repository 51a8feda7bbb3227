"""Telemetry always encodes: hostile statistics and arm reports are clamped, never dropped."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from robot_side.control import LinkView, StepReport
from robot_side.telemetry import telemetry_from
from safety.states import Reason, State
from safety.watchdog import LinkHealth
from transport.linkstats import LinkSnapshot
from transport.schema import I64_MIN, U64, Telemetry, decode, encode

HUGE = st.integers(min_value=-(2**70), max_value=2**70)
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
OPT_HUGE = st.none() | HUGE


def report(q: list[float], pos: list[float], quat: list[float], *, scale: float,
           tracking: float, flags: int, t_ns: int) -> StepReport:
    pose = ((pos[0], pos[1], pos[2]), (quat[0], quat[1], quat[2], quat[3]))
    return StepReport(t_ns=t_ns, state=State.FOLLOWING, reason=Reason.ENGAGED,
                      measured_q=tuple(q), setpoint_q=tuple(q), measured_cp=pose,
                      setpoint_cp=pose, scale=scale, health=LinkHealth(True, None, False, 1.0, ""),
                      estop=False, firmware_flags=flags, tracking_error_m=tracking)


@settings(max_examples=300, deadline=None)
@given(latency=OPT_HUGE, p99=OPT_HUGE, jitter=OPT_HUGE, loss=ANY_FLOAT, rtt=OPT_HUGE,
       video=OPT_HUGE, loop_jitter=HUGE, seq=HUGE, t_ns=HUGE, flags=HUGE,
       q=st.lists(ANY_FLOAT, min_size=0, max_size=40),
       pos=st.lists(ANY_FLOAT, min_size=3, max_size=3),
       quat=st.lists(ANY_FLOAT, min_size=4, max_size=4), scale=ANY_FLOAT, tracking=ANY_FLOAT)
def test_hostile_statistics_always_encode(  # noqa: PLR0917 (hypothesis passes by keyword)
        latency: int | None, p99: int | None, jitter: int | None, loss: float,
        rtt: int | None, video: int | None, loop_jitter: int, seq: int, t_ns: int, flags: int,
        q: list[float], pos: list[float], quat: list[float], scale: float,
        tracking: float) -> None:
    snap = LinkSnapshot(latency_us=latency, latency_p99_us=p99, jitter_us=jitter, loss=loss,
                        received=0, lost=0, duplicates=0, reordered=0, last_recv_ns=None)
    tlm = telemetry_from(seq, report(q, pos, quat, scale=scale, tracking=tracking, flags=flags,
                                      t_ns=t_ns),
                         LinkView(snap, rtt, True), loop_jitter, video)
    back = decode(encode(tlm))
    assert isinstance(back, Telemetry)
    assert back == tlm


def test_the_issue_12_2_latency_is_pinned_at_the_bound_not_dropped() -> None:
    """The attack's latency (recv minus INT64_MIN, in us) once made telemetry unencodable."""
    latency_us = (10**9 - I64_MIN) // 1000
    snap = LinkSnapshot(latency_us=latency_us, latency_p99_us=latency_us, jitter_us=2**60,
                        loss=math.nan, received=1, lost=U64, duplicates=0, reordered=0,
                        last_recv_ns=None)
    r = report([0.0] * 6, [0.3, 0.0, 0.2], [1.0, 0.0, 0.0, 0.0], scale=1.0, tracking=0.0,
               flags=0, t_ns=1)
    tlm = decode(encode(telemetry_from(1, r, LinkView(snap, 2**64, True), 0, None)))
    assert isinstance(tlm, Telemetry)
    assert tlm.link.latency_us == 2**32 - 1 and tlm.link.rtt_us == 2**32 - 1
    assert tlm.link.loss == 0.0
