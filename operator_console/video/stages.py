"""Where a stale picture lost its time on the console: per-stage ages, clock passed in.

For every picture shown: its age (from capture on the robot, mapped to this clock)
when its last byte was received, when decoded and when shown, and the interval
since the previous picture shown (the picture the surgeon sees ages by that much
before the next replaces it). A picture old on arrival was late on the robot or the
network; one that arrived fresh but was shown old was late here.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from operator_console.video.receiver import DecodedFrame
from telesurgery.gaps import PICTURE_AGES_MS, AgeCounter, GapCounter


class VideoStages:
    def __init__(self) -> None:
        self.received = AgeCounter()
        self.decoded = AgeCounter()
        self.shown = AgeCounter()
        self.shown_gaps = GapCounter(PICTURE_AGES_MS)
        self.console_delay = AgeCounter()
        """Received -> shown: the console's own share of a picture's age."""
        self.keyframe_requests: Counter[str] = Counter()

    def on_shown(self, frame: DecodedFrame, shown_ns: int) -> None:
        capture = frame.capture_local_ns
        self.received.add(frame.recv_ns - capture)
        self.decoded.add(frame.decoded_ns - capture)
        self.shown.add(shown_ns - capture)
        self.console_delay.add(shown_ns - frame.recv_ns)
        self.shown_gaps.event(shown_ns)

    def on_keyframe_request(self, reason: str) -> None:
        self.keyframe_requests[reason] += 1

    def summary(self) -> dict[str, Any]:
        return {"age_received": self.received.summary(), "age_decoded": self.decoded.summary(),
                "age_shown": self.shown.summary(), "shown_gaps": self.shown_gaps.summary(),
                "console_delay": self.console_delay.summary(),
                "keyframe_requests": dict(self.keyframe_requests)}
