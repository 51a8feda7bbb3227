"""A ZMTP-aware TCP fault proxy for the HIL rig (the kernel here has no netem).

The proxy sits between a ZeroMQ client and server, relays the 64-byte ZMTP 3.x
greeting untouched, then cuts each direction into ZMTP frames (flags byte: bit 0
MORE, bit 1 LONG, bit 2 COMMAND; 1- or 8-byte size; body). An *application
message* is a CURVE ``MESSAGE`` command, or under the NULL mechanism a run of data
frames up to one without MORE. Only application messages get faults; handshake
commands (HELLO/WELCOME/INITIATE/READY) and plain PING/PONG pass untouched and in
order, and are held back (never dropped) during a blackout, because real TCP would
retransmit them. A peer that does not speak ZMTP 3.x is relayed as raw bytes.

What a fault does on a CurveZMQ link (libzmq 4.3.5; asserted in test_faultproxy.py):

* loss: every MESSAGE carries an 8-byte nonce that must increase; a gap is fine,
  so the receiver just misses messages and the connection stays up.
* duplicate, reorder: the repeated or older nonce fails validation; libzmq drops the
  TCP connection, the client reconnects and re-handshakes, and traffic resumes.
  No copy is ever delivered twice, and each session delivers in order; but the
  receiving PULL socket fair-queues between pipes, so right after a reconnect the old
  session's unread tail may alternate with the new session's head (seen in CI).
  Nothing may rely on libzmq for ordering: the robot's CommandGate rejects any
  older command.
* corrupt: the MAC check fails; same outcome as a duplicate.
* delay/jitter: applied to application messages, order preserved.
* blackout: "drop" (the default) discards every application message in both
  directions while it lasts; "hold" queues them and releases them afterwards.
  TCP stays connected either way.

Under CURVE the MORE flag and the heartbeat commands are encrypted inside MESSAGE,
so the proxy cannot see part boundaries: a dropped part of a multipart message
leaves the receiver a message with the wrong number of parts (the schema decoder
must reject it), and heartbeats share the fault draws of ordinary messages.

One thread per proxy runs the ``relay.Relay`` selectors loop over all its
connections; a clean link is forwarded in the same loop iteration that read it.

Out of process (e.g. inside a network namespace), driven over a ZeroMQ REP socket::

    python -m hil_tests.faultproxy --listen command@0.0.0.0:5600=10.231.1.2:5555 \\
        --control ipc:///tmp/proxy.ctl

Requests are JSON objects, one key each: {"faults": {"upstream": {...},
"downstream": {...}}}, {"blackout": seconds | null}, {"end_blackout": true},
{"stats": true}, {"reset_stats": true}, {"ports": true}, {"stop": true}; a
"faults" request may add "only": [names], a "blackout" one "mode": "drop"|"hold".
Replies are {"ok": true, ...} or {"ok": false, "error": "...", "errors": count}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Collection, Mapping
from types import FrameType, TracebackType
from typing import Any, Literal

import zmq

from hil_tests.faults import BlackoutWindow, Decision, FaultModel, FaultSpec
from hil_tests.relay import AddedLatency, Counters, Relay
from telesurgery.errors import ConfigError, LinkError
from telesurgery.gcpolicy import settle
from telesurgery.pacer import SWITCH_INTERVAL_S, lift_normal_threads, try_realtime

log = logging.getLogger(__name__)

Addr = tuple[str, int]
BlackoutMode = Literal["drop", "hold"]
BLACKOUT_MODES = ("drop", "hold")
PROXY_PRIORITY = 30
"""SCHED_FIFO priority of the proxy's threads (``--priority``; 0: normal), a property of
the rig: the proxy stands in for the network, which in reality does not share the
robot's or the console's CPUs. At normal priority on the loaded two-core rig it read
commands up to tens of ms late (gaps the console never sent). Below the robot's threads
(45-50) and the console's command (40) and session (35) threads, so the arm's own loop
and the surgeon's commands still come first."""
DIRECTIONS = ("upstream", "downstream")
DROP = Decision(drop=True)


def _check_mode(mode: str) -> BlackoutMode:
    if mode not in BLACKOUT_MODES:
        raise ConfigError(f"blackout mode = {mode!r}: must be one of {list(BLACKOUT_MODES)}")
    return mode  # type: ignore[return-value]


class FaultProxy:
    """Relays TCP connections from ``listen`` to ``target`` with live, per-direction faults.

    Upstream is client -> server (console -> robot commands when the console
    connects), downstream is server -> client. ``port`` is the bound port, useful
    when ``listen`` asked for port 0.
    """

    def __init__(self, listen: Addr, target: Addr, name: str = "", *,
                 blackout_mode: BlackoutMode = "drop", seed: int | None = None,
                 source: str | None = None) -> None:
        """``source``: the address relayed connections leave from (the robot names a
        network path by it, dual path); None: the kernel's choice."""
        self.listen_addr = listen
        self.source = source
        self.target = target
        self.name = name or f"{listen[0]}:{listen[1]}->{target[0]}:{target[1]}"
        self.blackout_mode = _check_mode(blackout_mode)
        self.lock = threading.Lock()
        self.counters = {d: Counters() for d in DIRECTIONS}
        self.added = {d: AddedLatency() for d in DIRECTIONS}
        self._rng = random.Random(seed)
        self._models = {d: FaultModel(FaultSpec(), random.Random(0)) for d in DIRECTIONS}
        self._connections = {"connections": 0, "connect_failures": 0}
        self._blackout = BlackoutWindow()
        self._blackout_epoch = 0
        self._purged_epoch = 0
        self._listener: socket.socket | None = None
        self._relay: Relay | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.error: Exception | None = None
        """Set if the I/O loop died; every connection was then closed."""

    # ------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError(f"fault proxy {self.name}: not started")
        port: int = self._listener.getsockname()[1]
        return port

    def start(self) -> FaultProxy:
        if self._thread is not None:
            return self
        if self._stopping.is_set():
            raise RuntimeError(f"fault proxy {self.name}: stopped; create a new one")
        family = socket.AF_INET6 if ":" in self.listen_addr[0] else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(self.listen_addr)
            listener.listen(64)
        except OSError as err:
            listener.close()
            raise LinkError(f"fault proxy {self.name}: cannot listen on "
                            f"{self.listen_addr[0]}:{self.listen_addr[1]}: {err}") from err
        listener.setblocking(False)
        self._listener = listener
        self._relay = Relay(listener, self._wake_r, self.target, self,
                            rng=random.Random(self._rng.getrandbits(64)),
                            label=f"fault proxy {self.name}", source=self.source)
        self._thread = threading.Thread(target=self._run, name=f"faultproxy-{self.name}",
                                        daemon=True)
        self._thread.start()
        log.info("fault proxy %s: port %d -> %s:%d", self.name, self.port, *self.target)
        return self

    def _run(self) -> None:
        if self._relay is None:
            return
        try:
            self._relay.run(self._stopping)
        except Exception as err:
            # The relay closed every connection on the way out, so both ends see a dead
            # link and hold; the error stays visible here and in the log.
            log.exception("fault proxy %s: I/O loop failed", self.name)
            self.error = err

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.error("fault proxy %s: I/O thread still running after 5 s", self.name)
            self._thread = None
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------ faults
    def set_faults(self, upstream: FaultSpec | None = None,
                   downstream: FaultSpec | None = None) -> None:
        """Replace the faults of both directions at once; ``None`` is a clean direction."""
        with self.lock:
            self._models = {
                which: FaultModel(spec or FaultSpec(), random.Random(self._rng.getrandbits(64)))
                for which, spec in (("upstream", upstream), ("downstream", downstream))
            }
        log.info("fault proxy %s: upstream %s, downstream %s", self.name, upstream, downstream)

    def blackout(self, seconds: float | None = None, *, mode: BlackoutMode | None = None) -> None:
        """Black out both directions for ``seconds`` (``None``: until ``end_blackout()``)."""
        new_mode = self.blackout_mode if mode is None else _check_mode(mode)
        with self.lock:
            self._blackout.begin(time.monotonic_ns(), seconds)
            self.blackout_mode = new_mode
            self._blackout_epoch += 1
        log.info("fault proxy %s: blackout (%s) %s", self.name, new_mode,
                 "until ended" if seconds is None else f"for {seconds} s")
        self._wake()

    def end_blackout(self) -> None:
        with self.lock:
            self._blackout.end()
        log.info("fault proxy %s: blackout ended", self.name)
        self._wake()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            queued = self._relay.queued_bytes() if self._relay else dict.fromkeys(DIRECTIONS, 0)
            snap: dict[str, Any] = {
                d: {**dataclasses.asdict(self.counters[d]), "queued_bytes": queued[d],
                    "added_latency": self.added[d].percentiles()}
                for d in DIRECTIONS
            }
            snap.update(self._connections, name=self.name,
                        active=self._relay.active() if self._relay else 0,
                        blackout=self._blackout.active(time.monotonic_ns()))
        return snap

    def reset_stats(self) -> None:
        with self.lock:
            for counters in self.counters.values():
                for field in dataclasses.fields(counters):
                    setattr(counters, field.name, 0)
            for added in self.added.values():
                added.reset()
            self._connections = dict.fromkeys(self._connections, 0)

    # ------------------------------------------------------------ RelayPolicy (lock held)
    def decision(self, direction: str, now_ns: int) -> Decision:
        if self.blackout_mode == "drop" and self._blackout.active(now_ns):
            return DROP
        return self._models[direction].decide(now_ns)

    def blackout_state(self, now_ns: int) -> tuple[bool, bool, int | None]:
        active = self._blackout.active(now_ns)
        purge = active and self.blackout_mode == "drop" and \
            self._purged_epoch != self._blackout_epoch
        if purge:
            self._purged_epoch = self._blackout_epoch
        return active, purge, self._blackout.ends_at_ns()

    def count_connection(self, ok: bool) -> None:
        self._connections["connections" if ok else "connect_failures"] += 1

    def _wake(self) -> None:
        # A full wake pipe means a wake-up is already pending; a closed one, a stopped proxy.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")


class ProxySet:
    """Several named proxies (command, control, telemetry, video) driven as one link."""

    def __init__(self, routes: Mapping[str, tuple[Addr, Addr]], *,
                 blackout_mode: BlackoutMode = "drop", seed: int | None = None,
                 source: str | None = None) -> None:
        rng = random.Random(seed)
        self.proxies = {
            name: FaultProxy(listen, target, name, blackout_mode=blackout_mode,
                             seed=rng.getrandbits(64), source=source)
            for name, (listen, target) in routes.items()
        }

    @property
    def ports(self) -> dict[str, int]:
        return {name: proxy.port for name, proxy in self.proxies.items()}

    def __getitem__(self, name: str) -> FaultProxy:
        return self.proxies[name]

    def start(self) -> ProxySet:
        try:
            for proxy in self.proxies.values():
                proxy.start()
        except OSError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()

    def __enter__(self) -> ProxySet:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def set_faults(self, upstream: FaultSpec | None = None, downstream: FaultSpec | None = None,
                   only: Collection[str] | None = None) -> None:
        """Same faults on every proxy, or only on the ones named in ``only``."""
        unknown = set(only or ()) - set(self.proxies)
        if unknown:
            raise ConfigError(f"only = {sorted(unknown)}: no such proxy; known: "
                              f"{sorted(self.proxies)}")
        for name, proxy in self.proxies.items():
            if only is None or name in only:
                proxy.set_faults(upstream, downstream)

    def blackout(self, seconds: float | None = None, *, mode: BlackoutMode | None = None) -> None:
        for proxy in self.proxies.values():
            proxy.blackout(seconds, mode=mode)

    def end_blackout(self) -> None:
        for proxy in self.proxies.values():
            proxy.end_blackout()

    def stats(self) -> dict[str, dict[str, Any]]:
        return {name: proxy.stats() for name, proxy in self.proxies.items()}

    def reset_stats(self) -> None:
        for proxy in self.proxies.values():
            proxy.reset_stats()


# ---------------------------------------------------------------- out of process
def parse_route(text: str) -> tuple[str, Addr, Addr]:
    """``[NAME@]HOST:PORT=HOST:PORT`` -> (name, listen, target)."""
    name, _, rest = text.rpartition("@")
    listen, sep, target = rest.partition("=")
    if not sep:
        raise ConfigError(f"--listen {text!r}: expected [NAME@]HOST:PORT=HOST:PORT")
    return name or listen, _parse_addr(listen, text), _parse_addr(target, text)


def _parse_addr(text: str, whole: str) -> Addr:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {whole!r}: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _check_control_endpoint(endpoint: str) -> str:
    # The control socket is unauthenticated: keep it on this machine.
    local = ("ipc://", "tcp://127.0.0.1:", "tcp://localhost:", "tcp://[::1]:")
    if not endpoint.startswith(local):
        raise ConfigError(f"--control {endpoint!r}: must be ipc:// or loopback tcp://")
    return endpoint


def handle_request(proxies: ProxySet, request: Any) -> dict[str, Any]:
    """Apply one control request; raises ``ConfigError`` naming what was wrong."""
    if not isinstance(request, dict):
        raise ConfigError(f"request = {request!r}: must be a JSON object")
    options = {"only", "mode"}
    commands = sorted(set(request) - options)
    known = ["blackout", "end_blackout", "faults", "ports", "reset_stats", "stats", "stop"]
    if len(commands) != 1 or commands[0] not in known:
        raise ConfigError(f"request keys {sorted(request)}: need exactly one of {known}")
    command, value = commands[0], request[commands[0]]
    if command == "faults":
        if not isinstance(value, dict) or set(value) - set(DIRECTIONS):
            raise ConfigError(f"faults = {value!r}: must be an object with keys {DIRECTIONS}")
        specs = {d: FaultSpec.from_dict(value[d], f"faults.{d}") if value.get(d) else None
                 for d in DIRECTIONS}
        proxies.set_faults(specs["upstream"], specs["downstream"], only=request.get("only"))
    elif command == "blackout":
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise ConfigError(f"blackout = {value!r}: must be seconds or null")
        mode = request.get("mode")
        proxies.blackout(value, mode=None if mode is None else _check_mode(str(mode)))
    elif command == "end_blackout":
        proxies.end_blackout()
    elif command == "reset_stats":
        proxies.reset_stats()
    elif command == "stats":
        return {"ok": True, "stats": proxies.stats()}
    elif command == "ports":
        return {"ok": True, "ports": proxies.ports}
    return {"ok": True}


def serve_control(proxies: ProxySet, endpoint: str, stop: threading.Event) -> None:
    """Answer JSON requests on a REP socket until ``stop`` is set or a "stop" arrives."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.bind(endpoint)
    errors = 0
    try:
        while not stop.is_set():
            if not rep.poll(200):
                continue
            raw = rep.recv()
            try:
                request = json.loads(raw)
                reply = handle_request(proxies, request)
            except (ValueError, TypeError) as err:  # JSONDecodeError and ConfigError too
                errors += 1
                log.warning("fault proxy control: bad request #%d %r: %s", errors, raw[:200], err)
                reply = {"ok": False, "error": str(err), "errors": errors}
            rep.send_json(reply)
            if isinstance(request, dict) and "stop" in request and reply["ok"]:
                stop.set()
    finally:
        rep.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="telesurgery faultproxy",
                                     description="ZMTP-aware network fault proxy")
    parser.add_argument("--listen", action="append", required=True, metavar="ROUTE",
                        help="[NAME@]HOST:PORT=TARGET_HOST:PORT (repeatable; port 0 = any)")
    parser.add_argument("--control", metavar="ENDPOINT",
                        help="ZeroMQ REP endpoint for JSON commands (ipc:// or loopback tcp://)")
    parser.add_argument("--blackout-mode", choices=BLACKOUT_MODES, default="drop")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--source", metavar="ADDR", default=None,
                        help="address the relayed connections leave from (a path's own)")
    parser.add_argument("--priority", type=int, default=PROXY_PRIORITY,
                        help="SCHED_FIFO priority of the relay threads where permitted "
                             f"(default {PROXY_PRIORITY}; 0: normal priority)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if not 0 <= args.priority <= 99:
        parser.error("--priority must be within 0..99")
    try:
        routes = {name: (listen, target) for name, listen, target in map(parse_route, args.listen)}
        control = _check_control_endpoint(args.control) if args.control else None
    except ConfigError as err:
        parser.error(str(err))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    settle("fault proxy")  # it stands in for the network, which never pauses to collect
    # One process relays every channel, one thread each: the video relay's parsing must
    # not hold the GIL for Python's 5 ms while a command waits to be relayed.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if args.priority:
        try_realtime(args.priority, children_inherit=True)  # the relay threads, too
    with ProxySet(routes, blackout_mode=args.blackout_mode, seed=args.seed,
                  source=args.source) as proxies:
        if args.priority:
            lift_normal_threads(args.priority)  # threads started before the call above
        for name, port in proxies.ports.items():
            print(f"faultproxy ready {name} port {port}", flush=True)
        if control:
            serve_control(proxies, control, stop)
        else:
            while not stop.wait(0.5):
                pass
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG if "-v" in sys.argv else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
