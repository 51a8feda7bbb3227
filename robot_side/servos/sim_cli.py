"""``telesurgery servo-sim``: an emulated servo bus on a pty until interrupted.

The robot's ``[servos] port = "auto"`` finds it at ``default_servo_link()``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

from robot_side.servos.config import default_servo_link
from robot_side.servos.emulator import ServoBusEmulator
from robot_side.servos.sim_control import ControlServer
from robot_side.servos.tables import FAMILIES
from telesurgery.helptext import plain_help

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """``telesurgery servo-sim``: a servo bus on a pty until interrupted."""
    parser = argparse.ArgumentParser(prog="telesurgery servo-sim", description=plain_help(__doc__))
    parser.add_argument("--family", choices=sorted(FAMILIES), default="feetech")
    parser.add_argument("--ids", default="1,2,3,4,5,6", help="servo IDs, comma-separated")
    parser.add_argument("--baud", type=int, default=1_000_000)
    parser.add_argument("--link", type=Path, default=None,
                        help="stable symlink to the pty (default: the robot's servos.port auto)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--initial", default=None,
                        help="start positions (rad), comma-separated, one per servo")
    parser.add_argument("--control", default=None,
                        help="ZeroMQ endpoint of a JSON control socket (HIL rig: state, "
                             "fault injection, vanish), e.g. ipc:///run/x/fw.ipc")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    link = args.link if args.link is not None else default_servo_link()
    link.parent.mkdir(parents=True, exist_ok=True)
    ids = [int(i) for i in args.ids.split(",") if i.strip()]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    initial = ([float(q) for q in args.initial.split(",")] if args.initial else None)
    with ServoBusEmulator(args.family, ids, baudrate=args.baud, link=link, seed=args.seed,
                          initial=initial) as emu:
        control = ControlServer(emu, args.control) if args.control else None
        if control is not None:
            control.start()
        log.info("servo-sim: %s bus, ids %s, on %s; Ctrl-C to stop", args.family, ids, link)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if control is not None:
                control.stop()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
