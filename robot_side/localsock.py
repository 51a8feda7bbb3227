"""The robot's local runtime folder and Unix-socket peer checks, both ways.

The on-site e-stop must not be interceptable by another local account, nor lost to a
second robot node. Four rules, each checked here and tested with a real second uid
(tests/test_estop_local.py):

* **The folder is the robot's.** ``secure_runtime_dir`` creates the folder 0700 (0750
  when a staff group is configured) whatever the umask; an existing one is refused
  unless it is a real directory (not a symlink) owned by the robot's uid and writable
  by nobody else. Whoever can write the folder could swap the socket for a fake.
* **A live socket is never unlinked.** ``claim_socket`` takes an exclusive ``flock``
  on ``<socket>.lock`` for the node's lifetime and, if the socket exists, connects to
  it first: a node that answers is named in the refusal. Only a dead socket owned by
  the robot's uid is replaced.
* **The server checks its clients** (``SO_PEERCRED``): the robot's uid, root, or a
  member of the configured group.
* **Clients check the server** (``SO_PEERCRED`` on their connected socket): its uid
  must be the robot's (configured, else the client's own) or root, before any answer
  is trusted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import os
import pwd
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from telesurgery.errors import TelesurgeryError

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")


class LocalEndpointError(TelesurgeryError, PermissionError):
    """The local runtime folder or socket is not safely the robot's; one line says why."""


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int

    def describe(self) -> str:
        try:
            name = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            name = "?"
        return f"uid {self.uid} ({name}), pid {self.pid}"


def peer_cred(sock: socket.socket) -> PeerCred:
    """The kernel's record of who is at the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return PeerCred(*_UCRED.unpack(raw))


def group_id(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError as err:
        raise LocalEndpointError(f"estop.group {name!r}: no such group") from err


def user_id(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError as err:
        raise LocalEndpointError(f"estop.robot_user {name!r}: no such user") from err


def in_group(uid: int, gid: int, group: int) -> bool:
    """Whether ``uid`` (primary group ``gid``) belongs to ``group``, supplementary included."""
    if gid == group:
        return True
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return group in os.getgrouplist(user.pw_name, user.pw_gid)


def secure_runtime_dir(folder: Path, group: int | None = None) -> None:
    """Create ``folder`` for the robot, or refuse one another account could tamper with."""
    mode = 0o750 if group is not None else 0o700
    created = False
    try:
        folder.mkdir(mode=mode)
        created = True
    except FileExistsError:
        pass
    except FileNotFoundError:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=mode)
        created = True
    st = folder.lstat()
    me = os.geteuid()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise LocalEndpointError(f"runtime folder {folder} is not a plain directory "
                                 "(a symlink or a file); refusing to use it")
    if st.st_uid != me:
        raise LocalEndpointError(f"runtime folder {folder} belongs to uid {st.st_uid}, not "
                                 f"the robot's uid {me}: someone else may swap its sockets; "
                                 "remove it or configure estop.socket elsewhere")
    if created:
        # mkdir's mode is masked by the umask; set it exactly, and the staff group.
        if group is not None:
            os.chown(folder, -1, group)
        folder.chmod(mode)
        st = folder.lstat()
    perm = stat.S_IMODE(st.st_mode)
    # Without a staff group the folder is the robot's alone (0700). With one, its members
    # may enter and read (0750, group-owned), never write: writing is swapping sockets.
    foreign = perm & 0o077 if group is None else (
        perm & 0o027 or (perm & 0o070 and st.st_gid != group))
    if foreign:
        want = "700" if group is None else "750 and chgrp it to the staff group"
        raise LocalEndpointError(f"runtime folder {folder} is open to other accounts "
                                 f"(mode {perm:04o}); chmod {want}")


def _alive(path: Path) -> PeerCred | None:
    """Who serves ``path`` right now, or None when nothing listens there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except OSError as err:
            if err.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return None
            raise LocalEndpointError(f"cannot probe {path}: {err}") from err
        return peer_cred(probe)


def claim_socket(path: Path) -> int:
    """Lock ``path`` for this process and clear a dead socket; return the lock's fd.

    Refuses (``LocalEndpointError``) when another node holds the lock or answers on the
    socket, or when the path is not a socket of the robot's uid. Keep the fd open for
    the server's lifetime and pass it to ``release_socket``.
    """
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            holder = _alive(path)
            who = f" ({holder.describe()})" if holder else ""
            raise LocalEndpointError(f"another robot node already serves the e-stop at "
                                     f"{path}{who}; stop it or give this node another "
                                     "estop.socket") from err
        if os.fstat(fd).st_uid != os.geteuid():
            raise LocalEndpointError(f"{lock_path} belongs to another uid; refusing")
        if os.path.lexists(path):
            st = path.lstat()
            if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
                raise LocalEndpointError(f"{path} exists and is not a socket of the robot's "
                                         "uid; refusing to replace it")
            holder = _alive(path)
            if holder is not None:
                raise LocalEndpointError(f"another robot node already serves the e-stop at "
                                         f"{path} ({holder.describe()}); refusing to take "
                                         "it over")
            log.info("removing the dead e-stop socket %s of an earlier run", path)
            path.unlink()
    except BaseException:
        os.close(fd)
        raise
    return fd


def release_socket(path: Path, lock_fd: int) -> None:
    """Remove our socket, then drop the lock: the next node finds the path free."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(lock_fd)


def bind_private(sock: socket.socket, path: Path, group: int | None) -> None:
    """Bind ``sock`` at ``path`` with mode 0600 (0660 with the staff group) from the start."""
    old = os.umask(0o117 if group is not None else 0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if group is not None:
        os.chown(path, -1, group)
        path.chmod(0o660)
    else:
        path.chmod(0o600)


def default_runtime_dir() -> Path:
    """``/run/telesurgery`` for root; ``$XDG_RUNTIME_DIR/telesurgery`` (a 0700 folder the
    login manager gives each user) otherwise; ``/tmp/telesurgery-<uid>`` as a last resort,
    which ``secure_runtime_dir`` refuses if another account created it first."""
    uid = os.geteuid()
    if uid == 0:
        return Path("/run/telesurgery")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "telesurgery"
    return Path(f"/tmp/telesurgery-{uid}")
