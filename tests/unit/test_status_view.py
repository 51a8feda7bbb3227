"""The console's terminal status view (``rich``): in place on a terminal, events in a log."""

from __future__ import annotations

import dataclasses
import io
import os
import select
import time
from collections.abc import Callable

from operator_console.status_view import StatusView, format_status
from operator_console.view import HudState

STATUS = HudState(state="hold", reason="latency_high", rtt_ms=150.0, latency_ms=40.0,
                  g2g_ms=None, video_age_ms=33.0, loss=0.0, jitter_ms=None, scale=0.12,
                  clutch=False, operator_present=True,
                  warnings=("link degraded: round trip 150 ms",), telemetry_age_ms=20.0)


def test_format_status_shows_everything_and_colours_only_when_asked() -> None:
    plain = format_status(STATUS, color=False)
    for text in ("HOLD", "latency_high", "telemetry 20 ms ago", "rtt 150.0 ms", "jitter --",
                 "loss 0.0 %", "video 33.0 ms", "scale 0.120", "clutch off",
                 "operator present", "round trip 150 ms", "Link too slow: arm holding.",
                 "Re-engage when the link is green."):
        assert text in plain, text
    assert "\x1b" not in plain
    coloured = format_status(STATUS, color=True)
    assert "\x1b[" in coloured and "HOLD" in coloured


def _read_pty(fd: int, until: Callable[[str], bool], timeout_s: float = 5.0) -> str:
    """What the pty delivered; the tty layer may hand one write over in several reads."""
    out = ""
    deadline = time.monotonic() + timeout_s
    while not until(out) and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            out += os.read(fd, 65536).decode()
    return out


def test_status_view_redraws_in_place_on_a_tty_at_most_every_period() -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", encoding="utf-8", closefd=False) as stream:
            view = StatusView(stream, period_s=0.25)
            assert view.tty
            drawn = [view.update(STATUS, t) for t in (0, 100_000_000, 250_000_000, 260_000_000)]
            view.close()
            assert drawn == [True, False, True, False]
        out = _read_pty(master, until=lambda text: text.count("(latency_high)") >= 2)
        assert out.count("(latency_high)") >= 2  # two draws (and the final one on close)
        assert "\x1b[2K" in out and "\x1b[1A" in out  # the second draw goes back over the first
    finally:
        os.close(master)
        os.close(slave)


def test_status_view_logs_blocks_only_when_what_it_says_changes() -> None:
    stream = io.StringIO()
    view = StatusView(stream, period_s=0.25)
    assert view.update(STATUS, 0)
    # Only ages and figures moved: nothing new in the log.
    assert not view.update(dataclasses.replace(STATUS, telemetry_age_ms=40.0, rtt_ms=151.0),
                           10**9)
    assert view.update(dataclasses.replace(STATUS, clutch=True), 2 * 10**9)
    assert view.update(dataclasses.replace(STATUS, telemetry_age_ms=900.0), 3 * 10**9)
    text = stream.getvalue()
    assert "\x1b" not in text and text.count("robot  HOLD") == 2 and "clutch ON" in text
    assert text.count("ROBOT STATE UNKNOWN") >= 1 and text.count("[") >= 3
