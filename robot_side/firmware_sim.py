"""The firmware emulator: the serial protocol on a pseudo-terminal, with faults on tap.

``FirmwareEmulator`` owns one end of a serial line (the master side of a pty
it creates, or a tty device it is given), runs ``FirmwareModel`` in a thread
at ``rate_hz`` and answers like firmware would. It publishes a stable symlink
(``port_path``) to the current pty slave, so a driver configured with that
path finds the port again after ``vanish()`` / ``reappear()``.

Faults injected at run time hit the bytes on the wire (drop, corrupt, garbage,
truncate, delay outgoing frames; drop or corrupt incoming ones) or the model
(a stuck joint, the e-stop button). ``main()`` is ``telesurgery firmware-sim``
with an optional ZeroMQ REP control socket for the HIL rig.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import json
import logging
import os
import random
import select
import signal
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from robot_side.firmware_model import (
    Faults,
    FirmwareModel,
    Mode,
    corrupt_frames,
    damage_frame,
    default_params,
)
from robot_side.serial_protocol import FrameDecoder, Message, default_link_path, encode_frame
from telesurgery.config import check
from telesurgery.errors import ConfigError, TelesurgeryError
from telesurgery.gcpolicy import settle
from telesurgery.pacer import lift_normal_threads, lower_timer_slack, try_realtime

log = logging.getLogger(__name__)

MAX_DELAYED_FRAMES = 4096


@dataclass(frozen=True)
class FirmwareSnapshot:
    mode: str
    positions: tuple[float, ...]
    velocities: tuple[float, ...]
    efforts: tuple[float, ...]
    targets: tuple[float, ...]
    flags: int
    braked: bool
    watchdog_tripped: bool
    estop_pressed: bool
    frames_ok: int
    frames_bad: int
    targets_ignored: int
    last_valid_rx_ns: int
    trip_ns: int | None
    trip_latency_ms: float | None
    """Silence the watchdog measured when it tripped, by the firmware's own clock."""
    tx_frames: int
    tx_faults: int
    tty: str | None


class FirmwareEmulator:
    def __init__(self, port: str | None = None, n_joints: int = 6, *,
                 lower: Sequence[float] | None = None, upper: Sequence[float] | None = None,
                 max_velocity: Sequence[float] | None = None, watchdog_ms: float = 100.0,
                 rate_hz: float = 1000.0, state_rate_hz: float = 500.0,
                 link: str | Path | None = None, seed: int | None = None,
                 initial: Sequence[float] | None = None) -> None:
        check(1 <= n_joints <= 16, "joints", n_joints, "must be in 1..16")
        check(10.0 <= rate_hz <= 10_000.0, "rate_hz", rate_hz, "must be in [10, 10000]")
        check(0.0 < state_rate_hz <= rate_hz, "state_rate_hz", state_rate_hz,
              "must be in (0, rate_hz]")
        self._device = port
        self._own_link_dir: Path | None = None
        if port is None and link is None:
            base = os.environ.get("XDG_RUNTIME_DIR") or None
            self._own_link_dir = Path(tempfile.mkdtemp(prefix="ts-fw-", dir=base))
            link = self._own_link_dir / "ttyTS0"
        self._link = Path(link) if link is not None else None
        self._rate_hz = rate_hz
        self._state_period_ns = int(1e9 / state_rate_hz)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._model = FirmwareModel(default_params(n_joints, lower, upper, max_velocity),
                                    watchdog_ms, time.monotonic_ns(), initial)
        self._decoder = FrameDecoder("firmware rx")
        self._faults = Faults()
        self._delayed: collections.deque[tuple[int, bytes]] = collections.deque(
            maxlen=MAX_DELAYED_FRAMES)
        self._fd: int | None = None
        self._slave_fd: int | None = None
        self._tty: str | None = None
        self.tx_frames = 0
        self.tx_faults = 0
        self.tx_lost = 0
        self._cut_frame = False
        self._open_line()

    # ------------------------------------------------------------ the line
    @property
    def port_path(self) -> str:
        """What a driver should open: the stable symlink, or the given device."""
        return self._device if self._device is not None else str(self._link)

    @property
    def tty_path(self) -> str | None:
        """The current pty slave (changes on every ``reappear()``)."""
        return self._tty

    def _open_line(self) -> None:
        if self._device is not None:
            self._fd = os.open(self._device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            tty.setraw(self._fd)
            self._tty = self._device
            return
        master, slave = os.openpty()
        # Raw mode: no echo (we would read our own reports back) and no line editing.
        tty.setraw(slave)
        os.set_blocking(master, False)
        # Keeping a slave fd open means reads never see EIO while no driver is attached.
        self._fd, self._slave_fd, self._tty = master, slave, os.ttyname(slave)
        link = Path(self.port_path)
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(self._tty)
        tmp.replace(link)  # atomic: a driver never sees a missing or half-made link
        log.info("firmware emulator on %s (link %s)", self._tty, link)

    def _close_line(self) -> None:
        for fd in (self._fd, self._slave_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._slave_fd = None
        if self._device is None and self._link is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link.unlink()

    def vanish(self) -> None:
        """The port disappears (USB unplugged): the driver's next read or write fails."""
        with self._lock:
            log.warning("fault injection: port %s vanishes", self._tty)
            self._close_line()
            self._delayed.clear()
            self._cut_frame = False

    def reappear(self) -> None:
        """A new port comes up; the symlink follows it. The firmware kept running."""
        with self._lock:
            if self._fd is None:
                self._open_line()
                self._decoder.reset()

    # ------------------------------------------------------------ faults and buttons
    def inject(self, *, drop: float = 0.0, corrupt: float = 0.0, garbage: float = 0.0,
               delay_ms: float = 0.0, stuck_joint: int | None = None, truncate: float = 0.0,
               rx_drop: float = 0.0, rx_corrupt: float = 0.0) -> None:
        """Replace the active fault set; ``inject()`` with no arguments clears it."""
        faults = Faults(drop=drop, corrupt=corrupt, garbage=garbage, truncate=truncate,
                        delay_ms=delay_ms, stuck_joint=stuck_joint, rx_drop=rx_drop,
                        rx_corrupt=rx_corrupt)
        if stuck_joint is not None:
            check(0 <= stuck_joint < self._model.n, "inject.stuck_joint", stuck_joint,
                  f"must be in 0..{self._model.n - 1}")
        with self._lock:
            self._faults = faults
            self._model.stuck_joint = stuck_joint
        log.warning("fault injection: %s", faults)

    def press_estop(self) -> None:
        with self._lock:
            self._send(self._model.press_estop(), time.monotonic_ns())

    def release_estop(self) -> None:
        with self._lock:
            self._model.release_estop()

    def snapshot(self) -> FirmwareSnapshot:
        with self._lock:
            m = self._model
            return FirmwareSnapshot(
                mode=m.mode.value, positions=tuple(m.positions), velocities=tuple(m.velocities),
                efforts=tuple(m.efforts), targets=tuple(m.targets), flags=int(m.flags),
                braked=m.mode is Mode.BRAKED, watchdog_tripped=m.watchdog_tripped,
                estop_pressed=m.estop_pressed, frames_ok=self._decoder.counts["frames_ok"],
                frames_bad=self._decoder.bad_frames, targets_ignored=m.targets_ignored,
                last_valid_rx_ns=m.last_valid_rx_ns, trip_ns=m.trip_ns,
                trip_latency_ms=None if m.trip_latency_ns is None else m.trip_latency_ns / 1e6,
                tx_frames=self.tx_frames, tx_faults=self.tx_faults, tty=self._tty)

    # ------------------------------------------------------------ thread
    def start(self) -> FirmwareEmulator:
        if self._thread is None:
            self._halt.clear()
            self._thread = threading.Thread(target=self._run, name="firmware-sim", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        with self._lock:
            self._close_line()
        if self._own_link_dir is not None:
            with contextlib.suppress(OSError):
                self._own_link_dir.rmdir()

    def __enter__(self) -> FirmwareEmulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        # Stands in for a microcontroller: on a shared host it must not be starved by
        # the processes it is supposed to be independent of (falls back with a log line).
        lower_timer_slack()
        try_realtime(60)
        period_ns = int(1e9 / self._rate_hz)
        next_tick = next_state = time.monotonic_ns()
        while not self._halt.is_set():
            fd = self._fd
            wait_s = max(0, next_tick - time.monotonic_ns()) / 1e9
            readable = False
            if fd is None:
                self._halt.wait(wait_s)
            else:
                # Wake on input, not only on the tick, so replies go out at once. (A plain
                # try, not contextlib.suppress: this runs ~2000 times a second.)
                try:
                    readable = bool(select.select([fd], [], [], wait_s)[0])
                except (OSError, ValueError):  # the line vanished meanwhile
                    readable = False
            with self._lock:
                now = time.monotonic_ns()
                if readable:
                    self._receive(now)
                if now >= next_tick:
                    self._send(self._model.step(now), now)
                    next_tick = max(next_tick + period_ns, now)
                    if now >= next_state:
                        self._send([self._model.state_report(now)], now)
                        next_state = max(next_state + self._state_period_ns, now)
                if self._delayed:
                    self._flush_delayed(now)

    # ------------------------------------------------------------ bytes
    def _receive(self, now: int) -> None:
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno != errno.EIO:  # EIO: no process holds the slave side
                log.error("firmware read failed on %s: %s", self._tty, err)
            return
        f = self._faults
        if f.rx_corrupt:
            data = corrupt_frames(data, f.rx_corrupt, self._rng)
        bad_before = self._decoder.bad_frames
        messages = self._decoder.feed(data)
        if self._decoder.bad_frames != bad_before:
            self._model.on_bad_frame()
        for msg in messages:
            if f.rx_drop and self._rng.random() < f.rx_drop:
                continue
            self._send(self._model.on_message(msg, now), now)

    def _send(self, messages: list[Message], now: int) -> None:
        f = self._faults
        for msg in messages:
            frame = encode_frame(msg)
            self.tx_frames += 1
            frame, faulted = damage_frame(frame, f, self._rng)
            self.tx_faults += faulted
            if f.delay_ms > 0:
                self._delayed.append((now + int(f.delay_ms * 1e6), frame))
            elif frame:
                self._write(frame)

    def _flush_delayed(self, now: int) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            self._write(self._delayed.popleft()[1])

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            return
        if self._cut_frame:
            # The previous frame went out cut short: end it so it cannot swallow this one.
            data = b"\0" + data
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0  # nobody reads the port: the frame is lost, as on a real line
        except OSError as err:
            log.debug("firmware write failed on %s: %s", self._tty, err)
            written = 0
        if written < len(data):
            self.tx_lost += 1
        self._cut_frame = 0 < written < len(data) or (self._cut_frame and written == 0)


# ---------------------------------------------------------------- CLI
def handle_control(emu: FirmwareEmulator, request: Any) -> dict[str, Any]:
    """One JSON control request from the HIL rig -> the JSON reply."""
    if not isinstance(request, dict) or len(request) != 1:
        raise ConfigError(f"control request must be an object with one key, got {request!r}")
    ((op, arg),) = request.items()
    if op == "inject":
        if not isinstance(arg, dict):
            raise ConfigError(f"inject: expected an object, got {arg!r}")
        try:
            emu.inject(**arg)
        except TypeError as err:
            raise ConfigError(f"inject: {err}") from err
    elif op == "vanish" and arg is True:
        emu.vanish()
    elif op == "reappear" and arg is True:
        emu.reappear()
    elif op == "estop" and arg is True:
        emu.press_estop()
    elif op == "estop" and arg is False:
        emu.release_estop()
    elif op != "state":
        raise ConfigError(f"unknown control request {request!r}")
    return {"ok": True, "state": asdict(emu.snapshot())}


def _serve_control(emu: FirmwareEmulator, endpoint: str, stop: threading.Event) -> None:
    import zmq

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    bad = 0
    try:
        while not stop.is_set():
            if not sock.poll(100):
                continue
            raw = sock.recv()
            try:
                reply = handle_control(emu, json.loads(raw))
            except (ValueError, TelesurgeryError) as err:
                bad += 1
                log.warning("control request rejected (#%d): %s", bad, err)
                reply = {"ok": False, "error": str(err)}
            sock.send(json.dumps(reply).encode())
    finally:
        sock.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telesurgery firmware-sim",
                                description="manipulator firmware emulator on a pty")
    p.add_argument("--port", help="speak on this existing tty instead of creating a pty")
    p.add_argument("--link", default=str(default_link_path()),
                   help="stable symlink to the current pty (default: %(default)s)")
    p.add_argument("--joints", type=int, default=6)
    p.add_argument("--watchdog-ms", type=float, default=100.0)
    p.add_argument("--rate-hz", type=float, default=1000.0)
    p.add_argument("--state-rate-hz", type=float, default=500.0)
    p.add_argument("--control", help="ZeroMQ REP endpoint for fault injection (ipc:// only)")
    p.add_argument("--initial", help="comma-separated joint positions at boot (rad)")
    p.add_argument("--arm", choices=("default",),
                   help="emulate the shipped arm: its URDF joint limits, velocities and home")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.control and not args.control.startswith("ipc://"):
        # The control socket is unauthenticated, so it must never listen on a network.
        p.error("--control must be an ipc:// endpoint")
    try:
        initial = [float(q) for q in args.initial.split(",")] if args.initial else None
    except ValueError:
        p.error(f"--initial {args.initial!r}: expected comma-separated numbers")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        arm: dict[str, Any] = {}
        if args.arm == "default":
            from robot_side.kinematics import Kinematics

            kin = Kinematics.from_urdf()
            arm = {"lower": kin.lower.tolist(), "upper": kin.upper.tolist(),
                   "max_velocity": kin.velocity.tolist()}
            initial = initial if initial is not None else kin.home.tolist()
            args.joints = kin.n
        emu = FirmwareEmulator(port=args.port, n_joints=args.joints, watchdog_ms=args.watchdog_ms,
                               rate_hz=args.rate_hz, state_rate_hz=args.state_rate_hz,
                               link=None if args.port else args.link, initial=initial, **arm)
    except (OSError, ConfigError) as err:
        print(f"firmware-sim: {err}", file=sys.stderr)
        return 1
    settle("firmware emulator")  # a microcontroller has no collector pausing its loop
    with emu:
        # Its main thread (the control socket) shares the GIL with the emulator's loop: a
        # main thread preempted while holding it would stop the state reports (the robot
        # then trips serial_fault on a healthy rig). Lifted as the control process's are.
        lift_normal_threads()
        print(f"PORT {emu.tty_path} LINK {emu.port_path}", flush=True)
        if args.control:
            _serve_control(emu, args.control, stop)
        else:
            while not stop.wait(0.2):
                pass
    return 0
