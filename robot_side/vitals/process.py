"""The vitals process: hears the patient monitor, tells the robot node; never the loop's.

A child of the robot node (like the page and the recorder): it runs the chosen
backend (HL7 v2 listener or SDC consumer) feeding a ``VitalsBook`` and pushes a
``Vitals`` snapshot to the node's vitals socket at once on every change and at
least every ``publish_ms``. A push the node does not take is dropped (never
queued without bound, never waited for): the next snapshot supersedes it. A child
whose robot node died exits by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from robot_side.childproc import ChildProcess
from robot_side.vitals.config import VitalsConfig
from robot_side.vitals.model import VitalsBook
from telesurgery.errors import TelesurgeryError
from transport.schema import encode

log = logging.getLogger(__name__)
PUSH_HWM = 4
MIN_GAP_S = 0.05
"""At most 20 snapshots a second, however fast the monitor (or a flood) sends."""


@dataclass(frozen=True)
class VitalsPaths:
    socket: Path
    """The node's PULL socket (ipc)."""
    status: Path
    """JSON: backend, bound port, counters; for tools, the demo and the simulator."""

    @classmethod
    def from_robot(cls, robot_cfg: Any) -> VitalsPaths:
        run_dir: Path = robot_cfg.observe.socket.parent
        cfg: VitalsConfig = robot_cfg.vitals
        return cls(socket=cfg.socket or run_dir / "vitals.sock", status=run_dir / "vitals.json")


class Publisher:
    """Pushes snapshots of ``book`` to the node: on change, and every ``period_ns``."""

    def __init__(self, book: VitalsBook, path: Path, period_ns: int) -> None:
        self.book = book
        self.period_ns = period_ns
        self._ctx = zmq.Context()
        self._sock: zmq.Socket[Any] = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, PUSH_HWM)
        self._sock.connect(f"ipc://{path}")
        self._wake = asyncio.Event()
        self.sent = 0
        self.dropped = 0

    def changed(self) -> None:
        self._wake.set()

    def send_now(self) -> None:
        msg = self.book.snapshot(time.monotonic_ns())
        try:
            self._sock.send(encode(msg), zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1  # the node is not reading: the next snapshot supersedes it

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.period_ns / 1e9)
            self._wake.clear()
            self.send_now()
            await asyncio.sleep(MIN_GAP_S)  # what arrives meanwhile goes in the next one

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()


def _write_status(path: Path, body: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(body, fh)
    tmp.replace(path)


async def serve(cfg: VitalsConfig, paths: VitalsPaths, parent_pid: int | None,
                seconds: float | None = None) -> None:
    book = VitalsBook(cfg.backend, cfg.monitor_timeout_ms)
    pub = Publisher(book, paths.socket, cfg.publish_ms * 1_000_000)
    status: dict[str, Any] = {"backend": cfg.backend, "pid": os.getpid()}
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(pub.close)
        if cfg.backend == "hl7":
            from robot_side.vitals.hl7_source import Hl7Listener

            listener = Hl7Listener(book, cfg.host, cfg.port, on_change=pub.changed)
            status["port"] = await listener.start()
            status["host"] = cfg.host
            stack.push_async_callback(listener.close)
        else:
            from robot_side.vitals.sdc_source import SdcVitalsConsumer

            # sdc11073 runs its own threads; it hands every report to this loop.
            consumer = SdcVitalsConsumer(book, cfg.sdc_interface, cfg.sdc_epr,
                                   asyncio.get_running_loop(), on_change=pub.changed)
            await asyncio.to_thread(consumer.start)
            stack.push_async_callback(asyncio.to_thread, consumer.close)
        _write_status(paths.status, status)
        stack.callback(lambda: paths.status.unlink(missing_ok=True))
        task = asyncio.create_task(pub.run())
        stack.callback(task.cancel)
        end = None if seconds is None else time.monotonic() + seconds
        while parent_pid is None or os.getppid() == parent_pid:
            await asyncio.sleep(0.2)
            if end is not None and time.monotonic() >= end:
                break
            if task.done():
                task.result()  # a publisher that died says why
        else:
            log.warning("robot node gone: vitals process stops")
        log.info("vitals: %s; pushed %d, dropped %d", dict(book.counters), pub.sent,
                 pub.dropped)


def _child_main(cfg: VitalsConfig, paths: VitalsPaths, parent_pid: int, log_level: int) -> None:
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node stops us after Ctrl-C
    try:
        asyncio.run(serve(cfg, paths, parent_pid))
    except (TelesurgeryError, OSError, zmq.ZMQError) as err:
        log.error("vitals not available: %s", err)


class VitalsProcess(ChildProcess):
    """The patient-monitor source's process."""

    def __init__(self, cfg: VitalsConfig, paths: VitalsPaths) -> None:
        super().__init__(_child_main, "robot-vitals", cfg, paths)

