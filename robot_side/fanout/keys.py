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


def observer_token(robot: str, watcher_id: str) -> str:
    return f"{observers(robot)}/{watcher_id}"
