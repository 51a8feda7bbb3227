"""The ROS 2 bridge: one small interface, backends chosen by name (python-can style).

``BACKENDS`` maps a name to (module, class); a module is imported only when its
backend is opened, so the robot node never loads rclpy or cyclonedds it does
not use. A new backend is one module plus one row.

- ``dds``: the ``cyclonedds`` package speaking the ROS 2 wire format; needs no
  ROS install. The default where rclpy is absent.
- ``rclpy``: for robots with a ROS 2 install (rclpy is not on PyPI).
- ``none``: ROS disabled by config; publishes nothing.
- ``auto`` (not a row): ``rclpy`` when importable, else ``dds``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from robot_side.ros.interface import (
    BridgeBase,
    NullBridge,
    RosBridge,
    RosBridgeError,
    RosMessageError,
)
from robot_side.ros.topics import SUBSCRIPTIONS, TOPICS

__all__ = [
    "BACKENDS",
    "SUBSCRIPTIONS",
    "TOPICS",
    "BridgeBase",
    "NullBridge",
    "RosBridge",
    "RosBridgeError",
    "RosMessageError",
    "open_bridge",
    "resolve_backend",
]

log = logging.getLogger(__name__)

BACKENDS: dict[str, tuple[str, str]] = {
    "dds": ("robot_side.ros.dds_backend", "DdsBridge"),
    "rclpy": ("robot_side.ros.rclpy_backend", "RclpyBridge"),
    "none": ("robot_side.ros.interface", "NullBridge"),
}


def resolve_backend(backend: str) -> str:
    """The concrete backend name for ``backend`` (``auto`` picks rclpy when importable)."""
    if backend == "auto":
        return "rclpy" if importlib.util.find_spec("rclpy") is not None else "dds"
    if backend not in BACKENDS:
        raise RosBridgeError(f"ROS bridge backend {backend!r} is unknown; "
                             f"choose one of {[*BACKENDS, 'auto']}")
    return backend


def open_bridge(backend: str, namespace: str = "arm", domain_id: int = 0, *,
                command: bool = False, interfaces: Sequence[str] = (),
                peers: Sequence[str] = (), security_xml: Path | None = None) -> RosBridge:
    """Open the named backend; ``RosBridgeError`` naming it when it can not open.

    ``command``: also subscribe to the command topics (``state_command``,
    ``servo_cp``, ``move_cp``). ``interfaces``/``peers``/``security_xml``: the
    DDS network (``robot_side.ros.ddsconfig``).
    """
    name = resolve_backend(backend)
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RosBridgeError(f"ROS bridge backend {name!r} is not available: {err}") from err
    factory: Callable[..., RosBridge] = getattr(module, class_name)
    bridge = factory(namespace, domain_id, command=command, interfaces=interfaces,
                     peers=peers, security_xml=security_xml)
    log.info("ros bridge: backend %r, namespace %r, domain %d, command side %s", name,
             namespace, domain_id, "ON" if command else "off")
    return bridge
