"""Logging through a queue: no real-time thread ever writes a log line itself.

``queued_logging()`` moves the root logger's handlers behind one
``logging.handlers.QueueListener`` thread; every logger call then only formats
its record and puts it on a bounded queue. A full queue drops the record and
counts it (a flood of log lines must not grow memory, nor block the control
loop). Used by the robot process, whose control thread must never wait on a
terminal or a file.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
from collections.abc import Iterator
from contextlib import contextmanager

QUEUE_SIZE = 10_000


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that never blocks and never raises: a full queue drops and counts."""

    def __init__(self, q: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(q)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Listener(logging.handlers.QueueListener):
    """The writer thread, at ``priority`` (SCHED_FIFO) where permitted; 0: as started."""

    def __init__(self, q: queue.Queue[logging.LogRecord], *handlers: logging.Handler,
                 priority: int) -> None:
        super().__init__(q, *handlers, respect_handler_level=True)
        self.priority = priority

    def _monitor(self) -> None:
        if self.priority:
            from telesurgery.pacer import try_realtime

            try_realtime(self.priority)
        super()._monitor()  # type: ignore[misc]  # CPython API, not in typeshed


@contextmanager
def queued_logging(size: int = QUEUE_SIZE,
                   priority: int = 0) -> Iterator[DroppingQueueHandler]:
    """Route every record of the process through a queue for the block's duration."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    q: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=size)
    handler = DroppingQueueHandler(q)
    listener = _Listener(q, *handlers, priority=priority)
    for h in handlers:
        root.removeHandler(h)
    root.addHandler(handler)
    listener.start()
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        listener.stop()  # writes what is still queued
        for h in handlers:
            root.addHandler(h)
        if handler.dropped:
            logging.getLogger(__name__).warning("%d log records dropped (queue full)",
                                                handler.dropped)
