"""``telesurgery audit``: verify an audit log or show its records.

FILE is either the log's configured path (all its segments, ``FILE.000001`` ...) or one
segment file. ``verify`` exits 0 when every record is intact and in sequence, 1 when not.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path

from safety.audit import Record, read_records, segments, verify
from telesurgery.helptext import plain_help


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser = argparse.ArgumentParser(prog="telesurgery audit", description=plain_help(__doc__))
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", parents=[common],
                           help="check checksums, sequence and hash chain")
    check.add_argument("file", type=Path)
    show = sub.add_parser("show", parents=[common], help="print records readably")
    show.add_argument("file", type=Path)
    show.add_argument("--tail", type=int, metavar="N", help="only the last N records")
    return parser


def _verify(path: Path) -> int:
    if not segments(path):
        print(f"no audit log at {path}: nothing to verify")
        return 1
    report = verify(path)
    n_segments = len(segments(path))
    if report.ok:
        torn = "; the last write before a crash is torn (not an error)" \
            if report.truncated_tail else ""
        print(f"OK: {report.records} records in {n_segments} segment(s){torn}")
        return 0
    print(f"CORRUPT: {report.first_error}")
    print(f"  record index {report.error_index}, byte offset {report.error_offset}; "
          f"{report.records} records verified before it")
    return 1


def _format(rec: Record) -> str:
    wall = dt.datetime.fromtimestamp(rec.wall_ns / 1e9, tz=dt.UTC)
    fields = " ".join(f"{k}={json.dumps(v)}" for k, v in rec.fields.items())
    return f"{rec.index:>8} {wall.isoformat(timespec='milliseconds')} {rec.kind:<20} {fields}"


def _show(path: Path, tail: int | None) -> int:
    if not segments(path):
        print(f"no audit log at {path}")
        return 1
    records: Iterable[Record] = read_records(path)
    if tail is not None:
        records = collections.deque(records, maxlen=max(tail, 0))
    for rec in records:
        print(_format(rec))
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "verify":
        return _verify(args.file)
    return _show(args.file, args.tail)
