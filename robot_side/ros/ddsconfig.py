"""Which network the bridge's DDS participant uses: a cyclonedds XML config from ``[ros]``.

DDS discovery is open by default: any participant on the domain and the
multicast segment sees the bridge's topics and may publish to its
subscriptions. The robot narrows that from its config:

- ``interfaces``: the network interfaces (names such as ``lo``/``eth1`` or
  addresses) the participant binds to. The command side with neither
  interfaces nor peers configured binds to loopback only: a ROS commander must
  run on the robot machine unless someone decided otherwise in the config.
- ``peers``: unicast discovery addresses; when given, multicast is switched off,
  so only those hosts can discover the bridge.

Both backends use the same XML: the ``dds`` backend hands it to its own
``Domain``, the ``rclpy`` backend puts it in ``CYCLONEDDS_URI`` before rclpy
starts (rmw_cyclonedds_cpp reads it there; other RMWs ignore it, which
``open_bridge`` logs).

DDS Security (authentication, access control, encryption: OMG DDS Security
1.1) needs cyclonedds built with its security plugins; the PyPI wheel of
``cyclonedds`` has none. ``security_available()`` says whether this build has
them; with ``[ros] security_xml`` set and the plugins missing, the bridge
refuses to open (fail closed) rather than run without the protection asked for.
"""

from __future__ import annotations

import ctypes.util
import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

from telesurgery.errors import ConfigError

log = logging.getLogger(__name__)

LOOPBACK = ("lo",)
SECURITY_PLUGINS = ("dds_security_auth", "dds_security_ac", "dds_security_crypto")


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def effective_interfaces(interfaces: Sequence[str], peers: Sequence[str],
                         command: bool) -> tuple[str, ...]:
    """The interfaces to bind: as configured; loopback for a command bridge left open."""
    if command and not interfaces and not peers:
        return LOOPBACK
    return tuple(interfaces)


def config_xml(interfaces: Sequence[str], peers: Sequence[str],
               security_xml: Path | None = None) -> str | None:
    """The cyclonedds XML for these settings; None when all are defaults."""
    if not interfaces and not peers and security_xml is None:
        return None
    general = ""
    if interfaces:
        items = "".join(
            f"<NetworkInterface {'address' if _is_address(i) else 'name'}={quoteattr(i)}/>"
            for i in interfaces)
        general += f"<Interfaces>{items}</Interfaces>"
    discovery = ""
    if peers:
        general += "<AllowMulticast>false</AllowMulticast>"
        items = "".join(f"<Peer Address={quoteattr(p)}/>" for p in peers)
        discovery = (f"<Discovery><ParticipantIndex>auto</ParticipantIndex>"
                     f"<Peers>{items}</Peers></Discovery>")
    security = ""
    if security_xml is not None:
        try:
            security = security_xml.read_text()
        except OSError as err:
            raise ConfigError(f"ros.security_xml: can not read {security_xml}: {err}") from err
        if "<Security" not in security:
            raise ConfigError(f"ros.security_xml: {security_xml} has no <Security> element")
    return (f'<CycloneDDS><Domain Id="any"><General>{general}</General>{discovery}'
            f"{security}</Domain></CycloneDDS>")


def security_available() -> bool:
    """Whether the DDS Security plugins of cyclonedds can be found on this machine."""
    return all(ctypes.util.find_library(name) is not None for name in SECURITY_PLUGINS)


def check_security(security_xml: Path | None) -> None:
    """Refuse a security config this cyclonedds build can not honour (fail closed)."""
    if security_xml is not None and not security_available():
        raise ConfigError(
            f"ros.security_xml = {security_xml}: this cyclonedds build has no DDS Security "
            f"plugins ({', '.join(SECURITY_PLUGINS)}); refusing to run the ROS bridge without "
            "the protection configured. Install a cyclonedds built with ENABLE_SECURITY, or "
            "remove security_xml and bind the bridge to trusted interfaces/peers instead.")
