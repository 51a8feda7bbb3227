"""The small interface between the robot and ROS 2, and what every backend shares.

``RosBridge`` is the contract the bridge process calls. ``BridgeBase`` owns all
the ROS semantics (python-can ``BusABC`` style template): it validates values,
builds the standard messages from ``msgs``, latches the e-stop and keeps what
the command topics deliver; a backend only implements ``_write(topic, msg)``,
``has_subscribers(topic)``, its subscriptions (calling ``_received``) and
``close()``.

One topic table for every backend (``robot_side.ros.topics``). Header stamps
are wall clock (ROS time), given by the caller; see docs/ros2.md for which moment.

The e-stop topic can only *set* the e-stop: ``poll_estop()`` reports whether a
``data: true`` arrived since the last call. A ``false`` never clears anything;
clearing is a local action on the robot side (safety invariant 4).

Everything that arrives on a subscription comes from any participant on the
domain: it is counted, and logged through ``RateLimitedLog`` (a flood costs a
bounded number of lines), and the command topics keep only a bounded number
of messages each.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeAlias

import numpy as np
from cyclonedds.idl import IdlStruct

from robot_side.ros import msgs
from robot_side.ros.topics import ESTOP_TOPIC, subscriptions
from telesurgery.errors import ConfigError, TelesurgeryError
from telesurgery.ratelog import RateLimitedLog

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
_NAMESPACE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*")


class RosBridgeError(TelesurgeryError, RuntimeError):
    """A ROS bridge backend could not be opened or failed; the message names the backend."""


class RosMessageError(TelesurgeryError, ValueError):
    """A value handed to the bridge can not become a valid ROS message; names the field."""


class RosBridge(Protocol):
    """What the bridge process calls.

    Positions in metres, quaternions (w, x, y, z) like the rest of the project
    (the bridge reorders them for ROS), stamps wall-clock ns. Every publish
    raises ``RosMessageError`` naming the field on bad input, and
    ``RosBridgeError`` when the backend fails or is closed.
    """

    namespace: str
    command: bool
    estop_event: threading.Event
    received: collections.Counter[str]
    published: int

    def publish_joint_state(self, topic: str, names: Sequence[str], position: Floats,
                            velocity: Floats, effort: Floats, *, stamp_ns: int) -> None: ...

    def publish_pose(self, topic: str, position: Floats, quat: Floats, stamp_ns: int,
                     frame_id: str = "base") -> None: ...

    def publish_twist(self, topic: str, linear: Floats, angular: Floats, stamp_ns: int,
                      frame_id: str = "base") -> None: ...

    def publish_wrench(self, topic: str, force: Floats, torque: Floats, stamp_ns: int,
                       frame_id: str = "base") -> None: ...

    def publish_matrix(self, topic: str, matrix: np.ndarray, rows: str, cols: str) -> None: ...

    def publish_operating_state(self, state: str, is_homed: bool, is_busy: bool,
                                stamp_ns: int) -> None: ...

    def publish_diagnostics(self, level: int, name: str, message: str,
                            values: Mapping[str, str], stamp_ns: int) -> None: ...

    def has_subscribers(self, topic: str) -> bool: ...

    def poll_estop(self) -> bool: ...

    def take(self, topic: str) -> list[tuple[Any, int]]: ...

    def wait_command(self, timeout_s: float) -> None: ...

    def wake_command(self) -> None: ...

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
    """Validation, message building, the e-stop latch and the command inbox."""

    backend = "base"

    def __init__(self, namespace: str, command: bool = False) -> None:
        self.namespace = check_namespace(namespace)
        self.command = command
        self.published = 0
        """Messages handed to the backend."""
        self.rejected = 0
        """Publish calls refused for bad input (each also logged)."""
        self.estop_messages = 0
        """e-stop ``true`` messages received."""
        self.estop_ignored = 0
        """e-stop ``false`` messages received (they never clear anything)."""
        self.received: collections.Counter[str] = collections.Counter()
        """Messages received per subscription key (the e-stop included)."""
        self.ratelog = RateLimitedLog(log)
        """One line per second per kind at most for what other participants send."""
        self._lock = threading.Lock()
        self._estop_pending = False
        self.estop_event = threading.Event()
        """Set with every e-stop ``true``: wakes the forwarder at once."""
        self.command_event = threading.Event()
        """Set with every message on a command subscription: wakes the commander."""
        self._inbox: dict[str, collections.deque[tuple[Any, int]]] = {
            key: collections.deque(maxlen=spec.keep) for key, spec in subscriptions(command).items()
            if key != "estop"}

    # ----------------------------------------------------------- the contract
    def publish_joint_state(self, topic: str, names: Sequence[str], position: Floats,
                            velocity: Floats, effort: Floats, *, stamp_ns: int) -> None:
        header = self._header(stamp_ns)
        if isinstance(names, str) or len(names) > MAX_JOINTS:
            raise self._reject(f"{topic}.name: expected up to {MAX_JOINTS} joint names")
        name_list = [self._text(f"{topic}.name[{i}]", n) for i, n in enumerate(names)]
        n = len(name_list)
        msg = msgs.JointState(
            header=header, name=name_list,
            position=self._floats(f"{topic}.position", position, (n,)),
            # ROS allows empty velocity/effort arrays for joints that do not report them.
            velocity=self._floats(f"{topic}.velocity", velocity, (n, 0)),
            effort=self._floats(f"{topic}.effort", effort, (n, 0)),
        )
        self._send(topic, msg)

    def publish_measured_js(self, names: Sequence[str], position: Floats, velocity: Floats,
                            effort: Floats, stamp_ns: int) -> None:
        self.publish_joint_state("measured_js", names, position, velocity, effort,
                                 stamp_ns=stamp_ns)

    def publish_pose(self, topic: str, position: Floats, quat: Floats, stamp_ns: int,
                     frame_id: str = "base") -> None:
        header = self._header(stamp_ns, self._text(f"{topic}.frame_id", frame_id))
        x, y, z = self._floats(f"{topic}.position", position, (3,))
        qw, qx, qy, qz = self._floats(f"{topic}.quat", quat, (4,))
        norm = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
        if abs(norm - 1.0) > QUAT_NORM_TOL:
            raise self._reject(f"{topic}.quat: norm {norm:.6f} is not 1 (w, x, y, z expected)")
        pose = msgs.Pose(position=msgs.Point(x=x, y=y, z=z),
                         orientation=msgs.Quaternion(x=qx, y=qy, z=qz, w=qw))
        self._send(topic, msgs.PoseStamped(header=header, pose=pose))

    def publish_measured_cp(self, position: Floats, quat: Floats, stamp_ns: int,
                            frame_id: str = "base") -> None:
        self.publish_pose("measured_cp", position, quat, stamp_ns, frame_id)

    def publish_setpoint_cp(self, position: Floats, quat: Floats, stamp_ns: int,
                            frame_id: str = "base") -> None:
        self.publish_pose("setpoint_cp", position, quat, stamp_ns, frame_id)

    def publish_twist(self, topic: str, linear: Floats, angular: Floats, stamp_ns: int,
                      frame_id: str = "base") -> None:
        header = self._header(stamp_ns, self._text(f"{topic}.frame_id", frame_id))
        twist = msgs.Twist(linear=self._vector3(f"{topic}.linear", linear),
                           angular=self._vector3(f"{topic}.angular", angular))
        self._send(topic, msgs.TwistStamped(header=header, twist=twist))

    def publish_wrench(self, topic: str, force: Floats, torque: Floats, stamp_ns: int,
                       frame_id: str = "base") -> None:
        header = self._header(stamp_ns, self._text(f"{topic}.frame_id", frame_id))
        wrench = msgs.Wrench(force=self._vector3(f"{topic}.force", force),
                             torque=self._vector3(f"{topic}.torque", torque))
        self._send(topic, msgs.WrenchStamped(header=header, wrench=wrench))

    def publish_matrix(self, topic: str, matrix: np.ndarray, rows: str, cols: str) -> None:
        """A row-major ``Float64MultiArray`` with two labelled dimensions."""
        try:
            array = np.asarray(matrix, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise self._reject(f"{topic}: not numeric: {err}") from err
        if array.ndim != 2 or array.size > MAX_JOINTS * 6:
            raise self._reject(f"{topic}: expected a 2-D matrix, got shape {array.shape}")
        if not np.all(np.isfinite(array)):
            raise self._reject(f"{topic}: non-finite value")
        n_rows, n_cols = array.shape
        layout = msgs.MultiArrayLayout(dim=[
            msgs.MultiArrayDimension(label=rows, size=n_rows, stride=n_rows * n_cols),
            msgs.MultiArrayDimension(label=cols, size=n_cols, stride=n_cols)])
        self._send(topic, msgs.Float64MultiArray(layout=layout, data=array.ravel().tolist()))

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
        with self._lock:
            seen, self._estop_pending = self._estop_pending, False
        return seen

    def wait_command(self, timeout_s: float) -> None:
        """Block until a command subscription has something or ``wake_command`` was
        called, at most ``timeout_s``."""
        self.command_event.wait(timeout_s)
        self.command_event.clear()

    def wake_command(self) -> None:
        self.command_event.set()

    def take(self, topic: str) -> list[tuple[Any, int]]:
        """What arrived on a command subscription since the last call (at most its
        ``keep``), each with its CLOCK_MONOTONIC arrival time."""
        box = self._inbox.get(topic)
        if box is None:
            return []
        with self._lock:
            items = list(box)
            box.clear()
        return items

    @abstractmethod
    def has_subscribers(self, topic: str) -> bool:
        """Someone subscribes to ``TOPICS[topic]`` (topics published on request)."""

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

    def _received(self, key: str, msg: Any) -> None:
        """Called from the backend's receive thread for every message on a subscription."""
        self.received[key] += 1
        if key == "estop":
            self._on_estop(bool(getattr(msg, "data", False)))
            return
        box = self._inbox.get(key)
        if box is None:
            return
        with self._lock:
            box.append((msg, time.monotonic_ns()))
        self.command_event.set()

    def _on_estop(self, data: bool) -> None:
        topic = ESTOP_TOPIC.ros_name(self.namespace)
        with self._lock:
            if data:
                self._estop_pending = True
                self.estop_messages += 1
            else:
                self.estop_ignored += 1
        if data:
            self.estop_event.set()
            self.ratelog(logging.WARNING, "estop-true", "ros e-stop: 'true' received on %s",
                         topic)
        else:
            self.ratelog(logging.INFO, "estop-false", "ros e-stop: 'false' received on %s; "
                         "ignored (only sets, never clears)", topic)

    # -------------------------------------------------------------- internals
    def _send(self, topic: str, msg: IdlStruct) -> None:
        self._write(topic, msg)
        self.published += 1

    def _reject(self, why: str) -> RosMessageError:
        self.rejected += 1
        self.ratelog(logging.WARNING, f"reject:{why.split(':', maxsplit=1)[0]}",
                     "ros bridge (%s): rejected message (%d so far): %s", self.backend,
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

    def _vector3(self, field: str, value: Floats) -> msgs.Vector3:
        x, y, z = self._floats(field, value, (3,))
        return msgs.Vector3(x=x, y=y, z=z)


class NullBridge(BridgeBase):
    """ROS disabled by config: validates like the others, publishes nothing, never e-stops."""

    backend = "none"

    def __init__(self, namespace: str = "arm", domain_id: int = 0, *, command: bool = False,
                 **_: Any) -> None:
        super().__init__(namespace, command)

    def has_subscribers(self, topic: str) -> bool:
        return False

    def close(self) -> None:
        pass

    def _write(self, topic: str, msg: IdlStruct) -> None:
        pass
