"""The rclpy backend against the one topic table, on a FAKE rclpy.

rclpy is not on PyPI: it exists only inside a ROS 2 install, which this machine
does not have. So this test stands in a fake ``rclpy`` (named as such: it only
records what the backend asks for) and fake message packages whose classes
are generated from ROS 2's own definitions (rosbags), with rclpy's defaults
(a ``byte`` field is ``bytes``). What it checks is the backend's side of the
contract: every topic of ``TOPICS``/``SUBSCRIPTIONS`` created with its ROS name,
ROS type and QoS, messages copied field for field both ways.
"""

from __future__ import annotations

import enum
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from ros_reference import ros_name, typestore
from rosbags.typesys.base import Nodetype

from robot_side.ros import msgs
from robot_side.ros.topics import SUBSCRIPTIONS, TOPICS

STORE = typestore()


def fake_message_class(ros_type: str) -> type:
    """A class like rclpy's generated ones: no-argument constructor, ROS defaults."""
    _, fields = STORE.fielddefs[ros_type]

    def default(node: tuple[Any, Any]) -> Any:
        kind, detail = node
        if kind == Nodetype.NAME:
            return fake_message_class(detail)()
        if kind in (Nodetype.SEQUENCE, Nodetype.ARRAY):
            return []
        name = detail[0]
        return {"string": "", "bool": False, "byte": b"\x00"}.get(
            name, 0.0 if name.startswith("float") else 0)

    def __init__(self: Any) -> None:
        for fname, node in fields:
            setattr(self, fname, default(node))

    return type(ros_type.rsplit("/", 1)[-1], (), {"__init__": __init__, "ros_type": ros_type,
                                                  "__slots__": [f for f, _ in fields]})


class ReliabilityPolicy(enum.Enum):
    RELIABLE = 1
    BEST_EFFORT = 2


class HistoryPolicy(enum.Enum):
    KEEP_LAST = 1


class DurabilityPolicy(enum.Enum):
    VOLATILE = 2


@dataclass(frozen=True)
class QoSProfile:
    history: HistoryPolicy
    depth: int
    reliability: ReliabilityPolicy
    durability: DurabilityPolicy


class FakeNode:
    def __init__(self) -> None:
        self.publishers: dict[str, tuple[type, QoSProfile, list[Any]]] = {}
        self.subscriptions: dict[str, tuple[type, Callable[[Any], None], QoSProfile]] = {}

    def create_publisher(self, cls: type, name: str, qos: QoSProfile) -> Any:
        sent: list[Any] = []
        self.publishers[name] = (cls, qos, sent)
        pub = types.SimpleNamespace(publish=sent.append, get_subscription_count=lambda: 1)
        return pub

    def create_subscription(self, cls: type, name: str, callback: Callable[[Any], None],
                            qos: QoSProfile) -> None:
        self.subscriptions[name] = (cls, callback, qos)

    def destroy_node(self) -> None:
        pass


@pytest.fixture
def fake_ros(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNode]:
    node = FakeNode()
    ok = {"ok": True}
    rclpy = types.ModuleType("rclpy")
    rclpy.init = lambda context, domain_id: None  # type: ignore[attr-defined]
    rclpy.create_node = lambda name, context: node  # type: ignore[attr-defined]
    rclpy.shutdown = lambda context: ok.update(ok=False)  # type: ignore[attr-defined]
    context = types.ModuleType("rclpy.context")
    context.Context = lambda: types.SimpleNamespace(ok=lambda: ok["ok"])  # type: ignore[attr-defined]
    executors = types.ModuleType("rclpy.executors")
    executors.ExternalShutdownException = RuntimeError  # type: ignore[attr-defined]
    executors.SingleThreadedExecutor = lambda context: types.SimpleNamespace(  # type: ignore[attr-defined]
        add_node=lambda n: None, spin=lambda: None, shutdown=lambda: None)
    qos = types.ModuleType("rclpy.qos")
    for cls in (ReliabilityPolicy, HistoryPolicy, DurabilityPolicy, QoSProfile):
        setattr(qos, cls.__name__, cls)
    modules = {"rclpy": rclpy, "rclpy.context": context, "rclpy.executors": executors,
               "rclpy.qos": qos}
    for ros_type in STORE.fielddefs:
        pkg, sub, name = ros_type.split("/")
        if sub != "msg" or pkg not in ("std_msgs", "sensor_msgs", "geometry_msgs",
                                       "diagnostic_msgs", "crtk_msgs", "builtin_interfaces"):
            continue
        module = modules.setdefault(f"{pkg}.msg", types.ModuleType(f"{pkg}.msg"))
        setattr(module, name, fake_message_class(ros_type))
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "robot_side.ros.rclpy_backend", raising=False)
    yield node


def test_rclpy_backend_creates_exactly_the_topic_table(fake_ros: FakeNode) -> None:
    from robot_side.ros.rclpy_backend import RclpyBridge

    bridge = RclpyBridge("arm", 0, command=True)
    try:
        expected_pub = {spec.ros_name("arm"): spec for spec in TOPICS.values()}
        assert set(fake_ros.publishers) == set(expected_pub)
        for name, (cls, qos, _) in fake_ros.publishers.items():
            spec = expected_pub[name]
            assert cls.ros_type == ros_name(spec.msg_type.__idl_typename__)  # type: ignore[attr-defined]
            assert qos == QoSProfile(HistoryPolicy.KEEP_LAST, 10, ReliabilityPolicy.RELIABLE,
                                     DurabilityPolicy.VOLATILE)
        expected_sub = {spec.ros_name("arm"): spec for spec in SUBSCRIPTIONS.values()}
        assert set(fake_ros.subscriptions) == set(expected_sub)
        for name, (cls, _, qos) in fake_ros.subscriptions.items():
            assert cls.ros_type == ros_name(  # type: ignore[attr-defined]
                expected_sub[name].msg_type.__idl_typename__)
            assert qos.reliability is ReliabilityPolicy.RELIABLE and qos.depth == 10
    finally:
        bridge.close()


def test_rclpy_backend_without_command_subscribes_only_the_estop(fake_ros: FakeNode) -> None:
    from robot_side.ros.rclpy_backend import RclpyBridge

    RclpyBridge("arm", 0).close()
    assert set(fake_ros.subscriptions) == {"/arm/estop"}


def test_rclpy_backend_copies_messages_both_ways(fake_ros: FakeNode) -> None:
    from robot_side.ros.rclpy_backend import RclpyBridge

    bridge = RclpyBridge("arm", 0, command=True)
    try:
        bridge.publish_diagnostics(2, "supervisor", "fault", {"k": "v"}, 1_000_000_123)
        (sent,) = fake_ros.publishers["/diagnostics"][2]
        status = sent.status[0]
        assert status.level == b"\x02"  # a ROS byte is bytes in rclpy
        assert sent.header.stamp.nanosec == 123 and status.values[0].value == "v"
        bridge.publish_measured_js(["j1"], [0.5], [0.1], [2.0], 5)
        (js,) = fake_ros.publishers["/arm/measured_js"][2]
        assert (js.position, js.velocity, js.effort) == ([0.5], [0.1], [2.0])

        cls, callback, _ = fake_ros.subscriptions["/arm/servo_cp"]
        incoming = cls()
        incoming.pose.position.x = 0.3
        incoming.pose.orientation.w = 1.0
        callback(incoming)
        ((got, _),) = bridge.take("servo_cp")
        assert isinstance(got, msgs.PoseStamped)
        assert got.pose.position.x == 0.3 and got.pose.orientation.w == 1.0
        estop_cls, estop_cb, _ = fake_ros.subscriptions["/arm/estop"]
        press = estop_cls()
        press.data = True
        estop_cb(press)
        assert bridge.poll_estop()
    finally:
        bridge.close()
