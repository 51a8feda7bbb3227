"""``telesurgery audit``: verify an audit log or show its records.

FILE is either the log's configured path (all its segments, ``FILE.000001`` ...) or one
segment file. ``verify`` checks checksums and sequence, the keyed chain with the robot's
key (``FILE.key`` by default, or ``--key``), and a witness's chain head
(``--witness 1234:0123456789abcdef`` or a file holding such heads, e.g. telemetry a
console recorded); it says which records it proves and where the proof ends. Exit 0
when everything checked holds, 1 when not (or no log), 2 when the key or witness is unusable.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path

from safety.audit import Record, read_records, segments
from safety.audit_key import key_path, load_key
from safety.audit_verify import Witness, parse_witness, verify
from telesurgery.errors import AuditError
from telesurgery.helptext import plain_help


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser = argparse.ArgumentParser(prog="telesurgery audit", description=plain_help(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", parents=[common],
                           help="check checksums, sequence, keyed chain and a witness")
    check.add_argument("file", type=Path)
    check.add_argument("--key", type=Path, help="the robot's audit key (default FILE.key)")
    check.add_argument("--witness", metavar="FILE_OR_VALUE",
                       help="a chain head from telemetry (N:hex), or a file of them")
    show = sub.add_parser("show", parents=[common], help="print records readably")
    show.add_argument("file", type=Path)
    show.add_argument("--tail", type=int, metavar="N", help="only the last N records")
    return parser


def _witness(arg: str | None) -> Witness | None:
    if arg is None:
        return None
    path = Path(arg)
    text = path.read_text(errors="replace") if path.is_file() else arg
    return parse_witness(text)


def _verify(path: Path, key_file: Path | None, witness_arg: str | None) -> int:
    if not segments(path):
        print(f"no audit log at {path}: nothing to verify")
        return 1
    try:
        witness = _witness(witness_arg)
        default = key_path(path)
        key = load_key(key_file or default) if key_file or default.exists() else None
    except (ValueError, OSError) as err:  # AuditError is an OSError
        print(f"cannot verify: {err}")
        return 2
    report = verify(path, key, witness, find_key=False)
    n_segments = len(segments(path))
    if report.ok:
        torn = "; the last write before a crash is torn (not an error)" \
            if report.truncated_tail else ""
        print(f"OK: {report.records} records in {n_segments} segment(s){torn}")
        print(f"  {report.proof()}")
        return 0
    print(f"CORRUPT: {report.first_error}")
    print(f"  record index {report.error_index}, byte offset {report.error_offset}; "
          f"{report.records} records verified before it")
    print(f"  before the error: {report.proof()}")
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
        try:
            return _verify(args.file, args.key, args.witness)
        except AuditError as err:
            print(f"cannot verify: {err}")
            return 2
    return _show(args.file, args.tail)
