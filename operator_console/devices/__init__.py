"""Input devices behind one interface, in a name -> (module, class) table.

A new device is one module with an ``InputDevice`` subclass plus one row here;
modules are imported only when their device is opened, so the keyboard does not
load HID code and the scripted device runs anywhere.
"""

from __future__ import annotations

import importlib
import logging

from operator_console.devices.base import DeviceConfig, InputDevice, MasterSample
from telesurgery.errors import DeviceError

log = logging.getLogger(__name__)

DEVICES: dict[str, tuple[str, str]] = {
    "scripted": ("operator_console.devices.scripted", "ScriptedDevice"),
    "keyboard": ("operator_console.devices.keyboard", "KeyboardDevice"),
    "gamepad": ("operator_console.devices.gamepad", "GamepadDevice"),
    "spacemouse": ("operator_console.devices.spacemouse", "SpaceMouseDevice"),
    "haptic": ("operator_console.devices.haptic", "HapticDevice"),
    "so101_leader": ("operator_console.devices.leader", "LeaderArmDevice"),
}

__all__ = ["DEVICES", "DeviceConfig", "InputDevice", "MasterSample", "create_device",
           "open_device"]


def create_device(cfg: DeviceConfig) -> InputDevice:
    """Build the device ``cfg.kind`` names, without opening it."""
    if cfg.kind not in DEVICES:
        raise DeviceError(f"unknown input device {cfg.kind!r}; known: {sorted(DEVICES)}")
    module_name, class_name = DEVICES[cfg.kind]
    cls: type[InputDevice] = getattr(importlib.import_module(module_name), class_name)
    return cls(cfg)


def open_device(cfg: DeviceConfig) -> InputDevice:
    """Build and open the configured device; ``DeviceError`` says what was looked for."""
    device = create_device(cfg)
    device.open()
    return device
