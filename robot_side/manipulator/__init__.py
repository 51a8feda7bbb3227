"""Manipulator backends, chosen by name (python-can's interface table).

A new backend is one module plus one row here; modules are imported only when
their backend is asked for, so a missing vendor SDK breaks only its own row.
Each backend class has ``from_config(cfg: RobotConfig)``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol, cast

from robot_side.manipulator.base import (
    FaultNote,
    Frame,
    Hold,
    InvalidFrame,
    JointSample,
    Manipulator,
    ManipulatorError,
    ManipulatorInfo,
    Reading,
    Release,
    Targets,
)
from telesurgery.errors import ConfigError

if TYPE_CHECKING:
    from robot_side.config import RobotConfig

__all__ = ["BACKENDS", "FaultNote", "Frame", "Hold", "InvalidFrame", "JointSample",
           "Manipulator", "ManipulatorError", "ManipulatorInfo", "Reading", "Release",
           "Targets", "make_manipulator", "open_manipulator"]

BACKENDS: dict[str, tuple[str, str]] = {
    "serial": ("robot_side.manipulator.serial", "SerialBackend"),
    "virtual": ("robot_side.manipulator.virtual", "VirtualManipulator"),
    "dynamixel": ("robot_side.servos.dynamixel", "DynamixelArm"),
    "feetech": ("robot_side.servos.feetech", "FeetechArm"),
}


class _FromConfig(Protocol):
    def from_config(self, cfg: RobotConfig) -> Manipulator: ...


def backend_class(name: str) -> _FromConfig:
    try:
        module_name, class_name = BACKENDS[name]
    except KeyError:
        raise ConfigError(f"manipulator.backend = {name!r}: one of "
                          f"{', '.join(sorted(BACKENDS))}") from None
    module = importlib.import_module(module_name)
    return cast(_FromConfig, getattr(module, class_name))


def make_manipulator(cfg: RobotConfig) -> Manipulator:
    """The configured backend, not yet opened (the node opens it and retries off-loop)."""
    return backend_class(cfg.manipulator.backend).from_config(cfg)


def open_manipulator(cfg: RobotConfig) -> Manipulator:
    """The configured backend, opened; use it as a context manager."""
    manip = make_manipulator(cfg)
    manip.open()
    return manip
