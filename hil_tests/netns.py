"""Console and robot as two hosts in network namespaces, joined by a veth pair.

``NetnsPair`` creates ``ts-con-<pid>-<n>`` and ``ts-rob-<pid>-<n>``, moves one end
of a veth pair into each, gives them 10.231.<k>.1/30 (console) and .2/30 (robot),
and brings lo and the veth up. The addresses exist only inside the two
namespaces, so concurrent pairs cannot clash with each other or with the host.
Processes start inside a namespace with ``run()`` (``ip netns exec``); ``cleanup()``
(also on exceptions, via the context manager) stops them and deletes both
namespaces, which deletes the veth pair with them.

Bandwidth limits use ``tc qdisc ... tbf`` on a veth end (this kernel has tbf but no
netem; delay and loss live in the userspace fault proxy). ``netns_available()``
says why namespaces cannot be used here, so tests skip with that reason.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
from types import TracebackType
from typing import Any, Literal

from telesurgery.errors import ConfigError, LinkError

log = logging.getLogger(__name__)

Host = Literal["console", "robot"]
COMMAND_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 3.0
SUBNET = "10.231"
_NS_RE = re.compile(r"^ts-(?:con|rob)-(\d+)-\d+$")
_counter = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT_S, check=False)
    if check and result.returncode != 0:
        raise LinkError(f"ip {' '.join(args)}: exit {result.returncode}: "
                        f"{result.stderr.strip()}")
    return result


@functools.lru_cache(maxsize=1)
def netns_available() -> tuple[bool, str]:
    """(True, "") when this process can create namespaces, else (False, why not)."""
    if not sys.platform.startswith("linux"):
        return False, f"network namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return False, "network namespaces need root (CAP_SYS_ADMIN); run the HIL tests as root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return False, f"'{tool}' (iproute2) is not installed"
    probe = f"ts-probe-{os.getpid()}-{secrets.token_hex(2)}"
    try:
        _ip("netns", "add", probe)
    except LinkError as err:
        return False, f"cannot create a network namespace: {err}"
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"cannot run 'ip netns': {err}"
    _ip("netns", "del", probe, check=False)
    return True, ""


def list_namespaces() -> list[str]:
    result = _ip("netns", "list", check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def remove_stale_namespaces() -> list[str]:
    """Delete ``ts-con-``/``ts-rob-`` namespaces whose creating process is gone."""
    removed = []
    for name in list_namespaces():
        match = _NS_RE.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    if removed:
        log.warning("removed stale namespaces from dead processes: %s", removed)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NetnsPair:
    """Two namespaces ("console", "robot") on a point-to-point veth /30 (``paths`` of them:
    path i on 10.(231+i).k.0/30, each its own veth pair, for the dual-path rig)."""

    def __init__(self, paths: int = 1) -> None:
        n = next(_counter)
        pid = os.getpid()
        self.console_ns = f"ts-con-{pid}-{n}"
        self.robot_ns = f"ts-rob-{pid}-{n}"
        token = secrets.token_hex(4)  # interface names are limited to 15 characters
        self.console_dev = f"tsc{token}"
        self.robot_dev = f"tsr{token}"
        k = (pid + n) % 250 + 1
        self.console_ip = f"{SUBNET}.{k}.1"
        self.robot_ip = f"{SUBNET}.{k}.2"
        major = int(SUBNET.split(".")[1])
        self.path_devs = [(self.console_dev, self.robot_dev)] + [
            (f"tsc{token}{i}", f"tsr{token}{i}") for i in range(1, paths)]
        self.path_ips = [(self.console_ip, self.robot_ip)] + [
            (f"10.{major + i}.{k}.1", f"10.{major + i}.{k}.2") for i in range(1, paths)]
        """(console, robot) device and address of each path; path 0 is the one above."""
        self._procs: list[subprocess.Popen[Any]] = []
        self._created = False

    def __enter__(self) -> NetnsPair:
        self.create()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()

    def create(self) -> None:
        self._created = True  # from here on, cleanup() has something to undo
        try:
            _ip("netns", "add", self.console_ns)
            _ip("netns", "add", self.robot_ns)
            for (cdev, rdev), (cip, rip) in zip(self.path_devs, self.path_ips, strict=True):
                _ip("link", "add", cdev, "type", "veth", "peer", "name", rdev)
                for ns, dev, ip in ((self.console_ns, cdev, cip), (self.robot_ns, rdev, rip)):
                    _ip("link", "set", dev, "netns", ns)
                    _ip("-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
                    _ip("-n", ns, "link", "set", "lo", "up")
                    _ip("-n", ns, "link", "set", dev, "up")
        except (LinkError, OSError, subprocess.TimeoutExpired):
            self.cleanup()
            raise
        log.info("namespaces %s (%s) and %s (%s) up", self.console_ns, self.console_ip,
                 self.robot_ns, self.robot_ip)

    def namespace(self, host: Host | str) -> str:
        """The namespace name for "console"/"robot" (or a namespace name itself)."""
        names = {"console": self.console_ns, "robot": self.robot_ns}
        if host in names:
            return names[host]
        if host in names.values():
            return host
        raise LinkError(f"namespace {host!r}: not one of {sorted(names)} or {list(names.values())}")

    def device(self, host: Host | str) -> str:
        return self.console_dev if self.namespace(host) == self.console_ns else self.robot_dev

    def run(self, ns: Host | str, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``ns``; it is stopped by ``cleanup()`` if still running."""
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace(ns), *argv], **popen_kwargs)
        self._procs.append(proc)
        return proc

    def check_output(self, ns: Host | str, argv: list[str],
                     timeout_s: float = COMMAND_TIMEOUT_S) -> str:
        """Run ``argv`` inside ``ns`` to completion; a non-zero exit raises ``LinkError``."""
        result = subprocess.run(["ip", "netns", "exec", self.namespace(ns), *argv],
                                capture_output=True, text=True, timeout=timeout_s, check=False)
        if result.returncode != 0:
            raise LinkError(f"{argv} in {ns}: exit {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def rate_limit(self, ns: Host | str, kbit: int, burst: int, latency_ms: int) -> None:
        """Token-bucket limit on what ``ns`` sends over the veth (``burst`` in bytes)."""
        for name, value in (("kbit", kbit), ("burst", burst), ("latency_ms", latency_ms)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"rate_limit {name} = {value!r}: must be a positive integer")
        self.check_output(ns, ["tc", "qdisc", "replace", "dev", self.device(ns), "root", "tbf",
                               "rate", f"{kbit}kbit", "burst", str(burst),
                               "latency", f"{latency_ms}ms"])
        log.info("%s: tbf %d kbit/s, burst %d B, latency %d ms", self.namespace(ns), kbit,
                 burst, latency_ms)

    def clear_rate_limit(self, ns: Host | str) -> None:
        subprocess.run(["ip", "netns", "exec", self.namespace(ns), "tc", "qdisc", "del", "dev",
                        self.device(ns), "root"], capture_output=True,
                       timeout=COMMAND_TIMEOUT_S, check=False)

    def cleanup(self) -> None:
        """Stop what ``run()`` started and delete both namespaces; safe to call twice."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("pid %d ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        self._procs.clear()
        if not self._created:
            return
        present = set(list_namespaces())
        for ns in (self.console_ns, self.robot_ns):
            if ns in present:
                result = _ip("netns", "del", ns, check=False)
                if result.returncode != 0:
                    log.error("could not delete namespace %s: %s", ns, result.stderr.strip())
        # A veth created before the move into a namespace would survive in the host.
        for cdev, _ in self.path_devs:
            _ip("link", "del", cdev, check=False)
        self._created = False
