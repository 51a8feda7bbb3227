"""Every safety and link limit has a range (refused outside) and a recommended band (warned)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from robot_side.config import RobotConfig
from safety.config import (
    MOTION_LIMITS,
    WATCHDOG_LIMITS,
    MotionLimits,
    SafetyConfig,
    WatchdogLimits,
)
from telesurgery.config import Limit, load
from telesurgery.errors import ConfigError
from transport.config import LINK_LIMITS, LinkConfig

SECTIONS: list[tuple[str, type, dict[str, Limit]]] = [
    ("safety.watchdog", WatchdogLimits, WATCHDOG_LIMITS),
    ("safety.motion", MotionLimits, MOTION_LIMITS),
    ("link", LinkConfig, LINK_LIMITS),
]
CASES = [(prefix, cls, name, limit) for prefix, cls, table in SECTIONS
         for name, limit in table.items()]


def test_issue_19_5_a_five_second_command_timeout_is_refused_naming_key_and_range(
        tmp_path: Path) -> None:
    cfg = tmp_path / "robot.toml"
    cfg.write_text("[safety.watchdog]\ncommand_timeout_ms = 5000\n")
    with pytest.raises(ConfigError) as err:
        load(RobotConfig, cfg)
    msg = str(err.value)
    assert "safety.watchdog.command_timeout_ms = 5000" in msg
    assert "[5, 500] ms" in msg
    assert "delivers nothing" in msg, "and why"


@pytest.mark.parametrize(("prefix", "cls", "name", "limit"), CASES,
                         ids=[f"{c[0]}.{c[2]}" for c in CASES])
def test_outside_the_range_is_refused(prefix: str, cls: type, name: str, limit: Limit) -> None:
    kind = type(getattr(cls(), name))
    for bad in (kind(limit.hi * 2 + 1), kind(limit.lo - 1), *([math.nan] * (kind is float))):
        with pytest.raises(ConfigError, match=f"{prefix}.{name} = .*must be in"):
            cls(**{name: bad})
    if limit.lo_open:
        with pytest.raises(ConfigError, match=name):
            cls(**{name: limit.lo})


@pytest.mark.parametrize(("prefix", "cls", "name", "limit"), CASES,
                         ids=[f"{c[0]}.{c[2]}" for c in CASES])
def test_inside_the_range_outside_the_band_warns(prefix: str, cls: type, name: str,
                                                  limit: Limit) -> None:
    default = getattr(cls(), name)
    assert limit.rec_lo <= default <= limit.rec_hi, "defaults are inside the band"
    assert limit.lo <= limit.rec_lo <= limit.rec_hi <= limit.hi
    if limit.rec_hi < limit.hi:
        value = (limit.rec_hi + limit.hi) / 2
        try:
            section = cls(**{name: type(default)(value)})
        except ConfigError as err:  # a cross-field rule (rtt_warn < rtt_halt) may refuse it
            pytest.skip(str(err))
        lines = section.warnings()
        assert len(lines) == 1 and f"{prefix}.{name}" in lines[0]
        assert "recommended" in lines[0]


def test_defaults_warn_about_nothing() -> None:
    assert SafetyConfig().warnings() == []
    assert LinkConfig().warnings() == []
    assert SafetyConfig(watchdog=WatchdogLimits(settle_ms=30.0)).warnings() == [
        "safety.watchdog.settle_ms = 30 ms is outside the recommended [200, 2000] ms: "
        "a link must be healthy this long before a re-engage"]


def test_the_docs_list_every_range() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "hazards.md").read_text()
    for prefix, cls, name, limit in CASES:
        lo = f"{'(' if limit.lo_open else '['}{limit.lo:g}, {limit.hi:g}]"
        row = (f"| `{prefix}.{name}` | {getattr(cls(), name):g} | {lo} | "
               f"[{limit.rec_lo:g}, {limit.rec_hi:g}] |")
        assert row in docs, f"docs/hazards.md is missing or out of date: {row}"
