"""Logging through a queue: the caller only enqueues; one listener thread writes."""

from __future__ import annotations

import logging
import threading

from telesurgery.logqueue import DroppingQueueHandler, queued_logging


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.getMessage(), threading.current_thread().name))


def test_records_are_written_by_the_listener_thread_not_the_caller() -> None:
    root = logging.getLogger()
    rec = Recorder()
    saved = list(root.handlers)
    for h in saved:
        root.removeHandler(h)
    root.addHandler(rec)
    try:
        with queued_logging() as handler:
            assert root.handlers == [handler]
            logging.getLogger("x").warning("hello %d", 1)
        assert rec.records and rec.records[0][0] == "hello 1"
        assert rec.records[0][1] != threading.current_thread().name
        assert root.handlers == [rec]  # restored
    finally:
        root.removeHandler(rec)
        for h in saved:
            root.addHandler(h)


def test_a_full_queue_drops_and_counts_never_blocks() -> None:
    import queue

    q: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=2)
    handler = DroppingQueueHandler(q)
    for i in range(5):
        handler.handle(logging.LogRecord("x", logging.INFO, __file__, 1, "m %d", (i,), None))
    assert q.qsize() == 2 and handler.dropped == 3
