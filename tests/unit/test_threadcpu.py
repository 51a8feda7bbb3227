"""Per-thread CPU from /proc: each thread under its Python name, libzmq's under its comm."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest
import zmq

from telesurgery.threadcpu import describe, thread_cpu_seconds

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")


def test_a_busy_thread_is_counted_under_its_name_and_libzmq_under_its_comm() -> None:
    go = threading.Event()
    done = threading.Event()
    leave = threading.Event()

    def burn() -> None:
        go.wait()
        start = time.thread_time()
        while time.thread_time() - start < 0.1:  # CPU time, not wall: load cannot shorten it
            pass
        done.set()
        leave.wait(30)  # still alive when read

    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.PUSH)  # starts libzmq's I/O thread
    t = threading.Thread(target=burn, name="burner-under-test", daemon=True)
    t.start()
    try:
        go.set()
        assert done.wait(30)
        cpu = thread_cpu_seconds()
        assert cpu["burner-under-test"] >= 0.08  # clock ticks: 10 ms resolution
        assert any(name.startswith("ZMQbg") for name in cpu)
        assert "MainThread" in cpu
        line = describe(cpu, 1.0, 1000)
        assert "burner-under-test" in line and "us/period" in line
    finally:
        leave.set()
        sock.close(0)
        ctx.term()
