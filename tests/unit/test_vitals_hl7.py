"""The patient monitor's HL7 v2 input: parsing, validation, ACK/NAK, stale marking (issue 17)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from robot_side.vitals.hl7_source import ack_for, apply_oru
from robot_side.vitals.model import ALARM_EXPIRE_MS, VitalsBook, VitalsError, normalise
from robot_side.vitals.monitor_sim import oru_r01
from robot_side.vitals.patient import Script, patient_at
from robot_side.vitals.relay import AlarmAuditor, gone_from
from telesurgery.errors import SchemaError
from transport import schema
from transport.schema import VitalAlarm, Vitals, VitalValue

MS = 1_000_000
T0 = 10_000 * MS


def msg(*obx: str, mtype: str = "ORU^R01") -> str:
    head = f"MSH|^~\\&|MON|OR1|TS|ROBOT|20261204120000||{mtype}|42|P|2.6\rPID|||1\rOBR|1"
    return "\r".join([head, *obx]) + "\r"


def book() -> VitalsBook:
    b = VitalsBook("hl7", monitor_timeout_ms=5000)
    b.connected = True
    return b


def values(v: Vitals) -> dict[str, VitalValue]:
    return {x.name: x for x in v.values}


HR_72 = "OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||72|/min|||||F"


def test_a_simulated_oru_is_accepted_with_every_sign_and_unit() -> None:
    b = book()
    out = apply_oru(oru_r01(patient_at(0.0), 1), b, T0)
    assert out.ack_code == "AA", out.reason
    snap = b.snapshot(T0 + 100 * MS)
    got = values(snap)
    assert set(got) == set(schema.VITAL_NAMES)
    assert got["hr"].value == 72.0 and got["hr"].unit == "/min"
    assert got["spo2"].unit == "%" and got["temp"].unit == "Cel"
    assert all(v.status == "ok" and v.age_ms == 100 for v in snap.values)
    assert snap.monitor == "ok" and snap.alarms == ()
    assert schema.decode(schema.encode(snap)) == snap  # within the wire's bounds


def test_loinc_codes_and_kpa_are_understood() -> None:
    b = book()
    out = apply_oru(msg("OBX|1|NM|8867-4^Heart rate^LN||80|{beats}/min|||||F",
                        "OBX|2|NM|19889-5^EtCO2^LN||5.0|kPa|||||F"), b, T0)
    assert out.ack_code == "AA", out.reason
    got = values(b.snapshot(T0))
    assert got["hr"].value == 80.0
    assert got["etco2"].unit == "mmHg" and math.isclose(got["etco2"].value, 37.5, abs_tol=0.1)


@pytest.mark.parametrize("text", ["", "garbage", "MSH", "PID|1\rOBX|1", "\x00\xff" * 10])
def test_malformed_input_is_rejected_with_a_reason_and_counted(text: str) -> None:
    b = book()
    out = apply_oru(text, b, T0)
    assert out.ack_code == "AR" and out.reason
    assert b.counters["refused"] == 1
    assert b.monitor_state(T0) == "none"  # a message we cannot read is not the monitor
    assert ack_for(text, out).startswith(b"\x0b") and b"MSA|AR" in ack_for(text, out)


def test_another_message_type_is_rejected() -> None:
    b = book()
    out = apply_oru(msg(HR_72, mtype="ADT^A01"), b, T0)
    assert out.ack_code == "AR" and "ORU^R01" in out.reason
    assert b.snapshot(T0).values == ()


def test_an_ack_carries_the_message_control_id() -> None:
    text = msg(HR_72)
    ack = ack_for(text, apply_oru(text, book(), T0))
    assert b"MSA|AA|42" in ack and ack.endswith(b"\x1c\x0d")


def test_unknown_observations_are_counted_and_ignored() -> None:
    b = book()
    out = apply_oru(msg(HR_72, "OBX|2|NM|99999^MDC_SOMETHING_NEW^MDC||3|x|||||F"), b, T0)
    assert out.ack_code == "AA"
    assert b.counters["unknown_observations"] == 1
    assert set(values(b.snapshot(T0))) == {"hr"}


@pytest.mark.parametrize(("value", "unit"), [("400", "/min"), ("-5", "/min"), ("abc", "/min"),
                                             ("nan", "/min"), ("inf", "/min"), ("72", "mmHg")])
def test_a_refused_value_leaves_the_last_good_one_marked_stale(value: str, unit: str) -> None:
    b = book()
    assert apply_oru(msg(HR_72), b, T0).ack_code == "AA"
    out = apply_oru(msg(f"OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||{value}|{unit}|||||F"),
                    b, T0 + 10 * MS)
    assert out.ack_code == "AE" and "hr" in out.reason
    hr = values(b.snapshot(T0 + 20 * MS))["hr"]
    assert hr.value == 72.0  # the last good value, never the refused one
    assert hr.status == "stale"  # ... and never shown as current
    assert b.counters["refused"] == 1
    # A good value makes it current again.
    apply_oru(msg(HR_72), b, T0 + 30 * MS)
    assert values(b.snapshot(T0 + 30 * MS))["hr"].status == "ok"


def test_a_value_older_than_its_interval_is_stale() -> None:
    b = book()
    apply_oru(msg(HR_72), b, T0)
    b.heard(T0 + 5_500 * MS)  # the monitor still talks, but not about the heart rate
    hr = values(b.snapshot(T0 + 5_500 * MS))["hr"]
    assert hr.age_ms == 5_500 and hr.status == "stale"


def test_a_silent_or_disconnected_monitor_is_gone_and_its_values_stale() -> None:
    b = book()
    apply_oru(msg(HR_72), b, T0)
    assert b.snapshot(T0 + 4_000 * MS).monitor == "ok"
    silent = b.snapshot(T0 + 5_001 * MS)
    assert silent.monitor == "gone" and values(silent)["hr"].status == "stale"
    b2 = book()
    apply_oru(msg(HR_72), b2, T0)
    b2.connected = False
    assert b2.snapshot(T0 + MS).monitor == "gone"


def test_alarms_pass_through_with_priority_and_end() -> None:
    b = book()
    tachy = "OBX|2|ST|MDC_EVT_HR_HIGH^MDC_EVT_HR_HIGH^MDC||Tachycardia 138/min|||PH|||F"
    out = apply_oru(msg(HR_72, tachy), b, T0)
    assert out.raised == ("MDC_EVT_HR_HIGH",)
    (alarm,) = b.snapshot(T0 + 50 * MS).alarms
    assert (alarm.code, alarm.priority, alarm.text, alarm.age_ms) == (
        "HR_HIGH", "high", "Tachycardia 138/min", 50)
    assert apply_oru(msg(tachy), b, T0 + MS).raised == ()  # repeated: not raised again
    apply_oru(msg(tachy.replace("|||F", "|||X")), b, T0 + 2 * MS)
    assert b.snapshot(T0 + 3 * MS).alarms == ()


def test_an_alarm_not_repeated_expires_but_not_while_the_monitor_is_gone() -> None:
    b = book()
    apply_oru(msg("OBX|1|ST|MDC_EVT_X^MDC_EVT_X^MDC||x|||PM|||F"), b, T0)
    b.connected = False
    later = T0 + (ALARM_EXPIRE_MS + 1) * MS
    assert len(b.snapshot(later).alarms) == 1  # unknown, not over
    b.connected = True
    b.heard(later)
    assert b.snapshot(later).alarms == ()


def test_an_alarm_with_an_unknown_priority_flag_is_refused() -> None:
    b = book()
    out = apply_oru(msg("OBX|1|ST|MDC_EVT_X^MDC_EVT_X^MDC||x|||ZZ|||F"), b, T0)
    assert out.ack_code == "AE" and "priority" in out.reason
    assert b.snapshot(T0).alarms == ()


def test_normalise_names_the_reason() -> None:
    with pytest.raises(VitalsError, match="physiological range"):
        normalise("spo2", 101.0, "%")
    with pytest.raises(VitalsError, match="unknown vital"):
        normalise("glucose", 5.0, "mmol/L")


def test_the_scripted_patient_desaturates_then_becomes_tachycardic() -> None:
    s = Script(stable_s=1.0, desat_s=1.0, tachy_after_s=0.5)
    assert patient_at(0.5, s).alarms == {}
    assert set(patient_at(2.0, s).alarms) == {"SPO2_LOW"}
    assert patient_at(2.6, s).alarms["HR_HIGH"][0] == "high"


# ------------------------------------------------------------------ the wire message
def vitals(**kw: object) -> Vitals:
    base: dict[str, object] = {"seq": 1, "t_ns": 0, "source": "hl7", "monitor": "ok"}
    return Vitals(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [
    {"monitor": "maybe"},
    {"values": [{"name": "hr", "value": float("nan"), "unit": "/min", "age_ms": 0,
                 "expected_ms": 1}]},
    {"values": [{"name": "glucose", "value": 1.0, "unit": "x", "age_ms": 0,
                 "expected_ms": 1}]},
    {"alarms": [{"code": "X", "priority": "urgent", "text": "", "age_ms": 0}]},
    {"alarms": [{"code": "X", "priority": "high", "text": "x" * 200, "age_ms": 0}]},
    {"alarms": [{"code": "X", "priority": "high", "text": "", "age_ms": 0}] * 9},
    {"values": [{"name": "hr", "value": 1.0, "unit": "/min", "age_ms": 0,
                 "expected_ms": 1}] * 17},
])
def test_the_vitals_message_is_bounded(bad: dict[str, object]) -> None:
    import msgpack

    body = {"v": schema.VERSION, "t": "vit", "seq": 1, "t_ns": 0, "source": "hl7",
            "monitor": "ok", "values": [], "alarms": [], "detail": "", **bad}
    with pytest.raises(SchemaError):
        schema.decode(msgpack.packb(body))


# ------------------------------------------------------------------ audit and silence
def test_a_high_alarm_is_audited_once_per_raise_and_lower_ones_not() -> None:
    aud = AlarmAuditor()
    high = VitalAlarm("HR_HIGH", "high", "Tachycardia", 0)
    medium = VitalAlarm("SPO2_LOW", "medium", "SpO2 low", 0)
    first = aud.review(vitals(alarms=(high, medium)), T0)
    assert [(a.code, "HR_HIGH" in a.detail) for a in first] == [("vitals_alarm", True)]
    assert aud.review(vitals(alarms=(high, medium)), T0 + MS) == []
    assert aud.review(vitals(alarms=()), T0 + 2 * MS) == []
    assert len(aud.review(vitals(alarms=(high,)), T0 + 3 * MS)) == 1  # raised again


def test_a_monitor_going_away_and_back_is_audited() -> None:
    aud = AlarmAuditor()
    aud.review(vitals(), T0)
    (gone,) = aud.review(vitals(monitor="gone", detail="closed"), T0 + MS)
    assert gone.code == "vitals_monitor" and "ok -> gone" in gone.detail
    (back,) = aud.review(vitals(), T0 + 2 * MS)
    assert "gone -> ok" in back.detail


def test_the_last_snapshot_of_a_silent_vitals_process_reads_gone_and_stale() -> None:
    last = vitals(values=(VitalValue("hr", 72.0, "/min", 100, 5000),),
                  alarms=(VitalAlarm("HR_HIGH", "high", "x", 100),))
    shown = gone_from(last, T0 + 3_000 * MS, T0, "vitals process silent")
    assert shown.monitor == "gone" and shown.detail == "vitals process silent"
    assert shown.values[0].status == "stale" and shown.values[0].age_ms == 3_100
    assert shown.alarms[0].age_ms == 3_100


def test_the_recording_has_a_vitals_topic(tmp_path: Path) -> None:
    from rosbags.highlevel import AnyReader

    from robot_side.recording.bag import SessionBag, typestore

    bag = SessionBag(tmp_path / "session", ("j1",))
    bag.vitals(vitals(values=(VitalValue("hr", 138.0, "/min", 10, 5000),),
                      alarms=(VitalAlarm("HR_HIGH", "high", "Tachycardia", 0),)))
    bag.close()
    with AnyReader([tmp_path / "session"], default_typestore=typestore()) as reader:
        (msg,) = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                  if c.topic == "/patient/vitals"]
    (status,) = msg.status
    got = {kv.key: kv.value for kv in status.values}
    assert status.level == 2 and got["hr"] == "138 /min"
    assert got["alarm HR_HIGH"] == "high: Tachycardia" and got["monitor"] == "ok"


def test_a_flapping_alarm_cannot_flood_the_audit_log() -> None:
    """The audit thread also writes the supervisor's transitions: vitals records are
    bounded so a flapping (or hostile) monitor cannot delay them."""
    from robot_side.vitals.relay import AUDIT_BURST, AUDIT_WINDOW_NS

    aud = AlarmAuditor()
    high = VitalAlarm("HR_HIGH", "high", "Tachycardia", 0)
    records = []
    for i in range(200):  # raised and cleared 100 times within one second
        records += aud.review(vitals(alarms=(high,) if i % 2 == 0 else ()), T0 + i * 5 * MS)
    assert len(records) == AUDIT_BURST
    assert aud.suppressed == 100 - AUDIT_BURST
    later = T0 + AUDIT_WINDOW_NS + 2 * MS
    (next_record,) = aud.review(vitals(alarms=(high,)), later)
    assert f"[{100 - AUDIT_BURST} earlier vitals changes not audited]" in next_record.detail
