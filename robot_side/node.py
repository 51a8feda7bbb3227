"""``telesurgery robot``: the process beside the patient.

Threads: the control loop (this module, SCHED_FIFO where permitted), the
network thread (robot_side.netio), the audit thread, the ROS 2 reporter, the
video sender and the local e-stop socket. The control loop owns the serial
port and every safety decision; the others only feed it or report from it.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from robot_side.config import RobotConfig
from robot_side.control import ControlCore, LinkView, StepReport
from robot_side.driver import SerialManipulator
from robot_side.estop import EstopRequest, EstopServer
from robot_side.kinematics import Kinematics
from robot_side.localsock import group_id
from robot_side.netio import Mailbox, NetworkThread
from robot_side.ros import open_bridge
from robot_side.signals import SignalDesk
from robot_side.telemetry import telemetry_from
from robot_side.video_process import VideoProcess
from robot_side.workers import AuditThread, RosReporter, SerialReconnector
from safety.audit import AuditLog
from safety.states import Reason, State
from safety.supervisor import Transition
from telesurgery.config import load, to_dict
from telesurgery.errors import AuthError, SerialLinkError, TelesurgeryError
from telesurgery.pacer import SPIN_LEAD_NS, Pacer, enter_realtime
from transport.auth import Authenticator
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
        self._recent: collections.deque[Transition] = collections.deque(maxlen=8)
        self._last_report: StepReport | None = None
        self._last_link: LinkView | None = None
        self._auth: Authenticator | None = None
        self.signals: SignalDesk | None = None

    def panel_status(self) -> dict[str, Any]:
        """What the on-site staff's panel shows; read from references the loop swaps.

        Times are ages in seconds on this process's monotonic clock at the moment of
        the answer (``report_age_s``: how old the control loop's last report is), so the
        panel never compares clocks."""
        r, link = self._last_report, self._last_link
        now = time.monotonic_ns()
        if r is None:
            return {"state": "starting", "report_age_s": 0.0, "events": []}
        recent = list(self._recent)
        return {
            "state": str(r.state), "reason": str(r.reason), "estop": r.estop,
            "report_age_s": round((now - r.t_ns) / 1e9, 3),
            "since_s": round((now - recent[-1].t_ns) / 1e9, 3) if recent else None,
            "scale": round(r.scale, 3), "firmware_flags": r.firmware_flags,
            "tracking_error_mm": round(r.tracking_error_m * 1000, 2),
            "link_ok": r.health.ok, "link_detail": r.health.detail,
            "rtt_ms": None if link is None or link.rtt_ns is None else link.rtt_ns / 1e6,
            "loss": None if link is None else round(link.stats.loss, 4),
            "events": [{"ago_s": round((now - t.t_ns) / 1e9, 3), "from": str(t.state_from),
                        "to": str(t.state_to), "reason": str(t.reason),
                        "detail": t.detail[:120]} for t in recent],
        }

    def stop(self) -> None:
        self._halt.set()

    def reload_keys(self) -> str:
        """Re-read the authorised keys (SIGHUP, ``keys reload``); any thread may call it.

        A revoked surgeon session sets ``auth.revoked``; the control loop trips on it."""
        auth = self._auth
        if auth is None:
            return "error: the link is not up yet; nothing to reload"
        return "ok " + auth.reload().describe()

    def run(self, seconds: float | None = None) -> int:
        cfg = self.cfg
        keys = ServerKeys.load(cfg.link.keys_dir)
        wd = cfg.safety.watchdog
        with ExitStack() as stack:
            audit = stack.enter_context(AuditLog(cfg.safety.audit))
            audit.append("start", {"config": json.dumps(to_dict(cfg))[:4000]}, sync=True)
            # First of all the local e-stop: a second node on the same path stops here,
            # with one line, before it touches a port or the serial line.
            estop = EstopServer(cfg.estop.socket, self.panel_status,
                                group=group_id(cfg.estop.group), audit=audit.append,
                                reload_keys=self.reload_keys)
            estop.start()
            stack.callback(estop.stop)
            if self.signals is not None:
                self.signals.attach_audit(audit.append)
                stack.callback(self.signals.attach_audit, None)
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
            net = NetworkThread(cfg.link, keys, self.mailbox,
                                # A command's age is bounded by the one-way latency
                                # limit; the command timeout bounds the gap between
                                # fresh ones (otherwise the 100-200 ms RTT warn band
                                # of the brief could never be reached).
                                age_limit_ns=int(wd.latency_halt_ms * 1e6),
                                loss_window_ns=int(wd.loss_window_ms * 1e6),
                                telemetry_hz=cfg.control.telemetry_hz, video=video)
            net.start()
            stack.callback(net.join, 2.0)
            stack.callback(net.stop)
            net.ready.wait(10.0)
            if net.error is not None or net.link is None:
                log.error("link did not start: %s", net.error)
                return 2
            self._auth = net.link.auth
            bridge = open_bridge(cfg.ros.backend, cfg.ros.namespace, cfg.ros.domain_id)
            ros = RosReporter(bridge, self.kin.joint_names, cfg.control.ros_hz)
            ros.start()
            stack.callback(ros.close)
            log.info("robot node up: link %s, control %.0f Hz, ROS 2 %s, video %s",
                     net.link.endpoints, cfg.control.rate_hz, cfg.ros.backend, video.describe())
            self._loop(auditor, ros, estop, video, seconds)
            stopped_by = self.signals.stop_signal if self.signals is not None else None
            audit.append("stop", {"trips": len(self.core.trips), "signal": stopped_by},
                         sync=True)
            self._write_summary(net, auditor, video)
        return 0

    def _loop(self, auditor: AuditThread, ros: RosReporter, estop: EstopServer,
              video: VideoProcess, seconds: float | None) -> None:
        cfg = self.cfg
        mb = self.mailbox
        core = self.core
        if enter_realtime(50, cfg.control.realtime):
            self.pacer.set_spin(SPIN_LEAD_NS)
        empty = LinkView(LinkStats().snapshot(time.monotonic_ns()), None, False)
        tlm_every = max(1, round(cfg.control.rate_hz / cfg.control.telemetry_hz))
        end = None if seconds is None else time.monotonic_ns() + int(seconds * 1e9)
        seq = 0
        trips_logged = 0
        self.pacer.restart()
        while not self._halt.is_set() and (end is None or time.monotonic_ns() < end):
            tick = self.pacer.wait()
            now = tick.actual_ns
            self._estop_inputs(now, estop, ros)
            link = mb.link_view or empty
            report = core.step(now, mb.command, link, mb.take_requests(), auditor.healthy)
            for item in report.replies:
                mb.replies.append(item)
            if core.transitions:
                for t in core.transitions:
                    auditor.submit(t)
                    self._recent.append(t)
                core.transitions.clear()
            if len(core.trips) > trips_logged:
                # One machine-readable line per trip, in monotonic ns: the HIL rig
                # checks every reaction time against its bound while the node runs.
                for trip in core.trips[trips_logged:]:
                    log.warning("TRIP %s", json.dumps(asdict(trip)))
                trips_logged = len(core.trips)
            ros.latest = report
            self._last_report, self._last_link = report, link
            if tick.index % tlm_every == 0:
                seq += 1
                sample = mb.command
                mb.telemetry = telemetry_from(seq, report, link, self.pacer.recent_jitter_us(),
                                              sample.cmd.video_age_us if sample else None,
                                              audit_head=auditor.audit.head)
        # Leaving the loop: the arm must be holding, whatever state we were in.
        core.supervisor.disarm(time.monotonic_ns())
        core.step(time.monotonic_ns(), None, mb.link_view or empty)

    def _estop_inputs(self, now: int, estop: EstopServer, ros: RosReporter) -> None:
        """External stops: ROS 2 e-stop topic, the local socket, a revoked key."""
        if ros.estop_requested.is_set():
            ros.estop_requested.clear()
            self.core.estop(now, Reason.ESTOP_ROS)
        auth = self._auth
        if auth is not None and auth.revoked.is_set():
            auth.revoked.clear()
            self.core.supervisor.trip(now, Reason.KEY_REVOKED,
                                      "revoked: " + ", ".join(auth.revoked_users))
        while not estop.requests.empty():
            req: EstopRequest = estop.requests.get_nowait()
            req.answer = self._estop_answer(now, req)
            req.done.set()

    def _estop_answer(self, now: int, req: EstopRequest) -> str:
        sup = self.core.supervisor
        if req.action == "press":
            self.core.estop(now, Reason.ESTOP_LOCAL)
            return "ok e-stop pressed"
        if req.action == "clear":
            if sup.state is not State.ESTOP:
                return f"ok no e-stop to clear (state {sup.state}, {sup.reason})"
            if self.core.clear_estop_local(now):
                return "ok e-stop cleared"
            return f"refused: {sup.reason} (the e-stop button is still pressed?)"
        if req.action == "refused":
            # A local tool refused a clear itself (wrong PIN...): the estop server audits
            # it with who asked; the arm's state does not change.
            return f"ok refusal recorded ({sup.state})"
        return f"ok {sup.state} {sup.reason}"

    def _write_summary(self, net: NetworkThread, auditor: AuditThread,
                       video: VideoProcess) -> None:
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
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = load(RobotConfig, args.config)
        cfg = _override(cfg, args)
        node = RobotNode(cfg, args.summary)
    except TelesurgeryError as err:
        log.error("%s", err)
        return 2

    # Before anything opens: from here on no signal kills the node with the arm unheld.
    node.signals = SignalDesk(node.stop, node.reload_keys)
    node.signals.install()
    node.signals.start()
    try:
        return node.run(args.seconds)
    except AuthError as err:
        log.error("refusing to start: %s", err)
        return 2
    except TelesurgeryError as err:  # a second node on the e-stop socket or audit log
        log.error("refusing to start: %s", err)
        return 2
    finally:
        node.signals.close()


def _override(cfg: RobotConfig, args: argparse.Namespace) -> RobotConfig:
    """Command-line overrides (used by the ROS 2 launch file and the demo)."""
    ros = cfg.ros
    if args.ros_backend:
        ros = replace(ros, backend=args.ros_backend)
    if args.ros_namespace:
        ros = replace(ros, namespace=args.ros_namespace)
    if args.ros_domain_id is not None:
        ros = replace(ros, domain_id=args.ros_domain_id)
    control = cfg.control if args.ros_hz is None else replace(cfg.control, ros_hz=args.ros_hz)
    serial = cfg.serial if not args.serial_port else replace(cfg.serial, port=args.serial_port)
    return replace(cfg, ros=ros, control=control, serial=serial)
