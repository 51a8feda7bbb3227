"""Per-path health, the redundancy warning, the video path choice, the paths config."""

from __future__ import annotations

import dataclasses

import pytest

from telesurgery.config import build
from telesurgery.errors import ConfigError
from transport.config import LinkConfig, LinkPath
from transport.paths import PathHealth, PathView, choose_video_path, describe
from transport.schema import (
    ControlRequest,
    LinkReport,
    PathReport,
    Ping,
    Pong,
    Pose,
    Telemetry,
    decode,
    encode,
)
from transport.session_guard import SessionGuard

MS = 1_000_000


def feed(h: PathHealth, name: str, seq: int, t: int) -> None:
    h.on_copy(name, seq, t, t + 200_000, 0)


def test_down_to_one_path_is_one_warning_and_back_is_one_record() -> None:
    h = PathHealth(["A", "B"], window_ns=1000 * MS, live_ns=50 * MS)
    t = 0
    for seq in range(1, 50):
        t = seq * 2 * MS
        feed(h, "A", seq, t)
        feed(h, "B", seq, t + 100_000)
        assert h.check(t) is None
    # A goes silent; B carries on.
    alerts = []
    for seq in range(50, 150):
        t = seq * 2 * MS
        feed(h, "B", seq, t)
        if (a := h.check(t)) is not None:
            alerts.append(a)
    assert [a.code for a in alerts] == ["redundancy_lost"]
    assert "(B)" in alerts[0].detail and ": A." in alerts[0].detail
    views = {v.name: v for v in h.views(t)}
    assert not views["A"].live and views["B"].live
    assert describe(h.views(t)).startswith("A down / B ok")
    for seq in range(150, 900):  # 1.5 s of both; a flap in the middle
        t = seq * 2 * MS
        if not 300 <= seq < 340:
            feed(h, "A", seq, t)
        feed(h, "B", seq, t)
        if (a := h.check(t)) is not None:
            alerts.append(a)
    # Restored once, a second after the flap; no record per flap while lost.
    assert [a.code for a in alerts] == ["redundancy_lost", "redundancy_restored"]
    assert alerts[1].t_ns >= 340 * 2 * MS + h.restore_ns


def test_both_paths_silent_is_no_redundancy_alert_that_is_the_watchdogs() -> None:
    h = PathHealth(["A", "B"], window_ns=1000 * MS, live_ns=50 * MS)
    feed(h, "A", 1, 0)
    feed(h, "B", 1, 0)
    assert h.check(MS) is None
    assert h.check(500 * MS) is None


def test_a_path_that_never_came_up_is_a_warning_after_the_live_bound() -> None:
    h = PathHealth(["A", "B"], window_ns=1000 * MS, live_ns=50 * MS)
    codes = []
    for seq in range(1, 60):
        feed(h, "A", seq, seq * 2 * MS)
        if (a := h.check(seq * 2 * MS)) is not None:
            codes.append(a.code)
    assert codes == ["redundancy_lost"]


def test_a_copy_from_an_unknown_address_does_not_count_for_a_path() -> None:
    h = PathHealth(["A", "B"], window_ns=1000 * MS, live_ns=50 * MS)
    h.on_copy("?", 1, 0, 1, 0)
    assert h.live(1) == []


def test_video_stays_on_a_live_path_and_leaves_a_dead_one() -> None:
    a = PathView("A", True, rtt_us=2000)
    b = PathView("B", True, rtt_us=1500)
    assert choose_video_path([a, b], 0) == 0  # nearly equal: no flapping
    fast = PathView("B", True, rtt_us=500)
    slow = PathView("A", True, rtt_us=40_000)
    assert choose_video_path([slow, fast], 0) == 1
    dead = PathView("A", False, rtt_us=1000)
    assert choose_video_path([dead, b], 0) == 1
    assert choose_video_path([dead, PathView("B", False)], 0) == 0


def test_paths_config_is_validated_and_defaults_to_one_path() -> None:
    assert LinkConfig().path_list == (LinkPath("A", "127.0.0.1"),)
    assert not LinkConfig().dual
    cfg = build(LinkConfig, {"paths": [{"name": "A", "robot": "10.0.1.2", "console": "10.0.1.1"},
                                       {"name": "B", "robot": "10.0.2.2"}]}, "link")
    assert cfg.dual and cfg.path_list[1] == LinkPath("B", "10.0.2.2")
    with pytest.raises(ConfigError, match="own robot address"):
        LinkConfig(paths=(LinkPath("A", "h"), LinkPath("B", "h")))
    with pytest.raises(ConfigError, match="differ"):
        LinkConfig(paths=(LinkPath("A", "h1"), LinkPath("A", "h2")))
    with pytest.raises(ConfigError, match="dscp_video"):
        LinkConfig(dscp_video=64)


def test_telemetry_paths_are_optional_and_old_bytes_unchanged() -> None:
    base = Telemetry(seq=1, t_ns=0, state="ready", reason="", measured_js=(0.0,),
                     setpoint_js=(0.0,), measured_cp=Pose(), setpoint_cp=Pose(),
                     link=LinkReport(), scale=1.0, estop=False)
    assert b"paths" not in encode(base)
    with_paths = dataclasses.replace(base, paths=(PathReport("A", True, 900, 450, 30, 0.0),
                                                  PathReport("B", False)))
    assert decode(encode(with_paths)) == with_paths


def test_one_session_on_every_path_the_holder_is_gone_only_when_all_are() -> None:
    guard = SessionGuard(idle_ms=3000.0, token=lambda: 7)
    adm = guard.admit(b"A", ControlRequest(req_id=1, op="arm"), 0, lambda p: False)
    assert adm.granted == 7
    guard.on_ping(b"B", Ping(seq=1, t1_ns=0, session=7), 1)
    assert sorted(guard.ping_targets) == [b"A", b"B"]
    assert guard.pong_ok(b"A", Pong(seq=1, t1_ns=0, t2_ns=0, t3_ns=0, session=7), 2)
    assert guard.pong_ok(b"B", Pong(seq=2, t1_ns=0, t2_ns=0, t3_ns=0, session=7), 3)
    # Path A dead: another console still finds the session held (B answers).
    busy = guard.admit(b"X", ControlRequest(req_id=1, op="arm"), 4, lambda p: p == b"A")
    assert not busy.ok and busy.reason == "session_busy"
    guard.forget(b"A")
    assert guard.ping_targets == [b"B"]
    # Both gone: the takeover rule applies.
    taken = guard.admit(b"X", ControlRequest(req_id=2, op="arm"), 5, lambda p: True)
    assert taken.ok


def test_a_flap_between_two_checks_is_still_one_warning() -> None:
    # Path B down 100 ms of every 200 ms; the robot checks every 100 ms, in phase with the
    # flaps so that no check ever falls inside an outage. Its arrivals still tell: one
    # warning, and no restore while it flaps.
    h = PathHealth(["A", "B"], window_ns=1000 * MS, live_ns=50 * MS)
    alerts = []
    for seq in range(1, 2500):
        t = seq * 2 * MS
        feed(h, "A", seq, t)
        if t < 400 * MS or t > 2400 * MS or (t // (100 * MS)) % 2 == 0:
            feed(h, "B", seq, t)
        if t % (100 * MS) == 0 and (a := h.check(t + 1)) is not None:
            alerts.append((t // MS, a.code, a.detail))
    codes = [code for _, code, _ in alerts]
    assert codes == ["redundancy_lost", "redundancy_restored"], alerts
    assert "silent for over 50 ms: B" in alerts[0][2]
    assert alerts[1][0] >= 2400 + 1000  # restored only a second after the last flap


def test_after_both_paths_were_silent_no_redundancy_warning() -> None:
    h = PathHealth(["A", "B"], window_ns=1000 * MS, live_ns=50 * MS)
    for seq in range(1, 400):
        t = seq * 2 * MS
        if not 200 * MS < t < 500 * MS:  # both down (the watchdog's trip), then back
            feed(h, "A", seq, t)
            feed(h, "B", seq, t)
        assert h.check(t + 1) is None
