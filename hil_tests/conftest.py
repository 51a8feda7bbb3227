"""Shared HIL fixtures: a namespace pair that skips with the stated reason, and the
results report that the scenario tests fill and the terminal summary prints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil_tests.netns import NetnsPair, netns_available


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    """Console and robot namespaces on a veth; skipped where namespaces are impossible."""
    ok, reason = netns_available()
    if not ok:
        pytest.skip(reason)
    with NetnsPair() as pair:
        yield pair


class HilReport:
    """Measured reaction times, written as JSON and markdown under the pytest temp dir."""

    written: list[tuple[str, str, Path]] = []
    """(title, markdown, json path) of every table written in this session."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def write(self, name: str, title: str, rows: list[dict[str, Any]], markdown: str) -> Path:
        path = self.base / f"{name}.json"
        path.write_text(json.dumps(rows, indent=2))
        (self.base / f"{name}.md").write_text(f"# {title}\n\n{markdown}\n")
        HilReport.written.append((title, markdown, path))
        return path


@pytest.fixture(scope="session")
def hil_report(tmp_path_factory: pytest.TempPathFactory) -> HilReport:
    return HilReport(tmp_path_factory.mktemp("hil-results"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for title, markdown, path in HilReport.written:
        terminalreporter.write_sep("=", title)
        terminalreporter.write_line(markdown)
        terminalreporter.write_line(f"results: {path} (and .md)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out, rather than skip, the table rows that run against the firmware emulator
    only: on a servo bus the default run takes the backend-dependent rows
    (``Scenario.backend_dependent``); ``HIL_SERVO_TABLE=full`` runs every row on every arm
    (docs/hil.md). Thirty skip lines a run said nothing a reader could act on."""
    from hil_tests.test_scenarios import FULL_SERVO_TABLE

    if FULL_SERVO_TABLE:
        return
    kept, left_out = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        sc, arm = params.get("sc"), params.get("netns_rig")
        if sc is not None and arm not in (None, "firmware") and not sc.backend_dependent:
            left_out.append(item)
        else:
            kept.append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept
