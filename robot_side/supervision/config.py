"""The ``[page]`` section: where the on-site supervision page listens and who may clear."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from telesurgery.config import check, finite_positive
from telesurgery.errors import ConfigError


@dataclass(frozen=True)
class PageConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    """Interface the page binds; the robot machine itself by default. Anything else
    exposes the page (and its e-stop button) to that network: choose deliberately."""
    port: int = 8480
    """0: an ephemeral port (tests); the bound URL is logged and written to ``url_file``."""
    push_hz: float = 25.0
    """WebSocket updates per second to each open page."""
    stale_after_ms: float = 1000.0
    """The page shows NO DATA when the robot's feed is older than this."""
    history_s: float = 60.0
    """Length of the live plots."""
    allowed_origins: tuple[str, ...] = ()
    """Extra Origins accepted at the WebSocket handshake (the page's own always is)."""
    token_file: Path | None = None
    """Page access token (0600, created at first start); None: in the runtime folder."""
    pin_file: Path | None = None
    """On-site clearing PIN (0600, set with ``telesurgery page --set-pin``); None: beside
    the robot's keys. Without it, clearing from the page is refused."""
    video: bool = True
    """Forward the surgeon's picture (H.264 access units, decoded by WebCodecs)."""

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError as err:
            raise ConfigError(f"page.host = {self.host!r}: must be an IP address") from err
        check(0 <= self.port <= 65535, "page.port", self.port, "must be 0..65535")
        finite_positive("page.push_hz", self.push_hz)
        check(20.0 <= self.push_hz <= 100.0, "page.push_hz", self.push_hz,
              "must be within 20..100")
        finite_positive("page.stale_after_ms", self.stale_after_ms)
        check(self.stale_after_ms <= 1000.0, "page.stale_after_ms", self.stale_after_ms,
              "must be <= 1000 (NO DATA within a second)")
        finite_positive("page.history_s", self.history_s)
        check(self.history_s <= 600.0, "page.history_s", self.history_s, "must be <= 600")
        for origin in self.allowed_origins:
            check(origin.startswith(("http://", "https://")), "page.allowed_origins", origin,
                  "each must be http://host[:port] or https://host[:port]")
