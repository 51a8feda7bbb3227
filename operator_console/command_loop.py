"""The console's command thread: device -> registered, filtered master pose -> Command.

Whatever goes wrong on the surgeon's side (no device, a disconnected one, NaN
from it) the command still goes out, but never as valid motion:
``operator_present`` is False and the pose is the last good one, so the robot
holds at once instead of waiting for its command timeout. The robot anchors and
scales (``safety.anchor``); this thread only samples, filters and registers.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from operator_console.devices.base import InputDevice
from operator_console.session import ConsoleShared
from operator_console.teleop import TeleopMapper
from telesurgery.errors import DeviceError
from telesurgery.pacer import Pacer, lower_timer_slack, try_realtime
from transport.link import ConsoleLink
from transport.schema import Command

log = logging.getLogger(__name__)


class CommandThread(threading.Thread):
    def __init__(self, link: ConsoleLink, device: InputDevice, mapper: TeleopMapper,
                 shared: ConsoleShared, *, period_ns: int, realtime: bool) -> None:
        super().__init__(name="console-command", daemon=True)
        self.link = link
        self.device = device
        self.mapper = mapper
        self.shared = shared
        self.pacer = Pacer(period_ns)
        self.realtime = realtime
        self._halt = threading.Event()
        self.sent = 0
        self.device_errors = 0
        self._seq = 0

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        lower_timer_slack()
        if self.realtime:
            try_realtime(40)
        self.pacer.restart()
        while not self._halt.is_set():
            self.pacer.wait()
            # The link's session now, so that the link need not copy the command to add it.
            self.link.send_command(self._next_command(self.link.session))
            self.sent += 1

    def _next_command(self, session: int | None = None) -> Command:
        sh = self.shared
        align, sh.align_to = sh.align_to, None  # the session's one-way request
        if align is not None and not self.mapper.align(self.device, align):
            # A leader arm engages on its joints (robot_side/follow_joint.py), not on the
            # hand's orientation.
            last = sh.last_output
            sh.message = ("move the leader arm to the robot arm's pose to engage"
                          if last is not None and last.joints is not None
                          else "turn your hand to the instrument's orientation to engage")
        now = time.monotonic_ns()
        sampled_ns: int | None = None
        try:
            self.device.engaged(sh.engaged, now)
            sample = self.device.read(now)
            sampled_ns = sample.t_ns  # the robot measures sample -> frame written from it
            out = self.mapper.update(sample)
        except DeviceError as err:
            self.device_errors += 1
            if self.device_errors == 1 or self.device_errors % 500 == 0:
                log.error("input device: %s (%d errors); sending hold", err,
                          self.device_errors)
            out = self.mapper.device_fault(str(err))
        sh.last_output = out
        present = out.valid and out.operator_present
        if not (all(map(math.isfinite, out.position)) and all(map(math.isfinite, out.quat))
                and math.isfinite(out.grip)):
            log.error("teleop produced a non-finite pose; sending hold")
            present = False
        position, quat = (out.position, out.quat) if present else self.mapper.last_pose
        self._seq += 1
        return Command(seq=self._seq, t_send_ns=time.monotonic_ns(), session=session,
                       position=position, orientation=quat,
                       grip=min(1.0, max(0.0, out.grip)) if present else 0.0,
                       clutch=out.clutch, operator_present=present,
                       video_age_us=sh.video_age_us, t_sample_ns=sampled_ns,
                       joints=out.joints)
