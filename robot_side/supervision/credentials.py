"""The page's two secrets, each a 0600 file on the robot machine.

* the **access token** opens the page's WebSocket (anyone with the page open may press
  the e-stop); created at first start, it travels in the page's URL;
* the **on-site PIN** clears an e-stop from the page. Stored as a salted PBKDF2 hash,
  read at every attempt (staff can set or change it without a restart), and wrong
  guesses lock the page's clear out for a while: a 4-digit PIN must not be guessable
  by a script.

A file that is not ours or is readable by others is refused with one line, like the
robot's keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from telesurgery.errors import ConfigError

PBKDF2_ITERATIONS = 100_000
MAX_WRONG = 5
"""Wrong PINs within ``LOCKOUT_WINDOW_NS`` before the page refuses every clear."""
LOCKOUT_WINDOW_NS = 60_000_000_000
LOCKOUT_NS = 60_000_000_000


def _check_private(path: Path) -> None:
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{path}: owned by uid {st.st_uid}, not by the robot's uid "
                          f"{os.geteuid()}; refusing it")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"{path}: mode {stat.S_IMODE(st.st_mode):o} lets others read it; "
                          "chmod 600 it")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def load_or_create_token(path: Path) -> str:
    """The page's access token; created (0600) when missing."""
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(24) + "\n")
    _check_private(path)
    token = path.read_text().strip()
    if len(token) < 16:
        raise ConfigError(f"{path}: token shorter than 16 characters")
    return token


def set_pin(path: Path, pin: str) -> None:
    if not (4 <= len(pin) <= 64) or not pin.isprintable():
        raise ConfigError("the on-site PIN must be 4..64 printable characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, PBKDF2_ITERATIONS)
    _write_private(path, f"pbkdf2_sha256${PBKDF2_ITERATIONS}${salt.hex()}${digest.hex()}\n")


@dataclass(frozen=True)
class PinVerdict:
    ok: bool
    why: str
    """Plain words for the page and the audit record: never the PIN itself."""


class PinCheck:
    """Checks a PIN against the file; counts and locks out wrong guesses."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._wrong: deque[int] = deque(maxlen=MAX_WRONG)
        self._locked_until = 0
        self.refused = 0
        self._lock = threading.Lock()  # the page checks in worker threads

    def check(self, pin: object, now_ns: int) -> PinVerdict:
        with self._lock:
            verdict = self._check(pin, now_ns)
            self.refused += not verdict.ok
            return verdict

    def _check(self, pin: object, now_ns: int) -> PinVerdict:
        if now_ns < self._locked_until:
            return PinVerdict(False, "too many wrong PINs: clearing from the page is locked "
                                     f"for {(self._locked_until - now_ns) / 1e9:.0f} s")
        if not isinstance(pin, str) or not pin:
            return PinVerdict(False, "no on-site PIN given")
        try:
            _check_private(self.path)
            algo, iters, salt, digest = self.path.read_text().strip().split("$")
            if algo != "pbkdf2_sha256":
                raise ValueError(algo)
            want = bytes.fromhex(digest)
            got = hashlib.pbkdf2_hmac("sha256", pin.encode("utf-8", "replace")[:256],
                                      bytes.fromhex(salt), int(iters))
        except FileNotFoundError:
            return PinVerdict(False, "no on-site PIN is set on the robot machine "
                                     "(telesurgery page --set-pin)")
        except (ConfigError, ValueError, OSError) as err:
            return PinVerdict(False, f"the on-site PIN file is not usable: {err}")
        if hmac.compare_digest(want, got):
            self._wrong.clear()
            return PinVerdict(True, "on-site PIN accepted")
        self._wrong.append(now_ns)
        if len(self._wrong) == MAX_WRONG and now_ns - self._wrong[0] <= LOCKOUT_WINDOW_NS:
            self._locked_until = now_ns + LOCKOUT_NS
            self._wrong.clear()
        return PinVerdict(False, "wrong on-site PIN")
