"""``[fanout]`` of the robot config: the Zenoh router the robot publishes into."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from robot_side.fanout.keys import robot_checked
from telesurgery.config import check


@dataclass(frozen=True)
class FanoutTls:
    """Mutual TLS on the router's listener; all three files or none."""

    ca: Path | None = None
    """The site's CA certificate (PEM): it signs the router's and every watcher's cert."""
    cert: Path | None = None
    key: Path | None = None
    observers: tuple[str, ...] = ()
    """Certificate common names allowed to subscribe (access control on key
    expressions: they may read ``telesurgery/<robot>/{telemetry,events,video}`` and
    declare their own liveliness token, nothing else). Empty: no remote watcher."""
    robot_cn: str = "robot"
    """The fan-out's own common name when it connects to a separate router."""

    @property
    def enabled(self) -> bool:
        return self.ca is not None


@dataclass(frozen=True)
class FanoutConfig:
    enabled: bool = False
    """Start the fan-out process with the robot node."""
    robot: str = "robot1"
    """This robot's key chunk: ``telesurgery/<robot>/...``."""
    router: bool = True
    """True: the fan-out process is itself the Zenoh router (listens on ``listen``).
    False: it connects as a client to the routers in ``connect``."""
    listen: tuple[str, ...] = ("tcp/127.0.0.1:7447",)
    """Zenoh endpoints. Without ``[fanout.tls]`` only loopback/unixsock are accepted:
    plain TCP off this machine would give the stream to anyone on the network."""
    connect: tuple[str, ...] = ()
    tls: FanoutTls = field(default_factory=FanoutTls)

    def __post_init__(self) -> None:
        try:
            robot_checked(self.robot)
        except ValueError as err:
            check(False, "fanout.robot", self.robot, str(err))
        check(not self.router or bool(self.listen), "fanout.listen", self.listen,
              "a router needs at least one endpoint")
        check(self.router or bool(self.connect), "fanout.connect", self.connect,
              "a client fan-out needs a router to connect to")
        t = self.tls
        check((t.ca is None) == (t.cert is None) == (t.key is None), "fanout.tls", t.ca,
              "ca, cert and key are given together or not at all")
        for ep in (*self.listen, *self.connect):
            check(ep.startswith(("tcp/", "tls/", "unixsock-stream/")), "fanout.listen", ep,
                  "must be tcp/..., tls/... or unixsock-stream/...")
            if not t.enabled:
                check(local_endpoint(ep), "fanout.listen", ep,
                      "without [fanout.tls] only 127.0.0.1/localhost or unixsock")
            else:
                check(not ep.startswith("tcp/"), "fanout.listen", ep,
                      "with [fanout.tls] use tls/... endpoints")


def local_endpoint(ep: str) -> bool:
    if ep.startswith("unixsock-stream/"):
        return True
    host = ep.split("/", 1)[1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]")
