"""``telesurgery bench``: every benchmark, one JSON file and a markdown table.

``telesurgery bench link|loop|video|dds|path`` runs one; ``telesurgery bench`` (or
``all``) runs them all in this process's lifetime so every ratio compares
figures measured on the same machine in the same run. ``telesurgery bench
soak`` (a 10-minute healthy run of the whole rig) and ``telesurgery bench record``
(the rig twice, recording off then on) run only when named.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from telesurgery.helptext import plain_help

log = logging.getLogger(__name__)

BENCHES: dict[str, str] = {
    "link": "telesurgery.bench.link",
    "dds": "telesurgery.bench.dds",
    "loop": "telesurgery.bench.loop",
    "video": "telesurgery.bench.video",
    "soak": "telesurgery.bench.soak",
    "path": "telesurgery.bench.path",
    "observers": "telesurgery.bench.observers",
    "telestration": "telesurgery.bench.telestration",
    "intercom": "telesurgery.bench.intercom",
    "record": "telesurgery.bench.record",
}
IN_ALL = ("link", "dds", "loop", "video", "path", "observers", "telestration",
          "intercom")
"""What ``all`` runs: the soak's default length is ten minutes of its own; ``record``
runs the whole rig twice."""


def _markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| benchmark | figure | value |", "|---|---|---|"]
    for name, figures in results.items():
        for key, value in figures.items():
            if isinstance(value, dict | list):
                continue
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            lines.append(f"| {name} | {key} | {shown} |")
    return "\n".join(lines) + "\n"


class _Tee(io.TextIOBase):
    """Passes a bench's report through to the terminal and keeps it."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.kept = io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def _meta() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "machine": platform.machine(),
            "cpus": os.cpu_count()}


def _run_one(name: str, argv: list[str], out: Path) -> int:
    """Run one bench's own ``main``; its last stdout line is its figures (JSON), kept."""
    module = importlib.import_module(BENCHES[name])
    if getattr(module, "TAKES_OUT", False):  # writes its own, richer figures under --out
        own: int = module.main([*argv, "--out", str(out)])
        return own
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        code: int = module.main(argv)
    if code != 0:
        return code
    lines = tee.kept.getvalue().strip().splitlines()
    try:
        figures = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        figures = None
    if not isinstance(figures, dict):
        log.error("bench %s printed no figures to write under %s", name, out)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": _meta(), name: figures}, indent=2))
    (out / f"{name}.md").write_text(_markdown({name: figures}))
    sys.stderr.write(f"figures written to {out / name}.json and .md\n")
    return 0


def main(argv: list[str]) -> int:
    # Help of its own only for all: ``bench link --help`` is the link bench's.
    p = argparse.ArgumentParser(prog="telesurgery bench", description=plain_help(__doc__),
                                add_help=False)
    p.add_argument("which", nargs="?", default="all", choices=(*BENCHES, "all"))
    p.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    p.add_argument("--seconds", type=float,
                   help="duration of each measurement (default: 10; the soak's own: 600)")
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="where to write results")
    p.add_argument("-v", "--verbose", action="store_true")
    args, rest = p.parse_known_args(argv)
    if args.help and args.which == "all":
        p.print_help()
        return 0
    if args.which != "all":
        seconds = [] if args.seconds is None else ["--seconds", str(args.seconds)]
        return _run_one(args.which, [*seconds, *rest, *(["--help"] if args.help else [])],
                        args.out)
    if args.seconds is None:
        args.seconds = 10.0
    results: dict[str, dict[str, Any]] = {}
    for name in IN_ALL:
        module_name = BENCHES[name]
        print(f"== bench {name} ({args.seconds:g} s)", flush=True)
        t0 = time.monotonic()
        module = importlib.import_module(module_name)
        results[name] = module.run(seconds=args.seconds)
        print(f"   done in {time.monotonic() - t0:.1f} s: {json.dumps(results[name])}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = _meta()
    (args.out / "bench.json").write_text(json.dumps({"meta": meta, **results}, indent=2))
    table = _markdown(results)
    (args.out / "bench.md").write_text(table)
    print(table)
    print(json.dumps({"meta": meta, **results}))
    return 0
