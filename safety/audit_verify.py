"""Verifying an audit log (``safety.audit``): what it can prove, and where the proof ends.

Three levels, each stated in the report:

* **intact**: every record's CRC, the index sequence without gaps (anyone can check);
* **keyed**: every ``prev`` is the HMAC of the record before it under the robot's key,
  so no record was forged, rewritten, or deleted with the chain rebuilt (needs the key);
* **witnessed**: the chain head a witness kept from telemetry (``"<index>:<prefix>"``,
  ``Telemetry.audit_head``) is in the log, so nothing up to that record was dropped from
  the end either. Records after the newest witness rest on the key alone: dropping
  them leaves a shorter chain that still verifies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from safety.audit import (
    HEAD_HEX,
    HEAD_RE,
    _Damage,
    _scan,
    segments,
)
from safety.audit_key import key_path, load_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Witness:
    index: int
    prefix: str

    def __str__(self) -> str:
        return f"{self.index}:{self.prefix}"


def parse_witness(text: str) -> Witness:
    """The newest head in ``text``: one ``N:hex`` value, or a file's worth of them."""
    found = [Witness(int(m.group(1)), m.group(2))
             for m in HEAD_RE.finditer(text.lower())]
    if not found:
        raise ValueError(f"no audit head (<index>:<{HEAD_HEX} hex>) in the witness")
    return max(found, key=lambda w: w.index)


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    records: int
    """Intact, in-sequence records checked (up to the first error)."""
    first_error: str | None
    error_index: int | None
    """The index of the record that is damaged, missing, forged or out of place."""
    error_offset: int | None
    """Byte offset of the damage within its segment file (named in ``first_error``)."""
    truncated_tail: bool
    """A segment ends in a torn record from a crash; every complete record is intact."""
    keyed: bool = False
    """The chain was checked with the robot's key (False: CRC and sequence only)."""
    first_index: int | None = None
    last_index: int | None = None
    witnessed_to: int | None = None
    """The newest record a witness vouches for (everything up to it is proven)."""

    def proof(self) -> str:
        """Plain words: which records are proven, and how far."""
        if self.records == 0 or self.first_index is None or self.last_index is None:
            return "no records proven"
        span = f"records {self.first_index}..{self.last_index}"
        if not self.keyed:
            return f"{span} intact and in sequence; NOT proven (no key: anyone can rebuild it)"
        if self.witnessed_to is None:
            return (f"{span} proven by the key; no witness: records dropped from the end "
                    "would go unnoticed")
        tail = (f"; records {self.witnessed_to + 1}..{self.last_index} rest on the key alone"
                if self.last_index > self.witnessed_to else "")
        return (f"{span} proven by the key; up to record {self.witnessed_to} also by the "
                f"witness{tail}")


def verify(path: Path, key: bytes | None = None, witness: Witness | None = None, *,
           find_key: bool = True) -> VerifyReport:
    """Check CRCs, the index sequence, the keyed chain and the witness, across segments.

    ``key``: the audit key; by default read from ``<path>.key`` when that file exists.
    The first record found anchors the chain (older segments may have been rotated away).
    """
    files = segments(path)
    if not files:
        return VerifyReport(False, 0, f"no audit log at {path}", None, None, False)
    if key is None and find_key and key_path(path).exists():
        key = load_key(key_path(path))
    count, torn = 0, False
    expected: int | None = None
    first: int | None = None
    prev: str | None = None
    witnessed: int | None = None

    def error(seg: Path, index: int | None, offset: int, why: str) -> VerifyReport:
        where = f"record {index}" if index is not None else "first record"
        return VerifyReport(False, count, f"{seg.name}: {where} at offset {offset}: {why}",
                            index, offset, torn, key is not None, first,
                            None if expected is None else expected - 1, witnessed)

    for seg in files:
        for item in _scan(seg, key):
            if isinstance(item, _Damage):
                if item.torn:
                    torn = True
                    log.warning("%s: torn record at offset %d (crash during write)",
                                seg.name, item.offset)
                    continue
                index = expected
                if index is None and item.resume is not None:
                    index = item.resume.index - 1
                after = (f"; next intact record {item.resume.index} at offset "
                         f"{item.resume.offset}" if item.resume else "")
                return error(seg, index, item.offset, item.reason + after)
            if expected is not None and item.index != expected:
                return error(seg, expected, item.offset, f"found record {item.index} where "
                             f"{expected} belongs: a record is missing or out of order")
            if key is not None and prev is not None and item.prev != prev:
                return error(seg, item.index, item.offset,
                             "keyed chain broken: prev is not the HMAC of the preceding "
                             "record (forged, rewritten, or written with another key)")
            if witness is not None and item.index == witness.index:
                if key is not None and not item.digest.startswith(witness.prefix):
                    return error(seg, item.index, item.offset,
                                 f"the witness saw head {witness}, this record differs: "
                                 "the log was rewritten from here")
                witnessed = item.index
            first = item.index if first is None else first
            expected, prev = item.index + 1, item.digest
            count += 1
    last = None if expected is None else expected - 1
    if witness is not None and witnessed is None:
        if last is not None and witness.index > last:
            return VerifyReport(False, count, f"the witness saw record {witness.index} "
                                f"(head {witness}) but the log ends at record {last}: "
                                f"records {last + 1}..{witness.index} were dropped",
                                last + 1, None, torn, key is not None, first, last, None)
        return VerifyReport(False, count, f"the witness's record {witness.index} is not in "
                            "the log (rotated away, or another log)", witness.index, None,
                            torn, key is not None, first, last, None)
    return VerifyReport(True, count, None, None, None, torn, key is not None, first, last,
                        witnessed)

