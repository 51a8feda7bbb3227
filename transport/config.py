"""The link's config section: where the robot listens, where the keys are, socket bounds.

One frozen section, validated on construction so that a bad port or a zero
heartbeat is a ``ConfigError`` naming the key, never a socket that silently
misbehaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from telesurgery.config import Limit, check, check_limits, limit_warnings

VIDEO_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""Video sockets carry whole H.264 access units; every other socket gets ``max_message_bytes``."""


LINK_LIMITS: dict[str, Limit] = {
    "heartbeat_ivl_ms": Limit(10, 5000, 50, 500, "ms", "how often ZMTP checks a silent peer"),
    "heartbeat_timeout_ms": Limit(20, 30_000, 150, 2000, "ms",
                                  "a silent connection is dropped after this"),
    "control_timeout_ms": Limit(10, 30_000, 100, 2000, "ms",
                                "the console waits this long for a control reply"),
    "ping_hz": Limit(5, 1000, 10, 100, "Hz",
                     "round trip is measured this often; below 5 Hz it goes stale (250 ms)"),
    "max_command_hz": Limit(10, 10_000, 100, 2000, "Hz",
                            "the console's command rate bounds how far a sequence may jump"),
    "session_idle_ms": Limit(500, 60_000, 1000, 10_000, "ms",
                             "a surgeon session silent this long may be taken over"),
    "handoff_ms": Limit(500, 120_000, 3000, 30_000, "ms",
                        "a command request waits this long for the commander's grant"),
}
"""Range and recommended band of the link's timing limits."""


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
    session_idle_ms: float = 3000.0
    """Robot: a surgeon session whose console answered no ping for this long may be
    taken over by another console's ``arm`` (``transport.session_guard``)."""
    handoff_ms: float = 10_000.0
    """Robot: how long a surgeon's command request waits for the commander's grant, and
    the oldest a grant may be on the robot's clock (``transport.session_guard``)."""

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
        check_limits(self, "link", LINK_LIMITS)
        check(self.heartbeat_timeout_ms > self.heartbeat_ivl_ms, "link.heartbeat_timeout_ms",
              self.heartbeat_timeout_ms, "must be above heartbeat_ivl_ms")

    def warnings(self) -> list[str]:
        """Limits inside their range but outside the recommended band, one line each."""
        return limit_warnings(self, "link", LINK_LIMITS)
