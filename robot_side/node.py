"""``telesurgery robot``: the process beside the patient.

Threads: the control loop (this module, SCHED_FIFO where permitted), the
network thread (robot_side.netio), the audit thread and the local e-stop
socket; child processes for video and the ROS 2 bridge (an observer of the
local feed, robot_side.ros.process). The control loop owns the serial port and
every safety decision; the others only feed it or report from it.
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

import zmq

from robot_side.command_port import (
    IO_THREAD_PRIORITY,
    CommandPort,
    LatencyRing,
    PathRecorder,
    link_context,
)
from robot_side.config import RobotConfig
from robot_side.control import CommandSample, ControlCore, LinkView, PendingRequest, StepReport
from robot_side.control_io import ControlInputs, EstopEvent, ExternalTrip, TripRecord
from robot_side.estop import EstopRequest, EstopServer
from robot_side.gilwindow import ControlWindow
from robot_side.kinematics import Kinematics
from robot_side.lateperiods import LatePeriods, SchedStat
from robot_side.localsock import group_id
from robot_side.manipulator import make_manipulator
from robot_side.netio import Mailbox, NetworkThread
from robot_side.period import PeriodResult, run_period
from robot_side.readiness import ReadinessThread, StartupWatch, video_probe
from robot_side.recording.health import RecordingHealth, recording_status_path
from robot_side.ros.process import RosProcess
from robot_side.signals import SignalDesk
from robot_side.supervision.process import start_onsite_observers
from robot_side.video_process import VideoProcess
from robot_side.vitals import start_vitals
from robot_side.workers import AuditThread, SerialReconnector
from safety.audit import AuditLog
from safety.audit_limit import RefusalLimiter
from safety.states import Reason, State
from safety.supervisor import Transition
from telesurgery.config import load, to_dict
from telesurgery.errors import LinkError, ManipulatorError, TelesurgeryError
from telesurgery.gcpolicy import PAUSES as GC_PAUSES
from telesurgery.gcpolicy import settle
from telesurgery.helptext import plain_help
from telesurgery.logqueue import queued_logging
from telesurgery.pacer import (
    HELPER_PRIORITY,
    Pacer,
    PhaseLock,
    Tick,
    enter_realtime,
    lift_normal_threads,
    realtime_permitted,
)
from telesurgery.threadcpu import describe, thread_cpu_seconds
from transport.auth import Authenticator
from transport.intake import AuditAlert
from transport.keys import ServerKeys
from transport.linkstats import LinkStats

log = logging.getLogger(__name__)

MAX_TRIPS = 10_000
PHASE_LEAD_NS = 50_000
"""How long before a period's deadline the latest usual command should arrive
(``PhaseLock``): enough for the drain, little enough not to add to the path."""


def _close_context(ctx: zmq.Context[Any]) -> None:
    # Every thread closes its own sockets on the way out; term() would wait forever
    # for one that did not (a network thread stuck past its join timeout).
    ctx.destroy(linger=0)


class RobotNode:
    """Builds every part from one config and runs the control loop."""

    def __init__(self, cfg: RobotConfig, summary_path: Path | None = None) -> None:
        self.cfg = cfg
        self.summary_path = summary_path
        self.mailbox = Mailbox()
        self._halt = threading.Event()
        self.kin = Kinematics.from_urdf(cfg.kinematics.urdf, cfg.kinematics.tip_frame)
        self.manipulator = make_manipulator(cfg)
        self.core = ControlCore(cfg, self.kin)
        self.pacer = Pacer(cfg.control.period_ns)
        self._recent: collections.deque[Transition] = collections.deque(maxlen=8)
        self._last_report: StepReport | None = None
        self._last_link: LinkView | None = None
        self._auth: Authenticator | None = None
        self.signals: SignalDesk | None = None
        self.trips: list[TripRecord] = []
        """Every trip of the run with its reaction time (bounded: MAX_TRIPS)."""
        self._lifted: list[str] = []
        """Helper threads lifted to SCHED_FIFO before the loop (lift_normal_threads)."""
        self._external_trip: ExternalTrip | None = None
        self._cpu_start: tuple[int, dict[str, float]] = (time.monotonic_ns(), {})
        self._estop_pending: dict[int, EstopRequest] = {}
        self._estop_token = 0
        self.port: CommandPort | None = None
        """The command socket; bound by ``run`` in the control thread."""
        self.phase = PhaseLock(cfg.control.period_ns, PHASE_LEAD_NS)
        self.late = LatePeriods(cfg.control.period_ns)
        """Every period that started > 100 us late, with what preceded it (issue 11)."""
        self._sched: SchedStat | None = None
        self._commands_seen = 0
        self.window = ControlWindow(cfg.control.period_ns)
        """The control period's phase, for the helpers to run their Python outside it."""
        self.path = PathRecorder()
        self.start_to_written = LatencyRing(1 << 16)
        """Period start -> frame written, us: how early in its period the write comes."""
        self.vitals: Any = None
        """The patient monitor's relay thread (robot_side.vitals), when [vitals] is on."""
        self.readiness: ReadinessThread | None = None
        """Until its ``detail`` is None engage is refused (not_ready): children starting."""
        self.refusals = RefusalLimiter()
        """Refused control requests audited one by one, per peer and second (the rest
        aggregated): a flood cannot fill the audit queue."""
        self.accepted = RefusalLimiter(burst=64, what="accepted")

    @property
    def _empty_link(self) -> LinkView:
        """Before the network thread's first view: nothing known, so nothing healthy."""
        now = time.monotonic_ns()
        return LinkView(LinkStats().snapshot(now), None, False)

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
            "not_ready": None if self.readiness is None else self.readiness.detail,
            "rtt_ms": None if link is None or link.rtt_ns is None else link.rtt_ns / 1e6,
            "loss": None if link is None else round(link.stats.loss, 4),
            "events": [{"ago_s": round((now - t.t_ns) / 1e9, 3), "from": str(t.state_from),
                        "to": str(t.state_to), "reason": str(t.reason),
                        "detail": t.detail[:120]} for t in recent],
        }

    def stop(self) -> None:
        self._halt.set()

    def request_trip(self, reason: Reason, detail: str) -> None:
        """From any thread (e.g. a revoked key's session dropped): the next period trips
        to a latched FAULT and holds. One reference swap; the latest request wins."""
        self._external_trip = ExternalTrip(reason, detail)

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
        # libzmq aborts when it cannot apply the I/O thread priority: probe that one.
        realtime = cfg.control.realtime and realtime_permitted(IO_THREAD_PRIORITY)
        ctx = link_context(realtime)
        with ExitStack() as stack:
            stack.callback(_close_context, ctx)
            stack.enter_context(queued_logging(priority=HELPER_PRIORITY if realtime else 0))
            audit = stack.enter_context(AuditLog(cfg.safety.audit))
            warnings = cfg.safety.warnings() + cfg.link.warnings()
            for line in warnings:
                log.warning("config: %s", line)
            audit.append("start", {"config": json.dumps(to_dict(cfg))[:4000],
                                   "warnings": "\n".join(warnings)}, sync=True)
            # First of all the local e-stop: a second node on the same path stops here,
            # with one line, before it touches a port or the serial line.
            estop = EstopServer(cfg.estop.socket, self.panel_status,
                                group=group_id(cfg.estop.group), audit=audit.append,
                                reload_keys=self.reload_keys,
                                client_priority=HELPER_PRIORITY if realtime else 0)
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
                self.manipulator.open()
            except ManipulatorError as err:
                log.error("manipulator not available (%s); holding and retrying", err)
            stack.callback(self.manipulator.close)
            reconnector = SerialReconnector(self.manipulator,
                                            cfg.serial.reconnect_interval_ms / 1e3)
            reconnector.start()
            stack.callback(reconnector.stop)
            runtime = cfg.observe.socket.parent
            runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
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
            # One line to the video process per thread that talks to it (ZeroMQ
            # sockets are single-thread): keyframe requests from the network thread,
            # the surgeon's picture age from this one, each straight to the encoder.
            keyframes = video.control(ctx)
            ages = video.control(ctx)
            stack.callback(ages.close)
            net = NetworkThread(cfg.link, keys, self.mailbox,
                                telemetry_hz=cfg.control.telemetry_hz,
                                observe_path=cfg.observe.socket, observe_hz=cfg.observe.hz,
                                ctx=ctx, loop_jitter_us=self.pacer.recent_jitter_us,
                                video=video, keyframes=keyframes)
            net.audit_head = lambda: audit.head
            if cfg.record.enabled:  # the recorder's health, read by the network thread
                net.recording = RecordingHealth(recording_status_path(cfg))
            net.start()
            stack.callback(keyframes.close)  # after the network thread has ended
            stack.callback(net.join, 2.0)
            stack.callback(net.stop)
            net.ready.wait(10.0)
            if net.error is not None or net.link is None:
                log.error("link did not start: %s", net.error)
                return 2
            self._auth = net.link.auth
            if cfg.telestration.enabled:  # strokes: their own thread, never the loop's inputs
                from robot_side.telestration import StrokeRelay

                try:
                    relay = StrokeRelay(ctx, cfg.telestration, host=cfg.link.host, keys=keys,
                                        auth=net.link.auth, keys_dir=cfg.link.keys_dir,
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
                                        auth=net.link.auth, keys_dir=cfg.link.keys_dir,
                                        runtime=runtime, alerts=self.mailbox.alerts)
                except (TelesurgeryError, zmq.ZMQError) as err:
                    log.error("intercom not available: %s", err)
                else:
                    hub.start()
                    stack.callback(hub.join, 2.0)
                    stack.callback(hub.stop)
            # The command socket is the control thread's (this one): bound after the
            # network thread's link has started the authenticator it relies on.
            mb = self.mailbox
            try:
                port = stack.enter_context(CommandPort(
                    ctx, cfg.link, keys,
                    # A command's age is bounded by the one-way latency limit; the
                    # command timeout bounds the gap between fresh ones (otherwise the
                    # 100-200 ms RTT warn band of the brief could never be reached).
                    age_limit_ns=int(wd.latency_halt_ms * 1e6),
                    loss_window_ns=int(wd.loss_window_ms * 1e6), alerts=mb.alerts))
            except LinkError as err:  # a port in use: one sentence, no traceback
                log.error("link did not start: %s", err)
                return 2
            port.offset_ns = lambda: mb.clock.offset_ns
            port.on_arrival = lambda recv_ns: self.phase.on_arrival(
                recv_ns, self.pacer.next_deadline_ns())
            # Rate feedback goes from here straight to the video process.
            port.on_fresh = lambda cmd: ages.report_video_age(cmd.video_age_us)
            if cfg.record.enabled:  # every accepted command to the recorder's ring (no encode)
                port.on_accepted = mb.received.add
            self.port = port
            driver = getattr(self.manipulator, "driver", None)  # the serial backend's reader
            self.late.holders = (("robot-net", net.busy),) + (
                (("serial-reader", driver.busy),) if driver is not None else ())
            net.window = self.window
            if driver is not None:
                driver.window = self.window
            port.key_allowed = net.link.auth.allows  # a revoked session commands no more
            net.path_views = lambda: port.path_views  # dual path: health into telemetry
            endpoints = {"command": port.port, **net.link.endpoints}
            ros = None
            if cfg.ros.backend != "none":
                # Its own process, observing the feed: DDS never shares the loop's GIL.
                # It gets the ports really bound (0 in the config binds a random one).
                bound = replace(cfg.link, command_port=endpoints["command"],
                                control_port=endpoints["control"],
                                telemetry_port=endpoints["telemetry"])
                ros = RosProcess(replace(cfg, link=bound))
                ros.start()
                stack.callback(ros.stop)
            self.readiness = self._watch_startup(stack, video, ros)
            log.info("robot node up: link %s, control %.0f Hz, ROS 2 %s, video %s",
                     endpoints, cfg.control.rate_hz,
                     "off" if ros is None else f"{cfg.ros.backend} ({ros.describe()})",
                     video.describe())
            settle("robot node")  # every thread and child is up: the loop starts next
            if realtime:
                self._lifted = lift_normal_threads()
                log.info("helper threads lifted to SCHED_FIFO %d: %s", HELPER_PRIORITY,
                         ", ".join(self._lifted) or "none")
            self._loop(auditor, estop, video, seconds)
            stopped_by = self.signals.stop_signal if self.signals is not None else None
            audit.append("stop", {"trips": len(self.trips), "signal": stopped_by}, sync=True)
            # Stopped first, the video process reports its final counters: a summary taken
            # from its last once-a-second report counted up to 30 frames too few.
            video.stop()
            self._write_summary(net, auditor, video, ros)
        return 0

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

    # ------------------------------------------------------------ the control thread
    def _wait_period(self) -> Tick:
        """Wait for the next period on the command socket; phase-locked to arrivals.

        Returns at the period's deadline whether or not a command came: the loop's
        rate and its checks never depend on the console.
        """
        port, late, sched = self.port, self.late, self._sched
        if sched is not None:
            cpu, delay = sched.sample()
            late.waiting(time.monotonic_ns(), delay, cpu)
        if port is None:
            return self.pacer.wait()
        shift = self.phase.correction()
        if shift:
            self.pacer.shift(shift)
        window = self.window
        window.period_done(self.pacer.next_deadline_ns())
        tick = self.pacer.wait(port.wait_until)
        window.period_started()
        if sched is not None:
            # Two reads of the thread's schedstat a period (~3 us each, a kept descriptor):
            # the work's CPU and CPU wait, and the wait's, for the explainer.
            received = port.counters["command_received"]
            cpu, delay = sched.sample()
            late.tick(tick.index, tick.expected_ns, tick.actual_ns, skipped=tick.skipped,
                      woke_ns=port.woke_ns, woke_until_ns=port.woke_until_ns,
                      woke_ready=port.woke_ready, commands=received - self._commands_seen,
                      run_delay_ns=delay, cpu_ns=cpu, gc_total_ns=GC_PAUSES.total_ns)
            self._commands_seen = received
        if self.pacer.spin_ns or not port.settled:
            # The period's first act: what arrived inside the wait's take guard (or
            # during the spin), stamped now, used in this period. Taken in the wait,
            # it ran past the deadline (round 6: ``command_take``). A settled port
            # found nothing new when the wait last looked: no EVENTS call (~10 us).
            port.take(arrived_by_ns=tick.expected_ns)
        mb = self.mailbox
        mb.command = port.sample
        mb.link_view = LinkView(port.stats.snapshot(tick.actual_ns), mb.clock.rtt_ns,
                                mb.clock.fresh(tick.actual_ns))
        return tick

    def _take_requests(self) -> tuple[PendingRequest, ...]:
        """Pending control requests; a granted arm starts a new command session (its
        token in force here before the reply that carries it can leave)."""
        if not self.mailbox.requests:  # the usual period: nothing made for nothing
            return ()
        requests = tuple(self.mailbox.take_requests())
        if self.port is not None:
            self.port.on_requests(requests)
        return requests

    def _record_path(self, sample: CommandSample | None, written_ns: int) -> None:
        if sample is not None:
            self.path.record(sample.cmd, self.mailbox.clock.offset_ns, written_ns,
                             sample.recv_ns)

    def _loop(self, auditor: AuditThread, estop: EstopServer,
              video: VideoProcess, seconds: float | None) -> None:
        cfg = self.cfg
        if enter_realtime(50, cfg.control.realtime):
            self.pacer.set_spin(cfg.control.spin_us * 1000)
        end = None if seconds is None else time.monotonic_ns() + int(seconds * 1e9)
        self._cpu_start = (time.monotonic_ns(), thread_cpu_seconds())
        self._sched = SchedStat()  # opened here: it describes the thread that opens it
        GC_PAUSES.install()  # the late-period explainer reads its sum (settle() did it too)
        self.pacer.restart()
        try:
            while not self._halt.is_set() and (end is None or time.monotonic_ns() < end):
                tick = self._wait_period()
                self._period(tick.actual_ns, auditor, estop)
        finally:
            self._sched.close()
        # Leaving the loop: the arm must be holding, whatever state we were in.
        self.core.supervisor.disarm(time.monotonic_ns())
        self._period(time.monotonic_ns(), auditor, estop)

    def _period(self, now_ns: int, auditor: AuditThread,
                estop: EstopServer) -> PeriodResult:
        """read -> update -> write, then the hand-offs (one reference swap, bounded deques).

        Whatever paces the loop or wherever commands come from, a period is this.
        """
        mb = self.mailbox
        link = mb.link_view or self._empty_link
        trip, self._external_trip = self._external_trip, None
        revoked = self._revocation()
        if revoked is not None:
            if trip is not None:
                self._external_trip = trip  # not lost: it trips in the next period
            trip = revoked
        inputs = ControlInputs(command=mb.command, link=link,
                               requests=self._take_requests(),
                               estop=self._estop_events(estop),
                               audit_ok=auditor.healthy, trip=trip,
                               not_ready=None if self.readiness is None
                               else self.readiness.detail)
        following = self.core.following_periods
        result = run_period(self.manipulator, self.core, now_ns, inputs)
        self.late.ran(time.monotonic_ns())
        if result.written_ns is not None:
            self.start_to_written.add((result.written_ns - now_ns) // 1000)
        if self.core.following_periods != following and result.written_ns is not None:
            self._record_path(inputs.command, result.written_ns)
        out = result.output
        mb.replies.extend(out.replies)
        for record in out.audit:  # before the transitions, whose fsync covers them
            # A flood of refused requests is aggregated per peer, or it would fill
            # the audit queue and trip the arm (safety.audit_limit).
            if (self.accepted if record.ok else self.refusals).allow(record.peer, now_ns):
                auditor.submit(record)
        for limiter in (self.refusals, self.accepted):
            if limiter.active:
                for summary in limiter.due(now_ns):
                    mb.alerts.append(AuditAlert(now_ns, f"control_{limiter.what}_flood",
                                                summary.describe()))
        for t in out.transitions:
            auditor.submit(t)
            self._recent.append(t)
        for token, answer in out.estop_replies:
            req = self._estop_pending.pop(token, None)
            if req is not None:
                req.answer = answer
                req.done.set()
        if result.trip is not None:
            # One machine-readable line per trip, in monotonic ns: the HIL rig checks
            # every reaction time against its bound while the node runs.
            log.warning("TRIP %s", json.dumps(asdict(result.trip)))
            if len(self.trips) < MAX_TRIPS:
                self.trips.append(result.trip)
        report = out.report
        mb.report = report
        self._last_report, self._last_link = report, link
        return result

    def _revocation(self) -> ExternalTrip | None:
        """A reload revoked a live surgeon session: hold with an audited trip."""
        auth = self._auth
        if auth is None or not auth.revoked.is_set():
            return None
        auth.revoked.clear()
        return ExternalTrip(Reason.KEY_REVOKED, "revoked: " + ", ".join(auth.revoked_users))

    def _estop_events(self, estop: EstopServer) -> tuple[EstopEvent, ...]:
        # The ROS 2 e-stop topic arrives here too: the bridge process presses this socket.
        if not estop.requests.qsize():  # the usual period: no press, no list
            return ()
        events: list[EstopEvent] = []
        sup = self.core.supervisor  # read in the control thread, right before the step
        while not estop.requests.empty():
            req: EstopRequest = estop.requests.get_nowait()
            if req.action == "refused":
                # A local tool refused a clear itself (wrong PIN...): the e-stop server
                # audits it with who asked; the arm's state does not change.
                req.answer = f"ok refusal recorded ({sup.state})"
                req.done.set()
                continue
            if req.action == "clear" and sup.state is not State.ESTOP:
                req.answer = f"ok no e-stop to clear (state {sup.state}, {sup.reason})"
                req.done.set()
                continue
            self._estop_token += 1
            self._estop_pending[self._estop_token] = req
            action = req.action if req.action in ("press", "clear") else "status"
            source = Reason.ESTOP_ROS if req.source == "ros" else Reason.ESTOP_LOCAL
            events.append(EstopEvent(action, source,  # type: ignore[arg-type]
                                     self._estop_token))
        return tuple(events)

    def _write_summary(self, net: NetworkThread, auditor: AuditThread,
                       video: VideoProcess, ros: RosProcess | None) -> None:
        if self.summary_path is None:
            return
        stats = self.pacer.stats()
        snap = (self.port.stats if self.port else LinkStats()).snapshot(time.monotonic_ns())
        # Per thread, over the loop's run: where the control process's CPU goes (issue 11).
        t0, cpu0 = self._cpu_start
        run_s = (time.monotonic_ns() - t0) / 1e9
        cpu = {k: round(v - cpu0.get(k, 0.0), 2) for k, v in thread_cpu_seconds().items()}
        log.info("CPU per thread over %.1f s: %s", run_s, describe(cpu, run_s, stats.ticks))
        log.info("control process: %s", GC_PAUSES.describe())
        log.info("%s", self.late.describe())
        summary = {
            "gc": GC_PAUSES.summary(),
            "helpers_lifted": self._lifted,
            "thread_cpu": {"seconds": round(run_s, 2), "periods": stats.ticks,
                           "cpu_s": cpu},
            "trips": [asdict(t) for t in self.trips],
            "loop": asdict(stats),
            "late_periods": self.late.summary(),
            "helpers_deferred": {"chunks": self.window.deferred,
                                 "ms": round(self.window.deferred_ns / 1e6, 1)},
            "link": asdict(snap),
            "command_latency": self.port.latency.percentiles() if self.port else {"n": 0},
            "command_period_take_us": (self.port.period_takes.percentiles() if self.port
                                       else {"n": 0}),
            "path": self.path.ring.percentiles(),
            "path_sessions": self.path.by_session(),
            "path_parts": {"console_sample_to_send": self.path.console.percentiles(),
                           "robot_receive_to_written": self.path.robot.percentiles(),
                           "period_start_to_written": self.start_to_written.percentiles()},
            "phase_lock": {"lead_us": self.phase.lead_ns // 1000,
                           "adjustments": self.phase.adjustments,
                           "shifted_us": self.phase.shifted_ns // 1000,
                           "before_us": self.phase.before_us()},
            "telemetry_built": net.telemetry_built,
            "tracking_error_max_m": self.core.max_tracking_error_m,
            "following_periods": self.core.following_periods,
            "ik_branch_keeps": self.core.branch_keeps,
            "resumes_ns": self.core.resumes_ns,
            "gate": self.port.intake.counters if self.port else {},
            "session": dict(net.guard.counters),
            "control_records_aggregated": {"refused": self.refusals.suppressed_total,
                                           "accepted": self.accepted.suppressed_total},
            "link_counters": {**(dict(net.link.counters) if net.link else {}),
                              **(self.port.counters if self.port else {})},
            "audit_records": auditor.persisted,
            "serial": dict(self.manipulator.counters),
            "video": video.summary(),
            "ros": None if ros is None else ros.summary(),
            "final_state": str(self.core.supervisor.state),
            "vitals": None if self.vitals is None else dict(self.vitals.counters),
        }
        self.summary_path.parent.mkdir(parents=True, exist_ok=True)
        self.summary_path.write_text(json.dumps(summary, indent=2, default=str))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery robot", description=plain_help(__doc__))
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

    # Before anything opens: from here on no signal kills the node with the arm unheld.
    node.signals = SignalDesk(node.stop, node.reload_keys)
    node.signals.install()
    node.signals.start()
    try:
        return node.run(args.seconds)
    except TelesurgeryError as err:  # keys, or a second node on the e-stop socket or log
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
    if args.ros_command:
        ros = replace(ros, command=args.ros_command == "on")
    control = cfg.control if args.ros_hz is None else replace(cfg.control, ros_hz=args.ros_hz)
    serial = cfg.serial if not args.serial_port else replace(cfg.serial, port=args.serial_port)
    return replace(cfg, ros=ros, control=control, serial=serial)
