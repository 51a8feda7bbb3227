"""The Zenoh key expressions of one robot: ``telesurgery/<robot>/<what>``."""

from __future__ import annotations

PREFIX = "telesurgery"


def robot_checked(robot: str) -> str:
    """A robot name is one key chunk: no '/', no wildcards, no '$'."""
    if not robot or any(c in robot for c in "/*$#?") or len(robot) > 64:
        raise ValueError(f"robot name {robot!r} must be one plain key chunk (1..64 chars)")
    return robot


def telemetry(robot: str) -> str:
    return f"{PREFIX}/{robot_checked(robot)}/telemetry"


def events(robot: str) -> str:
    return f"{PREFIX}/{robot_checked(robot)}/events"


def video(robot: str) -> str:
    return f"{PREFIX}/{robot_checked(robot)}/video"


def strokes(robot: str) -> str:
    """Telestration strokes the robot relayed (robot_side.telestration)."""
    return f"{PREFIX}/{robot_checked(robot)}/strokes"


def observers(robot: str) -> str:
    """Where each watcher declares its liveliness token (one chunk below: its id)."""
    return f"{PREFIX}/{robot_checked(robot)}/observers"


def watcher_id(zid: str, name: str | None) -> str:
    """One key chunk: ``<name>.<zid>`` (a name of letters, digits, ``_`` and ``-``, at
    most 32) or the bare session id; the fan-out lists the names on the page."""
    if not name:
        return zid
    clean = "".join(c for c in name if c.isascii() and (c.isalnum() or c in "_-"))[:32]
    return f"{clean}.{zid}" if clean else zid


def watcher_name(chunk: str) -> str:
    """The name part of a watcher id; ``anonymous`` when it declared none."""
    name, dot, _zid = chunk.rpartition(".")
    return name if dot and name else "anonymous"


def observer_token(robot: str, watcher_id: str) -> str:
    return f"{observers(robot)}/{watcher_id}"
