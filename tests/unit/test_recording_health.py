"""The recorder's health as telemetry carries it, and the HUD line it makes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from operator_console.view import SurgeonView, recording_alarm
from robot_side.recording import health
from robot_side.recording.health import RecordingHealth
from transport.schema import LinkReport, Pose, Telemetry, decode, encode


def _write(path: Path, **body: object) -> None:
    path.write_text(json.dumps(body))


def _now(h: RecordingHealth) -> str:
    h._next_read_ns = 0  # read the file now, not at the next half second
    return h()


def test_health_follows_the_recorders_status_file(tmp_path: Path) -> None:
    status = tmp_path / "recording.json"
    _write(status, state="failed", why="old run", t_ns=time.monotonic_ns() - 1)
    h = RecordingHealth(status)
    assert _now(h) == "starting"  # a previous run's status is not this one's
    _write(status, state="recording", why="", t_ns=time.monotonic_ns())
    assert _now(h) == "ok"
    _write(status, state="failed", why="disk nearly full (3 MB free, minimum 500 MB)",
           t_ns=time.monotonic_ns())
    assert _now(h) == "stopped: disk nearly full (3 MB free, minimum 500 MB)"
    h.started_ns -= 2 * health.STALE_NS  # this run has been going for a while
    _write(status, state="recording", t_ns=time.monotonic_ns() - health.STALE_NS - 10**9)
    assert _now(h).startswith("stopped: the recorder has not reported for")
    status.write_text("{torn")
    assert _now(h) == "starting" and h.bad_status == 1  # counted, not raised
    h.started_ns -= health.START_GRACE_NS  # past the start-up grace: a recorder that never wrote
    assert _now(h) == "stopped: the recorder never reported"


def test_health_reads_the_file_at_most_twice_a_second(tmp_path: Path) -> None:
    status = tmp_path / "recording.json"
    h = RecordingHealth(status)
    for _ in range(1000):
        h()
    assert h.reads == 1


def _tlm(recording: str | None) -> Telemetry:
    return Telemetry(seq=1, t_ns=0, state="following", reason="engaged", measured_js=(),
                     setpoint_js=(), measured_cp=Pose(), setpoint_cp=Pose(),
                     link=LinkReport(), scale=0.2, estop=False, recording=recording)


def test_the_hud_says_not_recording_only_with_fresh_telemetry() -> None:
    view = SurgeonView(stale_ms=250.0)
    tlm = decode(encode(_tlm("stopped: recording folder gone: [Errno 2] …")))
    assert isinstance(tlm, Telemetry)

    def hud(age_ns: int) -> tuple[str, ...]:
        return view.build(tlm=tlm, tlm_recv_ns=0, now_ns=age_ns, message="", message_ns=0,
                          teleop_why="", clutch=False, operator_present=True, scale=0.2,
                          video_age_ms=10.0).warnings

    assert hud(1_000_000) == ("NOT RECORDING: recording folder gone: [Errno 2] ?",)
    assert hud(10**9) == ()  # stale telemetry says nothing current
    assert recording_alarm("ok") is None and recording_alarm(None) is None
    assert recording_alarm("starting") is None


def test_a_telemetry_without_recording_has_its_old_bytes() -> None:
    assert b"recording" not in encode(_tlm(None))
    assert decode(encode(_tlm("ok"))) == _tlm("ok")
