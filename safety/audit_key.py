"""The audit log's HMAC key: 32 random bytes only the robot's uid can read.

Kept in ``<log path>.key`` (0600), created at the first start with ``O_EXCL`` so an
existing key is never replaced; a key another account could read or replace is refused.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from telesurgery.errors import AuditError


def key_path(path: Path) -> Path:
    """Where the log at ``path`` (or its segment ``path``) keeps its key: ``<log>.key``."""
    base = re.sub(r"\.\d{6,}$", "", path.name)
    return path.with_name(base + ".key")


def load_key(path: Path, *, owner: bool = False) -> bytes:
    """The audit key at ``path``; ``AuditError`` unless it is private (and, with
    ``owner``, for the writer, of this process's uid)."""
    try:
        st = path.lstat()
    except FileNotFoundError as err:
        raise AuditError(f"no audit key at {path}") from err
    if not stat.S_ISREG(st.st_mode) or (owner and st.st_uid != os.geteuid()):
        raise AuditError(f"audit key {path} is not a plain file of this uid; refusing it")
    if st.st_mode & 0o077:
        raise AuditError(f"audit key {path} is readable by others "
                         f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError as err:
        raise AuditError(f"audit key {path} is not hex: {err}") from err
    if len(key) != 32:
        raise AuditError(f"audit key {path} holds {len(key)} bytes, not 32")
    return key


def create_key(path: Path) -> bytes:
    """A new random key in ``path`` (0600 from the start, never over an existing file)."""
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.hex().encode("ascii") + b"\n")  # 65 bytes: one write
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the key's directory entry must survive a crash with the log
    finally:
        os.close(dir_fd)
    return key
