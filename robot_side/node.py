"""``telesurgery robot``: the process beside the patient.

Threads: the control loop (this module, SCHED_FIFO where permitted), the
network thread (robot_side.netio), the audit thread and the local e-stop
socket; child processes for video and the ROS 2 bridge (an observer of the
local feed, robot_side.observe). The control loop owns the serial port and
every safety decision; the others only feed it or report from it.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import signal
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType
from typing import Any

from robot_side.config import RobotConfig
from robot_side.control import ControlCore, LinkView, StepReport
from robot_side.driver import SerialManipulator
from robot_side.estop import EstopRequest, EstopServer
from robot_side.kinematics import Kinematics
from robot_side.netio import Mailbox, NetworkThread
from robot_side.observe import ObserverFeed
from robot_side.ros.process import RosProcess
from robot_side.telemetry import telemetry_from
from robot_side.video_process import VideoProcess
from robot_side.workers import AuditThread, SerialReconnector
from safety.audit import AuditLog
from safety.states import Reason
from telesurgery.config import load, to_dict
from telesurgery.errors import AuthError, SerialLinkError, TelesurgeryError
from telesurgery.pacer import SPIN_LEAD_NS, Pacer, enter_realtime
from transport.keys import ServerKeys
from transport.linkstats import LinkStats

log = logging.getLogger(__name__)


class RobotNode:
    """Builds every part from one config and runs the control loop."""

    def __init__(self, cfg: RobotConfig, summary_path: Path | None = None) -> None:
        self.cfg = cfg
        self.summary_path = summary_path
        self.mailbox = Mailbox()
        self._halt = threading.Event()
        self.kin = Kinematics.from_urdf(cfg.kinematics.urdf, cfg.kinematics.tip_frame)
        self.driver = SerialManipulator(cfg.serial)
        self.core = ControlCore(cfg, self.kin, self.driver)
        self.pacer = Pacer(cfg.control.period_ns)
        self._recent: collections.deque[str] = collections.deque(maxlen=8)
        self._last_report: StepReport | None = None
        self._last_link: LinkView | None = None

    def panel_status(self) -> dict[str, Any]:
        """What the on-site staff's panel shows; read from references the loop swaps."""
        r, link = self._last_report, self._last_link
        if r is None:
            return {"state": "starting"}
        return {
            "state": str(r.state), "reason": str(r.reason), "estop": r.estop,
            "scale": round(r.scale, 3), "firmware_flags": r.firmware_flags,
            "tracking_error_mm": round(r.tracking_error_m * 1000, 2),
            "link_ok": r.health.ok, "link_detail": r.health.detail,
            "rtt_ms": None if link is None or link.rtt_ns is None else link.rtt_ns / 1e6,
            "loss": None if link is None else round(link.stats.loss, 4),
            "events": list(self._recent),
        }

    def stop(self) -> None:
        self._halt.set()

    def run(self, seconds: float | None = None) -> int:
        cfg = self.cfg
        keys = ServerKeys.load(cfg.link.keys_dir)
        wd = cfg.safety.watchdog
        with ExitStack() as stack:
            audit = stack.enter_context(AuditLog(cfg.safety.audit))
            audit.append("start", {"config": json.dumps(to_dict(cfg))[:4000]}, sync=True)
            auditor = AuditThread(audit, self.mailbox)
            auditor.start()
            stack.callback(auditor.join, 2.0)
            stack.callback(auditor.stop)
            try:
                self.driver.open()
            except SerialLinkError as err:
                log.error("serial port not available (%s); holding and retrying", err)
            stack.callback(self.driver.close)
            reconnector = SerialReconnector(self.driver, cfg.serial.reconnect_interval_ms / 1e3)
            reconnector.start()
            stack.callback(reconnector.stop)
            video = VideoProcess(cfg.video, cfg.link, cfg.link.keys_dir)
            video.start()
            stack.callback(video.stop)
            cfg.observe.socket.parent.mkdir(parents=True, exist_ok=True)
            feed = stack.enter_context(ObserverFeed(cfg.observe.socket))
            net = NetworkThread(cfg.link, keys, self.mailbox,
                                # A command's age is bounded by the one-way latency
                                # limit; the command timeout bounds the gap between
                                # fresh ones (otherwise the 100-200 ms RTT warn band
                                # of the brief could never be reached).
                                age_limit_ns=int(wd.latency_halt_ms * 1e6),
                                loss_window_ns=int(wd.loss_window_ms * 1e6),
                                telemetry_hz=cfg.control.telemetry_hz, video=video,
                                feed=feed)
            net.start()
            stack.callback(net.join, 2.0)
            stack.callback(net.stop)
            net.ready.wait(10.0)
            if net.error is not None or net.link is None:
                log.error("link did not start: %s", net.error)
                return 2
            ros = None
            if cfg.ros.backend != "none":
                # Its own process, observing the feed: DDS never shares the loop's GIL.
                # The ports the link really bound (0 in the config binds a random one).
                ports = net.link.endpoints
                bound = replace(cfg.link, command_port=ports["command"],
                                control_port=ports["control"],
                                telemetry_port=ports["telemetry"])
                ros = RosProcess(replace(cfg, link=bound))
                ros.start()
                stack.callback(ros.stop)
            estop = EstopServer(cfg.estop.socket, self.panel_status)
            estop.start()
            stack.callback(estop.stop)
            log.info("robot node up: link %s, control %.0f Hz, ROS 2 %s, video %s",
                     net.link.endpoints, cfg.control.rate_hz,
                     "off" if ros is None else f"{cfg.ros.backend} ({ros.describe()})",
                     video.describe())
            self._loop(auditor, estop, video, seconds)
            audit.append("stop", {"trips": len(self.core.trips)}, sync=True)
            self._write_summary(net, auditor, video, ros)
        return 0

    def _loop(self, auditor: AuditThread, estop: EstopServer,
              video: VideoProcess, seconds: float | None) -> None:
        cfg = self.cfg
        mb = self.mailbox
        core = self.core
        if enter_realtime(50, cfg.control.realtime):
            self.pacer.set_spin(SPIN_LEAD_NS)
        empty = LinkView(LinkStats().snapshot(time.monotonic_ns()), None, False)
        # Telemetry for the console (telemetry_hz) and the observer feed (observe.hz).
        tlm_hz = max(cfg.control.telemetry_hz, cfg.observe.hz)
        tlm_every = max(1, round(cfg.control.rate_hz / tlm_hz))
        end = None if seconds is None else time.monotonic_ns() + int(seconds * 1e9)
        seq = 0
        trips_logged = 0
        self.pacer.restart()
        while not self._halt.is_set() and (end is None or time.monotonic_ns() < end):
            tick = self.pacer.wait()
            now = tick.actual_ns
            self._estop_inputs(now, estop)
            link = mb.link_view or empty
            report = core.step(now, mb.command, link, mb.take_requests(), auditor.healthy)
            for item in report.replies:
                mb.replies.append(item)
            if core.transitions:
                for t in core.transitions:
                    auditor.submit(t)
                    self._recent.append(f"{t.state_from} -> {t.state_to}: {t.reason} {t.detail}")
                core.transitions.clear()
            if len(core.trips) > trips_logged:
                # One machine-readable line per trip, in monotonic ns: the HIL rig
                # checks every reaction time against its bound while the node runs.
                for trip in core.trips[trips_logged:]:
                    log.warning("TRIP %s", json.dumps(asdict(trip)))
                trips_logged = len(core.trips)
            self._last_report, self._last_link = report, link
            if tick.index % tlm_every == 0:
                seq += 1
                sample = mb.command
                mb.telemetry = telemetry_from(seq, report, link, self.pacer.recent_jitter_us(),
                                              sample.cmd.video_age_us if sample else None)
        # Leaving the loop: the arm must be holding, whatever state we were in.
        core.supervisor.disarm(time.monotonic_ns())
        core.step(time.monotonic_ns(), None, mb.link_view or empty)

    def _estop_inputs(self, now: int, estop: EstopServer) -> None:
        while not estop.requests.empty():
            req: EstopRequest = estop.requests.get_nowait()
            if req.action == "press":
                self.core.estop(now, Reason.ESTOP_LOCAL)
                req.answer = "ok e-stop pressed"
            elif req.action == "clear":
                ok = self.core.clear_estop_local(now)
                req.answer = "ok e-stop cleared" if ok else (
                    f"refused: {self.core.supervisor.reason}")
            else:
                req.answer = f"ok {self.core.supervisor.state} {self.core.supervisor.reason}"
            req.done.set()

    def _write_summary(self, net: NetworkThread, auditor: AuditThread,
                       video: VideoProcess, ros: RosProcess | None) -> None:
        if self.summary_path is None:
            return
        stats = self.pacer.stats()
        snap = net.stats.snapshot(time.monotonic_ns())
        summary = {
            "trips": [asdict(t) for t in self.core.trips],
            "loop": asdict(stats),
            "link": asdict(snap),
            "command_latency": net.latency_percentiles(),
            "tracking_error_max_m": self.core.max_tracking_error_m,
            "following_periods": self.core.following_periods,
            "ik_branch_keeps": self.core.branch_keeps,
            "resumes_ns": self.core.resumes_ns,
            "gate": {str(k): v for k, v in net.gate.counters.items()},
            "link_counters": dict(net.link.counters) if net.link else {},
            "audit_records": auditor.persisted,
            "serial": dict(self.driver.counters),
            "video": video.summary(),
            "ros": None if ros is None else ros.summary(),
            "final_state": str(self.core.supervisor.state),
        }
        self.summary_path.parent.mkdir(parents=True, exist_ok=True)
        self.summary_path.write_text(json.dumps(summary, indent=2, default=str))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery robot", description=__doc__)
    p.add_argument("--config", type=Path, help="robot config TOML (default: simulated rig)")
    p.add_argument("--seconds", type=float, help="stop after this long (default: run forever)")
    p.add_argument("--summary", type=Path, help="write a JSON run summary here at exit")
    p.add_argument("--serial-port", help="override serial.port (e.g. the emulator's pty)")
    p.add_argument("--ros-backend", choices=("auto", "dds", "rclpy", "none"))
    p.add_argument("--ros-namespace", help="override ros.namespace")
    p.add_argument("--ros-domain-id", type=int, help="override ros.domain_id")
    p.add_argument("--ros-hz", type=float, help="override control.ros_hz")
    p.add_argument("--ros-command", choices=("on", "off"),
                   help="override ros.command (the opt-in ROS 2 command side)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = load(RobotConfig, args.config)
        cfg = _override(cfg, args)
        node = RobotNode(cfg, args.summary)
    except TelesurgeryError as err:
        log.error("%s", err)
        return 2

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping; the arm holds", signum)
        node.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        return node.run(args.seconds)
    except AuthError as err:
        log.error("refusing to start: %s", err)
        return 2


def _override(cfg: RobotConfig, args: argparse.Namespace) -> RobotConfig:
    """Command-line overrides (used by the ROS 2 launch file and the demo)."""
    ros = cfg.ros
    if args.ros_backend:
        ros = replace(ros, backend=args.ros_backend)
    if args.ros_namespace:
        ros = replace(ros, namespace=args.ros_namespace)
    if args.ros_domain_id is not None:
        ros = replace(ros, domain_id=args.ros_domain_id)
    if args.ros_command:
        ros = replace(ros, command=args.ros_command == "on")
    control = cfg.control if args.ros_hz is None else replace(cfg.control, ros_hz=args.ros_hz)
    serial = cfg.serial if not args.serial_port else replace(cfg.serial, port=args.serial_port)
    return replace(cfg, ros=ros, control=control, serial=serial)
