"""ROS 2 bridge on rclpy, for robots with a ROS 2 install (Humble or later).

rclpy is not on PyPI and comes only with a ROS 2 install (``source
/opt/ros/<distro>/setup.bash``). This backend is written for such robots; on
machines without ROS 2 (CI, the dev container) it is tested only for its clean
failure: importing this module raises ImportError, which ``open_bridge("rclpy")``
turns into a ``RosBridgeError`` naming the backend. Where rclpy is missing use
the ``dds`` backend, which puts the same bytes on the same topics.

Messages are built once, as the ``msgs`` structs, by ``BridgeBase``; here they
are copied field by field into rclpy's classes, found from the ROS type name,
and received ones back into ``msgs`` structs (``from_ros``), so both backends
share one topic table (``TOPICS``/``SUBSCRIPTIONS``) with the same QoS and hand
the same objects to the bridge process. The operating-state and state-command
topics need the ``crtk_msgs`` package in the ROS install.

The DDS network settings (interfaces, peers) reach rmw_cyclonedds_cpp through
``CYCLONEDDS_URI``, set before rclpy starts; another RMW ignores them (logged).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import threading
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rclpy  # ImportError here is the "no ROS 2 install" signal open_bridge reports
from cyclonedds.idl import IdlStruct
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from robot_side.ros.ddsconfig import check_security, config_xml, effective_interfaces
from robot_side.ros.interface import BridgeBase, RosBridgeError
from robot_side.ros.topics import TOPICS, TopicSpec, subscriptions

log = logging.getLogger(__name__)

NODE_NAME = "telesurgery_robot"
SPIN_JOIN_S = 2.0


def ros_type(idl_type: type[IdlStruct]) -> Any:
    """The rclpy message class for a ``msgs`` struct: ``pkg::msg::dds_::T_`` -> pkg.msg.T."""
    package, _, _, name = idl_type.__idl_typename__.split("::")
    try:
        module = importlib.import_module(f"{package}.msg")
    except ImportError as err:
        raise RosBridgeError(f"ROS bridge backend 'rclpy': message package {package!r} is "
                             f"not installed in this ROS 2 install") from err
    return getattr(module, name.removesuffix("_"))


def to_ros(value: Any, ros_cls: Any | None = None) -> Any:
    """Copy a ``msgs`` struct (recursively) into a new instance of its rclpy class."""
    msg = (ros_cls or ros_type(type(value)))()
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if isinstance(item, IdlStruct):
            item = to_ros(item)
        elif isinstance(item, list) and item and isinstance(item[0], IdlStruct):
            item = [to_ros(v) for v in item]
        elif isinstance(getattr(msg, f.name), bytes):
            item = bytes([item])  # a ROS ``byte`` field is a 1-byte bytes object in rclpy
        setattr(msg, f.name, item)
    return msg


def from_ros(msg: Any, idl_type: type[IdlStruct]) -> Any:
    """Copy a received rclpy message (recursively) into its ``msgs`` struct."""
    hints = typing.get_type_hints(idl_type)
    values: dict[str, Any] = {}
    struct: Any = idl_type  # every msgs struct is a dataclass
    for f in dataclasses.fields(struct):
        item = getattr(msg, f.name)
        hint = hints[f.name]
        if isinstance(hint, type) and issubclass(hint, IdlStruct):
            item = from_ros(item, hint)
        elif isinstance(item, bytes):
            item = item[0] if item else 0
        elif not isinstance(item, str | bool | int | float):
            item = list(item)
        values[f.name] = item
    return idl_type(**values)


def qos_profile(spec: TopicSpec) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=spec.depth,
        reliability=(ReliabilityPolicy.RELIABLE if spec.reliable
                     else ReliabilityPolicy.BEST_EFFORT),
        durability=DurabilityPolicy.VOLATILE)


class RclpyBridge(BridgeBase):
    """One rclpy node in its own context, spun by a background executor thread."""

    backend = "rclpy"

    def __init__(self, namespace: str = "arm", domain_id: int = 0, *, command: bool = False,
                 interfaces: Sequence[str] = (), peers: Sequence[str] = (),
                 security_xml: Path | None = None) -> None:
        super().__init__(namespace, command)
        check_security(security_xml)
        xml = config_xml(effective_interfaces(interfaces, peers, command), peers, security_xml)
        if xml is not None:
            if os.environ.get("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp") != "rmw_cyclonedds_cpp":
                log.warning("rclpy bridge: RMW %s ignores the [ros] interfaces/peers",
                            os.environ["RMW_IMPLEMENTATION"])
            os.environ["CYCLONEDDS_URI"] = xml  # read by rmw_cyclonedds_cpp at init
        self._context = Context()
        try:
            rclpy.init(context=self._context, domain_id=domain_id)
            self._node = rclpy.create_node(NODE_NAME, context=self._context)
            self._classes = {key: ros_type(spec.msg_type) for key, spec in TOPICS.items()}
            self._publishers = {
                key: self._node.create_publisher(self._classes[key], spec.ros_name(namespace),
                                                 qos_profile(spec))
                for key, spec in TOPICS.items()
            }
            for key, spec in subscriptions(command).items():
                self._node.create_subscription(
                    ros_type(spec.msg_type), spec.ros_name(namespace),
                    self._callback(key, spec), qos_profile(spec))
        except RosBridgeError:
            self.close()
            raise
        except (RuntimeError, ValueError) as err:  # rclpy raises RCLError (a RuntimeError)
            self.close()
            raise RosBridgeError(f"ROS bridge backend 'rclpy': could not start the node: "
                                 f"{err}") from err
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._spin, name="rclpy-bridge", daemon=True)
        self._thread.start()
        log.info("rclpy bridge: node %s in namespace /%s, domain %d", NODE_NAME, namespace,
                 domain_id)

    def _callback(self, key: str, spec: TopicSpec) -> Any:
        def on_message(msg: Any) -> None:
            self._received(key, from_ros(msg, spec.msg_type))

        return on_message

    def has_subscribers(self, topic: str) -> bool:
        publisher = self._publishers.get(topic)
        return publisher is not None and publisher.get_subscription_count() > 0

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except ExternalShutdownException:
            log.debug("rclpy bridge: executor stopped by shutdown")

    def _write(self, topic: str, msg: IdlStruct) -> None:
        publisher = self._publishers.get(topic) if self._context.ok() else None
        if publisher is None:
            raise RosBridgeError(f"ROS bridge backend 'rclpy': closed, or no topic {topic!r}")
        publisher.publish(to_ros(msg, self._classes[topic]))

    def close(self) -> None:
        """Stop the executor, destroy the node and shut the context down; idempotent."""
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown()
            self._thread.join(SPIN_JOIN_S)
            self._executor = None
        self._publishers = {}
        node = getattr(self, "_node", None)
        if node is not None:
            node.destroy_node()
            self._node = None
        if self._context.ok():
            rclpy.shutdown(context=self._context)
