"""The ROS commander's waits on the robot's link, each one streaming.

Whatever the commander waits for (a ROS command message in its loop, the reply to
a control request, a CurveZMQ session still being set up), the wait keeps the
hold/move stream at ``command_hz`` (a blocking wait stopped it, and a reply slower
than the robot's command timeout tripped the arm the request was meant to keep),
answers the robot's pings (its RTT and clock offset need them) and hands its
telemetry (who is in command, who asks for it) to the handoff. One schedule for
the stream, one way to handle the link: the loop and the requests cannot drift.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from telesurgery.errors import LinkTimeout
from transport.link import ConsoleLink
from transport.schema import ControlReply

log = logging.getLogger(__name__)

REQUEST_RETRY_NS = 5_000_000_000
"""A control request the link could not send yet is retried this long."""
SEND_RETRY_NS = 100_000_000


class StreamingWaits:
    def __init__(self, period_ns: int, reply_timeout_ns: int, *,
                 stream: Callable[[ConsoleLink, int], None],
                 on_link: Callable[[Any, int], None], wait_ros: Callable[[float], None],
                 counters: dict[str, int]) -> None:
        self.period_ns = period_ns
        self.reply_timeout_ns = reply_timeout_ns
        self.next_stream_ns = 0
        """When the stream sends next (the commander's ``_stream`` decides what)."""
        self._stream, self._on_link, self._wait_ros = stream, on_link, wait_ros
        self.counters = counters

    def wait(self, link: ConsoleLink, until_ns: int, req_id: int | None = None,
             *, ros_wake: bool = False) -> ControlReply | None:
        """Until ``until_ns``, the reply to ``req_id`` or (``ros_wake``, the loop's
        wait) a ROS command message; streaming and answering the link meanwhile."""
        while (now := time.monotonic_ns()) < until_ns:
            if now >= self.next_stream_ns:
                self.next_stream_ns = now + self.period_ns
                self._stream(link, now)
            wait_ns = max(0, min(self.next_stream_ns, until_ns) - now)
            if ros_wake:
                self._wait_ros(wait_ns / 1e9)
                return self._answer_link(link, 0, req_id)
            reply = self._answer_link(link, max(1, wait_ns // 1_000_000), req_id)
            if reply is not None:
                return reply
        return None

    def request(self, link: ConsoleLink, op: str,
                quiet_reason: str | None = None) -> ControlReply | None:
        """Send ``op`` and wait for its reply, streaming; None when it could not be
        sent or was not answered in time (counted, logged)."""
        deadline = time.monotonic_ns() + REQUEST_RETRY_NS
        while True:
            try:
                req_id = link.send_request(op)
                break
            except LinkTimeout as err:
                # Not sent: the CurveZMQ session is still being set up (or the robot is
                # restarting).
                if time.monotonic_ns() > deadline:
                    self.counters["requests_failed"] += 1
                    log.warning("ROS commander: %s", err)
                    return None
                self.wait(link, time.monotonic_ns() + SEND_RETRY_NS)
        reply = self.wait(link, time.monotonic_ns() + self.reply_timeout_ns, req_id)
        if reply is None:
            link.forget_request(req_id)
            self.counters["requests_failed"] += 1
            log.warning("ROS commander: no reply to control request %r within %d ms", op,
                        self.reply_timeout_ns // 1_000_000)
            return None
        if not reply.ok and reply.reason != quiet_reason:
            self.counters["requests_failed"] += 1
            log.warning("ROS commander: %s refused: %s (%s) %s", op, reply.reason, reply.state,
                        reply.detail)
        return reply

    def _answer_link(self, link: ConsoleLink, timeout_ms: int,
                     req_id: int | None) -> ControlReply | None:
        reply = None
        for item in link.poll(timeout_ms):
            if isinstance(item.msg, ControlReply):
                if item.msg.req_id == req_id:
                    reply = item.msg
                continue  # a late reply to a request given up on
            self._on_link(item.msg, item.recv_ns)
        return reply
