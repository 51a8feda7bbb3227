"""The ``[vitals]`` section: where the patient monitor is and how the robot hears it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from telesurgery.config import check
from telesurgery.errors import ConfigError


@dataclass(frozen=True)
class VitalsConfig:
    enabled: bool = False
    """Off until an OR has a monitor to listen to (the demo turns it on)."""
    backend: Literal["hl7", "sdc"] = "hl7"
    host: str = "127.0.0.1"
    """HL7: interface the MLLP listener binds (the monitor gateway connects to it)."""
    port: int = 2575
    """HL7: the MLLP port (2575 is HL7's registered one); 0 picks a free one, written to
    the status file (``vitals.json`` in the runtime folder)."""
    sdc_epr: str = ""
    """SDC: the provider's endpoint reference (urn:uuid:...); "" takes the first found."""
    sdc_interface: str = "127.0.0.1"
    """SDC: the address WS-Discovery and the consumer bind."""
    monitor_timeout_ms: int = 5000
    """No message from the monitor for this long: NO MONITOR, every value stale."""
    publish_ms: int = 250
    """A snapshot at least this often (and at once on every change), so ages stay true."""
    socket: Path | None = None
    """ipc socket the robot node reads vitals on; None: ``vitals.sock`` in the runtime
    folder (0700, the robot's account only)."""

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
            ipaddress.ip_address(self.sdc_interface)
        except ValueError as err:
            raise ConfigError(f"vitals.host / vitals.sdc_interface: {err}") from err
        check(self.backend in ("hl7", "sdc"), "vitals.backend", self.backend,
              "must be 'hl7' or 'sdc'")
        check(0 <= self.port <= 65535, "vitals.port", self.port, "must be 0..65535")
        check(500 <= self.monitor_timeout_ms <= 60_000, "vitals.monitor_timeout_ms",
              self.monitor_timeout_ms, "must be 500..60000")
        check(50 <= self.publish_ms <= 1000, "vitals.publish_ms", self.publish_ms,
              "must be 50..1000 (the HUD ages every value by it)")
