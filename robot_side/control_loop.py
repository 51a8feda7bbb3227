"""The control thread's loop: the read -> update -> write period and what feeds it.

Each period takes the command socket's newest command (``_wait_period``, paced and
phase-locked), the control requests, the local and ROS 2 e-stop presses and a revoked
key, runs ``robot_side.period.run_period`` and hands its results off (replies, audit
records, transitions, trips) by reference swaps and bounded deques. Apart from
``robot_side.assembly`` (which builds every part and starts the children) so that what runs
every period, in the real-time thread, reads in one place with nothing else around it.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from dataclasses import asdict
from typing import Any

from robot_side.command_port import CommandPort
from robot_side.config import RobotConfig
from robot_side.control import CommandSample, ControlCore, LinkView, PendingRequest, StepReport
from robot_side.control_io import ControlInputs, EstopEvent, ExternalTrip, TripRecord
from robot_side.estop import EstopRequest, EstopServer
from robot_side.gilwindow import ControlWindow
from robot_side.kinematics import Kinematics
from robot_side.lateperiods import LatePeriods, SchedStat
from robot_side.manipulator import Manipulator
from robot_side.netio import Mailbox
from robot_side.pathfigures import LatencyRing, PathRecorder
from robot_side.period import PeriodResult, run_period
from robot_side.readiness import ReadinessThread
from robot_side.workers import AuditThread
from safety.audit_limit import RefusalLimiter
from safety.states import Reason, State
from safety.supervisor import Transition
from telesurgery.gcpolicy import PAUSES as GC_PAUSES
from telesurgery.pacer import Pacer, PhaseLock, Tick, enter_realtime
from telesurgery.threadcpu import thread_cpu_seconds
from transport.auth import Authenticator
from transport.intake import AuditAlert
from transport.linkstats import LinkStats

log = logging.getLogger(__name__)

MAX_TRIPS = 10_000
PHASE_LEAD_NS = 50_000
"""How long before a period's deadline the latest usual command should arrive
(``PhaseLock``): enough for the drain, little enough not to add to the path."""


class ControlLoop:
    """The control thread's state and its period; the node fills ``port``, ``auth`` and
    ``readiness`` once they exist, other threads only read what it swaps."""

    def __init__(self, cfg: RobotConfig, kin: Kinematics, manipulator: Manipulator,
                 mailbox: Mailbox) -> None:
        self.cfg = cfg
        self.mailbox = mailbox
        self.manipulator = manipulator
        self._halt = threading.Event()
        self.core = ControlCore(cfg, kin)
        self.pacer = Pacer(cfg.control.period_ns)
        self._recent: collections.deque[Transition] = collections.deque(maxlen=8)
        self._last_report: StepReport | None = None
        self._last_link: LinkView | None = None
        self.auth: Authenticator | None = None
        """The link's authenticator, once up: a reload that revoked a session trips."""
        self.trips: list[TripRecord] = []
        """Every trip of the run with its reaction time (bounded: MAX_TRIPS)."""
        self._external_trip: ExternalTrip | None = None
        self.cpu_start: tuple[int, dict[str, float]] = (time.monotonic_ns(), {})
        """When the loop started and each thread's CPU seconds then (the summary's base)."""
        self._estop_pending: dict[int, EstopRequest] = {}
        self._estop_token = 0
        self.port: CommandPort | None = None
        """The command socket; bound by the node in the control thread."""
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

    def run(self, auditor: AuditThread, estop: EstopServer, seconds: float | None) -> None:
        """Periods until ``stop`` (or ``seconds``), in the calling thread, real-time where
        permitted; then one last period with the arm disarmed, holding."""
        cfg = self.cfg
        if enter_realtime(50, cfg.control.realtime):
            self.pacer.set_spin(cfg.control.spin_us * 1000)
        end = None if seconds is None else time.monotonic_ns() + int(seconds * 1e9)
        self.cpu_start = (time.monotonic_ns(), thread_cpu_seconds())
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
        auth = self.auth
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
