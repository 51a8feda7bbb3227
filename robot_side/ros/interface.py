"""The small interface between the robot node and ROS 2, and what every backend shares.

``RosBridge`` is the contract the robot node calls. ``BridgeBase`` owns all the
ROS semantics (python-can ``BusABC`` style template): it validates the values,
builds the standard messages from ``msgs`` and latches the e-stop; a backend
only implements ``_write(topic, msg)``, its e-stop subscription (calling
``_on_estop``) and ``close()``.

Topics use CRTK names under the namespace (``/<ns>/measured_js`` ...) and the
ROS convention ``/diagnostics`` for the supervisor's status, whose name carries
the namespace. High-rate topics use the ROS 2 sensor-data QoS (best effort,
keep last 5); operating state, diagnostics and the e-stop are reliable
(keep last 10), durability volatile for all.

The e-stop topic can only *set* the e-stop: ``poll_estop()`` reports whether a
``data: true`` arrived since the last call. A ``false`` never clears anything;
clearing is a local action on the robot side (safety invariant 4).

Header stamps are wall-clock time, as ROS expects: the node passes
``time.time_ns()`` and the bridge takes it as given.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TypeAlias

import numpy as np
from cyclonedds.idl import IdlStruct

from robot_side.ros import msgs
from telesurgery.errors import ConfigError, TelesurgeryError

log = logging.getLogger(__name__)

Floats: TypeAlias = Sequence[float] | np.ndarray
CRTK_STATES = frozenset({"DISABLED", "ENABLED", "PAUSED", "FAULT"})
DIAGNOSTIC_LEVELS = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}
MAX_STAMP_NS = (2**31 - 1) * 1_000_000_000 + 999_999_999
"""builtin_interfaces/Time has an int32 seconds field."""
MAX_JOINTS = 64
MAX_TEXT = 1024
MAX_KEY_VALUES = 64
QUAT_NORM_TOL = 1e-3
SENSOR_DEPTH = 5
RELIABLE_DEPTH = 10
_NAMESPACE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*")


class RosBridgeError(TelesurgeryError, RuntimeError):
    """A ROS bridge backend could not be opened or failed; the message names the backend."""


class RosMessageError(TelesurgeryError, ValueError):
    """A value handed to the bridge can not become a valid ROS message; names the field."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    msg_type: type[IdlStruct]
    reliable: bool
    global_name: bool = False
    """True: the topic is not under the namespace (``/diagnostics``)."""

    def ros_name(self, namespace: str) -> str:
        return f"/{self.name}" if self.global_name else f"/{namespace}/{self.name}"

    def dds_name(self, namespace: str) -> str:
        """The DDS topic name ROS 2 uses: ``rt`` + the ROS name."""
        return "rt" + self.ros_name(namespace)

    @property
    def depth(self) -> int:
        return RELIABLE_DEPTH if self.reliable else SENSOR_DEPTH


TOPICS: dict[str, TopicSpec] = {
    "measured_js": TopicSpec("measured_js", msgs.JointState, reliable=False),
    "measured_cp": TopicSpec("measured_cp", msgs.PoseStamped, reliable=False),
    "setpoint_cp": TopicSpec("setpoint_cp", msgs.PoseStamped, reliable=False),
    "operating_state": TopicSpec("operating_state", msgs.OperatingState, reliable=True),
    "diagnostics": TopicSpec("diagnostics", msgs.DiagnosticArray, reliable=True,
                             global_name=True),
}
"""Published topics, by the key ``_write`` receives."""
ESTOP_TOPIC = TopicSpec("estop", msgs.Bool, reliable=True)
"""The one subscription: std_msgs/Bool, true sets the e-stop."""


class RosBridge(Protocol):
    """What the robot node calls.

    Positions in metres, quaternions (w, x, y, z) like the rest of the project
    (the bridge reorders them for ROS), stamps wall-clock ns. Every publish
    raises ``RosMessageError`` naming the field on bad input, and
    ``RosBridgeError`` when the backend fails or is closed.
    """

    namespace: str

    def publish_measured_js(self, names: Sequence[str], position: Floats, velocity: Floats,
                            effort: Floats, stamp_ns: int) -> None: ...

    def publish_measured_cp(self, position: Floats, quat: Floats, stamp_ns: int,
                            frame_id: str = "base") -> None: ...

    def publish_setpoint_cp(self, position: Floats, quat: Floats, stamp_ns: int,
                            frame_id: str = "base") -> None: ...

    def publish_operating_state(self, state: str, is_homed: bool, is_busy: bool,
                                stamp_ns: int) -> None: ...

    def publish_diagnostics(self, level: int, name: str, message: str,
                            values: Mapping[str, str], stamp_ns: int) -> None: ...

    def poll_estop(self) -> bool: ...

    def close(self) -> None: ...

    def __enter__(self) -> RosBridge: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


def check_namespace(namespace: str) -> str:
    """A ROS namespace without leading or trailing slash, e.g. ``arm`` or ``site1/arm``."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ConfigError(f"ros namespace {namespace!r}: must be ROS name tokens "
                          "([A-Za-z][A-Za-z0-9_]*) joined by '/', no leading or trailing '/'")
    return namespace


class BridgeBase(ABC):
    """Validation, message building and the e-stop latch, shared by every backend."""

    backend = "base"

    def __init__(self, namespace: str) -> None:
        self.namespace = check_namespace(namespace)
        self.published = 0
        """Messages handed to the backend."""
        self.rejected = 0
        """Publish calls refused for bad input (each also logged)."""
        self.estop_messages = 0
        """e-stop ``true`` messages received."""
        self.estop_ignored = 0
        """e-stop ``false`` messages received (they never clear anything)."""
        self._estop_lock = threading.Lock()
        self._estop_pending = False

    # ----------------------------------------------------------- the contract
    def publish_measured_js(self, names: Sequence[str], position: Floats, velocity: Floats,
                            effort: Floats, stamp_ns: int) -> None:
        header = self._header(stamp_ns)
        if isinstance(names, str) or len(names) > MAX_JOINTS:
            raise self._reject(f"measured_js.name: expected up to {MAX_JOINTS} joint names")
        name_list = [self._text(f"measured_js.name[{i}]", n) for i, n in enumerate(names)]
        n = len(name_list)
        msg = msgs.JointState(
            header=header, name=name_list,
            position=self._floats("measured_js.position", position, (n,)),
            # ROS allows empty velocity/effort arrays for joints that do not report them.
            velocity=self._floats("measured_js.velocity", velocity, (n, 0)),
            effort=self._floats("measured_js.effort", effort, (n, 0)),
        )
        self._send("measured_js", msg)

    def publish_measured_cp(self, position: Floats, quat: Floats, stamp_ns: int,
                            frame_id: str = "base") -> None:
        self._send("measured_cp", self._pose_stamped("measured_cp", position, quat, stamp_ns,
                                                     frame_id))

    def publish_setpoint_cp(self, position: Floats, quat: Floats, stamp_ns: int,
                            frame_id: str = "base") -> None:
        self._send("setpoint_cp", self._pose_stamped("setpoint_cp", position, quat, stamp_ns,
                                                     frame_id))

    def publish_operating_state(self, state: str, is_homed: bool, is_busy: bool,
                                stamp_ns: int) -> None:
        if not isinstance(state, str) or state not in CRTK_STATES:
            raise self._reject(f"operating_state.state: {state!r} is not one of "
                               f"{sorted(CRTK_STATES)}")
        msg = msgs.OperatingState(header=self._header(stamp_ns), state=state,
                                  is_homed=bool(is_homed), is_busy=bool(is_busy))
        self._send("operating_state", msg)

    def publish_diagnostics(self, level: int, name: str, message: str,
                            values: Mapping[str, str], stamp_ns: int) -> None:
        if isinstance(level, bool) or not isinstance(level, int) or level not in DIAGNOSTIC_LEVELS:
            raise self._reject(f"diagnostics.level: {level!r} is not one of "
                               f"{DIAGNOSTIC_LEVELS}")
        if len(values) > MAX_KEY_VALUES:
            raise self._reject(f"diagnostics.values: {len(values)} entries, "
                               f"at most {MAX_KEY_VALUES}")
        pairs = [msgs.KeyValue(key=self._text("diagnostics.values key", k),
                               value=self._text(f"diagnostics.values[{k!r}]", v))
                 for k, v in values.items()]
        status = msgs.DiagnosticStatus(
            level=level, name=f"{self.namespace}: {self._text('diagnostics.name', name)}",
            message=self._text("diagnostics.message", message, allow_empty=True),
            hardware_id=self.namespace, values=pairs)
        self._send("diagnostics", msgs.DiagnosticArray(header=self._header(stamp_ns),
                                                       status=[status]))

    def poll_estop(self) -> bool:
        """True when an e-stop ``true`` arrived since the last call. Never cleared by a message."""
        with self._estop_lock:
            seen, self._estop_pending = self._estop_pending, False
        return seen

    @abstractmethod
    def close(self) -> None:
        """Release the backend's resources; idempotent."""

    def __enter__(self) -> BridgeBase:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -------------------------------------------------------- for the backends
    @abstractmethod
    def _write(self, topic: str, msg: IdlStruct) -> None:
        """Publish ``msg`` (a ``msgs`` struct) on ``TOPICS[topic]``."""

    def _on_estop(self, data: bool) -> None:
        """Called from the backend's receive thread for every e-stop message."""
        if not data:
            with self._estop_lock:
                self.estop_ignored += 1
            log.info("ros e-stop: 'false' received on %s; ignored (only sets, never clears)",
                     ESTOP_TOPIC.ros_name(self.namespace))
            return
        with self._estop_lock:
            self._estop_pending = True
            self.estop_messages += 1
        log.warning("ros e-stop: 'true' received on %s", ESTOP_TOPIC.ros_name(self.namespace))

    # -------------------------------------------------------------- internals
    def _send(self, topic: str, msg: IdlStruct) -> None:
        self._write(topic, msg)
        self.published += 1

    def _reject(self, why: str) -> RosMessageError:
        self.rejected += 1
        log.warning("ros bridge (%s): rejected message (%d so far): %s", self.backend,
                    self.rejected, why)
        return RosMessageError(why)

    def _header(self, stamp_ns: int, frame_id: str = "") -> msgs.Header:
        if not isinstance(stamp_ns, int | np.integer) or isinstance(stamp_ns, bool):
            raise self._reject(f"stamp_ns: expected integer nanoseconds, got {stamp_ns!r}")
        if not 0 <= stamp_ns <= MAX_STAMP_NS:
            raise self._reject(f"stamp_ns: {stamp_ns} outside [0, {MAX_STAMP_NS}]")
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        return msgs.Header(stamp=msgs.Time(sec=sec, nanosec=nanosec), frame_id=frame_id)

    def _text(self, field: str, value: str, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self._reject(f"{field}: expected a string, got {type(value).__name__}")
        if not value and not allow_empty:
            raise self._reject(f"{field}: must not be empty")
        if len(value) > MAX_TEXT or "\x00" in value:
            raise self._reject(f"{field}: longer than {MAX_TEXT} or contains NUL")
        return value

    def _floats(self, field: str, value: Floats, sizes: tuple[int, ...]) -> list[float]:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise self._reject(f"{field}: not numeric: {err}") from err
        if array.ndim != 1 or array.shape[0] not in sizes:
            raise self._reject(f"{field}: expected length {' or '.join(map(str, sizes))}, "
                               f"got shape {array.shape}")
        if not np.all(np.isfinite(array)):
            raise self._reject(f"{field}: non-finite value in {array.tolist()}")
        values: list[float] = array.tolist()
        return values

    def _pose_stamped(self, topic: str, position: Floats, quat: Floats, stamp_ns: int,
                      frame_id: str) -> msgs.PoseStamped:
        header = self._header(stamp_ns, self._text(f"{topic}.frame_id", frame_id))
        x, y, z = self._floats(f"{topic}.position", position, (3,))
        qw, qx, qy, qz = self._floats(f"{topic}.quat", quat, (4,))
        norm = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
        if abs(norm - 1.0) > QUAT_NORM_TOL:
            raise self._reject(f"{topic}.quat: norm {norm:.6f} is not 1 (w, x, y, z expected)")
        pose = msgs.Pose(position=msgs.Point(x=x, y=y, z=z),
                         orientation=msgs.Quaternion(x=qx, y=qy, z=qz, w=qw))
        return msgs.PoseStamped(header=header, pose=pose)


class NullBridge(BridgeBase):
    """ROS disabled by config: validates like the others, publishes nothing, never e-stops."""

    backend = "none"

    def __init__(self, namespace: str = "arm", domain_id: int = 0) -> None:
        super().__init__(namespace)

    def close(self) -> None:
        pass

    def _write(self, topic: str, msg: IdlStruct) -> None:
        pass
