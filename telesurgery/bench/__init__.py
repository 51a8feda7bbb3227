"""``telesurgery bench``: every benchmark, one JSON file and a markdown table.

``telesurgery bench link|loop|video|dds|path`` runs one; ``telesurgery bench`` (or
``all``) runs them all in this process's lifetime so every ratio compares
figures measured on the same machine in the same run. ``telesurgery bench
soak`` (a 10-minute healthy run of the whole rig) runs only when named.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BENCHES: dict[str, str] = {
    "link": "telesurgery.bench.link",
    "dds": "telesurgery.bench.dds",
    "loop": "telesurgery.bench.loop",
    "video": "telesurgery.bench.video",
    "soak": "telesurgery.bench.soak",
    "path": "telesurgery.bench.path",
}
IN_ALL = ("link", "dds", "loop", "video", "path")
"""What ``all`` runs: the soak's default length is ten minutes of its own."""


def _markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| benchmark | figure | value |", "|---|---|---|"]
    for name, figures in results.items():
        for key, value in figures.items():
            if isinstance(value, dict | list):
                continue
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            lines.append(f"| {name} | {key} | {shown} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery bench", description=__doc__)
    p.add_argument("which", nargs="?", default="all", choices=(*BENCHES, "all"))
    p.add_argument("--seconds", type=float,
                   help="duration of each measurement (default: 10; the soak's own: 600)")
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="where to write results")
    p.add_argument("-v", "--verbose", action="store_true")
    args, rest = p.parse_known_args(argv)
    if args.which != "all":
        module = importlib.import_module(BENCHES[args.which])
        seconds = [] if args.seconds is None else ["--seconds", str(args.seconds)]
        out = ["--out", str(args.out)] if getattr(module, "TAKES_OUT", False) else []
        code: int = module.main([*seconds, *out, *rest])
        return code
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
    meta = {"python": sys.version.split()[0], "machine": platform.machine(),
            "cpus": __import__("os").cpu_count()}
    (args.out / "bench.json").write_text(json.dumps({"meta": meta, **results}, indent=2))
    table = _markdown(results)
    (args.out / "bench.md").write_text(table)
    print(table)
    print(json.dumps({"meta": meta, **results}))
    return 0
