"""What a newcomer reads first: ``telesurgery --help`` and each command's ``--help``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from safety.audit_cli import main as audit_main
from telesurgery.bench import BENCHES
from telesurgery.cli import SUBCOMMANDS, _usage
from telesurgery.helptext import plain_help


def test_top_level_help_lists_every_bench() -> None:
    bench_line = next(line for line in _usage().splitlines() if line.strip().startswith("bench"))
    for name in BENCHES:
        assert name in bench_line, name


def test_plain_help_drops_rest_literal_markup() -> None:
    assert plain_help("run ``telesurgery bench`` or ``all``") == "run telesurgery bench or all"
    assert plain_help(None) == ""


@pytest.mark.parametrize("command", [c for c in SUBCOMMANDS if c != "firmware-sim"]
                         + ["bench link", "bench loop", "bench video", "bench soak"])
def test_help_is_plain_text_naming_its_program(command: str) -> None:
    argv = command.split()
    done = subprocess.run([sys.executable, "-m", "telesurgery.cli", *argv, "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "``" not in done.stdout, done.stdout
    assert f"usage: telesurgery {command}" in done.stdout


def test_audit_verify_on_a_missing_file_says_so(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing.audit"
    assert audit_main(["verify", str(missing)]) == 1
    assert f"no audit log at {missing}" in capsys.readouterr().out
