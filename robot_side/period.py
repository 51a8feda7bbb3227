"""The control period's I/O: read -> update -> write, nothing else (ros2_control's shape).

One ``Manipulator.read()``, one pure ``ControlCore.update()``, one
``Manipulator.write()``: exactly one call per period puts bytes on the port, and a
trip's reaction time is stamped from that write's return. The robot node, the
component tests and ``bench loop`` all run a period through here.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from robot_side.control import ControlCore, trip_record
from robot_side.control_io import ControlInputs, ControlOutput, TripRecord
from robot_side.manipulator.base import Manipulator, ManipulatorError
from telesurgery.ratelog import RateLimitedLog

log = logging.getLogger(__name__)
_ratelog = RateLimitedLog(log)


class PeriodResult(NamedTuple):
    output: ControlOutput
    written_ns: int | None
    """When the write returned; None when it failed (the next read reports why)."""
    trip: TripRecord | None


def run_period(manip: Manipulator, core: ControlCore, now_ns: int,
               inputs: ControlInputs) -> PeriodResult:
    reading = manip.read()
    out = core.update(now_ns, reading, inputs)
    written: int | None = None
    try:
        written = manip.write(out.frames)
    except ManipulatorError as err:
        # The firmware's own watchdog brakes the arm if no frame reaches it; the core
        # sees the failure in the next reading and trips.
        _ratelog(logging.ERROR, "write", "frames not written (%s); the firmware watchdog "
                 "brakes the arm if this lasts", err)
    trip = trip_record(out.trip, written) if out.trip is not None else None
    return PeriodResult(out, written, trip)
