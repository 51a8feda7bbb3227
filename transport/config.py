"""The link's config section: where the robot listens, where the keys are, socket bounds.

One frozen section, validated on construction so that a bad port or a zero
heartbeat is a ``ConfigError`` naming the key, never a socket that silently
misbehaves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from telesurgery.config import check, finite_positive

VIDEO_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""Video sockets carry whole H.264 access units; every other socket gets ``max_message_bytes``."""


@dataclass(frozen=True)
class LinkConfig:
    host: str = "127.0.0.1"
    """Robot: the address to bind. Console: the robot's address."""
    command_port: int = 47100
    control_port: int = 47101
    telemetry_port: int = 47102
    video_port: int = 47103
    """On the robot, 0 binds a random free port (tests); read ``RobotLink.endpoints``."""
    keys_dir: Path = Path("keys")
    max_message_bytes: int = 65536
    heartbeat_ivl_ms: int = 100
    heartbeat_timeout_ms: int = 300
    control_timeout_ms: int = 500
    ping_hz: float = 20.0
    max_command_hz: float = 1000.0
    """Robot: the fastest a console may send commands (its ``loop.rate_hz`` is at most
    1000). A sequence number that advances faster than this (x1.25, on the robot's own
    clock) is refused as implausible (``transport.intake``)."""

    def __post_init__(self) -> None:
        check(bool(self.host.strip()), "link.host", self.host, "must not be empty")
        for name in ("command_port", "control_port", "telemetry_port", "video_port"):
            port = getattr(self, name)
            check(0 <= port <= 65535, f"link.{name}", port, "must be in 0..65535")
        nonzero = [p for p in (self.command_port, self.control_port, self.telemetry_port,
                               self.video_port) if p != 0]
        check(len(nonzero) == len(set(nonzero)), "link.ports", nonzero,
              "the four channels need distinct ports")
        check(1024 <= self.max_message_bytes <= VIDEO_MAX_MESSAGE_BYTES, "link.max_message_bytes",
              self.max_message_bytes, f"must be in 1024..{VIDEO_MAX_MESSAGE_BYTES}")
        check(self.heartbeat_ivl_ms > 0, "link.heartbeat_ivl_ms", self.heartbeat_ivl_ms,
              "must be > 0")
        check(self.heartbeat_timeout_ms > self.heartbeat_ivl_ms, "link.heartbeat_timeout_ms",
              self.heartbeat_timeout_ms, "must be above heartbeat_ivl_ms")
        check(self.control_timeout_ms > 0, "link.control_timeout_ms", self.control_timeout_ms,
              "must be > 0")
        finite_positive("link.ping_hz", self.ping_hz)
        check(self.ping_hz <= 1000.0, "link.ping_hz",
              self.ping_hz, "must be <= 1000")
        check(math.isfinite(self.max_command_hz) and 10.0 <= self.max_command_hz <= 10_000.0,
              "link.max_command_hz", self.max_command_hz,
              "must be in 10..10000 (the console's command rate bounds sequence jumps)")
