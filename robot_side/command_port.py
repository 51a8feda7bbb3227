"""The command socket, owned and waited on by the control thread itself.

Measured before this split (demo, 500 Hz): console send -> robot receive p99
2.5-8.8 ms while raw pyzmq one-way was ~0.2 ms. A command sat in the network
thread's poll until that thread got the GIL, then in the mailbox until the next
control tick. Here the control thread waits for its next deadline *on the
command socket* (``select`` on the socket's file descriptor releases the GIL, and
libzmq's I/O thread has already decrypted and queued the message), so a command
is taken, stamped, judged and counted the moment the loop wakes for it, and acted
on in the next period. One that arrives within ``TAKE_GUARD_NS`` of the deadline is
left queued and taken as that period's first act (judging it in the wait ran past
the deadline). ``telesurgery.pacer.PhaseLock`` then moves the period grid so that
the next period starts just after a command's expected arrival.

Every command is judged by ``transport.intake.CommandIntake`` (the surgeon
session's token, a sequence number the robot's own clock finds plausible, the
gate's freshness); only FRESH ones feed the link statistics, the latency ring and
the phase lock. What the intake finds worth an audit record goes onto a bounded
deque the audit thread empties (``Mailbox.alerts``): the control thread neither
writes nor waits for the audit. The session token is granted by the network
thread's ``SessionGuard`` and reaches this thread with the ``arm`` request it
answers (``PendingRequest.granted``); ``on_requests`` starts the new session
before that request is processed, so before its reply (carrying the token) can
leave: the console's first command with the token is always judged against it,
and no command of an older session is accepted after it.

The loop's rate never depends on commands: ``wait_until`` always returns at its
deadline, with or without input, so a silent link is still judged every period
(the watchdog trips on the command timeout).

ZeroMQ sockets belong to one thread: create, use and close a ``CommandPort`` in
the control thread. The context (and its authenticator, started by the network
thread's ``RobotLink``) is shared and thread-safe.
"""

from __future__ import annotations

import logging
import select
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from robot_side.control import CommandSample, PendingRequest
from robot_side.pathfigures import LatencyRing
from telesurgery.errors import SchemaError
from telesurgery.pacer import zmq_context
from telesurgery.ratelog import RateLimitedLog
from transport.auth import session_key
from transport.config import LinkConfig, tos_byte
from transport.endpoint import COMMAND_RCVHWM, DRAIN_MAX
from transport.gate import CommandGate, Verdict
from transport.intake import AuditAlert, CommandIntake
from transport.keys import SURGEON_USER, ServerKeys
from transport.linkstats import LinkStats
from transport.paths import UNKNOWN_PATH, PathHealth, PathView
from transport.schema import Command, decode
from transport.sockets import bound_port, server_socket

log = logging.getLogger(__name__)

MONITOR_EVERY_NS = 100_000_000
TAKE_GUARD_NS = 150_000
"""The wait stops taking this long before its deadline (``CommandPort.wait_until``).

A take of one command (recv, decode, intake, statistics, the callbacks), cold as the
loop runs it: p99 ~150 us in the node on this two-core machine (round 6's
``command_take`` late periods: woken within ~100-150 us of the deadline, late by
the take; ``bench path`` and the 10-minute soak). Shorter and a take begun in the
wait still runs past the deadline; longer and more commands wait for the period's
first act, which costs the path nothing (the frame is written in that period)."""
FD_SETSIZE = 1024
"""select() takes descriptors below this only; above it the wait falls back to poll()."""
COPY_OF_SESSION = frozenset({Verdict.FRESH, Verdict.DUPLICATE, Verdict.REPLAY})
"""Verdicts of a copy of this session's command: evidence about the path it came by."""
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class CommandPort:
    """The robot's command PULL socket and its ``CommandIntake`` (gate, statistics)."""

    def __init__(self, ctx: zmq.Context[Any], cfg: LinkConfig, keys: ServerKeys, *,
                 age_limit_ns: int, loss_window_ns: int,
                 alerts: deque[AuditAlert] | None = None) -> None:
        # One socket bound on every network path: one select, the first copy wins.
        first, *more = (p.robot for p in cfg.path_list)
        self._sock: zmq.Socket[Any] = server_socket(
            ctx, zmq.PULL, cfg.command_port, first, keys, "surgeon", cfg.max_message_bytes,
            hwm=COMMAND_RCVHWM, heartbeat_ivl_ms=cfg.heartbeat_ivl_ms,
            heartbeat_timeout_ms=cfg.heartbeat_timeout_ms,
            tos=tos_byte(cfg.dscp_command), more_hosts=tuple(more))
        self._fd = int(self._sock.getsockopt(zmq.FD))
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._monitor: zmq.Socket[Any] = self._sock.get_monitor_socket(
            _HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._next_monitor_ns = 0
        self._settled = False
        """The last call on the socket was an EVENTS check that found its queue empty:
        until the descriptor signals, there is nothing to take."""
        self.woke_ns = 0
        """When the wait's last ``select`` returned (the GIL taken again), and what it
        was asked for: for the loop's late-period explainer (robot_side.lateperiods)."""
        self.woke_until_ns = 0
        self.woke_ready = False
        self.take_guard_ns = TAKE_GUARD_NS
        """Commands arriving this close to the wait's deadline are left for the period."""
        self._signalled_ns = 0
        """When the descriptor signalled inside the guard (0: it did not): the arrival
        time the phase lock gets for what the period's first take finds."""
        self.port = bound_port(self._sock)
        self.intake = CommandIntake(age_limit_ns, loss_window_ns, cfg.max_command_hz)
        self.alerts: deque[AuditAlert] = deque(maxlen=256) if alerts is None else alerts
        """Where the intake's audit-worthy findings go (the node passes Mailbox.alerts)."""
        self.period_takes = LatencyRing(1 << 16)
        """How long each take that was a period's first act lasted, us (what it adds to
        the period's work; its p99 is what ``TAKE_GUARD_NS`` must cover)."""
        self.latency = LatencyRing()
        """Console send -> robot receive of every fresh command (mapped with the offset)."""
        self.offset_ns: Callable[[], int | None] = lambda: None
        """The console clock's offset, as the network thread's ClockSync knows it now."""
        self.on_arrival: Callable[[int], None] | None = None
        """Called with each fresh command's receive time (the loop's phase lock)."""
        self.key_allowed: Callable[[str | None], bool] = lambda key: True
        """Whether a session's key (``transport.auth.session_key``) is still authorised:
        the node sets the authenticator's ``allows``, so a revoked session is refused."""
        self.on_fresh: Callable[[Command], None] | None = None
        """Called with each command the gate accepts (video rate feedback)."""
        self.on_accepted: Callable[[Command, int], None] | None = None
        """Called with every command the gate accepts and its receive time, also those a
        newer one in the same drain supersedes: the recorder's ring (observe.CommandRing)."""
        self.sample: CommandSample | None = None
        """The newest command the gate accepted as fresh, with its arrival time."""
        self.counters: dict[str, int] = {"command_received": 0, "command_superseded": 0,
                                         "command_flags_kept": 0,
                                         "command_schema_error": 0, "handshake_failed": 0,
                                         "command_sessions": 0, "command_disconnects": 0}
        self._log = RateLimitedLog(log)
        self.paths: PathHealth | None = None
        """Per-path health and the redundancy warning, with two or more paths."""
        self._path_names: dict[str, str] = {}
        self.path_views: tuple[PathView, ...] = ()
        """The paths as judged at the last check (every ``MONITOR_EVERY_NS``): one
        reference, swapped, so the network thread reads it for telemetry."""
        if cfg.dual:
            self.paths = PathHealth([p.name for p in cfg.paths], window_ns=loss_window_ns,
                                    live_ns=int(cfg.path_live_ms * 1e6))
            self._path_names = {p.console: p.name for p in cfg.paths if p.console}

    @property
    def gate(self) -> CommandGate:
        return self.intake.gate

    @property
    def stats(self) -> LinkStats:
        return self.intake.stats

    @property
    def settled(self) -> bool:
        """Known empty since the last look: a take now would find nothing (unless the
        descriptor signalled meanwhile, which only a wait notices)."""
        return self._settled

    def wait_until(self, until_ns: int) -> None:
        """Take commands as they arrive until ``until_ns - take_guard_ns``, then only
        watch; returns at ``until_ns``, input or not.

        A command that arrives inside the guard is left queued (unsettled) for the
        period's first act (``take`` right after the tick is stamped, as
        ``ControlLoop._wait_period`` does): a take begun there ran past the deadline and started
        the period late (round 6's ``command_take`` class, ~60 % of the late periods).
        """
        take_until = until_ns - self.take_guard_ns
        while True:
            now = time.monotonic_ns()
            if not self._settled and now < take_until:
                self.take(take_until)
                now = time.monotonic_ns()
            left = until_ns - now
            if left <= 0:
                self._maintain(now)
                return
            if not self._settled and now >= take_until:
                # Inside the guard with something queued: the descriptor has signalled
                # and stays readable until a take re-arms it, so a select would return
                # at once, again and again. Sleep the rest; the period takes it.
                if not self._signalled_ns:
                    self._signalled_ns = now
                time.sleep(left / 1e9)
                self.woke_ns, self.woke_until_ns, self.woke_ready = (
                    time.monotonic_ns(), until_ns, False)
                continue
            # The descriptor is edge-triggered and re-armed by the EVENTS check that
            # ended the last drain: if it stays quiet, nothing was queued since, so a
            # wait that times out needs no drain. Draining on every wake-up and at
            # both ends of the wait cost ~18 us of cold Python each, three a period
            # (docs/architecture.md, "Where the node's CPU goes").
            ready = self._block(left)
            self.woke_ns, self.woke_until_ns, self.woke_ready = time.monotonic_ns(), until_ns, ready
            if ready:
                self._settled = False
                if self.woke_ns >= take_until:  # came inside the guard: when, for the lock
                    self._signalled_ns = self.woke_ns

    def _block(self, left_ns: int) -> bool:
        """Sleep until the socket's descriptor signals (True) or ``left_ns`` passed."""
        if self._fd < FD_SETSIZE:
            return bool(select.select([self._fd], [], [], left_ns / 1e9)[0])  # us timeout
        # poll() counts whole milliseconds (rounded up): the last fraction is slept and
        # what arrives meanwhile is taken at the deadline.
        ms = left_ns // 1_000_000
        if ms:
            return bool(self._poll.poll(ms))
        time.sleep(left_ns / 1e9)
        return True  # not watched meanwhile: drain to be sure

    def take(self, stop_ns: int = 0, *, arrived_by_ns: int = 0) -> None:
        """Read what is queued (bounded), judge each in order; the newest fresh one wins.

        Never blocks. Each arrival is judged, also those a newer one supersedes, so the
        statistics see every fresh command and nothing else (``transport.intake``).
        ``stop_ns`` (where the wait stops taking: its deadline less the take guard):
        stop there and leave the rest queued for the period's first take. A burst
        after a console's stall (3-8 commands, ~50 us each) taken whole at the deadline
        started ~1/3 of the late periods of round 6 (``command_take``); a command left
        queued is stamped when it is taken, so it only ever looks older, never fresher.

        ``arrived_by_ns`` (the period's deadline, for the take that is the period's
        first act): what is queued arrived by then, so the phase lock is told that
        time (or when the descriptor signalled inside the wait's guard) rather than
        the take's, which would place the arrival a whole period early. Only the
        lock's view: the command itself is stamped when taken.
        """
        started_ns = time.monotonic_ns() if arrived_by_ns else 0
        newest: Command | None = None
        signalled, self._signalled_ns = self._signalled_ns, 0
        newest_ns = 0
        clutch_seen = absent_seen = False
        offset = self.offset_ns()
        intake = self.intake
        events, recv = self._sock.getsockopt, self._sock.recv
        recv_ns = 0
        for _ in range(DRAIN_MAX):
            if recv_ns >= stop_ns > 0:  # the deadline: what is left waits (still unsettled)
                break
            # Ask EVENTS rather than end on zmq.Again: every drain ended in that exception,
            # 5.2 us against 2.4 us for the check (pyzmq 27, timeit), and the wait needs
            # the check anyway to re-arm the descriptor (measured with the rest of this
            # drain in docs/architecture.md, "Where the node's CPU goes").
            if not int(events(zmq.EVENTS)) & zmq.POLLIN:
                self._settled = True  # known empty, the descriptor re-armed
                break
            self._settled = False  # a recv may take the descriptor's signal with it
            try:
                frame: zmq.Frame = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:  # EVENTS said a message was there; never seen, handled anyway
                break
            recv_ns = time.monotonic_ns()
            cmd = self._decode(frame)
            if cmd is None:
                continue
            self.counters["command_received"] += 1
            verdict = intake.offer(cmd, recv_ns, offset)
            if self.paths is not None and verdict in COPY_OF_SESSION:
                self.paths.on_copy(self._path_of(frame), cmd.seq, cmd.t_send_ns,
                                   recv_ns, offset)
            if verdict is not Verdict.FRESH:
                continue
            if self.on_arrival is not None:
                if arrived_by_ns and recv_ns > arrived_by_ns:
                    self.on_arrival(signalled or arrived_by_ns)
                else:
                    self.on_arrival(recv_ns)
            if self.on_accepted is not None:
                self.on_accepted(cmd, recv_ns)
            if offset is not None:
                self.latency.add((recv_ns - (cmd.t_send_ns + offset)) // 1000)
            if newest is not None:
                self.counters["command_superseded"] += 1
                clutch_seen |= newest.clutch
                absent_seen |= not newest.operator_present
            newest, newest_ns = cmd, recv_ns
        if intake.has_alerts:
            self.alerts.extend(intake.drain_alerts())
        if newest is not None:
            if (clutch_seen and not newest.clutch) or (absent_seen and newest.operator_present):
                newest = self._keep_released(newest, clutch_seen, absent_seen)
            self.sample = CommandSample(newest, newest_ns)
            if self.on_fresh is not None:
                self.on_fresh(newest)
        now = time.monotonic_ns()
        if started_ns:
            self.period_takes.add((now - started_ns) // 1000)
        self._maintain(now)

    def _keep_released(self, cmd: Command, clutch: bool, absent: bool) -> Command:
        """The newest command, still clutched / with the operator absent when a command
        it superseded in the same drain was: a clutch press or a deadman release shorter
        than a period (a console that caught up after a stall, a scripted track's loop)
        must still reach the core, or the hand's move while clutched arrives as a jump
        of the instrument (a false ``setpoint_jump`` in the 10-minute soak) and a released
        deadman is never seen. Both err towards stopping: one period held, then the
        core re-anchors on the release as for any clutch."""
        self.counters["command_flags_kept"] += 1
        return replace(cmd, clutch=cmd.clutch or clutch,
                       operator_present=cmd.operator_present and not absent)

    def _maintain(self, now: int) -> None:
        """Every ``MONITOR_EVERY_NS``, commands or not: handshake events, path health."""
        if now >= self._next_monitor_ns:
            self._next_monitor_ns = now + MONITOR_EVERY_NS
            self._drain_monitor()
            if self.paths is not None:
                if (alert := self.paths.check(now)) is not None:
                    self.alerts.append(alert)
                self.path_views = tuple(self.paths.views(now))

    def _path_of(self, frame: zmq.Frame) -> str:
        """The path a copy came by: the sender's address as our kernel saw it."""
        try:
            addr = str(frame.get("Peer-Address"))
        except zmq.ZMQError:
            return UNKNOWN_PATH
        return self._path_names.get(addr, UNKNOWN_PATH)

    def on_requests(self, requests: Iterable[PendingRequest]) -> None:
        """Start the command session of every ``arm`` the network thread granted.

        Called by the control thread with the requests it is about to process, so
        the new token is in force before the reply that hands it to the console
        is even made. Only a granted arm resets the sequence history.
        """
        for r in requests:
            if r.granted is not None:
                self.reset(r.granted)

    def reset(self, session: int | None = None) -> None:
        """A new session (the surgeon armed): the console's sequence restarts per run,
        and only commands with the new token count. The last session's newest command
        is no longer one to act on."""
        self.intake.reset(session)
        self.sample = None
        if self.paths is not None:
            self.paths.reset()

    def close(self) -> None:
        self._monitor.close(0)
        self._sock.close(0)

    def __enter__(self) -> CommandPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _decode(self, frame: zmq.Frame) -> Command | None:
        try:
            if frame.more:
                # A multipart message: refuse it whole (its other parts are read and
                # dropped here, so none of them is ever judged as a command of its own).
                parts = 1 + self._discard_parts()
                raise SchemaError("message", f"{parts} parts, expected 1")
            try:
                user = str(frame.get("User-Id"))
            except zmq.ZMQError:
                user = ""
            # The socket is in the surgeon domain, so this never fires while ZAP works;
            # it is here so that a ZAP bug cannot let a command in.
            if user != SURGEON_USER:
                raise SchemaError("user", f"{user!r} may not command")
            if not self.key_allowed(session_key(frame)):
                raise SchemaError("user", "the key of this session was revoked")
            msg = decode(frame.buffer)
            if not isinstance(msg, Command):
                raise SchemaError("t", f"{msg.TYPE!r} not expected on command")
        except SchemaError as err:
            self.counters["command_schema_error"] += 1
            self._log(logging.WARNING, "bad:command", "dropped bad command message: %s", err)
            return None
        return msg

    def _discard_parts(self) -> int:
        """Read the rest of a multipart message (ZeroMQ delivers its parts together)."""
        n = 0
        while True:
            n += 1
            if not self._sock.recv(zmq.NOBLOCK, copy=False).more:
                return n

    def _drain_monitor(self) -> None:
        while self._monitor.poll(0):
            event = parse_monitor_message(self._monitor.recv_multipart())
            kind = event["event"]
            if kind & _HANDSHAKE_FAILED:
                self.counters["handshake_failed"] += 1
                self._log(logging.WARNING, "handshake:command",
                          "no session for a peer on command: %s, code %s",
                          zmq.Event(kind).name, event["value"])
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.counters["command_sessions"] += 1
                self._log(logging.INFO, "session:command", "authenticated session on command")
            else:
                self.counters["command_disconnects"] += 1


IO_THREAD_PRIORITY = 49
"""SCHED_FIFO priority of libzmq's I/O thread: it decrypts every command, so just
below the control loop (50) and above the network thread (45)."""


def link_context(realtime: bool) -> zmq.Context[Any]:
    """The robot's ZeroMQ context; its I/O thread at ``IO_THREAD_PRIORITY`` when
    ``realtime`` (the caller asked ``realtime_permitted``: libzmq aborts otherwise)."""
    return zmq_context(IO_THREAD_PRIORITY if realtime else 0)
