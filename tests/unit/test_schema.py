"""Wire schema: golden bytes, round trips, and rejection of every kind of bad input."""

from __future__ import annotations

import math
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telesurgery.errors import SchemaError
from transport import schema as s

GOLDEN = Path(__file__).parents[1] / "golden"

SAMPLES: dict[str, s.Message] = {
    "cmd": s.Command(seq=42, t_send_ns=1_000_000_123, position=(0.1, -0.05, 0.2),
                     orientation=(1.0, 0.0, 0.0, 0.0), grip=0.25, clutch=False,
                     operator_present=True, video_age_us=33_000,
                     t_sample_ns=999_000_100),
    "ctl": s.ControlRequest(req_id=7, op="set_scale", value=0.2),
    "ctl_ack": s.ControlReply(req_id=7, ok=True, state="ready", reason="scale_set",
                              detail="scale 0.2"),
    "ping": s.Ping(seq=3, t1_ns=5_000),
    "pong": s.Pong(seq=3, t1_ns=5_000, t2_ns=9_000, t3_ns=9_500),
    "tlm": s.Telemetry(
        seq=9, t_ns=77, state="following", reason="engaged",
        measured_js=(0.0, 0.1, -0.2, 0.3, 0.0, 0.5), setpoint_js=(0.0, 0.1, -0.2, 0.3, 0.0, 0.5),
        measured_cp=s.Pose((0.3, 0.0, 0.2), (1.0, 0.0, 0.0, 0.0)),
        setpoint_cp=s.Pose((0.3, 0.0, 0.2), (0.0, 1.0, 0.0, 0.0)),
        link=s.LinkReport(rtt_us=180, latency_us=90, jitter_us=12, loss=0.0, video_age_us=None),
        scale=0.2, estop=False, firmware_flags=1, loop_jitter_us=30, tracking_error_m=0.0004,
        measured_jv=(0.0, 0.01, -0.02, 0.0, 0.0, 0.5), measured_jf=(0.0, 9.5, 4.2, 0.0, 0.3, 0.0),
        audit_head="1234:0123456789abcdef"),
    "evt": s.SafetyEvent(seq=1, t_ns=100, code="command_timeout", state_from="following",
                         state_to="hold", detail="no command for 52 ms"),
    "vid": s.VideoFrameHeader(frame_id=1000, capture_ns=123, send_ns=456, keyframe=True,
                              width=1280, height=720, payload_len=20_000),
    "kfr": s.KeyframeRequest(seq=2, last_frame_id=999, reason="decode_error"),
    "stk": s.Stroke(seq=3, frame_id=1234, points=(0.25, 0.5, 0.75, 0.5), colour=0xFFD000,
                    ttl_ms=3000, t_ns=1_700_000_000_000_000_000, author="observer:alice"),
    "aud": s.AudioPacket(seq=4, t_ns=1_700_000_000_000_000_000, payload=b"\xfc\xff\xfe",
                         speaker="surgeon"),
    "vit": s.Vitals(seq=7, t_ns=5_000_000_000, source="hl7", monitor="ok",
                    values=(s.VitalValue("hr", 138.0, "/min", 120, 5000),
                            s.VitalValue("spo2", 86.5, "%", 6100, 5000, "stale")),
                    alarms=(s.VitalAlarm("HR_HIGH", "high", "Tachycardia 138/min", 900),)),
    "cmds": s.CommandBatch(seq=5, lost=1, commands=(s.ReceivedCommand(
        recv_ns=1_000_400_000, cmd=s.Command(
            seq=42, t_send_ns=1_000_000_123, position=(0.1, -0.05, 0.2),
            orientation=(1.0, 0.0, 0.0, 0.0), grip=0.25, clutch=False,
            operator_present=True, video_age_us=33_000)),)),
}


def test_every_message_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(s.MESSAGE_TYPES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_golden_bytes(name: str) -> None:
    """Encoding is stable across releases: a change here is a protocol change."""
    golden = (GOLDEN / f"{name}.msgpack").read_bytes()
    assert s.encode(SAMPLES[name]) == golden
    assert s.decode(golden) == SAMPLES[name]


def _cmd_body(**over: object) -> dict[str, object]:
    body = msgpack.unpackb(s.encode(SAMPLES["cmd"]))
    body.update(over)
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_cmd_body(v=2), "v"),
        (_cmd_body(t="nope"), "t"),
        (_cmd_body(position=[math.nan, 0.0, 0.0]), "cmd.position[0]"),
        (_cmd_body(position=[0.0, math.inf, 0.0]), "cmd.position[1]"),
        (_cmd_body(position=[0.0, 0.0]), "cmd.position"),
        (_cmd_body(position=[0.0, 0.0, 11.0]), "cmd.position[2]"),
        (_cmd_body(orientation=[1.0, 1.0, 0.0, 0.0]), "cmd.orientation"),
        (_cmd_body(orientation=[0.0, 0.0, 0.0, 0.0]), "cmd.orientation"),
        (_cmd_body(grip=1.5), "cmd.grip"),
        (_cmd_body(grip=True), "cmd.grip"),
        (_cmd_body(seq=-1), "cmd.seq"),
        (_cmd_body(seq="1"), "cmd.seq"),
        (_cmd_body(clutch=1), "cmd.clutch"),
        (_cmd_body(extra=1), "cmd.extra"),
    ],
)
def test_rejects_bad_fields_naming_them(body: dict[str, object], field: str) -> None:
    with pytest.raises(SchemaError) as err:
        s.decode(msgpack.packb(body))
    assert err.value.field == field


def test_rejects_missing_field() -> None:
    body = _cmd_body()
    del body["grip"]
    with pytest.raises(SchemaError, match=r"cmd\.grip: missing"):
        s.decode(msgpack.packb(body))


def test_rejects_trailing_bytes_oversize_and_non_maps() -> None:
    good = s.encode(SAMPLES["cmd"])
    with pytest.raises(SchemaError, match="trailing"):
        s.decode(good + b"\x00")
    with pytest.raises(SchemaError, match="exceeds"):
        s.decode(b"\x90" * (s.MAX_MESSAGE_BYTES + 1))
    with pytest.raises(SchemaError, match="expected map"):
        s.decode(msgpack.packb([1, 2, 3]))
    with pytest.raises(SchemaError, match="not valid msgpack"):
        s.decode(b"\xc1")
    with pytest.raises(SchemaError, match="not valid msgpack"):
        s.decode(good[:-3])


def test_nested_fields_are_named() -> None:
    body = msgpack.unpackb(s.encode(SAMPLES["tlm"]))
    body["link"]["loss"] = 2.0
    with pytest.raises(SchemaError) as err:
        s.decode(msgpack.packb(body))
    assert err.value.field == "tlm.link.loss"


def test_decode_as_rejects_other_types() -> None:
    with pytest.raises(SchemaError, match="expected 'cmd'"):
        s.decode_as(s.encode(SAMPLES["ping"]), s.Command)


def _valid_or_schema_error(data: bytes) -> None:
    try:
        msg = s.decode(data)
    except SchemaError:
        return
    assert isinstance(msg, s.Message)
    assert s.decode(s.encode(msg)) == msg


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_ever_decode_or_raise_schema_error(data: bytes) -> None:
    _valid_or_schema_error(data)


_MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=300)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(SAMPLES)),
    key=st.text(max_size=14),
    value=_MSGPACK_VALUES,
    drop=st.booleans(),
)
def test_mutated_valid_messages_decode_or_raise_schema_error(
    name: str, key: str, value: object, drop: bool
) -> None:
    body = msgpack.unpackb(s.encode(SAMPLES[name]))
    keys = sorted(body)
    target = keys[hash(key) % len(keys)] if key == "" or key not in body else key
    if drop:
        body.pop(target, None)
    else:
        body[key or target] = value
    try:
        data = msgpack.packb(body)
    except (OverflowError, ValueError):
        return
    _valid_or_schema_error(data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=1, max_size=64), pos=st.integers(min_value=0))
def test_byte_flips_in_valid_messages(data: bytes, pos: int) -> None:
    for golden in SAMPLES.values():
        raw = bytearray(s.encode(golden))
        i = pos % len(raw)
        raw[i : i + len(data)] = data
        _valid_or_schema_error(bytes(raw))
