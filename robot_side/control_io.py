"""What goes into one control period and what comes out of it.

``ControlCore.update(now_ns, reading, inputs) -> ControlOutput`` is pure: every
input is in ``ControlInputs`` (filled by the network thread, the e-stop socket,
the audit thread) and the manipulator's ``Reading``; everything the period
produces is in the frozen ``ControlOutput``. Nothing leaves through lists that
someone else must clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from robot_side.manipulator.base import Frame
from safety.states import Reason, State
from safety.supervisor import Transition
from safety.watchdog import LinkHealth
from telesurgery.quat import Pose
from transport.linkstats import LinkSnapshot
from transport.schema import Command, ControlReply, ControlRequest


class CommandSample(NamedTuple):
    """The newest command the gate accepted as fresh, with its arrival time.

    ``CommandSample``, ``LinkView`` and ``ControlInputs`` are NamedTuples: one of each
    is made per command or period, and a frozen dataclass's ``__init__`` costs an
    ``object.__setattr__`` per field (issue 11). Immutable all the same.
    """

    cmd: Command
    recv_ns: int


class LinkView(NamedTuple):
    """What the network thread knows about the link at one instant."""

    stats: LinkSnapshot
    rtt_ns: int | None
    clock_fresh: bool


@dataclass(frozen=True, slots=True)
class PendingRequest:
    peer: bytes
    req: ControlRequest
    recv_ns: int
    granted: int | None = None
    """The session token the network thread's SessionGuard granted with this ``arm``:
    the control thread starts the command session with it (CommandPort.on_requests)."""


@dataclass(frozen=True, slots=True)
class EstopEvent:
    """An e-stop input: the local socket (press, clear, status) or the ROS 2 topic (press).

    ``token`` comes back with the answer in ``ControlOutput.estop_replies``.
    """

    action: Literal["press", "clear", "status"]
    source: Reason = Reason.ESTOP_LOCAL
    token: int = 0


@dataclass(frozen=True, slots=True)
class ExternalTrip:
    """A trip decided outside the loop (e.g. a revoked key's session): latched FAULT."""

    reason: Reason
    detail: str


class ControlInputs(NamedTuple):
    command: CommandSample | None
    link: LinkView
    requests: tuple[PendingRequest, ...] = ()
    estop: tuple[EstopEvent, ...] = ()
    audit_ok: bool = True
    trip: ExternalTrip | None = None
    not_ready: str | None = None
    """The robot's start-up is not over: what it waits for, in plain words (engage is
    refused with ``not_ready`` meanwhile; robot_side.readiness)."""


class StepReport(NamedTuple):
    """Everything the reporters (telemetry, ROS 2, page) need from one period.

    A NamedTuple, like ``ControlOutput``: one of each is built every period, and a
    frozen dataclass's ``__init__`` (``object.__setattr__`` per field) cost 2.7 us
    here against 0.6 us (issue 11). Immutable all the same.
    """

    t_ns: int
    state: State
    reason: Reason
    measured_q: tuple[float, ...]
    setpoint_q: tuple[float, ...]
    measured_cp: Pose
    setpoint_cp: Pose
    scale: float
    health: LinkHealth
    estop: bool
    firmware_flags: int
    tracking_error_m: float
    measured_v: tuple[float, ...] = ()
    """Joint velocities from the arm, rad/s (empty when the arm reported none)."""
    measured_effort: tuple[float, ...] = ()
    """Joint efforts from the arm (N m, or the backend's documented unit)."""


@dataclass(frozen=True, slots=True)
class TripDecision:
    """A trip found in this period: the hold goes out in this period's write."""

    reason: str
    detected_ns: int
    last_command_ns: int | None


@dataclass(frozen=True, slots=True)
class TripRecord:
    """Reaction times of one trip, for the demo report and the HIL rig."""

    reason: str
    detected_ns: int
    hold_sent_ns: int
    """When the write carrying the hold returned; -1 when it could not be written."""
    last_command_ns: int | None


@dataclass(frozen=True, slots=True)
class ControlAudit:
    """One control operation, accepted or refused: an audit record."""

    t_ns: int
    peer: bytes
    op: str
    req_id: int
    value: float | None
    ok: bool
    result: str
    state: str


class ControlOutput(NamedTuple):
    frames: tuple[Frame, ...]
    report: StepReport
    replies: tuple[tuple[bytes, ControlReply], ...] = ()
    transitions: tuple[Transition, ...] = ()
    trip: TripDecision | None = None
    audit: tuple[ControlAudit, ...] = ()
    estop_replies: tuple[tuple[int, str], ...] = ()
    """(token, answer) for each ``EstopEvent``."""
