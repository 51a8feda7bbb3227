"""The crash-safe audit log (invariant 7) and its verifier.

A log is a series of numbered segment files ``<path>.000001``, ``<path>.000002``, ...
holding framed records::

    magic "\\x89TSA" | u32 LE payload length | payload (JSON) | u32 LE CRC-32C(magic..payload)

The payload carries the record index, monotonic and wall timestamps, the kind, the
fields and ``prev``: the HMAC-SHA256, under the robot's audit key, of the previous
record's frame, so the records form one keyed chain across segments. The CRC says
whether a record is intact by itself; the index and the chain say whether one is
missing, out of order or forged: without the key nobody can append a record, delete
one and rebuild the chain, or rewrite one (issue 12.8).

The key is 32 random bytes in ``<path>.key`` (0600, the robot's uid), created at first
start; ``verify`` needs it to check the chain. Dropping the *last* records leaves a
shorter chain that is still valid, so the writer also exposes its head
(``head``: ``"<next index - 1>:<first 16 hex of its link>"``) which the robot sends in
every telemetry message (``Telemetry.audit_head``): whoever kept one (a console, a
recording) is a witness, and ``verify(..., witness=...)`` says up to which record the
log is proven and where the proof ends.

The payload is ASCII-only JSON (``ensure_ascii``) and the magic starts with byte 0x89,
so the magic can never occur inside a payload: after damage the verifier finds the
next record by searching for the magic, and the writer finds the last record by
searching backwards from the end.

Appends are single ``write()``s with ``O_APPEND``; ``sync=True`` adds ``fsync`` before
returning, so a caller reports a safety event only once it is on disk. A process
killed mid-write can leave at most one torn frame at the end of a segment, which the
verifier reports as ``truncated_tail`` rather than as damage. Any ``OSError`` makes the
log unhealthy for good (latched), raises ``AuditError`` and calls ``on_alarm``: the
robot node holds the arm rather than move without a record.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from safety.audit_key import create_key, key_path, load_key
from safety.config import AuditConfig
from telesurgery.crc import crc32c
from telesurgery.errors import AuditError

log = logging.getLogger(__name__)

MAGIC = b"\x89TSA"
_HEADER = struct.Struct("<4sI")
_CRC = struct.Struct("<I")
MAX_PAYLOAD = 64 * 1024
GENESIS = "0" * 64
"""``prev`` of the very first record of a log."""
HEAD_HEX = 16
"""Hex digits of the chain link the telemetry witness carries (64 bits)."""
HEAD_RE = re.compile(rf"(\d+):([0-9a-f]{{{HEAD_HEX}}})")


# --- records and their framing ------------------------------------------------------------


def _link(key: bytes | None, frame: bytes) -> str:
    """The chain link a record's frame gives the next record; "" without the key."""
    return hmac.new(key, frame, hashlib.sha256).hexdigest() if key is not None else ""

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Record:
    index: int
    mono_ns: int
    wall_ns: int
    kind: str
    fields: dict[str, Scalar]
    prev: str
    digest: str
    """HMAC-SHA256 of this record's frame under the audit key: the next record's
    ``prev``. Empty when the record was read without the key."""
    segment: Path
    offset: int
    size: int


def _frame(payload: bytes) -> bytes:
    head = _HEADER.pack(MAGIC, len(payload))
    return head + payload + _CRC.pack(crc32c(payload, crc32c(head)))


def _parse_at(data: bytes, off: int, segment: Path, key: bytes | None) -> Record | str:
    """The record framed at ``data[off:]``, or why there is none."""
    if len(data) - off < _HEADER.size:
        return "incomplete record header"
    magic, length = _HEADER.unpack_from(data, off)
    if magic != MAGIC:
        return "bad magic (not the start of a record)"
    if length > MAX_PAYLOAD:
        return f"implausible record length {length}"
    end = off + _HEADER.size + length + _CRC.size
    if end > len(data):
        return "record runs past the end of the file"
    (crc,) = _CRC.unpack_from(data, end - _CRC.size)
    if crc32c(data[off:end - _CRC.size]) != crc:
        return "checksum mismatch"
    try:
        obj = json.loads(data[off + _HEADER.size:end - _CRC.size])
        rec = Record(int(obj["index"]), int(obj["mono_ns"]), int(obj["wall_ns"]),
                     str(obj["kind"]), dict(obj["fields"]), str(obj["prev"]),
                     _link(key, data[off:end]), segment, off, end - off)
    except (ValueError, KeyError, TypeError) as err:  # a valid CRC over a malformed payload
        return f"malformed payload: {err}"
    return rec


@dataclass(frozen=True)
class _Damage:
    offset: int
    reason: str
    resume: Record | None
    """The next intact record in the same segment, if any."""
    torn: bool
    """Nothing intact follows and the bytes look like one interrupted write."""


def _next_record(data: bytes, start: int, segment: Path, key: bytes | None) -> Record | None:
    pos = data.find(MAGIC, start)
    while pos != -1:
        item = _parse_at(data, pos, segment, key)
        if isinstance(item, Record):
            return item
        pos = data.find(MAGIC, pos + 1)
    return None


def _looks_torn(tail: bytes) -> bool:
    """A crash mid-write leaves a prefix of one frame (after power loss, maybe zeros)."""
    if not tail.strip(b"\0"):
        return True
    if len(tail) < _HEADER.size:
        return MAGIC.startswith(tail[:len(MAGIC)])
    magic, length = _HEADER.unpack_from(tail)
    return bool(magic == MAGIC and len(tail) < _HEADER.size + length + _CRC.size)


def _scan(segment: Path, key: bytes | None = None) -> Iterator[Record | _Damage]:
    """Every intact record of a segment in file order, and a ``_Damage`` per bad stretch."""
    data = segment.read_bytes()
    off = 0
    while off < len(data):
        item = _parse_at(data, off, segment, key)
        if isinstance(item, Record):
            yield item
            off += item.size
            continue
        resume = _next_record(data, off + 1, segment, key)
        yield _Damage(off, item, resume, resume is None and _looks_torn(data[off:]))
        if resume is None:
            return
        off = resume.offset


def _last_record(segment: Path, key: bytes | None) -> tuple[Record | None, bool]:
    """The last intact record of a segment, and whether the segment ends with it."""
    data = segment.read_bytes()
    pos = len(data)
    while (pos := data.rfind(MAGIC, 0, pos)) != -1:
        item = _parse_at(data, pos, segment, key)
        if isinstance(item, Record):
            return item, item.offset + item.size == len(data)
    return None, not data


def segments(path: Path) -> list[Path]:
    """The segment files of the log at ``path`` in order, or ``[path]`` for one segment file."""
    if path.is_file():
        return [path]
    if not path.parent.is_dir():
        return []
    pattern = re.compile(re.escape(path.name) + r"\.(\d{6,})")
    found = []
    for p in path.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m is not None:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def read_records(path: Path, key: bytes | None = None) -> Iterator[Record]:
    """The intact records of a log (all segments) or of one segment file, in order.

    With the audit ``key`` each record's ``digest`` (its chain link) is filled in."""
    for segment in segments(path):
        for item in _scan(segment, key):
            if isinstance(item, Record):
                yield item


# --- the writer -------------------------------------------------------------------------------


class AuditLog:
    """Appends checksummed, hash-chained records; a context manager.

    Thread-safe. Reopening an existing log continues its index and chain; if its last
    segment does not end in an intact record (a crash tore the tail), writing goes on
    in a new segment and the torn bytes stay as evidence.
    """

    def __init__(self, cfg: AuditConfig, on_alarm: Callable[[str], None] | None = None) -> None:
        self.on_alarm = on_alarm
        """Called once, with the reason, when the log turns unhealthy: hold the arm."""
        self.healthy = True
        self.failures = 0
        self.rejected = 0
        self._cfg = cfg
        self._lock = threading.RLock()  # re-entrant: on_alarm may try to append
        self._fd = -1
        self._seq = 0
        self._size = 0
        self._index = 0
        self._prev = GENESIS
        self.head: str | None = None
        """``"<index>:<link prefix>"`` of the last record written: the telemetry witness.
        One reference, swapped after each append: any thread may read it."""
        if cfg.path.is_file():
            raise AuditError(f"{cfg.path} is a file; the log lives in {cfg.path}.NNNNNN")
        try:
            cfg.path.parent.mkdir(parents=True, exist_ok=True)
            self._key = self._open_key()
            self._resume()
        except OSError as err:
            raise self._fail(f"cannot open audit log {cfg.path}: {err}") from err

    @property
    def next_index(self) -> int:
        return self._index

    @property
    def segment(self) -> Path:
        """The segment being written."""
        return self._segment_path(self._seq)

    def append(self, kind: str, fields: dict[str, Scalar], *, sync: bool = True) -> int:
        """Append one record and return its index.

        ``sync=True`` (every safety event) returns only after ``fsync``; ``sync=False``
        is for bulky records that may be lost if the machine (not the process) dies.
        """
        self._check(kind, fields)
        with self._lock:
            if not self.healthy:
                raise AuditError(f"audit log is unhealthy; {kind!r} was not recorded")
            if self._fd < 0:
                raise self._fail(f"audit log is closed; {kind!r} was not recorded")
            index = self._index
            payload = json.dumps({
                "index": index, "mono_ns": time.monotonic_ns(),
                "wall_ns": time.time_ns(),  # wall-clock ok: for humans reading the log
                "kind": kind, "fields": fields, "prev": self._prev,
            }, separators=(",", ":")).encode("ascii")
            if len(payload) > MAX_PAYLOAD:
                self.rejected += 1
                raise AuditError(f"audit record {kind!r} too large: {len(payload)} bytes")
            frame = _frame(payload)
            try:
                if self._size and self._size + len(frame) > self._cfg.max_bytes:
                    self._rotate()
                _write_all(self._fd, frame)
                if sync:
                    os.fsync(self._fd)
                    if os.fstat(self._fd).st_nlink == 0:
                        raise OSError(errno.ENOENT, "segment file was deleted while open")
            except OSError as err:
                raise self._fail(f"cannot write audit record {index} ({kind}): {err}") from err
            self._size += len(frame)
            self._index += 1
            self._prev = _link(self._key, frame)
            self.head = f"{index}:{self._prev[:HEAD_HEX]}"
            return index

    def close(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            fd, self._fd = self._fd, -1
            try:
                os.fsync(fd)
            except OSError as err:
                raise self._fail(f"cannot sync audit log on close: {err}") from err
            finally:
                os.close(fd)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- internals ---

    def _check(self, kind: str, fields: dict[str, Scalar]) -> None:
        bad = None
        if not isinstance(kind, str) or not kind:
            bad = f"kind must be a non-empty string, got {kind!r}"
        else:
            for key, value in fields.items():
                if not isinstance(key, str) or not (
                        value is None or isinstance(value, str | int | float | bool)):
                    bad = f"field {key!r} of {kind!r}: unsupported {type(value).__name__}"
                    break
        if bad is not None:
            self.rejected += 1
            log.error("audit record rejected: %s", bad)
            raise AuditError(bad)

    def _open_key(self) -> bytes:
        path = key_path(self._cfg.path)
        if os.path.lexists(path):
            return load_key(path, owner=True)
        if segments(self._cfg.path):
            log.warning("audit log %s has no key file: its earlier records cannot be "
                        "proven; a new key starts here (better: a new audit path)",
                        self._cfg.path)
        log.info("audit log: new HMAC key at %s", path)
        return create_key(path)

    def _segment_path(self, seq: int) -> Path:
        return self._cfg.path.with_name(f"{self._cfg.path.name}.{seq:06d}")

    def _resume(self) -> None:
        existing = segments(self._cfg.path)
        seq = _seq_of(existing[-1]) if existing else 1
        for segment in reversed(existing):
            last, ends_file = _last_record(segment, self._key)
            if segment == existing[-1] and not ends_file:
                log.warning("%s does not end in an intact record; continuing in a new "
                            "segment (run `telesurgery audit verify`)", segment)
                seq += 1
            if last is not None:
                self._index, self._prev = last.index + 1, last.digest
                self.head = f"{last.index}:{last.digest[:HEAD_HEX]}"
                break
        self._open(seq)
        if self._size >= self._cfg.max_bytes:
            self._rotate()
        log.info("audit log %s: next record %d", self.segment, self._index)

    def _open(self, seq: int) -> None:
        path = self._segment_path(seq)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(fd)
            raise AuditError(f"{path} is being written by another process (another robot "
                             "node on the same safety.audit.path?); stop it or give this "
                             "node its own audit path") from err
        self._fd, self._seq, self._size = fd, seq, os.fstat(fd).st_size
        _fsync_dir(path.parent)  # the new segment's directory entry must survive a crash
        for old in segments(self._cfg.path)[:-self._cfg.keep_segments]:
            log.info("audit log: removing old segment %s (keep_segments=%d)", old,
                     self._cfg.keep_segments)
            old.unlink()

    def _rotate(self) -> None:
        os.fsync(self._fd)  # records written with sync=False are durable once rotated out
        os.close(self._fd)
        self._fd = -1
        self._open(self._seq + 1)

    def _fail(self, message: str) -> AuditError:
        self.failures += 1
        log.critical("audit log failure: %s", message)
        if self.healthy:
            self.healthy = False
            if self.on_alarm is not None:
                try:
                    self.on_alarm(message)
                except Exception:  # the AuditError below still reaches the caller
                    log.exception("audit on_alarm callback failed")
        return AuditError(message)


def _seq_of(segment: Path) -> int:
    return int(segment.name.rsplit(".", 1)[1])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n == 0:
            raise OSError(errno.ENOSPC, "write made no progress")
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
