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

DSCP_EF = 46
"""Expedited Forwarding (RFC 3246): commands, control, pings, telemetry."""
DSCP_AF41 = 34
"""Assured Forwarding class 4 (RFC 2597): interactive video."""
MAX_PATHS = 4


def tos_byte(dscp: int) -> int:
    """The IP TOS byte (``zmq.TOS``) for a DSCP code point, ECN bits left 0."""
    return dscp << 2


@dataclass(frozen=True)
class LinkPath:
    """One network path between the console and the robot (e.g. fibre, or 5G).

    The robot binds every channel on ``robot`` and the console connects there;
    ``console`` is the console's own address on this path: the console sends from
    it (ZeroMQ's ``tcp://source;destination``), and the robot names each arrival's
    path by it. Empty: any source address (the kernel's choice)."""

    name: str
    robot: str
    console: str = ""

    def __post_init__(self) -> None:
        check(0 < len(self.name) <= 8 and self.name.isalnum(), "link.paths.name", self.name,
              "must be 1-8 letters or digits")
        check(bool(self.robot.strip()), "link.paths.robot", self.robot, "must not be empty")


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
    paths: tuple[LinkPath, ...] = ()
    """Two or more network paths (``[[link.paths]]``): every command, control message
    and telemetry travels on each, the robot executes the first fresh copy. Empty:
    one path, "A", on ``host`` (the default, unchanged)."""
    path_live_ms: float = 50.0
    """Robot, with several paths: a path that delivered no command copy for this long
    is down; down to one live path is an audited warning (never a hold)."""
    dscp_command: int = DSCP_EF
    """DSCP marking of the command, control and telemetry connections (IP TOS = DSCP << 2);
    0 leaves them unmarked."""
    dscp_video: int = DSCP_AF41
    # No bulk marking (CS1): nothing bulk leaves the robot on this link. Recordings stay
    # on the robot's disk (no copy-off endpoint), and the observers' fan-out is Zenoh's
    # own transport, configured in [fanout], not a socket of this link.

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
        check(5.0 <= self.path_live_ms <= 5000.0, "link.path_live_ms", self.path_live_ms,
              "must be in 5..5000 ms")
        for name in ("dscp_command", "dscp_video"):
            check(0 <= getattr(self, name) <= 63, f"link.{name}", getattr(self, name),
                  "must be a DSCP code point in 0..63")
        check(len(self.paths) <= MAX_PATHS, "link.paths", len(self.paths),
              f"at most {MAX_PATHS} paths")
        names = [p.name for p in self.paths]
        check(len(names) == len(set(names)), "link.paths", names, "path names must differ")
        robots = [p.robot for p in self.paths]
        check(len(robots) == len(set(robots)), "link.paths", robots,
              "each path needs its own robot address")

    @property
    def path_list(self) -> tuple[LinkPath, ...]:
        """The paths in use: the configured ones, or the one default path on ``host``."""
        return self.paths or (LinkPath("A", self.host),)

    @property
    def dual(self) -> bool:
        """More than one path: per-path health and redundancy warnings are on."""
        return len(self.paths) > 1

    def warnings(self) -> list[str]:
        """Limits inside their range but outside the recommended band, one line each."""
        return limit_warnings(self, "link", LINK_LIMITS)
