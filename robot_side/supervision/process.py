"""The supervision page in its own process, started by the robot node; and ``telesurgery page``.

Nothing of the page runs in the control process: it observes the robot through the
local observer feed and the video mirror, and acts only through the local e-stop
socket, like every other on-site tool. A child whose robot node died exits by
itself (the page's WebSocket then closes and every open page shows NO DATA).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robot_side.childproc import ChildProcess
from robot_side.supervision.config import PageConfig
from robot_side.supervision.credentials import PinCheck, load_or_create_token, set_pin
from robot_side.supervision.state import FeedReader, FeedState
from telesurgery.errors import TelesurgeryError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PagePaths:
    observe: Path
    estop: Path
    video: Path | None
    token: Path
    pin: Path
    url: Path
    """0600 file with the page's full URL, token included (the staff's bookmark)."""
    recording: Path | None = None
    """The recorder's status file: a stopped recording is an alarm on the page."""
    fanout: Path | None = None
    """The fan-out's status file (``fanout.json``): how many observers watch."""
    intercom: tuple[Path, Path, Path] | None = None
    """The robot intercom's local talk and listen sockets and its rights file (None: the
    robot has no intercom; the page's talk button says so)."""

    @classmethod
    def from_robot(cls, robot_cfg: object) -> PagePaths:
        from robot_side.config import RobotConfig

        if not isinstance(robot_cfg, RobotConfig):
            raise TypeError("expected a RobotConfig")
        page = robot_cfg.page
        run_dir = robot_cfg.estop.socket.parent
        return cls(observe=robot_cfg.observe.socket, estop=robot_cfg.estop.socket,
                   video=robot_cfg.observe.video_path if page.video else None,
                   token=page.token_file or run_dir / "page.token",
                   pin=page.pin_file or robot_cfg.link.keys_dir / "onsite.pin",
                   url=run_dir / "page.url",
                   recording=run_dir / "recording.json" if robot_cfg.record.enabled else None,
                   fanout=robot_cfg.observe.socket.parent / "fanout.json",
                   intercom=_intercom_paths(robot_cfg))


def _intercom_paths(robot_cfg: Any) -> tuple[Path, Path, Path] | None:
    from robot_side.intercom import LOCAL_SOCKET, ONSITE_SOCKET, RIGHTS_FILE

    if not robot_cfg.intercom.enabled:
        return None
    # The node binds both beside the observer feed (its runtime folder).
    runtime = robot_cfg.observe.socket.parent
    return (runtime / ONSITE_SOCKET, runtime / LOCAL_SOCKET,
            robot_cfg.link.keys_dir / RIGHTS_FILE)


async def serve(cfg: PageConfig, paths: PagePaths, parent_pid: int | None) -> None:
    from robot_side.supervision.server import PageServer

    token = load_or_create_token(paths.token)
    feed = FeedState(cfg.stale_after_ms, cfg.history_s, recording_status=paths.recording,
                     fanout_status=paths.fanout)
    reader = FeedReader(paths.observe, feed)
    reader.start()
    intercom = None
    if paths.intercom is not None:
        from robot_side.supervision.intercom import PageIntercom

        intercom = PageIntercom(*paths.intercom)
    server = PageServer(cfg, feed, paths.estop, token=token, pins=PinCheck(paths.pin),
                        video_path=paths.video, intercom=intercom)
    try:
        url = await server.start()
        paths.url.unlink(missing_ok=True)
        fd = os.open(paths.url, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{url}#token={token}\n")
        log.info("supervision page at %s (full link with token in %s)", url, paths.url)
        while parent_pid is None or os.getppid() == parent_pid:
            await asyncio.sleep(0.2)
        log.warning("robot node gone: supervision page stops")
    finally:
        reader.stop()
        await server.stop()
        with contextlib.suppress(FileNotFoundError):
            paths.url.unlink()


def _child_main(cfg: PageConfig, paths: PagePaths, parent_pid: int, log_level: int) -> None:
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node stops us after Ctrl-C
    try:
        asyncio.run(serve(cfg, paths, parent_pid))
    except (TelesurgeryError, OSError) as err:
        log.error("supervision page not available: %s", err)


class PageProcess(ChildProcess):
    """The on-site page's process."""

    def __init__(self, cfg: PageConfig, paths: PagePaths) -> None:
        super().__init__(_child_main, "robot-page", cfg, paths)


def start_onsite_observers(stack: contextlib.ExitStack[bool | None], robot_cfg: Any,
                           joint_names: tuple[str, ...]) -> None:
    """The robot node's out-of-process observers: the page and the session recorder.

    Each is its own process, stopped by ``stack``; neither can delay the control loop.
    """
    from robot_side.recording.recorder import RecorderPaths, RecorderProcess

    if robot_cfg.page.enabled:
        page = PageProcess(robot_cfg.page, PagePaths.from_robot(robot_cfg))
        page.start()
        stack.callback(page.stop)
    if robot_cfg.record.enabled:
        recorder = RecorderProcess(robot_cfg.record, RecorderPaths.from_robot(robot_cfg),
                                   joint_names)
        recorder.start()
        stack.callback(recorder.stop)


def main(argv: list[str]) -> int:
    from robot_side.config import RobotConfig
    from telesurgery.config import load

    p = argparse.ArgumentParser(
        prog="telesurgery page",
        description="On-site supervision page. The robot node starts it by itself "
                    "([page] enabled); this runs it alone beside a running node, or sets "
                    "the on-site PIN that clears an e-stop from the page.")
    p.add_argument("--config", type=Path, help="robot config TOML (default: simulated rig)")
    p.add_argument("--set-pin", action="store_true",
                   help="set the on-site PIN (asked twice on the terminal) and exit")
    p.add_argument("--url", action="store_true", help="print the page's link and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        robot = load(RobotConfig, args.config)
        paths = PagePaths.from_robot(robot)
        if args.set_pin:
            pin = getpass.getpass("new on-site PIN: ")
            if pin != getpass.getpass("again: "):
                sys.stderr.write("telesurgery page: the PINs differ; nothing changed\n")
                return 1
            set_pin(paths.pin, pin)
            sys.stdout.write(f"on-site PIN set in {paths.pin}\n")
            return 0
        if args.url:
            sys.stdout.write(paths.url.read_text())
            return 0
        asyncio.run(serve(robot.page, paths, None))
    except (TelesurgeryError, OSError) as err:
        sys.stderr.write(f"telesurgery page: {err}\n")
        return 1
    return 0
