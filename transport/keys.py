"""CurveZMQ key pairs, their folder layout, and the ``telesurgery keys`` command.

Layout under one root (``keys/`` by default)::

    robot/robot.key_secret, robot/robot.key          the robot's pair
    robot/authorized/surgeon/*.key                   public keys allowed to command
    robot/authorized/observers/<name>.key            public keys allowed to watch
    console/surgeon.key_secret, console/surgeon.key  the surgeon console's pair
    console/robot.key                                the robot's public key (server check)
    observers/<name>/<name>.key_secret, robot.key    one folder per observer, handed over
    surgeons/<name>/<name>.key_secret, robot.key     one folder per further surgeon (add-surgeon)
    robot/authorized/surgeon/<name>.mentor           marks surgeon <name> a mentor (may take over)
    ros/ros.key_secret, ros/robot.key                the ROS 2 commander (opt-in, add-ros)

The role of a key is the folder its public half sits in on the robot; nothing
in the key itself grants anything. A surgeon key's file name is its identity (the
name the HUDs show as "In command: NAME"; the first surgeon's is ``surgeon``), and
an empty ``<name>.mentor`` file beside it lets that surgeon take command without a
grant (``transport.session_guard``, the handoff rule). Modes are set explicitly, whatever the umask:
every folder 0700, secret files 0600, public files 0644. The robot refuses a
secret that others can read, an authorised-keys folder others can write (they
could authorise themselves) and a folder without a usable surgeon key.

``telesurgery keys reload`` asks the running robot (over its local e-stop socket,
as SIGHUP does) to re-read the authorised keys: a removed key gets no new session,
and a live session of a removed surgeon key is refused and the arm holds.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

from telesurgery.errors import AuthError
from telesurgery.helptext import plain_help

log = logging.getLogger(__name__)

SURGEON_USER = "surgeon"
OBSERVER_PREFIX = "observer:"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_RESERVED = frozenset({"robot", "surgeon"})
MENTOR_SUFFIX = ".mentor"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who holds a surgeon key: its name (the key file's stem) and whether a mentor."""

    name: str
    mentor: bool = False


def _robot_dir(root: Path) -> Path:
    return root / "robot"


def _authorized_dir(root: Path, role: str) -> Path:
    return _robot_dir(root) / "authorized" / ("surgeon" if role == "surgeon" else "observers")


def _check_name(name: str, observer: bool = True) -> None:
    """Names become file names: no paths, no dots; observers can not pose as a role."""
    if not _NAME_RE.match(name) or (observer and name in _RESERVED):
        raise AuthError(f"key name {name!r}: use 1-32 letters, digits, '_' or '-'"
                        + (f", not {sorted(_RESERVED)}" if observer else ""))


def _private_dir(path: Path) -> Path:
    """``path`` and every folder made on the way to it, 0700 whatever the umask."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for folder in (path, *missing):
        folder.chmod(0o700)
    return path


def _create_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """Create ``name.key`` and ``name.key_secret`` in ``folder`` (made 0700 first)."""
    old = os.umask(0o077)  # the secret is never readable by others, not even for a moment
    try:
        public, secret = zmq.auth.create_certificates(_private_dir(folder), name)
    finally:
        os.umask(old)
    Path(secret).chmod(0o600)
    Path(public).chmod(0o644)
    return Path(public), Path(secret)


def _install(src: Path, dst: Path) -> None:
    """Copy a public key file; 0644 whatever the umask."""
    shutil.copyfile(src, dst)
    dst.chmod(0o644)


def _check_not_writable_by_others(folder: Path) -> None:
    mode = folder.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise AuthError(f"{folder} is writable by other accounts (mode "
                        f"{stat.S_IMODE(mode):04o}): anyone could authorise a key; chmod 700 it")


def _load_secret(path: Path) -> tuple[bytes, bytes]:
    if not path.is_file():
        raise AuthError(f"secret key file missing: {path}")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthError(f"secret key file {path} is readable by others; chmod 600 it")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise AuthError(f"secret key file {path} is not a CurveZMQ certificate: {err}") from err
    if secret is None:
        raise AuthError(f"{path} holds no secret key")
    return public, secret


def _load_public(path: Path) -> bytes:
    if not path.is_file():
        raise AuthError(f"public key file missing: {path}")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise AuthError(f"public key file {path} is not a CurveZMQ certificate: {err}") from err
    if secret is not None:
        raise AuthError(f"{path} contains a secret key; install only the public .key file")
    return public


def init_keys(root: Path, observers: Sequence[str] = (), force: bool = False) -> None:
    """Create the robot's, the surgeon's and each observer's pair and install the public keys."""
    for name in observers:
        _check_name(name)
    if _robot_dir(root).exists() and not force:
        raise AuthError(f"{_robot_dir(root)} already exists; refusing to replace keys "
                        "(telesurgery keys init --force starts over)")
    for sub in ("robot", "console", "observers", "surgeons"):
        shutil.rmtree(root / sub, ignore_errors=True)
    _private_dir(root)
    robot_public, _ = _create_pair(_robot_dir(root), "robot")
    _private_dir(_authorized_dir(root, "surgeon"))
    _private_dir(_authorized_dir(root, "observer"))
    _private_dir(root / "observers")
    surgeon_public, _ = _create_pair(root / "console", "surgeon")
    _install(robot_public, root / "console" / "robot.key")
    _install(surgeon_public, _authorized_dir(root, "surgeon") / "surgeon.key")
    for name in observers:
        add_observer(root, name)
    log.info("created keys under %s (observers: %s)", root, list(observers) or "none")


def add_observer(root: Path, name: str) -> Path:
    """Create an observer's pair in ``observers/<name>/`` and authorise its public key."""
    _check_name(name)
    robot_public = _robot_dir(root) / "robot.key"
    _load_public(robot_public)
    folder = root / "observers" / name
    if folder.exists():
        raise AuthError(f"observer {name!r} already exists at {folder}")
    public, _ = _create_pair(folder, name)
    _install(robot_public, folder / "robot.key")
    _install(public, _authorized_dir(root, "observer") / f"{name}.key")
    log.info("observer %r created in %s and authorised", name, folder)
    return folder


def install_public_key(root: Path, pubfile: Path, role: str, name: str | None = None) -> Path:
    """Authorise an existing public key file for ``role`` ("surgeon" or "observer")."""
    if role not in ("surgeon", "observer"):
        raise AuthError(f"role {role!r}: must be 'surgeon' or 'observer'")
    _load_public(pubfile)
    stem = name or pubfile.name.removesuffix(".key")
    _check_name(stem, observer=role == "observer")
    folder = _authorized_dir(root, role)
    if not folder.is_dir():
        raise AuthError(f"authorised-keys folder missing: {folder}; run 'telesurgery keys init'")
    target = folder / f"{stem}.key"
    if target.exists():
        raise AuthError(f"{target} already exists")
    _install(pubfile, target)
    log.info("installed %s as %s key %s", pubfile, role, target)
    return target


def add_surgeon(root: Path, name: str, mentor: bool = False) -> Path:
    """Create a further surgeon's pair in ``surgeons/<name>/`` and authorise it.

    ``mentor``: the robot lets this surgeon take command without a grant (an
    empty ``<name>.mentor`` beside its public key; delete it to withdraw).
    """
    _check_name(name)
    robot_public = _robot_dir(root) / "robot.key"
    _load_public(robot_public)
    folder = root / "surgeons" / name
    target = _authorized_dir(root, "surgeon") / f"{name}.key"
    if folder.exists() or target.exists():
        raise AuthError(f"surgeon {name!r} already exists ({folder} or {target})")
    public, _ = _create_pair(folder, name)
    _install(robot_public, folder / "robot.key")
    _install(public, target)
    if mentor:
        marker = target.with_suffix(MENTOR_SUFFIX)
        marker.touch()
        marker.chmod(0o644)
    log.info("surgeon %r created in %s and authorised%s", name, folder,
             " as a mentor" if mentor else "")
    return folder


def add_commander(root: Path, name: str = "ros") -> Path:
    """Create the ROS 2 commander's pair in ``<name>/`` and authorise it as a surgeon key.

    Opt-in (``telesurgery keys add-ros``): the robot's ``[ros] command`` side uses it
    to connect to the link like a console, so it holds command only like one.
    """
    _check_name(name)
    robot_public = _robot_dir(root) / "robot.key"
    _load_public(robot_public)
    folder = root / name
    target = _authorized_dir(root, "surgeon") / f"{name}.key"
    if folder.exists() or target.exists() or name in ("console", "observers"):
        raise AuthError(f"commander {name!r} already exists ({folder} or {target})")
    public, _ = _create_pair(folder, name)
    shutil.copyfile(robot_public, folder / "robot.key")
    shutil.copyfile(public, target)
    target.chmod(0o644)
    log.info("ROS commander %r created in %s and authorised as a surgeon key", name, folder)
    return folder


@dataclass(frozen=True)
class ServerKeys:
    """The robot's pair and where the authorised public keys live."""

    public: bytes
    secret: bytes
    surgeon_dir: Path
    observer_dir: Path

    @classmethod
    def load(cls, root: Path) -> ServerKeys:
        """Load or raise ``AuthError``; the robot must not start without its authorised keys."""
        try:
            public, secret = _load_secret(_robot_dir(root) / "robot.key_secret")
            surgeon_dir = _authorized_dir(root, "surgeon")
            observer_dir = _authorized_dir(root, "observer")
            for folder in (surgeon_dir, observer_dir):
                if not folder.is_dir():
                    raise AuthError(f"authorised-keys folder missing: {folder}; "
                                    "without it no peer can be verified")
            for folder in (_robot_dir(root), surgeon_dir.parent, surgeon_dir, observer_dir):
                _check_not_writable_by_others(folder)
            keys = cls(public, secret, surgeon_dir, observer_dir)
            if SURGEON_USER not in keys.authorized().values():
                raise AuthError(f"no usable surgeon public key in {surgeon_dir} "
                                "(missing, empty or not a CurveZMQ public key)")
        except AuthError as err:
            log.error("robot keys unusable, refusing to start: %s", err)
            raise
        return keys

    def identities(self) -> dict[bytes, Identity]:
        """Map z85 surgeon public key -> its identity (name, mentor flag); read fresh."""
        out: dict[bytes, Identity] = {}
        for path in sorted(self.surgeon_dir.glob("*.key")):
            try:
                key = _load_public(path)
            except AuthError:
                continue  # authorized() already said so
            stem = path.name.removesuffix(".key")
            out[key] = Identity(stem, path.with_suffix(MENTOR_SUFFIX).is_file())
        return out

    def authorized(self) -> dict[bytes, str]:
        """Map z85 public key -> ZAP user id ("surgeon" or "observer:<name>").

        Read fresh on every call so that installing or removing a key takes
        effect on reload. A file that is not a public key is skipped with an
        error (that key gets no session); surgeon wins if a key is in both.
        """
        users: dict[bytes, str] = {}
        for folder, user_of in ((self.observer_dir, lambda stem: OBSERVER_PREFIX + stem),
                                (self.surgeon_dir, lambda stem: SURGEON_USER)):
            for path in sorted(folder.glob("*.key")):
                try:
                    users[_load_public(path)] = user_of(path.name.removesuffix(".key"))
                except AuthError as err:
                    log.error("ignoring authorised key: %s", err)
        return users


@dataclass(frozen=True)
class ClientKeys:
    """A console's or observer's pair plus the robot's public key it expects."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load_surgeon(cls, root: Path, name: str | None = None) -> ClientKeys:
        """The first surgeon's pair (``console/``), or surgeon ``name``'s (``add_surgeon``)."""
        if name is None or name == SURGEON_USER:
            public, secret = _load_secret(root / "console" / "surgeon.key_secret")
            return cls(public, secret, _load_public(root / "console" / "robot.key"))
        _check_name(name)
        folder = root / "surgeons" / name
        public, secret = _load_secret(folder / f"{name}.key_secret")
        return cls(public, secret, _load_public(folder / "robot.key"))

    @classmethod
    def load_commander(cls, root: Path, name: str = "ros") -> ClientKeys:
        """The ROS 2 commander's pair from ``<root>/<name>/`` (``add_commander``)."""
        _check_name(name)
        folder = root / name
        public, secret = _load_secret(folder / f"{name}.key_secret")
        return cls(public, secret, _load_public(folder / "robot.key"))

    @classmethod
    def load_observer(cls, root: Path, name: str) -> ClientKeys:
        _check_name(name)
        folder = root / "observers" / name
        public, secret = _load_secret(folder / f"{name}.key_secret")
        return cls(public, secret, _load_public(folder / "robot.key"))


def main(argv: list[str]) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=Path("keys"), help="keys root")
    common.add_argument("-v", "--verbose", action="store_true")
    parser = argparse.ArgumentParser(prog="telesurgery keys",
                                     description=plain_help(__doc__).split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_init = sub.add_parser("init", parents=[common], help="create all key pairs")
    p_init.add_argument("--observer", action="append", default=[], metavar="NAME")
    p_init.add_argument("--force", action="store_true", help="replace existing keys")
    p_obs = sub.add_parser("add-observer", parents=[common], help="create an observer pair")
    p_obs.add_argument("name")
    p_sur = sub.add_parser("add-surgeon", parents=[common],
                           help="create a further surgeon's pair (one in command at a time)")
    p_sur.add_argument("name")
    p_sur.add_argument("--mentor", action="store_true",
                       help="may take command without a grant (emergency takeover)")
    p_ros = sub.add_parser("add-ros", parents=[common],
                           help="create the ROS 2 commander's pair (surgeon role, opt-in)")
    p_ros.add_argument("--name", default="ros", help="folder and key name (default: ros)")
    p_inst = sub.add_parser("install", parents=[common], help="authorise a public key file")
    p_inst.add_argument("pubfile", type=Path)
    p_inst.add_argument("--role", choices=("surgeon", "observer"), required=True)
    p_inst.add_argument("--name", help="name to install it under (default: file stem)")
    sub.add_parser("show", parents=[common], help="list the robot key and authorised keys")
    p_reload = sub.add_parser("reload", help="make the running robot re-read the "
                              "authorised keys (as SIGHUP does); revoked sessions are dropped")
    p_reload.add_argument("--config", type=Path, help="robot config (for its local socket)")
    p_reload.add_argument("--socket", type=Path, help="the robot's local e-stop socket")
    p_reload.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "reload":
        return _reload(args.config, args.socket)
    try:
        if args.cmd == "init":
            init_keys(args.dir, args.observer, force=args.force)
            print(f"keys created under {args.dir}")
        elif args.cmd == "add-observer":
            print(f"observer keys in {add_observer(args.dir, args.name)}")
        elif args.cmd == "add-surgeon":
            print(f"surgeon keys in {add_surgeon(args.dir, args.name, args.mentor)}")
        elif args.cmd == "add-ros":
            print(f"ROS commander keys in {add_commander(args.dir, args.name)}")
        elif args.cmd == "install":
            print(f"installed {install_public_key(args.dir, args.pubfile, args.role, args.name)}")
        else:
            keys = ServerKeys.load(args.dir)
            print(f"robot {keys.public.decode()}")
            names = keys.identities()
            for public, user in sorted(keys.authorized().items(), key=lambda kv: kv[1]):
                who = names.get(public)
                label = user if who is None else (
                    f"{user}:{who.name}" + (" (mentor)" if who.mentor else ""))
                print(f"{label:<32} {public.decode()}")
    except AuthError as err:
        print(f"telesurgery keys: {err}", file=sys.stderr)
        return 1
    return 0


def _reload(config: Path | None, socket_path: Path | None) -> int:
    from robot_side.estop import client_target, send

    try:
        path, robot_uid = client_target(config, socket_path)
        answer = send(path, "reload-keys", "keys", robot_uid=robot_uid)
    except (OSError, ValueError) as err:  # ConfigError is a ValueError
        print(f"telesurgery keys reload: {err}", file=sys.stderr)
        return 1
    print(answer)
    return 0 if answer.startswith("ok") else 1
