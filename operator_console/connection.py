"""Can the console reach the robot, and did the secure handshake work? Told apart.

ZeroMQ reconnects silently: a console with no robot, or with the wrong keys,
otherwise sees nothing at all. ``ConnectionWatch`` reads the socket monitor of
one of the console's sockets (the video SUB: it is owned by the video loop's
thread, which also polls this monitor; its endpoint is the robot's host and
video port) and turns its events into one sentence for the surgeon:

- nothing answers at HOST:PORT (TCP refused or retried): no robot there;
- TCP up but the CURVE handshake failed: the robot refused this console's key
  (``HANDSHAKE_FAILED_AUTH``), or the peer does not speak our protocol or has
  another server key (``..._PROTOCOL``/``..._NO_DETAIL``);
- the handshake succeeded once and the connection dropped later.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from operator_console.video.receiver import DecodedFrame
from transport.console_link import ConsoleLink
from transport.paths import choose_video_path

log = logging.getLogger(__name__)

PATH_LIVE_NS = 150_000_000
"""A path that brought nothing (pings at ``ping_hz``, telemetry) for this long is down."""
VIDEO_SILENT_NS = 120_000_000
"""No video message for this long (about four frame intervals): the video path failed,
whatever the path's other traffic says (the video channel alone may have failed)."""
PATH_QUIET_NS = 35_000_000
"""The video's path brought nothing else either for this long (telemetry comes at 50 Hz
on every path: one missed and most of the next) while another path did: the path is gone, switch
after ``FAST_SILENT_FRAMES``
frame intervals of silence instead of waiting ``VIDEO_SILENT_NS`` (an encoder that is
merely late does not stop the path's telemetry, so it does not move the video)."""
FAST_SILENT_FRAMES = 1.25
"""Frame intervals without a picture before a quiet path's video moves (the goal: a
picture gap of at most two frame intervals and one keyframe). HIL split at 1.5 and 45 ms
quiet, polled every 20 ms: last picture -> switch 62-66 ms of a 76-124 ms gap, the
largest part (a late frame alone never moves it: the path's telemetry must stop too)."""
VIDEO_WAIT_MS = 20
"""How long the video loop waits for video while it is on time (``wait_ms``)."""
OVERDUE_WAIT_MS = 5
"""... and once ``FAST_SILENT_FRAMES`` passed without one (the loop waits until then), so
that a gone path is noticed within this of its thresholds, not up to ``VIDEO_WAIT_MS``
after (dual path only; a short wait costs a loop turn, so only while video is missing)."""
SWITCH_HOLDOFF_NS = 400_000_000
"""After a switch the new path gets this long to bring a keyframe before another."""
PREFER_CHECK_NS = 1_000_000_000
"""How often a flowing video path is compared with the others' round trips."""
RESUBSCRIBE_NS = 100_000_000
"""No video message for this long (three frame intervals at 30 fps; right after a switch,
counted from it): the video path's subscription is sent again, and again after as long
(``ConsoleLink.resubscribe_video``). A lossy path can lose a SUBSCRIBE with TCP up (the
HIL fault proxy does), and then nothing else would ever re-send it."""

_EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED
           | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
           | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class ConnectionWatch:
    def __init__(self, sock: zmq.Socket[Any], where: str) -> None:
        self.where = where
        """HOST:PORT as configured, for the messages."""
        self._monitor: zmq.Socket[Any] = sock.get_monitor_socket(_EVENTS)
        self.ever_connected = False
        """A CURVE handshake with the robot succeeded at least once."""
        self.handshake_failures = 0
        self._retries = 0
        self.problem = f"connecting to the robot at {where}"
        """What is wrong with the connection, in one sentence; "" while it is up."""

    def poll(self) -> str:
        """Read pending monitor events; return the current ``problem`` ("" when up)."""
        while self._monitor.poll(0):
            try:
                event = parse_monitor_message(self._monitor.recv_multipart())
            except (zmq.ZMQError, ValueError, KeyError):
                break
            self._on(int(event["event"]), event["value"])
        return self.problem

    def _on(self, kind: int, value: object) -> None:
        before = self.problem
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.ever_connected = True
            self.problem = ""
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.handshake_failures += 1
            self.problem = (f"the robot at {self.where} refused this console's key "
                            f"(handshake failed, code {value}): wrong keys?")
        elif kind in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                      zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            self.handshake_failures += 1
            self.problem = (f"secure handshake with {self.where} failed: wrong robot key, "
                            "or not a telesurgery robot")
        elif kind == zmq.EVENT_CONNECTED:
            self._retries = 0
        elif kind == zmq.EVENT_CONNECT_RETRIED:
            # A retry is also scheduled after a failed handshake's disconnect (and the
            # first connect may predate this monitor): two in a row without a TCP
            # connection between them mean that nothing answers.
            self._retries += 1
            if self._retries >= 2:
                self.problem = (f"cannot reach the robot at {self.where}: nothing answers "
                                "(robot not running, wrong host or port, or a firewall)")
        elif kind == zmq.EVENT_DISCONNECTED and self.problem == "":
            self.problem = f"lost the connection to the robot at {self.where}"
        if self.problem != before and self.problem:
            log.warning("%s", self.problem)
        elif self.problem != before:
            log.info("connected to the robot at %s", self.where)

    def close(self) -> None:
        self._monitor.close(0)


class VideoPathSwitch:
    """Dual path: video by one path, moved when its video stops or another is clearly faster.

    Called from the video loop (its thread owns the video socket). The trigger for a
    failover is the picture itself (no video message for ``VIDEO_SILENT_NS``) while
    another path is live; a flowing path is left only for a clearly faster one
    (``choose_video_path``), at most once a second. Every path's video connection is
    up all the time (``ConsoleLink.switch_video`` only moves the subscription; standby
    queues are drained here). The new path's stream starts mid-GOP, so the receiver is
    told to wait for a keyframe, which makes it request one
    (``VideoReceiver.take_keyframe_request``)."""

    def __init__(self, link: ConsoleLink, received: Callable[[], int] | None,
                 on_switch: Callable[[], None] = lambda: None) -> None:
        self.link = link
        self._received = received
        self._on_switch = on_switch
        self.switches = 0
        self._count = -1
        self._video_ns: int | None = None
        self._switched_ns: int | None = None
        self._prefer_ns = 0
        self._shown_ns: int | None = None
        self._interval_ns: float | None = None
        """The frame interval as received (moving average)."""
        self._resubscribed_ns: int | None = None
        self._gap_from_ns: int | None = None
        self._gap_switch_ns = 0
        self._requested_ns: int | None = None
        self.picture_gaps_ms: list[float] = []
        """Per switch: the last picture shown before it to the first shown after it."""
        self.splits: list[dict[str, float | None]] = []
        """Per switch: where its picture gap went (``switch_split``)."""

    def on_keyframe_requested(self, now_ns: int) -> None:
        """The video loop handed a keyframe request to the session thread (the split)."""
        if self._gap_from_ns is not None and self._requested_ns is None:
            self._requested_ns = now_ns

    def on_displayed(self, now_ns: int, frame: DecodedFrame | None = None) -> None:
        """A picture was shown (the video loop calls this): closes a switch's picture gap,
        logged as "video path switch: picture gap N ms (split)" (the HIL row reads it)."""
        if (self._gap_from_ns is not None and frame is not None
                and frame.recv_ns < self._gap_switch_ns):
            # Received by the old path before the switch (a switch to a faster path in the
            # same turn): the gap starts here, not before.
            self._gap_from_ns = now_ns
        elif self._gap_from_ns is not None:
            gap_ms = (now_ns - self._gap_from_ns) / 1e6
            self.picture_gaps_ms.append(gap_ms)
            split = switch_split(self._gap_from_ns, self._gap_switch_ns, self._requested_ns,
                                 frame, now_ns)
            self.splits.append(split)
            log.info("video path switch: picture gap %.1f ms (%s)", gap_ms,
                     describe_split(split))
            self._gap_from_ns = self._requested_ns = None
        self._shown_ns = now_ns

    def poll(self, now_ns: int) -> bool:
        """Switch if the video path failed or another is now clearly better; True if so."""
        link = self.link
        if len(link.paths) < 2 or self._received is None:
            return False
        link.drain_standby_video()
        count = self._received()
        if count != self._count:
            if self._video_ns is not None and self._count >= 0 and count == self._count + 1:
                dt = now_ns - self._video_ns
                self._interval_ns = dt if self._interval_ns is None else (
                    0.9 * self._interval_ns + 0.1 * dt)
            self._count, self._video_ns = count, now_ns
        self._keep_subscribed(now_ns)
        if self._switched_ns is not None and now_ns - self._switched_ns < SWITCH_HOLDOFF_NS:
            return False
        health = link.path_health(now_ns, PATH_LIVE_NS)
        here = link.video_path
        silent = self._video_ns is None or now_ns - self._video_ns > VIDEO_SILENT_NS
        if not silent and self._path_gone(now_ns, here):
            silent = True
        if silent and (count > 0 or not health[here].live):
            others = [replace(p, live=p.live and i != here) for i, p in enumerate(health)]
            best = choose_video_path(others, here)
            return best != here and self._switch(best, now_ns)
        if silent or now_ns < self._prefer_ns:
            return False
        self._prefer_ns = now_ns + PREFER_CHECK_NS
        best = choose_video_path(health, here)
        return best != here and self._switch(best, now_ns)

    def wait_ms(self, now_ns: int) -> int:
        """How long the video loop may wait for video now: short once a frame is overdue
        on a dual-path link (the failover checks run between waits)."""
        if len(self.link.paths) < 2 or self._video_ns is None or self._interval_ns is None:
            return VIDEO_WAIT_MS
        due_ns = self._video_ns + FAST_SILENT_FRAMES * self._interval_ns - now_ns
        if due_ns > 0:  # until the fast rule can first fire (video ends the wait sooner)
            return max(1, min(VIDEO_WAIT_MS, math.ceil(due_ns / 1e6)))
        return OVERDUE_WAIT_MS

    def _keep_subscribed(self, now_ns: int) -> None:
        """Video silent for ``RESUBSCRIBE_NS`` (since the last message, the switch, or the
        last re-send): send the subscription again."""
        if self._resubscribed_ns is None:
            self._resubscribed_ns = now_ns
        quiet_since = max(self._video_ns or 0, self._resubscribed_ns)
        if now_ns - quiet_since > RESUBSCRIBE_NS:
            self.link.resubscribe_video()
            self._resubscribed_ns = now_ns

    def _path_gone(self, now_ns: int, here: int) -> bool:
        """Video silent for ``FAST_SILENT_FRAMES`` intervals and its path quiet while
        another path is heard from: the path failed, not the encoder."""
        if self._video_ns is None or self._interval_ns is None:
            return False
        if now_ns - self._video_ns <= FAST_SILENT_FRAMES * self._interval_ns:
            return False
        quiet = self.link.path_health(now_ns, PATH_QUIET_NS)
        return not quiet[here].live and any(p.live for i, p in enumerate(quiet) if i != here)

    def move_to(self, index: int, now_ns: int) -> bool:
        """Move the video to path ``index`` now, as a failover would (the link bench's
        switch trials); False if it is the video's path already."""
        return index != self.link.video_path and self._switch(index, now_ns)

    def _switch(self, index: int, now_ns: int) -> bool:
        self.link.switch_video(index)
        self.switches += 1
        if self._gap_from_ns is None:  # a second switch before a picture: the same gap
            self._gap_from_ns = self._shown_ns
        self._gap_switch_ns, self._requested_ns = now_ns, None
        self._switched_ns = self._video_ns = now_ns
        self._on_switch()
        return True


SPLIT_STEPS = ("switch", "keyframe requested", "keyframe captured", "encoded and sent",
               "received", "decoded", "shown")


def switch_split(last_shown_ns: int | None, switch_ns: int, requested_ns: int | None,
                 frame: DecodedFrame | None, shown_ns: int) -> dict[str, float | None]:
    """Where a switch's picture gap went, in ms, each step from the one before: the last
    picture shown -> the switch (detection) -> the keyframe request handed to the
    session thread -> the keyframe captured on the robot (negative: captured before the
    request, encoded after) -> encoded and sent -> received here -> decoded -> shown.
    Robot times are mapped by the clock offset (good to about half a round trip). None:
    not known (no picture before the switch, no request, no frame given)."""
    marks: list[int | None] = [switch_ns, requested_ns]
    if frame is not None and frame.send_ns:
        marks += [frame.capture_local_ns, frame.send_ns + frame.offset_ns, frame.recv_ns,
                  frame.decoded_ns]
    else:
        marks += [None, None, None, None]
    marks.append(shown_ns)
    out: dict[str, float | None] = {}
    before = last_shown_ns
    for step, mark in zip(SPLIT_STEPS, marks, strict=True):
        out[step] = None if mark is None or before is None else (mark - before) / 1e6
        before = mark if mark is not None else before
    return out


def describe_split(split: dict[str, float | None]) -> str:
    return ", ".join(f"-> {step} {'?' if ms is None else f'{ms:.1f}'}"
                     for step, ms in split.items())

