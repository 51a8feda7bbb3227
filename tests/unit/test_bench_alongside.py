"""What the soak runs beside the rig: the raw pyzmq pair in windows, the stall reader.

Real processes and sockets; counts only, no timed assertions."""

from __future__ import annotations

from telesurgery.bench.path import STALL_GAP_NS, STALL_INTERVAL_NS, RawPair, raw_windows
from telesurgery.bench.soak import RAW_EVERY_S, RAW_WINDOW_S


def test_windows_cover_the_whole_run_when_none_are_asked_for() -> None:
    assert raw_windows(10.0, None, None) == [(0.0, 10.0)]
    assert raw_windows(10.0, 20.0, 60.0) == [(0.0, 10.0)]  # window longer than the run


def test_soak_windows_are_ten_seconds_of_every_minute() -> None:
    windows = raw_windows(600.0, RAW_WINDOW_S, RAW_EVERY_S)
    assert windows == [(60.0 * i, 10.0) for i in range(10)]
    assert raw_windows(30.0, RAW_WINDOW_S, RAW_EVERY_S) == [(0.0, 10.0)]
    assert raw_windows(65.0, RAW_WINDOW_S, RAW_EVERY_S) == [(0.0, 10.0), (60.0, 5.0)]


def test_stall_reader_still_resolves_gaps_over_one_millisecond() -> None:
    # A stall longer than STALL_GAP_NS must hold the reader off for a whole gap.
    assert STALL_INTERVAL_NS < STALL_GAP_NS


def test_raw_pair_sends_only_inside_its_windows() -> None:
    pair = RawPair(2.2, 200.0, window_s=0.5, every_s=1.0)
    out = pair.results(timeout_s=60.0)
    assert out["raw_windows"] == 3 and out["raw_window_s"] == 0.5 and out["raw_every_s"] == 1.0
    # 1.5 s of sending at 200 Hz: about 300 messages, far from the 440 of sending all along.
    assert 200 <= out["raw_sent"] <= 320, out
    assert out["raw_delivered"] == out["raw_sent"]
    assert out["raw_p99_us"] > 0 and out["raw_send_cpu_s"] >= 0 and out["raw_recv_cpu_s"] >= 0

