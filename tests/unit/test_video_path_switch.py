"""The console's video path switch (dual path): how fast a dead video path is left.

``VideoPathSwitch`` decides from the picture's arrivals and each path's liveness; the
link here is a stand-in (``_LinkStandIn``: the paths' last-heard times set by the test,
the switch recorded) so time is the test's own. The real sockets are in
hil_tests/test_dual_path.py (the video's path blacked out, the picture gap printed).
"""

from __future__ import annotations

import av
import pytest

from operator_console.connection import (
    FAST_SILENT_FRAMES,
    OVERDUE_WAIT_MS,
    RESUBSCRIBE_NS,
    VIDEO_SILENT_NS,
    VIDEO_WAIT_MS,
    VideoPathSwitch,
)
from operator_console.video.decoder import Picture
from operator_console.video.receiver import DecodedFrame
from transport.config import LinkPath
from transport.paths import PathView

MS = 1_000_000
FRAME_NS = 33 * MS


class _LinkStandIn:
    """What VideoPathSwitch reads of a ConsoleLink: paths, health, the video path."""

    def __init__(self) -> None:
        self.paths = [LinkPath("A", "10.1.0.2"), LinkPath("B", "10.2.0.2")]
        self.heard_ns = [0, 0]
        self.video_path = 0
        self.switched_to: list[int] = []
        self.resubscribed = 0

    def path_health(self, now_ns: int, live_ns: int) -> list[PathView]:
        return [PathView(p.name, now_ns - h <= live_ns, rtt_us=1000)
                for p, h in zip(self.paths, self.heard_ns, strict=True)]

    def switch_video(self, index: int) -> None:
        self.switched_to.append(index)
        self.video_path = index

    def drain_standby_video(self) -> int:
        return 0

    def resubscribe_video(self) -> None:
        self.resubscribed += 1


def _run(quiet_path: bool) -> tuple[_LinkStandIn, VideoPathSwitch, int, int | None]:
    """Frames by path A until t_stop, then none; path A's telemetry stops with them when
    ``quiet_path``. Returns the switch and the time it moved the video (None: never)."""
    link = _LinkStandIn()
    frames = [0]
    switch = VideoPathSwitch(link, lambda: frames[0])  # type: ignore[arg-type]
    t = 10 * FRAME_NS
    for _ in range(20):  # a steady picture: the interval is learnt
        t += FRAME_NS
        frames[0] += 1
        link.heard_ns = [t, t]
        switch.poll(t)
        switch.on_displayed(t)
    last_frame = t
    while t < last_frame + 2 * VIDEO_SILENT_NS:
        t += 5 * MS  # the video loop polls every few milliseconds
        link.heard_ns = [last_frame if quiet_path else t, t]
        if switch.poll(t):
            return link, switch, last_frame, t
    return link, switch, last_frame, None


def test_a_dead_video_path_is_left_after_two_frame_intervals() -> None:
    link, switch, last_frame, moved = _run(quiet_path=True)
    assert moved is not None and link.switched_to == [1]
    waited = moved - last_frame
    assert waited <= FAST_SILENT_FRAMES * FRAME_NS + 10 * MS < VIDEO_SILENT_NS, waited / MS
    # The picture gap: the last picture before the switch to the first after it.
    switch.on_displayed(moved + 40 * MS)
    assert switch.picture_gaps_ms == [(moved + 40 * MS - last_frame) / MS]


def test_a_late_encoder_on_a_live_path_does_not_move_the_video_early() -> None:
    link, _, last_frame, moved = _run(quiet_path=False)
    # The path still brings telemetry: only the slow rule (the video channel alone failed).
    assert moved is not None and moved - last_frame > VIDEO_SILENT_NS
    assert link.switched_to == [1]


def test_a_silent_video_path_sends_its_subscription_again() -> None:
    """A SUBSCRIBE lost on a lossy path (TCP up) is never re-sent by libzmq: the console
    sends it again every ``RESUBSCRIBE_NS`` of silence, not while video flows."""
    link, _, last_frame, moved = _run(quiet_path=False)
    assert moved is not None
    # None while frames came every 33 ms; one after 100 ms of silence, before the slow
    # rule moved the video at 120 ms.
    assert RESUBSCRIBE_NS < moved - last_frame < 2 * RESUBSCRIBE_NS
    assert link.resubscribed == 1


def test_the_picture_gap_is_split_where_it_went() -> None:
    """The switch's split: each step from the one before, robot times by the offset; the
    steps add up to the picture gap."""
    _, switch, last_frame, moved = _run(quiet_path=True)
    assert moved is not None
    switch.on_keyframe_requested(moved + 1 * MS)
    offset = 5_000 * MS  # the robot's clock runs 5 s behind this one
    frame = DecodedFrame(frame_id=99, capture_ns=moved + 10 * MS - offset,
                         recv_ns=moved + 30 * MS, decoded_ns=moved + 36 * MS,
                         picture=Picture(av.VideoFrame(2, 2, "yuv420p")), keyframe=True,
                         offset_ns=offset, send_ns=moved + 25 * MS - offset)
    switch.on_displayed(moved + 40 * MS, frame)
    split = switch.splits[-1]
    assert split == {"switch": (moved - last_frame) / MS, "keyframe requested": 1.0,
                     "keyframe captured": 9.0, "encoded and sent": 15.0, "received": 5.0,
                     "decoded": 6.0, "shown": 4.0}
    assert sum(v or 0.0 for v in split.values()) == pytest.approx(switch.picture_gaps_ms[-1])


def test_the_video_loop_waits_briefly_only_once_video_is_overdue() -> None:
    link = _LinkStandIn()
    frames = [0]
    switch = VideoPathSwitch(link, lambda: frames[0])  # type: ignore[arg-type]
    assert switch.wait_ms(0) == VIDEO_WAIT_MS  # nothing learnt yet
    t = 0
    for _ in range(5):
        t += FRAME_NS
        frames[0] += 1
        switch.poll(t)
    due = t + int(FAST_SILENT_FRAMES * FRAME_NS)  # when the fast rule can first fire
    assert switch.wait_ms(t + MS) == VIDEO_WAIT_MS
    assert switch.wait_ms(due - 7 * MS) == 7  # the loop wakes when it is due
    assert switch.wait_ms(due + MS) == OVERDUE_WAIT_MS
    link.paths = link.paths[:1]  # one path: nothing to fail over to, no short waits
    assert switch.wait_ms(due + MS) == VIDEO_WAIT_MS
