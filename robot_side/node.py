"""``telesurgery robot``: the process beside the patient.

Threads: the control loop (robot_side.control_loop, SCHED_FIFO where permitted), the
network thread (robot_side.netio), the audit thread and the local e-stop
socket; child processes for video and the ROS 2 bridge (an observer of the
local feed, robot_side.ros.process). The control loop owns the serial port and
every safety decision; the others only feed it or report from it.
"""

# This module is the command line only (its docstring is the --help text); the node
# is assembled in robot_side.assembly and exported here, where its users import it.

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from robot_side.assembly import RobotNode
from robot_side.config import RobotConfig
from robot_side.signals import SignalDesk
from telesurgery.config import load
from telesurgery.errors import TelesurgeryError
from telesurgery.helptext import plain_help

__all__ = ["RobotNode", "main"]

log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery robot", description=plain_help(__doc__))
    p.add_argument("--config", type=Path, help="robot config TOML (default: simulated rig)")
    p.add_argument("--seconds", type=float, help="stop after this long (default: run forever)")
    p.add_argument("--summary", type=Path, help="write a JSON run summary here at exit")
    p.add_argument("--serial-port", help="override serial.port (e.g. the emulator's pty)")
    p.add_argument("--ros-backend", choices=("auto", "dds", "rclpy", "none"))
    p.add_argument("--ros-namespace", help="override ros.namespace")
    p.add_argument("--ros-domain-id", type=int, help="override ros.domain_id")
    p.add_argument("--ros-hz", type=float, help="override control.ros_hz")
    p.add_argument("--ros-command", choices=("on", "off"),
                   help="override ros.command (the opt-in ROS 2 command side)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = load(RobotConfig, args.config)
        cfg = _override(cfg, args)
        node = RobotNode(cfg, args.summary)
    except TelesurgeryError as err:
        log.error("%s", err)
        return 2

    # Before anything opens: from here on no signal kills the node with the arm unheld.
    node.signals = SignalDesk(node.stop, node.reload_keys)
    node.signals.install()
    node.signals.start()
    try:
        return node.run(args.seconds)
    except TelesurgeryError as err:  # keys, or a second node on the e-stop socket or log
        log.error("refusing to start: %s", err)
        return 2
    finally:
        node.signals.close()


def _override(cfg: RobotConfig, args: argparse.Namespace) -> RobotConfig:
    """Command-line overrides (used by the ROS 2 launch file and the demo)."""
    ros = cfg.ros
    if args.ros_backend:
        ros = replace(ros, backend=args.ros_backend)
    if args.ros_namespace:
        ros = replace(ros, namespace=args.ros_namespace)
    if args.ros_domain_id is not None:
        ros = replace(ros, domain_id=args.ros_domain_id)
    if args.ros_command:
        ros = replace(ros, command=args.ros_command == "on")
    control = cfg.control if args.ros_hz is None else replace(cfg.control, ros_hz=args.ros_hz)
    serial = cfg.serial if not args.serial_port else replace(cfg.serial, port=args.serial_port)
    return replace(cfg, ros=ros, control=control, serial=serial)
