"""The ROS 2 bridge in its own process: an observer of the control process.

Not a thread of the robot node: DDS serialisation, discovery and listener
callbacks from any participant on the domain would share the control loop's
GIL (issue 11: the node ran at 500 Hz with its ROS reporter among ~8 threads).
Here the bridge only *observes*: it subscribes to the local observer feed
(``robot_side.observe``) and publishes what it reads (``publisher``); nothing
it does can delay a control period, and a crash in DDS cannot take the arm's
control with it.

What ROS can do to the robot goes through the robot's own doors:

- the e-stop topic is forwarded to the local e-stop socket
  (``robot_side.estop.send(path, "press")``), the same door as the staff's
  ``telesurgery estop``; a press that can not be delivered is retried and
  logged as an error until it is;
- the command side (opt-in, ``[ros] command = true``) is a link client with its
  own surgeon-role key (``robot_side.ros.commander``): every command passes
  the same gate, supervisor, watchdog, limits, jump checks and audit as a
  surgeon console's.

The node starts and stops the child like the video process; a child whose
parent has died exits by itself.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robot_side.config import RobotConfig
from telesurgery.gcpolicy import PAUSES as GC_PAUSES
from telesurgery.gcpolicy import settle

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0
OUTBOX_SIZE = 64
FEED_POLL_MS = 20
ESTOP_RETRY_S = 0.1


class RosProcess:
    """The node's handle on the bridge child: start, poll its reports, stop."""

    def __init__(self, cfg: RobotConfig) -> None:
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._outbox: mp.Queue[tuple[str, Any]] = ctx.Queue(maxsize=OUTBOX_SIZE)
        self._proc = ctx.Process(
            target=_child_main, name="robot-ros", daemon=True,
            args=(_ChildArgs(cfg, os.getpid(), logging.getLogger().getEffectiveLevel()),
                  self._stop, self._outbox))
        self.error: str | None = None
        self.stats: dict[str, Any] = {}
        self.ready = False
        """The child said its bridge is up (DDS open, heap settled, e-stop forwarded)."""

    def start(self) -> None:
        self._proc.start()

    def ready_probe(self) -> bool | str:
        """For robot_side.readiness: True once up; why, once it failed or exited."""
        self.poll()
        if self.error is not None:
            return f"failed: {self.error}"
        if self.ready:
            return True
        code = self._proc.exitcode
        return False if code is None else f"exited (code {code})"

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> None:
        """Take what the child reported (errors, counters); never blocks."""
        while True:
            try:
                kind, value = self._outbox.get_nowait()
            except queue.Empty:
                return
            if kind == "error":
                self.error = str(value)
            elif kind == "ready":
                self.ready = True
            elif kind == "stats":
                self.stats = dict(value)

    def describe(self) -> str:
        self.poll()
        return f"not running: {self.error}" if self.error else f"process {self.pid}"

    def summary(self) -> dict[str, Any]:
        self.poll()
        return {"error": self.error, **self.stats}

    def stop(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self._proc.is_alive() and time.monotonic() < deadline:
            self.poll()  # a child flushing its last report must find room for it
            self._proc.join(0.05)
        if self._proc.is_alive():
            log.warning("ROS bridge process did not stop; terminating it")
            self._proc.terminate()
            self._proc.join(2.0)
        self.poll()


class EstopForwarder(threading.Thread):
    """Delivers every ROS e-stop ``true`` to the robot's local e-stop socket, retrying."""

    def __init__(self, path: Path, pending: Callable[[], bool], wake: threading.Event,
                 send: Callable[[Path], str] | None = None) -> None:
        super().__init__(name="ros-estop-forward", daemon=True)
        self.path = path
        self._pending = pending
        self._wake = wake
        self._send = send or press_local_estop
        self._halt = threading.Event()
        self.forwarded = 0
        self.failures = 0

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()

    def run(self) -> None:
        owed = False
        while not self._halt.is_set():
            self._wake.wait(ESTOP_RETRY_S if owed else 1.0)
            self._wake.clear()
            owed = self._pending() or owed
            if owed and not self._halt.is_set():
                owed = not self._deliver()

    def _deliver(self) -> bool:
        try:
            answer = self._send(self.path)
        except OSError as err:  # unreachable, or not the robot's socket (PermissionError)
            answer = f"error: {err}"
        if answer.startswith("ok"):
            self.forwarded += 1
            log.warning("ros e-stop forwarded to %s: %s", self.path, answer)
            return True
        self.failures += 1
        if self.failures == 1 or self.failures % 50 == 0:
            log.error("ros e-stop NOT delivered to the robot (%d tries): %s; retrying every "
                      "%.0f ms. Use the hardware e-stop.", self.failures, answer,
                      ESTOP_RETRY_S * 1e3)
        return False


def press_local_estop(path: Path) -> str:
    """Press the robot's local e-stop socket as the ROS 2 topic, and return its answer."""
    from robot_side.estop import send

    if "source" in inspect.signature(send).parameters:
        # The tagged socket protocol names who pressed (the robot's audit says "ros").
        return send(path, "press", source="ros", detail="ROS 2 e-stop topic")  # type: ignore[call-arg]
    return send(path, "press")


@dataclass(frozen=True)
class _ChildArgs:
    cfg: RobotConfig
    parent_pid: int
    log_level: int


def _child_main(args: _ChildArgs, stop: Any, outbox: mp.Queue[tuple[str, Any]]) -> None:
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node stops us after Ctrl-C
    from telesurgery.errors import TelesurgeryError

    try:
        stats = run_bridge(args.cfg, lambda: stop.is_set() or os.getppid() != args.parent_pid,
                           lambda s: _put(outbox, ("stats", s)), settle_heap=True,
                           on_ready=lambda: _put(outbox, ("ready", None)))
        _put(outbox, ("stats", stats))
    except TelesurgeryError as err:
        log.error("ROS 2 bridge stopped: %s", err)
        _put(outbox, ("error", str(err)))


def _put(outbox: mp.Queue[tuple[str, Any]], item: tuple[str, Any]) -> None:
    with contextlib.suppress(queue.Full):
        outbox.put_nowait(item)


def run_bridge(cfg: RobotConfig, should_stop: Callable[[], bool],
               report: Callable[[dict[str, Any]], None] | None = None,
               settle_heap: bool = False,
               on_ready: Callable[[], None] | None = None) -> dict[str, Any]:
    """The bridge's loop (the child's body; tests may run it in a thread).

    ``settle_heap`` (the child only: it freezes the whole process's heap) once the bridge
    is up, so no collection of its start-up objects delays an e-stop it forwards.
    ``on_ready`` once it is up: the robot refuses engage until then (robot_side.readiness)."""
    from robot_side.kinematics import Kinematics
    from robot_side.observe import ObserverClient
    from robot_side.ros import open_bridge
    from robot_side.ros.publisher import TelemetryPublisher
    from transport.schema import SafetyEvent, Telemetry

    ros = cfg.ros
    kin = Kinematics.from_urdf(cfg.kinematics.urdf, cfg.kinematics.tip_frame)
    rate_hz = min(cfg.control.ros_hz, cfg.observe.hz)
    if cfg.control.ros_hz > cfg.observe.hz:
        log.warning("control.ros_hz %.0f > observe.hz %.0f: ROS topics at %.0f Hz",
                    cfg.control.ros_hz, cfg.observe.hz, rate_hz)
    with open_bridge(ros.backend, ros.namespace, ros.domain_id, command=ros.command,
                     interfaces=ros.interfaces, peers=ros.peers,
                     security_xml=ros.security_xml) as bridge, \
            ObserverClient(cfg.observe.socket) as feed:
        publisher = TelemetryPublisher(bridge, kin, rate_hz, cfg.observe.hz)
        if settle_heap:
            # Before the e-stop forwarder and the commander start: a collection of the
            # whole heap holds the GIL (tens of ms), which would stall their streams.
            settle("ROS 2 bridge")
        forwarder = EstopForwarder(cfg.estop.socket, bridge.poll_estop, bridge.estop_event)
        forwarder.start()
        commander = None
        if ros.command:
            from robot_side.ros.commander import RosCommander

            commander = RosCommander(cfg, bridge, kin)
            commander.start()
        log.info("ROS 2 bridge up: observing %s at %.0f Hz, e-stop to %s, command side %s",
                 cfg.observe.socket, rate_hz, cfg.estop.socket,
                 "ON" if commander is not None else "off")
        if on_ready is not None:
            on_ready()

        def stats() -> dict[str, Any]:
            return {"published_periods": publisher.published, "skipped": publisher.skipped,
                    "messages": bridge.published, "received": dict(bridge.received),
                    "estop_forwarded": forwarder.forwarded,
                    "estop_failures": forwarder.failures,
                    "feed_bad_messages": feed.bad_messages, "gc": GC_PAUSES.summary(),
                    **(commander.stats() if commander is not None else {})}

        next_report = time.monotonic_ns()
        try:
            while not should_stop():
                msg = feed.recv(FEED_POLL_MS)
                now = time.monotonic_ns()
                if isinstance(msg, Telemetry):
                    publisher.on_telemetry(msg, now)
                    if commander is not None:
                        commander.on_telemetry(msg)
                elif isinstance(msg, SafetyEvent):
                    publisher.on_event(msg, now)
                publisher.check_stale(now)
                if report is not None and now >= next_report:
                    next_report = now + 1_000_000_000
                    report(stats())
        finally:
            if commander is not None:
                commander.stop()
                commander.join(2.0)
            forwarder.stop()
            forwarder.join(2.0)
        return stats()
