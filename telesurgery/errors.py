"""One root error for the project.

Subclasses also inherit the matching builtin so callers that only know Python's
exceptions still catch them (python-can style): ``LinkTimeout`` is a
``TimeoutError``, ``SchemaError`` a ``ValueError`` and so on.
"""

from __future__ import annotations


class TelesurgeryError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(TelesurgeryError, ValueError):
    """A config file or section is invalid; the message names the key and value."""


class SchemaError(TelesurgeryError, ValueError):
    """A wire message failed validation; ``field`` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class AuthError(TelesurgeryError, PermissionError):
    """Authentication material is missing or a peer is not authorised."""


class LinkError(TelesurgeryError, ConnectionError):
    """The network link failed."""


class LinkTimeout(TelesurgeryError, TimeoutError):
    """A request on the link got no answer in time."""


class ManipulatorError(TelesurgeryError, OSError):
    """The manipulator's port or bus failed, or it is not connected."""


class SerialLinkError(ManipulatorError):
    """The serial port to the manipulator failed or vanished."""


class FirmwareFault(TelesurgeryError, RuntimeError):
    """The manipulator firmware reported a fault."""


class DeviceError(TelesurgeryError, OSError):
    """An input device is missing, disconnected or produced invalid data."""


class VideoError(TelesurgeryError, RuntimeError):
    """Capture, encoding or decoding failed."""


class AuditError(TelesurgeryError, OSError):
    """The audit log could not be written or verified."""
