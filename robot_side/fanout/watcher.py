"""A watcher's end of the fan-out: telemetry, events and video of one robot from a router.

Everything received is validated with the wire schema exactly as a console
validates it (a router is a relay, not a trusted source). Queues are bounded
ring channels: a watcher that falls behind loses the oldest messages, it never
holds up the router or the robot. The liveliness token it declares is what the
fan-out counts; it disappears when the watcher closes or its link dies (the
router notices within Zenoh's lease, 10 s by default).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import zenoh

from robot_side.fanout import keys
from telesurgery.errors import SchemaError
from telesurgery.ratelog import RateLimitedLog
from transport.schema import (
    Message,
    SafetyEvent,
    Stroke,
    Telemetry,
    VideoFrameHeader,
    Vitals,
    decode,
    decode_as,
)

log = logging.getLogger(__name__)
STATE_QUEUE = 256
VIDEO_QUEUE = 64


@dataclass(frozen=True)
class WatchedFrame:
    header: VideoFrameHeader
    payload: bytes
    recv_ns: int


class Watcher:
    def __init__(self, session: zenoh.Session, robot: str, name: str | None = None) -> None:
        self._session = session
        self._ratelog = RateLimitedLog(log)
        self.bad_messages = 0
        self.last_state_ns: int | None = None
        self._tlm = session.declare_subscriber(
            keys.telemetry(robot), zenoh.handlers.RingChannel(STATE_QUEUE))
        self._evt = session.declare_subscriber(
            keys.events(robot), zenoh.handlers.RingChannel(STATE_QUEUE))
        self._vid = session.declare_subscriber(
            keys.video(robot), zenoh.handlers.RingChannel(VIDEO_QUEUE))
        self._stk = session.declare_subscriber(
            keys.strokes(robot), zenoh.handlers.RingChannel(STATE_QUEUE))
        self._token = session.liveliness().declare_token(
            keys.observer_token(robot, keys.watcher_id(str(session.zid()), name)))

    @classmethod
    def open(cls, conf: zenoh.Config, robot: str, name: str | None = None) -> Watcher:
        """``name``: who watches, as the page lists it (its key's name, say)."""
        return cls(zenoh.open(conf), robot, name)

    def _bad(self, what: str, err: SchemaError) -> None:
        self.bad_messages += 1
        self._ratelog(logging.WARNING, what, "watch: invalid %s from the router: %s", what, err)

    def state(self) -> list[Message]:
        """Every telemetry, safety event and vitals snapshot received since the last call."""
        out: list[Message] = []
        for sub, what in ((self._evt, "event"), (self._tlm, "telemetry")):
            while (sample := sub.try_recv()) is not None:
                try:
                    msg = decode(sample.payload.to_bytes())
                    if not isinstance(msg, Telemetry | SafetyEvent | Vitals):
                        raise SchemaError("t", f"unexpected {msg.TYPE!r}")
                except SchemaError as err:
                    self._bad(what, err)
                    continue
                out.append(msg)
                self.last_state_ns = time.monotonic_ns()
        return out

    def strokes(self) -> list[Stroke]:
        out: list[Stroke] = []
        while (sample := self._stk.try_recv()) is not None:
            try:
                out.append(decode_as(sample.payload.to_bytes(), Stroke))
            except SchemaError as err:
                self._bad("stroke", err)
        return out

    def frames(self) -> list[WatchedFrame]:
        out: list[WatchedFrame] = []
        while (sample := self._vid.try_recv()) is not None:
            try:
                if sample.attachment is None:
                    raise SchemaError("video", "no header attachment")
                header: VideoFrameHeader = decode_as(sample.attachment.to_bytes(),
                                                     VideoFrameHeader)
                payload = sample.payload.to_bytes()
                if header.payload_len != len(payload):
                    raise SchemaError("video.payload_len", "does not match the access unit")
            except SchemaError as err:
                self._bad("video", err)
                continue
            out.append(WatchedFrame(header, payload, time.monotonic_ns()))
        return out

    def close(self) -> None:
        self._token.undeclare()  # type: ignore[no-untyped-call]
        for sub in (self._tlm, self._evt, self._vid, self._stk):
            sub.undeclare()  # type: ignore[no-untyped-call]
        self._session.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
