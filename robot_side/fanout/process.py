"""The fan-out in its own process, started by the robot node; and ``telesurgery fanout``.

Nothing of it runs in the control process: the child reads the local observer
feed and the video mirror like the page and the recorder do, and exits by itself
when the robot node that started it is gone.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import zenoh

from robot_side.childproc import ChildProcess
from robot_side.fanout.config import FanoutConfig
from robot_side.fanout.publisher import FanoutPublisher
from robot_side.fanout.zconf import fanout_config

log = logging.getLogger(__name__)
STATUS_FILE = "fanout.json"
"""Beside the observer feed: {"observers": n, "who": [names], ..., "t_ns": monotonic}
(page, tools)."""


def serve(cfg: FanoutConfig, observe: Path, video: Path | None, parent_pid: int | None,
          stop: threading.Event | None = None) -> None:
    session = zenoh.open(fanout_config(cfg))
    pub = FanoutPublisher(session, cfg.robot, observe, video,
                          strokes_path=observe.parent / "strokes.sock",
                          status_path=observe.parent / STATUS_FILE)
    thread = threading.Thread(target=pub.run, name="fanout", daemon=True)
    thread.start()
    log.info("fan-out: robot %r into Zenoh (%s %s)%s", cfg.robot,
             "router on" if cfg.router else "client of",
             ", ".join(cfg.listen if cfg.router else cfg.connect),
             "" if cfg.tls.enabled else " without TLS (loopback only)")
    stop = stop or threading.Event()
    try:
        while not stop.wait(0.2):
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("robot node gone: fan-out stops")
                break
    finally:
        pub.stop()
        thread.join(2.0)
        pub.close()  # type: ignore[no-untyped-call]
        session.close()  # type: ignore[no-untyped-call]


def _child_main(cfg: FanoutConfig, observe: Path, video: Path | None, parent_pid: int,
                log_level: int) -> None:
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    zenoh.init_log_from_env_or("error")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node stops us after Ctrl-C
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve(cfg, observe, video, parent_pid, stop)
    except (zenoh.ZError, OSError) as err:
        log.error("fan-out not available: %s", err)


class FanoutProcess(ChildProcess):
    """The Zenoh fan-out's process."""

    def __init__(self, cfg: FanoutConfig, observe: Path, video: Path | None) -> None:
        super().__init__(_child_main, "robot-fanout", cfg, observe, video)


def main(argv: list[str] | None = None) -> int:
    from robot_side.config import load_robot_config
    from telesurgery.errors import TelesurgeryError

    ap = argparse.ArgumentParser(prog="telesurgery fanout",
                                 description="publish the robot's observer feed and video "
                                             "once into a Zenoh router")
    ap.add_argument("--config", type=Path, help="robot config (TOML); its [fanout] section")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    zenoh.init_log_from_env_or("error")
    try:
        cfg = load_robot_config(args.config)
        serve(cfg.fanout, cfg.observe.socket, cfg.observe.video_path, None)
    except KeyboardInterrupt:
        return 0
    except (TelesurgeryError, zenoh.ZError, OSError) as err:
        print(f"telesurgery fanout: {err}", file=sys.stderr)
        return 2
    return 0
