"""The patient's vital signs and the monitor's alarms (issue 17): heard outside the loop.

``process``: the vitals process (HL7 v2 / SDC backends feeding ``model.VitalsBook``);
``relay``: the robot node's thread that validates, audits alarms and hands the newest
snapshot to the network thread; ``monitor_sim``: a scripted patient monitor.
"""

from __future__ import annotations

import contextlib
from typing import Any

import zmq


def start_vitals(stack: contextlib.ExitStack[bool | None], robot_cfg: Any, mailbox: Any,
                 ctx: zmq.Context[Any]) -> Any:
    """The relay thread and the vitals process, when ``[vitals] enabled``; stopped by
    ``stack``. Returns the relay (its counters go into the run summary) or None."""
    if not robot_cfg.vitals.enabled:
        return None
    from robot_side.vitals.process import VitalsPaths, VitalsProcess
    from robot_side.vitals.relay import VitalsRelay

    paths = VitalsPaths.from_robot(robot_cfg)
    relay = VitalsRelay(paths.socket, mailbox, ctx)
    relay.start()
    stack.callback(relay.join, 2.0)
    stack.callback(relay.stop)
    relay.ready.wait(5.0)
    proc = VitalsProcess(robot_cfg.vitals, paths)
    proc.start()
    stack.callback(proc.stop)
    return relay
