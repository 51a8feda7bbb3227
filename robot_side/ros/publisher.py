"""What the ROS 2 bridge publishes: the observer feed's telemetry as CRTK topics.

Runs in the bridge process (``robot_side.ros.process``), never in the control
process: the control loop publishes ``Telemetry`` once on the local observer
feed and this turns each one into every CRTK state topic:

- ``measured_js``: positions, velocities and efforts as the firmware reports them;
- ``setpoint_js``: the joint targets the control period wrote;
- ``measured_cp`` / ``setpoint_cp``: forward kinematics of those, as the robot computed;
- ``measured_cv``: the tool twist ``J(q) q_dot`` (base frame, about the tool tip);
- ``measured_cf``: the wrench equivalent to the measured joint efforts,
  ``(J^T)^+ tau`` (gravity loading included: this arm reports no external force);
  only when the firmware reports efforts;
- ``spatial/jacobian``: ``J(q)``, 6 x n, computed only while someone subscribes;
- ``operating_state`` and ``/diagnostics``: on every change, and once a second.

Every header stamp is the control period's own time (``Telemetry.t_ns``, the
robot's CLOCK_MONOTONIC) mapped to the wall clock (CLOCK_REALTIME) at the bridge:
the moment the period sampled the arm, in the clock ROS 2 tools expect.

When the feed goes quiet (the control process stopped or froze), the topics
stop and ``/diagnostics`` turns STALE once a second: a ROS user never takes the
last state for the current one.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from robot_side.kinematics import Kinematics
from robot_side.ros.interface import RosBridge
from safety.states import State, crtk_state
from telesurgery.errors import TelesurgeryError
from telesurgery.ratelog import RateLimitedLog
from transport.schema import SafetyEvent, Telemetry

log = logging.getLogger(__name__)

STATUS_PERIOD_NS = 1_000_000_000
STALE_AFTER_NS = 500_000_000
"""No telemetry for this long: /diagnostics says STALE (5 periods of a 10 Hz feed)."""
PSEUDO_INVERSE_RCOND = 1e-3
FRAME = "base"


def wall_stamp(t_mono_ns: int) -> int:
    """A CLOCK_MONOTONIC time of this machine as wall-clock ns, for a ROS header stamp."""
    return t_mono_ns + time.time_ns() - time.monotonic_ns()  # wall-clock ok: ROS stamps


class TelemetryPublisher:
    """Publishes one ``Telemetry`` as the CRTK topics, decimated to ``rate_hz``.

    At ``rate_hz >= feed_hz`` every telemetry is published; below, one per
    ``1/rate_hz`` less half a feed period, so arrival jitter never skips one.
    """

    def __init__(self, bridge: RosBridge, kin: Kinematics, rate_hz: float,
                 feed_hz: float) -> None:
        self.bridge = bridge
        self.kin = kin
        self.names = kin.joint_names
        self._period_ns = 0 if rate_hz >= feed_hz else int(1e9 / rate_hz - 0.5e9 / feed_hz)
        self._last_t_ns: int | None = None
        self._last_status_ns = 0
        self._status: tuple[str, str, bool] | None = None
        self._ratelog = RateLimitedLog(log)
        self.published = 0
        self.skipped = 0
        self.errors = 0
        self.last_telemetry: Telemetry | None = None
        self.last_recv_ns: int | None = None

    def on_telemetry(self, tlm: Telemetry, now_ns: int) -> bool:
        """Publish ``tlm`` if its period is due; True when it was published."""
        self.last_telemetry, self.last_recv_ns = tlm, now_ns
        due = self._last_t_ns is None or tlm.t_ns - self._last_t_ns >= self._period_ns
        status = (tlm.state, tlm.reason, tlm.estop)
        if status != self._status or now_ns - self._last_status_ns >= STATUS_PERIOD_NS:
            self._publish_status(tlm, now_ns)
        if not due:
            self.skipped += 1
            return False
        self._last_t_ns = tlm.t_ns
        try:
            self._publish_state(tlm)
        except TelesurgeryError as err:
            self.errors += 1
            self._ratelog(logging.WARNING, "publish", "ros bridge: publish failed: %s", err)
            return False
        self.published += 1
        return True

    def on_event(self, evt: SafetyEvent, now_ns: int) -> None:
        """A safety event: publish the state it leads to at once (it is already audited)."""
        tlm = self.last_telemetry
        if tlm is not None:
            self._publish_status(tlm, now_ns, event=evt)

    def check_stale(self, now_ns: int) -> None:
        """Once a second while the feed is silent: /diagnostics STALE."""
        age = None if self.last_recv_ns is None else now_ns - self.last_recv_ns
        if (age is None or age > STALE_AFTER_NS) and \
                now_ns - self._last_status_ns >= STATUS_PERIOD_NS:
            self._last_status_ns = now_ns
            self._status = None
            text = ("no telemetry from the control process yet" if age is None else
                    f"no telemetry for {age / 1e6:.0f} ms: robot state unknown")
            try:
                self.bridge.publish_diagnostics(3, "supervisor", text, {"state": "unknown"},
                                                wall_stamp(now_ns))
            except TelesurgeryError as err:
                self._ratelog(logging.WARNING, "stale", "ros bridge: publish failed: %s", err)

    # ---------------------------------------------------------------- internals
    def _publish_state(self, tlm: Telemetry) -> None:
        b = self.bridge
        stamp = wall_stamp(tlm.t_ns)
        q = np.asarray(tlm.measured_js, dtype=np.float64)
        b.publish_joint_state("measured_js", self.names, q, tlm.measured_jv, tlm.measured_jf,
                              stamp_ns=stamp)
        b.publish_joint_state("setpoint_js", self.names, tlm.setpoint_js, (), (),
                              stamp_ns=stamp)
        b.publish_pose("measured_cp", tlm.measured_cp.position, tlm.measured_cp.orientation,
                       stamp, FRAME)
        b.publish_pose("setpoint_cp", tlm.setpoint_cp.position, tlm.setpoint_cp.orientation,
                       stamp, FRAME)
        if len(q) != self.kin.n:
            return  # no Jacobian for a report that does not fit this arm
        jac = self.kin.jacobian(q)
        if len(tlm.measured_jv) == self.kin.n:
            twist = jac @ np.asarray(tlm.measured_jv)
            b.publish_twist("measured_cv", twist[:3], twist[3:], stamp, FRAME)
        if len(tlm.measured_jf) == self.kin.n:
            wrench = np.linalg.pinv(jac.T, rcond=PSEUDO_INVERSE_RCOND) @ np.asarray(
                tlm.measured_jf)
            b.publish_wrench("measured_cf", wrench[:3], wrench[3:], stamp, FRAME)
        if b.has_subscribers("jacobian"):
            b.publish_matrix("jacobian", jac, "twist", "joint")

    def _publish_status(self, tlm: Telemetry, now_ns: int,
                        event: SafetyEvent | None = None) -> None:
        self._status = (tlm.state, tlm.reason, tlm.estop)
        self._last_status_ns = now_ns
        # An event is newer than the last telemetry: its state is the current one.
        state = State(event.state_to if event is not None else tlm.state)
        reason = event.code if event is not None else tlm.reason
        stamp = wall_stamp(now_ns if event is not None else tlm.t_ns)
        level = 0 if state in (State.READY, State.FOLLOWING, State.DISABLED) else \
            1 if state is State.HOLD else 2
        try:
            self.bridge.publish_operating_state(crtk_state(state), True,
                                                state is State.FOLLOWING, stamp)
            self.bridge.publish_diagnostics(level, "supervisor", f"{state}: {reason}", {
                "state": str(state), "reason": reason, "estop": str(tlm.estop),
                "scale": f"{tlm.scale:.3f}",
                "tracking_error_mm": f"{tlm.tracking_error_m * 1000:.2f}",
                "rtt_ms": "unknown" if tlm.link.rtt_us is None else f"{tlm.link.rtt_us / 1000:.2f}",
                "loss": f"{tlm.link.loss:.4f}",
            }, stamp)
        except TelesurgeryError as err:
            self.errors += 1
            self._ratelog(logging.WARNING, "status", "ros bridge: publish failed: %s", err)
