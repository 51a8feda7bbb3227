"""The robot node's assembly: ``RobotNode`` builds every part from one config, starts
the helper threads and the child processes in order inside one ExitStack (which stops
them in reverse), then runs the control loop in the calling thread.

Apart from the period itself (robot_side.control_loop), the figures written at exit
(robot_side.run_summary) and the command line (robot_side.node, which also exports
``RobotNode``): start-up and shutdown order is read here, and nothing of it runs per
period.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import zmq

from robot_side.command_port import IO_THREAD_PRIORITY, CommandPort, link_context
from robot_side.config import RobotConfig
from robot_side.control_loop import ControlLoop
from robot_side.estop import EstopServer
from robot_side.kinematics import Kinematics
from robot_side.localsock import group_id
from robot_side.manipulator import make_manipulator
from robot_side.netio import Mailbox, NetworkThread
from robot_side.readiness import ReadinessThread, StartupWatch, video_probe
from robot_side.recording.health import RecordingHealth, recording_status_path
from robot_side.ros.process import RosProcess
from robot_side.run_summary import write_summary
from robot_side.signals import SignalDesk
from robot_side.supervision.process import start_onsite_observers
from robot_side.video_process import VideoControl, VideoProcess
from robot_side.vitals import start_vitals
from robot_side.workers import AuditThread, SerialReconnector
from safety.audit import AuditLog
from safety.states import Reason
from telesurgery.config import to_dict
from telesurgery.errors import LinkError, ManipulatorError, TelesurgeryError
from telesurgery.gcpolicy import settle
from telesurgery.logqueue import queued_logging
from telesurgery.pacer import HELPER_PRIORITY, lift_normal_threads, realtime_permitted
from transport.auth import Authenticator
from transport.intake import AuditAlert
from transport.keys import ServerKeys

log = logging.getLogger(__name__)


def _close_context(ctx: zmq.Context[Any]) -> None:
    # Every thread closes its own sockets on the way out; term() would wait forever
    # for one that did not (a network thread stuck past its join timeout).
    ctx.destroy(linger=0)


class RobotNode:
    """Builds every part from one config, starts them and runs the control loop."""

    def __init__(self, cfg: RobotConfig, summary_path: Path | None = None) -> None:
        self.cfg = cfg
        self.summary_path = summary_path
        self.mailbox = Mailbox()
        self.kin = Kinematics.from_urdf(cfg.kinematics.urdf, cfg.kinematics.tip_frame)
        self.manipulator = make_manipulator(cfg)
        self.loop = ControlLoop(cfg, self.kin, self.manipulator, self.mailbox)
        """The control thread's state and period (robot_side.control_loop)."""
        self.signals: SignalDesk | None = None
        self._lifted: list[str] = []
        """Helper threads lifted to SCHED_FIFO before the loop (lift_normal_threads)."""
        self.vitals: Any = None
        """The patient monitor's relay thread (robot_side.vitals), when [vitals] is on."""

    @property
    def port(self) -> CommandPort | None:
        """The command socket; bound by ``run`` in the control thread."""
        return self.loop.port

    def panel_status(self) -> dict[str, Any]:
        """What the on-site staff's panel shows (``ControlLoop.panel_status``)."""
        return self.loop.panel_status()

    def stop(self) -> None:
        self.loop.stop()

    def request_trip(self, reason: Reason, detail: str) -> None:
        """From any thread: the next period trips to a latched FAULT and holds."""
        self.loop.request_trip(reason, detail)

    def reload_keys(self) -> str:
        """Re-read the authorised keys (SIGHUP, ``keys reload``); any thread may call it.

        A revoked surgeon session sets ``auth.revoked``; the control loop trips on it."""
        auth = self.loop.auth
        if auth is None:
            return "error: the link is not up yet; nothing to reload"
        return "ok " + auth.reload().describe()

    def run(self, seconds: float | None = None) -> int:
        """Start every part in order, run the loop until stopped (or ``seconds``), stop
        them all in reverse; 0, or 2 when the link could not start."""
        cfg = self.cfg
        keys = ServerKeys.load(cfg.link.keys_dir)
        # libzmq aborts when it cannot apply the I/O thread priority: probe that one.
        realtime = cfg.control.realtime and realtime_permitted(IO_THREAD_PRIORITY)
        ctx = link_context(realtime)
        with ExitStack() as stack:
            stack.callback(_close_context, ctx)
            stack.enter_context(queued_logging(priority=HELPER_PRIORITY if realtime else 0))
            audit = stack.enter_context(AuditLog(cfg.safety.audit))
            self._audit_start(audit)
            # First of all the local e-stop: a second node on the same path stops here,
            # with one line, before it touches a port or the serial line.
            estop = self._start_estop(stack, audit, realtime)
            auditor = AuditThread(audit, self.mailbox)
            auditor.start()
            stack.callback(auditor.join, 2.0)
            stack.callback(auditor.stop)
            self._open_arm(stack)
            runtime = cfg.observe.socket.parent
            runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
            video = self._start_children(stack, ctx, runtime)
            # One line to the video process per thread that talks to it (ZeroMQ
            # sockets are single-thread): keyframe requests from the network thread,
            # the surgeon's picture age from this one, each straight to the encoder.
            keyframes = video.control(ctx)
            ages = video.control(ctx)
            stack.callback(ages.close)
            net = self._start_network(stack, ctx, keys, video=video, keyframes=keyframes,
                                      audit=audit)
            if net.error is not None or net.link is None:
                log.error("link did not start: %s", net.error)
                return 2
            self.loop.auth = net.link.auth
            self._start_relays(stack, ctx, keys, net.link.auth, runtime)
            # The command socket is the control thread's (this one): bound after the
            # network thread's link has started the authenticator it relies on.
            try:
                port = self._bind_commands(stack, ctx, keys, ages)
            except LinkError as err:  # a port in use: one sentence, no traceback
                log.error("link did not start: %s", err)
                return 2
            self._hook_up(port, net, net.link.auth)
            endpoints = {"command": port.port, **net.link.endpoints}
            ros = self._start_ros(stack, endpoints)
            self.loop.readiness = self._watch_startup(stack, video, ros)
            log.info("robot node up: link %s, control %.0f Hz, ROS 2 %s, video %s",
                     endpoints, cfg.control.rate_hz,
                     "off" if ros is None else f"{cfg.ros.backend} ({ros.describe()})",
                     video.describe())
            settle("robot node")  # every thread and child is up: the loop starts next
            if realtime:
                self._lifted = lift_normal_threads()
                log.info("helper threads lifted to SCHED_FIFO %d: %s", HELPER_PRIORITY,
                         ", ".join(self._lifted) or "none")
            self.loop.run(auditor, estop, seconds)
            stopped_by = self.signals.stop_signal if self.signals is not None else None
            audit.append("stop", {"trips": len(self.loop.trips), "signal": stopped_by},
                         sync=True)
            # Stopped first, the video process reports its final counters: a summary taken
            # from its last once-a-second report counted up to 30 frames too few.
            video.stop()
            if self.summary_path is not None:
                write_summary(self.summary_path, self.loop, net=net, auditor=auditor,
                              video=video, ros=ros, lifted=self._lifted, vitals=self.vitals)
        return 0

    # ------------------------------------------------------------ run's steps, in order
    def _audit_start(self, audit: AuditLog) -> None:
        """The config and its warnings (limits outside their recommended band), logged
        and in the audit's ``start`` record, synced before anything else opens."""
        cfg = self.cfg
        warnings = cfg.safety.warnings() + cfg.link.warnings()
        for line in warnings:
            log.warning("config: %s", line)
        audit.append("start", {"config": json.dumps(to_dict(cfg))[:4000],
                               "warnings": "\n".join(warnings)}, sync=True)

    def _start_estop(self, stack: ExitStack, audit: AuditLog, realtime: bool) -> EstopServer:
        cfg = self.cfg
        estop = EstopServer(cfg.estop.socket, self.loop.panel_status,
                            group=group_id(cfg.estop.group), audit=audit.append,
                            reload_keys=self.reload_keys,
                            client_priority=HELPER_PRIORITY if realtime else 0)
        estop.start()
        stack.callback(estop.stop)
        if self.signals is not None:
            self.signals.attach_audit(audit.append)
            stack.callback(self.signals.attach_audit, None)
        return estop

    def _open_arm(self, stack: ExitStack) -> None:
        """Open the serial line; one not there yet is retried off the loop."""
        try:
            self.manipulator.open()
        except ManipulatorError as err:
            log.error("manipulator not available (%s); holding and retrying", err)
        stack.callback(self.manipulator.close)
        reconnector = SerialReconnector(self.manipulator,
                                        self.cfg.serial.reconnect_interval_ms / 1e3)
        reconnector.start()
        stack.callback(reconnector.stop)

    def _start_children(self, stack: ExitStack, ctx: zmq.Context[Any],
                        runtime: Path) -> VideoProcess:
        """The video process, the on-site observers, the fan-out and the vitals."""
        cfg = self.cfg
        video = VideoProcess(cfg.video, cfg.link, cfg.link.keys_dir, control_dir=runtime,
                             local_socket=cfg.observe.video_path)
        video.start()
        stack.callback(video.stop)
        start_onsite_observers(stack, cfg, self.kin.joint_names)  # page, recorder
        if cfg.fanout.enabled:  # observers at scale, in a process of its own
            from robot_side.fanout.process import FanoutProcess

            fanout = FanoutProcess(cfg.fanout, cfg.observe.socket, cfg.observe.video_path)
            fanout.start()
            stack.callback(fanout.stop)
        # The patient monitor: its own process and a relay thread, never the loop.
        self.vitals = start_vitals(stack, cfg, self.mailbox, ctx)
        return video

    def _start_network(self, stack: ExitStack, ctx: zmq.Context[Any], keys: ServerKeys, *,
                       video: VideoProcess, keyframes: VideoControl,
                       audit: AuditLog) -> NetworkThread:
        """The network thread; returned once its link is up or has failed (``error``)."""
        cfg = self.cfg
        net = NetworkThread(cfg.link, keys, self.mailbox,
                            telemetry_hz=cfg.control.telemetry_hz,
                            observe_path=cfg.observe.socket, observe_hz=cfg.observe.hz,
                            ctx=ctx, loop_jitter_us=self.loop.pacer.recent_jitter_us,
                            video=video, keyframes=keyframes)
        net.audit_head = lambda: audit.head
        if cfg.record.enabled:  # the recorder's health, read by the network thread
            net.recording = RecordingHealth(recording_status_path(cfg))
        net.start()
        stack.callback(keyframes.close)  # after the network thread has ended
        stack.callback(net.join, 2.0)
        stack.callback(net.stop)
        net.ready.wait(10.0)
        return net

    def _start_relays(self, stack: ExitStack, ctx: zmq.Context[Any], keys: ServerKeys,
                      auth: Authenticator, runtime: Path) -> None:
        """Telestration and intercom, when configured: optional, so one that cannot start
        is logged and the node carries on without it."""
        cfg = self.cfg
        if cfg.telestration.enabled:  # strokes: their own thread, never the loop's inputs
            from robot_side.telestration import StrokeRelay

            try:
                relay = StrokeRelay(ctx, cfg.telestration, host=cfg.link.host, keys=keys,
                                    auth=auth, keys_dir=cfg.link.keys_dir,
                                    local_path=runtime / "strokes.sock",
                                    alerts=self.mailbox.alerts)  # refusals audited
            except (TelesurgeryError, zmq.ZMQError) as err:  # optional: the arm holds on
                log.error("telestration not available: %s", err)
            else:
                relay.start()
                stack.callback(relay.join, 2.0)
                stack.callback(relay.stop)
        if cfg.intercom.enabled:  # audio: own thread and sockets, never the commands'
            from robot_side.intercom import IntercomRelay

            try:
                hub = IntercomRelay(ctx, cfg.intercom, host=cfg.link.host, keys=keys,
                                    auth=auth, keys_dir=cfg.link.keys_dir,
                                    runtime=runtime, alerts=self.mailbox.alerts)
            except (TelesurgeryError, zmq.ZMQError) as err:
                log.error("intercom not available: %s", err)
            else:
                hub.start()
                stack.callback(hub.join, 2.0)
                stack.callback(hub.stop)

    def _bind_commands(self, stack: ExitStack, ctx: zmq.Context[Any], keys: ServerKeys,
                       ages: VideoControl) -> CommandPort:
        """The command socket and what each fresh command feeds (raises LinkError)."""
        cfg, mb, loop = self.cfg, self.mailbox, self.loop
        wd = cfg.safety.watchdog
        port = stack.enter_context(CommandPort(
            ctx, cfg.link, keys,
            # A command's age is bounded by the one-way latency limit; the
            # command timeout bounds the gap between fresh ones (otherwise the
            # 100-200 ms RTT warn band of the brief could never be reached).
            age_limit_ns=int(wd.latency_halt_ms * 1e6),
            loss_window_ns=int(wd.loss_window_ms * 1e6), alerts=mb.alerts))
        port.offset_ns = lambda: mb.clock.offset_ns
        port.on_arrival = lambda recv_ns: loop.phase.on_arrival(
            recv_ns, loop.pacer.next_deadline_ns())
        # Rate feedback goes from here straight to the video process.
        port.on_fresh = lambda cmd: ages.report_video_age(cmd.video_age_us)
        if cfg.record.enabled:  # every accepted command to the recorder's ring (no encode)
            port.on_accepted = mb.received.add
        loop.port = port
        return port

    def _hook_up(self, port: CommandPort, net: NetworkThread, auth: Authenticator) -> None:
        """The helpers learn the control period's phase; the port, revocations and the
        network thread, the paths' health."""
        window = self.loop.window
        driver = getattr(self.manipulator, "driver", None)  # the serial backend's reader
        self.loop.late.holders = (("robot-net", net.busy),) + (
            (("serial-reader", driver.busy),) if driver is not None else ())
        net.window = window
        if driver is not None:
            driver.window = window
        port.key_allowed = auth.allows  # a revoked session commands no more
        net.path_views = lambda: port.path_views  # dual path: health into telemetry

    def _start_ros(self, stack: ExitStack, endpoints: dict[str, int]) -> RosProcess | None:
        cfg = self.cfg
        if cfg.ros.backend == "none":
            return None
        # Its own process, observing the feed: DDS never shares the loop's GIL.
        # It gets the ports really bound (0 in the config binds a random one).
        bound = replace(cfg.link, command_port=endpoints["command"],
                        control_port=endpoints["control"],
                        telemetry_port=endpoints["telemetry"])
        ros = RosProcess(replace(cfg, link=bound))
        ros.start()
        stack.callback(ros.stop)
        return ros

    def _watch_startup(self, stack: ExitStack, video: VideoProcess,
                       ros: RosProcess | None) -> ReadinessThread:
        """Engage waits for the children to be up (issue 11: no trip while they start);
        a child that fails or never comes up is logged and audited, and stays named in
        every refusal."""
        watch = StartupWatch(time.monotonic_ns(), self.cfg.startup.children_timeout_s)
        if self.cfg.safety.watchdog.require_video:  # the surgeon's picture gates motion
            watch.add("video", "the video process", video_probe(video))
        if ros is not None:
            watch.add("ros", "the ROS 2 bridge", ros.ready_probe)
        alerts = self.mailbox.alerts
        thread = ReadinessThread(watch, lambda failure: alerts.append(AuditAlert(
            time.monotonic_ns(), "startup_not_ready", failure, logging.ERROR)))
        thread.start()
        stack.callback(thread.join, 1.0)
        stack.callback(thread.stop)
        return thread
