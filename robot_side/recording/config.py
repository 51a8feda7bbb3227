"""The ``[record]`` section: where sessions are recorded and when recording must stop."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from telesurgery.config import check, finite_positive


def default_recordings_dir() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "telesurgery" / "recordings"


@dataclass(frozen=True)
class RecordConfig:
    enabled: bool = True
    """Every session is recorded unless switched off here."""
    folder: Path = field(default_factory=default_recordings_dir)
    """One rosbag2 folder (MCAP storage) per session is created inside."""
    min_free_mb: float = 500.0
    """Recording stops (with an alarm) when the disk has less than this left."""
    video: bool = True
    """Record the surgeon's picture (foxglove_msgs/CompressedVideo, H.264 Annex B)."""

    def __post_init__(self) -> None:
        finite_positive("record.min_free_mb", self.min_free_mb)
        check(self.min_free_mb >= 1.0, "record.min_free_mb", self.min_free_mb,
              "must be >= 1 MB")
