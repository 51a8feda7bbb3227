"""The ``telesurgery`` command: a thin dispatcher to each part's own ``main``.

A subcommand is one row: name -> (module, function, help). Modules are imported
only when their subcommand runs, so ``telesurgery keys`` does not load PyAV or
pinocchio. Each target takes the remaining argv and returns an exit code.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from telesurgery.bench import BENCHES  # names only: the benches import lazily

SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("telesurgery.demo", "main", "end-to-end demo on the simulated rig"),
    "robot": ("robot_side.node", "main", "the robot-side process (beside the patient)"),
    "console": ("operator_console.app", "main", "the surgeon's console process"),
    "keys": ("transport.keys", "main", "create CurveZMQ key pairs and install public keys"),
    "bench": ("telesurgery.bench", "main", "benchmarks: " + ", ".join([*BENCHES, "all"])),
    "selftest": ("transport.selftest", "main", "two-process secured link self-test"),
    "firmware-sim": ("robot_side.firmware_sim", "main", "firmware emulator on a pty"),
    "servo-sim": ("robot_side.servos.sim_cli", "main",
                  "Dynamixel / Feetech servo bus emulator on a pty"),
    "calibrate": ("robot_side.servos.calibrate", "main",
                  "walk through a servo arm's homing, directions and ranges"),
    "estop": ("robot_side.estop", "main", "on-site emergency stop (local only)"),
    "panel": ("robot_side.panel", "main", "on-site supervision panel (local only)"),
    "page": ("robot_side.supervision.process", "main",
             "on-site supervision page: set its PIN, print its link"),
    "replay": ("robot_side.recording.playback", "main_replay",
               "play a recorded session into the surgeon's HUD, with its event timeline"),
    "export": ("robot_side.recording.playback", "main_export",
               "export a recorded session's video with the HUD burnt in (--mp4)"),
    "audit": ("safety.audit_cli", "main", "audit log tools: verify, show"),
    "faultproxy": ("hil_tests.faultproxy", "main", "ZMTP-aware network fault proxy (HIL rig)"),
    "fanout": ("robot_side.fanout.process", "main",
               "publish the robot's state and video once into a Zenoh router"),
    "watch": ("operator_console.watch", "main", "watch-only console through a Zenoh router"),
    "monitor-sim": ("robot_side.vitals.monitor_sim", "main",
                    "simulated patient monitor (HL7 v2 / SDC) playing a scripted patient"),
}


def _usage() -> str:
    rows = "\n".join(f"  {name:<13} {help_}" for name, (_, _, help_) in SUBCOMMANDS.items())
    return f"usage: telesurgery <command> [options]\n\ncommands:\n{rows}\n"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        sys.stdout.write(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        sys.stderr.write(f"telesurgery: unknown command {name!r}\n\n{_usage()}")
        return 2
    module_name, func_name, _ = SUBCOMMANDS[name]
    setup_logging(verbose="-v" in rest or "--verbose" in rest)
    module = importlib.import_module(module_name)
    func: Callable[[list[str]], int] = getattr(module, func_name)
    try:
        return func(rest)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
