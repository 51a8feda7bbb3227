"""robot_side.readiness: the robot says "not ready" while its children start (issue 11)."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from helpers import wait_until

from robot_side.readiness import ReadinessThread, StartupWatch, video_probe

S = 1_000_000_000


def test_waits_for_every_child_then_is_ready() -> None:
    up = {"video": False, "ros": False}
    watch = StartupWatch(0, timeout_s=30.0)
    watch.add("video", "the video process", lambda: up["video"])
    watch.add("ros", "the ROS 2 bridge", lambda: up["ros"])
    assert watch.check(S) == ("robot starting: waiting for the video process and the "
                              "ROS 2 bridge")
    up["video"] = True
    assert watch.check(2 * S) == "robot starting: waiting for the ROS 2 bridge"
    up["video"] = False  # once up, a child is not asked again
    up["ros"] = True
    assert watch.check(3 * S) is None
    assert watch.ready_after_s == {"video": 2.0, "ros": 3.0}
    assert not watch.failures


def test_a_child_that_fails_or_never_comes_up_is_named_once_and_stays_refused() -> None:
    watch = StartupWatch(0, timeout_s=30.0)
    watch.add("video", "the video process", lambda: "failed: no camera")
    watch.add("ros", "the ROS 2 bridge", lambda: False)
    detail = watch.check(S)
    assert detail is not None and detail.startswith("robot not ready: the video process "
                                                    "failed: no camera")
    assert watch.failures == ["the video process failed: no camera"]
    late = watch.check(31 * S)
    assert late is not None and "the ROS 2 bridge did not come up in 30 s" in late
    assert watch.check(60 * S) == late  # a failed child: never ready by itself
    assert watch.failures == ["the video process failed: no camera",
                              "the ROS 2 bridge did not come up in 30 s"]


def test_a_late_child_is_named_failed_but_the_robot_is_ready_if_it_comes_up() -> None:
    up = [False]
    watch = StartupWatch(0, timeout_s=30.0)
    watch.add("ros", "the ROS 2 bridge", lambda: up[0])
    assert watch.check(31 * S) == "robot not ready: the ROS 2 bridge did not come up in 30 s"
    assert watch.check(40 * S) is not None
    up[0] = True  # starved, not broken
    assert watch.check(45 * S) is None
    assert watch.failures == ["the ROS 2 bridge did not come up in 30 s"]


def test_a_probe_that_raises_is_a_failure_not_a_crash() -> None:
    def broken() -> bool:
        raise RuntimeError("queue closed")
    watch = StartupWatch(0, timeout_s=30.0)
    watch.add("ros", "the ROS 2 bridge", broken)
    assert "could not be checked: queue closed" in (watch.check(S) or "")


def test_no_children_is_ready_at_once() -> None:
    assert StartupWatch(0, timeout_s=1.0).check(0) is None


class _Video:
    def __init__(self) -> None:
        self.error: str | None = None
        self.stats: dict[str, object] = {}
        self.exitcode: int | None = None


def test_video_is_up_once_it_has_sent_a_picture() -> None:
    video = _Video()
    probe = video_probe(video)
    assert probe() is False
    video.stats = {"sent": 0}
    assert probe() is False
    video.stats = {"sent": 3}
    assert probe() is True
    video.exitcode = 1
    assert probe() == "exited (code 1)"
    video.error = "encoder: no libx264"
    assert probe() == "failed: encoder: no libx264"


def test_thread_publishes_the_detail_and_reports_each_failure_once(
        caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    watch = StartupWatch(time.monotonic_ns(), timeout_s=3600.0)
    watch.add("ros", "the ROS 2 bridge", gate.is_set)
    watch.add("rec", "the recorder", lambda: "exited (code 1)")
    failures: list[str] = []
    thread = ReadinessThread(watch, failures.append)
    assert thread.detail is not None and "the recorder exited" in thread.detail
    with caplog.at_level(logging.ERROR, logger="robot_side.readiness"):
        thread.start()
        try:
            wait_until(lambda: failures, 10.0, "the failure to be reported")
            gate.set()
            wait_until(lambda: "ros" in watch.ready_after_s, 10.0, "the bridge to be seen up")
        finally:
            thread.stop()
            thread.join(5.0)
    assert failures == ["the recorder exited (code 1)"]
    assert thread.detail is not None and thread.detail.startswith("robot not ready")
    assert sum("the recorder exited" in r.getMessage() for r in caplog.records) == 1
