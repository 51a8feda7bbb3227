"""``telesurgery replay SESSION --drive``: a console whose surgeon is the recorded one.

The recording's master motion (``/console/master_cp`` + ``/console/buttons``, every
command the robot accepted, as received) plays in time on the console's scripted
device (``operator_console.devices.recorded``), so a session can be re-run on the rig
or against a robot. The poses in the recording are what the console sent, already
registered and tremor-filtered: the driving console turns its own registration and
tremor filter off so they reach the robot as recorded. The robot applies its scale
and anchoring again, as it did in the session. At the end of the recording the
scripted surgeon lets go of the master (operator absent: the arm holds).

The recording starts with the first command the robot accepted (after ``arm``); the
replay starts when the console starts reading its device, before it holds a session, so
the time arming takes (well under a second on a healthy rig) is cut from the start.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from operator_console.config import ConsoleConfig
from telesurgery.quat import IDENTITY

log = logging.getLogger(__name__)

END_MARGIN_S = 2.0
"""Beyond the recording's length: the let-go reaches the robot before the console stops."""


def drive_config(cfg: ConsoleConfig, session: Path) -> ConsoleConfig:
    """``cfg`` with the recorded surgeon at the master: scripted device on ``session``, no
    loop, no registration, no tremor filter (both were applied when it was recorded)."""
    return replace(
        cfg, device=replace(cfg.device, kind="scripted", path=session, loop=False),
        teleop=replace(cfg.teleop, tremor_filter=False, frame_rotation=IDENTITY))


def drive(session: Path, console_config: Path | None, seconds: float | None,
          headless: bool) -> int:
    """Run a console driven by the session's recorded master motion; its exit code."""
    from operator_console.app import ConsoleApp
    from operator_console.devices.scripted import load_motion
    from telesurgery.config import load

    track = load_motion(session)  # a session without commands fails here, in one line
    cfg = drive_config(load(ConsoleConfig, console_config), session)
    if headless:
        cfg = replace(cfg, display=replace(cfg.display, headless=True))
    length = track.duration_s + END_MARGIN_S if seconds is None else seconds
    log.info("driving a console with %s: %d master samples over %.1f s", session,
             len(track.t), track.duration_s)
    return ConsoleApp(cfg).run(length)
