"""The simulated rig as real processes: firmware emulator, robot node, fault proxy, console.

``SimRig`` is what ``telesurgery demo`` runs and what every HIL scenario runs:
each part is its own process started through the ``telesurgery`` command, with
configs written to the run folder, talking over real pseudo-terminals and real
CurveZMQ sockets. The fault proxy always sits between console and robot
(transparent when no fault is set) and is driven over its IPC control socket,
so the same rig works on loopback and across network namespaces.

With ``TELESURGERY_HIL_PORT`` naming a real serial port, no emulator is started
and the robot node drives that port: the scenarios then run against real firmware.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import zmq

from hil_tests.netns import NetnsPair
from hil_tests.servo_rig import servo_sections, servo_sim_argv
from transport.keys import add_commander, add_surgeon, init_keys

log = logging.getLogger(__name__)

T = TypeVar("T")
REAL_PORT_ENV = "TELESURGERY_HIL_PORT"
CHANNELS = ("command", "control", "telemetry", "video")
SIM_FRAME_ROTATION = (math.sqrt(0.5), 0.0, math.sqrt(0.5), 0.0)
"""Console-to-robot registration of the simulated rig: 90 deg about y, so the recorded
pen's axis (console +x) is the tool's axis (robot -z, pointing down) and the surgeon's
pen roll turns the instrument about its shaft, as a registered console does."""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_TRIP_RE = re.compile(r" TRIP (\{.*\})$", re.MULTILINE)
_TRANSITION_RE = re.compile(r"safety\.supervisor: (\w+) -> (\w+) \((\w+)\)")


def parse_trips(robot_log: str) -> list[dict[str, Any]]:
    """The ``TRIP {json}`` lines the robot node writes, one per ``TripRecord``."""
    return [json.loads(m.group(1)) for m in _TRIP_RE.finditer(robot_log)]


def parse_transitions(robot_log: str) -> list[tuple[str, str, str]]:
    """(from, to, reason) of each supervisor transition, in the order they happened."""
    return [(m.group(1), m.group(2), m.group(3)) for m in _TRANSITION_RE.finditer(robot_log)]


def poll(what: str, timeout_s: float, probe: Callable[[], T | None]) -> T:
    """``probe()`` until it returns something truthy; AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def remote_requests(console_config: str, ops: list[str]) -> list[dict[str, Any]]:
    """Open a surgeon session from ``console_config`` and send ``ops`` in turn."""
    from operator_console.config import ConsoleConfig
    from telesurgery.config import load
    from telesurgery.errors import LinkTimeout
    from transport.keys import ClientKeys
    from transport.link import ConsoleLink

    cfg = load(ConsoleConfig, Path(console_config)).link
    replies = []
    with ConsoleLink(cfg, ClientKeys.load_surgeon(cfg.keys_dir)) as link:
        for op in ops:
            deadline = time.monotonic() + 15.0
            while True:
                try:
                    reply = link.request(op, timeout_ms=2000)
                    break
                except LinkTimeout:
                    # The CURVE handshake of a fresh session takes a moment.
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            replies.append({"op": op, "ok": reply.ok, "state": reply.state,
                            "reason": reply.reason})
    return replies


def toml_text(sections: dict[str, dict[str, Any]]) -> str:
    """``sections`` as a TOML document (the rig's and the tests' config files)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str | Path):
            return json.dumps(str(v))
        if isinstance(v, dict):  # an inline table
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    out = []
    for name, body in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {value(v)}" for k, v in body.items() if v is not None)
        out.append("")
    return "\n".join(out)


@dataclass
class RigOptions:
    run_dir: Path
    console_seconds: float = 20.0
    rate_hz: float = 1000.0
    headless: bool = True
    video: bool = True
    reengage_after_s: float | None = 1.0
    ros_backend: str = "dds"
    observers: bool = False
    """Start the on-site supervision page and the session recorder with the robot."""
    hud_every_n: int = 0
    rotation_scale: float = 1.0
    netns: NetnsPair | None = None
    robot_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    nice: int = 0
    """Niceness of every rig process (negative only as root). The rig stands in for
    dedicated machines; on a shared CI box -10 keeps other jobs from starving it."""
    firmware_fifo: int = 0
    """SCHED_FIFO priority of the firmware emulator (as root; 0: normal). It stands in
    for a microcontroller, which no other job can starve."""
    proxy: bool = True
    """The fault proxy between console and robot; ``bench path`` measures without it."""
    servo_family: str | None = None
    """"dynamixel" or "feetech": the robot drives that smart-servo backend against
    ``telesurgery servo-sim`` on the pty instead of the firmware emulator
    (``hil_tests.servo_rig``; its control socket answers ``firmware()``)."""
    scripted_hand_waits: bool = False
    """The scripted surgeon's hand waits while the console is not engaged
    (``DeviceConfig.wait_while_held``): the scenario table stops and re-engages ~40
    times in one session, and without it the wrist's roll walks into its joint limit."""
    ros_commander: bool = False
    """Create the ROS 2 commander's key (``keys add-ros``) before the robot starts."""
    dual_path: bool = False
    """Two network paths, each through its own fault proxy (``proxy`` for path A,
    ``proxy_b`` for B; see ``DUAL_PATHS``). On loopback; with ``netns`` (made with
    ``NetnsPair(paths=2)``) each path is its own veth pair between the namespaces and
    the proxies listen on the robot's veth addresses."""
    mentor: bool = False
    """Also make a second surgeon key, ``mentor``, with the mentor flag (may take command
    without a grant): ``start_console("mentor", session={"surgeon": "mentor", ...})``."""


DUAL_PATHS = (
    # name, robot binds, proxy leaves from (the robot names the path by it), proxy listens
    ("A", "127.0.0.2", "127.0.0.4", "127.0.0.6"),
    ("B", "127.0.0.3", "127.0.0.5", "127.0.0.7"),
)
"""The dual-path rig's loopback addresses: console -> proxy -> robot, one set per path
(in namespaces, the robot's namespace has them on its own lo; the proxies listen on the
veth addresses instead)."""


class SimRig:
    """Starts the four processes, exposes their controls, always cleans up."""

    def __init__(self, opts: RigOptions) -> None:
        self.opts = opts
        self.run = opts.run_dir
        self.run.mkdir(parents=True, exist_ok=True)
        # The run folder holds the robot's e-stop socket and keys: the robot refuses a
        # runtime folder other accounts can enter (robot_side.localsock).
        self.run.chmod(0o700)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        ports = free_ports(8)
        self.robot_ports = dict(zip(CHANNELS, ports[:4], strict=True))
        self.proxy_ports = dict(zip(CHANNELS, ports[4:], strict=True))
        self.real_port = os.environ.get(REAL_PORT_ENV)
        ns = opts.netns
        self.robot_host = ns.robot_ip if ns else "127.0.0.1"

    # ------------------------------------------------------------ processes
    def _spawn(self, name: str, argv: list[str], where: str | None = None) -> None:
        out = (self.run / f"{name}.log").open("wb")
        cmd = [sys.executable, "-m", "telesurgery.cli", *argv]
        if shutil.which("setpriv"):
            # A rig whose owner is killed outright (SIGKILL, a CI timeout) must not leave a
            # robot node running at real-time priority: seen once, 22 min at 53 % of a
            # core, slowing every later run. The kernel sends each child SIGTERM when the
            # rig's process dies (the robot then holds the arm and writes its stop record).
            # setpriv (util-linux) rather than a preexec_fn: fork-safe in a threaded parent.
            cmd = ["setpriv", "--pdeathsig", "TERM", *cmd]
        root = os.geteuid() == 0
        if name == "firmware" and self.opts.firmware_fifo and root:
            cmd = ["chrt", "-f", str(self.opts.firmware_fifo), *cmd]
        elif self.opts.nice and (self.opts.nice > 0 or root):
            cmd = ["nice", "-n", str(self.opts.nice), *cmd]
        ns = self.opts.netns
        if ns is not None and where is not None:
            self.procs[name] = ns.run(where, cmd, stdout=out, stderr=subprocess.STDOUT)
        else:
            self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def _wait_log(self, name: str, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        path = self.run / f"{name}.log"
        while time.monotonic() < deadline:
            if text in path.read_text(errors="replace"):
                return
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited early; see {path}")
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not report {text!r} within {timeout_s} s; see {path}")

    def start(self) -> None:
        init_keys(self.run / "keys")
        if self.opts.mentor:
            add_surgeon(self.run / "keys", "mentor", mentor=True)
        if self.opts.ros_commander:  # ``[ros] command`` needs its key before the robot starts
            add_commander(self.run / "keys")
        serial_port = self.real_port or str(self.run / "ttyTS0")
        servo_family = self.opts.servo_family
        if not self.real_port and servo_family is not None:
            self._spawn("firmware", servo_sim_argv(servo_family, serial_port, self.run),
                        where="robot")
            self._wait_log("firmware", "servo-sim:", 15)
        elif not self.real_port:
            self._spawn("firmware", ["firmware-sim", "--link", serial_port,
                                     "--control", f"ipc://{self.run}/fw.ipc",
                                     "--arm", "default"],
                        where="robot")
            self._wait_log("firmware", "firmware emulator on", 15)
        robot_cfg = self.run / "robot.toml"
        sections: dict[str, dict[str, Any]] = {
            "link": {"host": "127.0.0.1", "keys_dir": self.run / "keys",
                     **{f"{c}_port": p for c, p in self.robot_ports.items()}},
            # The on-site page and the recorder are observers: off unless a test or the
            # demo asks for them, so the safety scenarios measure the control path alone
            # on a two-core machine (each costs a process beside the loop).
            "page": {"port": 0, "enabled": self.opts.observers},
            "record": {"folder": self.run / "recordings", "enabled": self.opts.observers},
            "serial": {"port": serial_port},
            "control": {"rate_hz": self.opts.rate_hz,
                        "rotation_scale": self.opts.rotation_scale},
            "ros": {"backend": self.opts.ros_backend, "domain_id": 1 + os.getpid() % 200},
            "safety.audit": {"path": self.run / "audit" / "robot.audit"},
            "safety.watchdog": {"require_video": self.opts.video},
            "estop": {"socket": self.run / "estop.sock"},
            "observe": {"socket": self.run / "observe.sock"},
        }
        if servo_family is not None:
            sections.update(servo_sections(servo_family, serial_port))
        if self.opts.dual_path:
            sections["link"]["paths"] = [{"name": n, "robot": r, "console": src}
                                         for n, r, src, _ in DUAL_PATHS]
        for key, body in self.opts.robot_overrides.items():
            sections.setdefault(key, {}).update(body)
        robot_cfg.write_text(toml_text(sections))
        self._spawn("robot", ["robot", "--config", str(robot_cfg),
                              "--summary", str(self.run / "robot.json")], where="robot")
        self._wait_log("robot", "robot node up", 60)
        if not self.opts.proxy:
            self.proxy_ports = dict(self.robot_ports)  # the console talks to the robot
            self.start_console()
            return
        if self.opts.dual_path:
            for n, robot, src, listen_on in self._dual_paths():
                name = "proxy" if n == "A" else f"proxy_{n.lower()}"
                routes = [f"{c}@{listen_on}:{self.proxy_ports[c]}={robot}:{p}"
                          for c, p in self.robot_ports.items()]
                self._spawn(name, ["faultproxy", *[a for r in routes for a in ("--listen", r)],
                                   "--source", src, "--control", f"ipc://{self.run}/{name}.ipc"],
                            where="robot")
                self._wait_log(name, "faultproxy ready", 30)
            self.start_console()
            return
        routes = [f"{c}@{self.robot_host}:{self.proxy_ports[c]}=127.0.0.1:{p}"
                  for c, p in self.robot_ports.items()]
        listen = [arg for r in routes for arg in ("--listen", r)]
        self._spawn("proxy", ["faultproxy", *listen,
                              "--control", f"ipc://{self.run}/proxy.ipc"], where="robot")
        self._wait_log("proxy", "faultproxy ready", 15)
        self.start_console()

    def start_console(self, name: str = "console",
                      session: dict[str, Any] | None = None, *,
                      display: dict[str, Any] | None = None,
                      seconds: float | None = None, direct: bool = False) -> None:
        """Start a console; ``session`` and ``display`` override keys of those sections,
        ``seconds`` the rig's ``console_seconds``. ``direct``: on the robot's side, straight
        to its ports, not through the fault proxy (a mentor reaching the robot by another
        path while the first console's is blacked out)."""
        o = self.opts
        cfg = self.run / f"{name}.toml"
        paths = ([{"name": n, "robot": listen_on} for n, _, _, listen_on in self._dual_paths()]
                 if o.dual_path and not direct else None)
        ports = self.robot_ports if direct else self.proxy_ports
        cfg.write_text(toml_text({
            "link": {"host": "127.0.0.1" if direct else self.robot_host,
                     "keys_dir": self.run / "keys",
                     **{f"{c}_port": p for c, p in ports.items()},
                     "paths": paths},
            "loop": {"rate_hz": o.rate_hz},
            "teleop": {"rate_hz": o.rate_hz, "frame_rotation": list(SIM_FRAME_ROTATION)},
            # Only when asked: a test may append its own [device] section.
            **({"device": {"wait_while_held": True}} if o.scripted_hand_waits else {}),
            "display": {"enabled": o.video, "headless": o.headless, "status_view": False,
                        "out_dir": self.run / "hud" if o.hud_every_n else None,
                        "every_n": o.hud_every_n, **(display or {})},
            "session": {"auto_engage": True, "reengage_after_s": o.reengage_after_s,
                        **(session or {})},
        }))
        self._spawn(name, ["console", "--config", str(cfg),
                           "--seconds", str(o.console_seconds if seconds is None else seconds),
                           "--summary", str(self.run / f"{name}.json")],
                    where="robot" if direct else "console")

    def _dual_paths(self) -> list[tuple[str, str, str, str]]:
        """``DUAL_PATHS``, the proxies listening on the veth addresses in namespaces."""
        ns = self.opts.netns
        if ns is None:
            return list(DUAL_PATHS)
        if len(ns.path_ips) < len(DUAL_PATHS):
            raise RuntimeError("the dual-path rig in namespaces needs NetnsPair(paths=2)")
        return [(n, robot, src, ns.path_ips[i][1])
                for i, (n, robot, src, _) in enumerate(DUAL_PATHS)]

    def wait(self, name: str, timeout_s: float) -> int:
        return self.procs[name].wait(timeout_s)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(10)

    def stop(self) -> None:
        """Stop everything: console and robot politely first (they write summaries)."""
        for name in ("console", "robot", "proxy", "proxy_b", "firmware"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop on SIGTERM; killing it", name)
                proc.kill()
                proc.wait(5)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()

    def __enter__(self) -> SimRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ controls
    def _request(self, endpoint: str, body: dict[str, Any], timeout_ms: int = 3000) -> Any:
        with self._ctx.socket(zmq.REQ) as s:
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVTIMEO, timeout_ms)
            s.connect(endpoint)
            s.send_json(body)
            return s.recv_json()

    def proxy(self, body: dict[str, Any]) -> Any:
        return self._request(f"ipc://{self.run}/proxy.ipc", body)

    def proxy_b(self, body: dict[str, Any]) -> Any:
        """Path B's fault proxy (``RigOptions.dual_path``)."""
        return self._request(f"ipc://{self.run}/proxy_b.ipc", body)

    def firmware(self, body: dict[str, Any]) -> Any:
        if self.real_port:
            raise RuntimeError("real firmware: no emulator control socket")
        return self._request(f"ipc://{self.run}/fw.ipc", body)

    def estop(self, action: str) -> str:
        from robot_side.estop import send

        return send(self.run / "estop.sock", action)

    def remote_requests(self, ops: list[str], console: str = "console") -> list[dict[str, Any]]:
        """Send control requests as the surgeon would, from the console's host.

        A separate short-lived process with the surgeon key and ``console``'s link
        config (so it crosses the fault proxy, and the veth when in namespaces);
        returns each reply as {op, ok, state, reason}.
        """
        code = ("import json, sys; from hil_tests.rig import remote_requests; "
                "print(json.dumps(remote_requests(sys.argv[1], sys.argv[2:])))")
        argv = [sys.executable, "-c", code, str(self.run / f"{console}.toml"), *ops]
        ns = self.opts.netns
        if ns is not None:
            out = ns.check_output("console", argv, timeout_s=30)
        else:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                 check=True).stdout
        replies: list[dict[str, Any]] = json.loads(out.strip().splitlines()[-1])
        return replies

    def state(self) -> tuple[str, str]:
        """The robot's (supervisor state, reason), asked over the local e-stop socket."""
        words = self.estop("status").split()
        if len(words) < 3 or words[0] != "ok":
            raise RuntimeError(f"unexpected e-stop status answer {' '.join(words)!r}")
        return words[1], words[2]

    def wait_following(self, timeout_s: float = 30.0) -> None:
        """Until the arm has followed the surgeon, uninterrupted, for half a second."""
        def steady() -> bool:
            if self.state()[0] != "following":
                return False
            n = len(self.transitions())
            time.sleep(0.5)
            return self.state()[0] == "following" and len(self.transitions()) == n
        poll("the arm to follow the surgeon", timeout_s, steady)

    def robot_log(self) -> str:
        return self.log("robot")

    def log(self, name: str) -> str:
        """What process ``name`` (robot, console, proxy, ...) wrote so far."""
        path = self.run / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def trips(self) -> list[dict[str, Any]]:
        """Every trip the robot logged so far (``TripRecord`` fields, monotonic ns)."""
        return parse_trips(self.robot_log())

    def transitions(self) -> list[tuple[str, str, str]]:
        """Every supervisor transition the robot logged so far: (from, to, reason)."""
        return parse_transitions(self.robot_log())

    def proxy_added_latency(self) -> dict[str, Any]:
        """What the fault proxy itself added to the console's commands (p50/p99 us).

        The demo's and the soak's command path crosses the proxy; with this, the
        figure of the system without it is known too. {} without a proxy.
        """
        if not self.opts.proxy or "proxy" not in self.procs:
            return {}
        try:
            stats = self.proxy({"stats": True})["stats"]
        except (zmq.ZMQError, KeyError, TypeError) as err:
            log.warning("fault proxy stats unavailable: %s", err)
            return {}
        added: dict[str, Any] = stats["command"]["upstream"].get("added_latency", {})
        return added

    def cpu_seconds(self, name: str, *, children: bool = True) -> float | None:
        """CPU time of process ``name`` so far (with its live children: the robot's video)."""
        import psutil

        try:
            proc = psutil.Process(self.procs[name].pid)
            procs = [proc, *(proc.children(recursive=True) if children else [])]
            total = 0.0
            for p in procs:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            return None
        return total

    def summary(self, name: str) -> dict[str, Any]:
        path = self.run / f"{name}.json"
        data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return data
