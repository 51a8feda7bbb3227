"""A bus of emulated smart servos on a pseudo-terminal: Dynamixel 2.0 or Feetech STS.

``ServoBusEmulator`` owns the master side of a pty, publishes a stable symlink
to its slave (``port_path``), decodes instruction packets with the codecs of
``robot_side.servos.wire`` and answers as the servos on a half-duplex bus
would (what each servo answers: ``robot_side.servos.answers``): each status
packet leaves only after the bytes before it had time to cross the wire at
``baudrate`` (10 bits a byte) plus the servo's return delay, so a backend
measures the rate the real bus would sustain. Faults hit the
servos (silent, hardware-error bits, overload) or the status bytes on the wire
(noise, truncation, a wrong ID, a corrupted checksum), from a seeded RNG.

It is the registered simulated device of the servo backends (``telesurgery
servo-sim``), used by the tests and the demo alike; the vendors' SDKs talk to it
in tests/test_servo_emulator.py as independent clients.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import tempfile
import threading
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from robot_side.servos import answers, wire
from robot_side.servos.model import ServoModel
from robot_side.servos.tables import FAMILIES, ServoFamily
from telesurgery.config import check
from telesurgery.pacer import lower_timer_slack, try_realtime

log = logging.getLogger(__name__)

POLL_S = 0.002
EMULATOR_PRIORITY = 60
"""SCHED_FIFO priority of the bus thread, where permitted: the firmware emulator's."""


@dataclass(frozen=True)
class BusFaults:
    silent: frozenset[int] = frozenset()
    """Servo IDs that no longer answer (unplugged, dead)."""
    noise: float = 0.0
    """Probability that random bytes precede a status packet."""
    truncate: float = 0.0
    wrong_id: float = 0.0
    """Probability that a status packet carries the ID of a device not on the bus."""
    corrupt: float = 0.0
    """Probability that a status packet's checksum/CRC is broken by a flipped bit."""


@dataclass(frozen=True)
class ServoSnapshot:
    servo_id: int
    position_rad: float
    goal_rad: float
    torque_on: bool
    hardware_error: int
    watchdog_tripped: bool
    watchdog_trips: int
    watchdog_trip_ns: int | None
    last_addressed_ns: int


@dataclass
class BusCounts:
    instructions: int = 0
    statuses: int = 0
    faults_applied: int = 0
    rx: dict[str, int] = field(default_factory=dict)


class ServoBusEmulator:
    def __init__(self, family: str | ServoFamily, ids: Sequence[int], *,
                 baudrate: int = 1_000_000, return_delay_us: float = 20.0,
                 link: str | Path | None = None, seed: int | None = None,
                 initial: Sequence[float] | None = None) -> None:
        self.family = FAMILIES[family] if isinstance(family, str) else family
        check(len(ids) > 0 and len(set(ids)) == len(ids), "servo ids", list(ids),
              "must be distinct")
        check(all(0 <= i < wire.BROADCAST_ID - 1 for i in ids), "servo ids", list(ids),
              "must be in 0..252")
        check(baudrate > 0, "baudrate", baudrate, "must be > 0")
        start = list(initial) if initial is not None else [0.0] * len(ids)
        check(len(start) == len(ids), "initial", start, f"must have {len(ids)} values")
        now = time.monotonic_ns()
        self.servos = {i: ServoModel(self.family, i, now, q)
                       for i, q in zip(ids, start, strict=True)}
        self.baudrate = baudrate
        self._byte_ns = 10 * 1_000_000_000 / baudrate
        self._return_delay_ns = int(return_delay_us * 1000)
        self._dxl = self.family.name == "dynamixel"
        self._decoder: wire.DxlDecoder | wire.StsDecoder = (
            wire.DxlDecoder() if self._dxl else wire.StsDecoder())
        self._rng = random.Random(seed)
        self._faults = BusFaults()
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._bus_free_ns = 0
        self.counts = BusCounts()
        self._own_dir: Path | None = None
        if link is None:
            base = os.environ.get("XDG_RUNTIME_DIR") or None
            self._own_dir = Path(tempfile.mkdtemp(prefix="ts-servo-", dir=base))
            link = self._own_dir / "ttySERVO0"
        self._link = Path(link)
        self._fd: int | None = None
        self._slave_fd: int | None = None
        self._line_gen = 0
        """Bumped at every unplug and plug-in: the reader tells a stale line by it."""
        self._retired: list[int] = []
        """Unplugged lines' master descriptors, for the reader to close: it may be using one
        (closed under it, the number can come back as another file, or the read fails)."""
        self._open_line()

    # ------------------------------------------------------------ the line
    @property
    def port_path(self) -> str:
        return str(self._link)

    def _open_line(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        tty.setraw(master)
        os.set_blocking(master, False)
        self._fd, self._slave_fd = master, slave
        self._line_gen += 1
        tmp = self._link.with_name(f".{self._link.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self._link)
        log.info("%s servo bus emulator: ids %s on %s (link %s), %d baud", self.family.name,
                 sorted(self.servos), os.ttyname(slave), self._link, self.baudrate)

    def _close_line(self) -> None:
        """Unplug (under ``_lock``): the master goes to the reader to close, if it runs."""
        master, slave = self._fd, self._slave_fd
        self._fd = self._slave_fd = None
        self._line_gen += 1
        with contextlib.suppress(FileNotFoundError):
            self._link.unlink()
        if master is not None:
            self._retired.append(master)
        if slave is not None:
            _close(slave)
        if self._thread is None:
            self._close_retired()

    def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for fd in retired:
            _close(fd)

    def vanish(self) -> None:
        """The USB adapter is unplugged: the port goes, the servos keep their last goal."""
        with self._lock:
            log.warning("fault injection: servo bus %s vanishes", self._link)
            self._close_line()

    def reappear(self) -> None:
        """Plugged in again: a new pty behind the same link; the servos kept running."""
        with self._lock:
            if self._fd is None:
                self._open_line()
                self._decoder = wire.DxlDecoder() if self._dxl else wire.StsDecoder()

    def start(self) -> ServoBusEmulator:
        if self._thread is None:
            self._halt.clear()
            self._thread = threading.Thread(target=self._run, name="servo-bus-emulator",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=2.0)
        with self._lock:
            self._close_line()
        if self._own_dir is not None:
            with contextlib.suppress(OSError):
                self._own_dir.rmdir()

    def __enter__(self) -> ServoBusEmulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------ faults and views
    def inject(self, *, silent: Sequence[int] = (), noise: float = 0.0, truncate: float = 0.0,
               wrong_id: float = 0.0, corrupt: float = 0.0) -> None:
        """Replace the wire fault set; ``inject()`` with no arguments clears it."""
        for name, p in (("noise", noise), ("truncate", truncate), ("wrong_id", wrong_id),
                        ("corrupt", corrupt)):
            check(0.0 <= p <= 1.0, f"inject.{name}", p, "must be a probability")
        faults = BusFaults(frozenset(silent), noise, truncate, wrong_id, corrupt)
        with self._lock:
            self._faults = faults
        log.warning("servo bus fault injection: %s", faults)

    def inject_error(self, servo_id: int, bits: int) -> None:
        """Force hardware-error bits on (the cause stays until ``bits`` = 0)."""
        with self._lock:
            self.servos[servo_id].inject_error(bits, time.monotonic_ns())

    def inject_overload(self, servo_id: int, on: bool = True) -> None:
        with self._lock:
            self.servos[servo_id].inject_overload(on, time.monotonic_ns())

    def move_by_hand(self, servo_id: int, position_rad: float) -> bool:
        """A person turns a joint whose torque is off (calibration); False if it resists."""
        with self._lock:
            servo = self.servos[servo_id]
            servo.step(time.monotonic_ns())
            if servo.torque_on:
                return False
            fam = self.family
            ticks = fam.centre_tick + position_rad / fam.rad_per_tick
            servo.position = min(max(ticks, 0.0), fam.ticks_per_rev - 1.0)
            servo.refresh()
            return True

    def snapshot(self, servo_id: int) -> ServoSnapshot:
        with self._lock:
            s = self.servos[servo_id]
            s.step(time.monotonic_ns())
            return ServoSnapshot(servo_id, s.position_rad, s.goal_rad(), s.torque_on,
                                 s.hardware_error, s.watchdog_tripped, s.watchdog_trips,
                                 s.watchdog_trip_ns, s.last_addressed_ns)

    def rx_counts(self) -> dict[str, int]:
        with self._lock:
            return self._decoder.counts.as_dict()

    # ------------------------------------------------------------ serving
    def _run(self) -> None:
        # Stands in for the servos' own microcontrollers, as the firmware emulator does
        # for the arm's: on a shared host the robot it serves (control loop at SCHED_FIFO
        # 50) must not starve it, or a healthy bus reads as silent servos (falls back
        # with a log line where not permitted).
        lower_timer_slack()
        try_realtime(EMULATOR_PRIORITY)
        while not self._halt.is_set():
            with self._lock:
                fd, gen = self._fd, self._line_gen
                if self._retired:  # unplugged since the last pass: no read of ours is on it
                    self._close_retired()
            if fd is None:  # unplugged: the servos keep running, nobody hears them
                time.sleep(POLL_S)
                continue
            try:
                ready = select.select([fd], [], [], POLL_S)[0]
                data = os.read(fd, 4096) if ready else b""
            except BlockingIOError:
                data = b""
            except OSError as err:
                if self._halt.is_set():
                    return
                if self._line_gen != gen:
                    continue  # unplugged under the read: its slave end is gone (EIO)
                log.error("servo bus emulator: read failed: %s", err)
                return
            now = time.monotonic_ns()
            with self._lock:
                for servo in self.servos.values():
                    servo.step(now)
                if self._line_gen != gen:
                    data = b""  # sent on a line unplugged meanwhile: nobody heard it
                replies = self._feed(data, now) if data else []
            for due_ns, frame in replies:
                self._send_at(fd, gen, due_ns, frame)

    def _feed(self, data: bytes, now: int) -> list[tuple[int, bytes]]:
        """Replies with the monotonic time each one finishes crossing the wire."""
        packets = self._decoder.feed(data)
        out: list[tuple[int, bytes]] = []
        t = max(now, self._bus_free_ns)
        replies: list[tuple[int, bytes]] = []
        if isinstance(self._decoder, wire.DxlDecoder):
            # A Dynamixel answers a packet with a bad CRC addressed to it with a CRC error.
            replies += [(i, answers.dxl_status(self.servos, i, wire.DXL_ERR_CRC, b""))
                        for i in self._decoder.crc_failed_ids if i in self.servos]
            self._decoder.crc_failed_ids.clear()
        for packet in packets:
            self.counts.instructions += 1
            t += int(packet.size * self._byte_ns)
            replies += (answers.dxl_answers(self.servos, self.family, packet, now) if self._dxl
                        else answers.sts_answers(self.servos, packet, now))
        for servo_id, frame in replies:
            sent = self._damage(servo_id, frame)
            if sent is not None:
                t += self._return_delay_ns + int(len(sent) * self._byte_ns)
                out.append((t, sent))
        self._bus_free_ns = t
        return out

    def _send_at(self, fd: int, gen: int, due_ns: int, frame: bytes) -> None:
        """Only the reader sends, on the line it read from (still open: it closes them)."""
        wait = due_ns - time.monotonic_ns()
        if wait > 0:
            time.sleep(wait / 1e9)
        if self._line_gen != gen:
            return  # unplugged while the reply crossed the wire
        try:
            os.write(fd, frame)
            self.counts.statuses += 1
        except OSError as err:
            log.warning("servo bus emulator: write failed: %s", err)

    def _damage(self, servo_id: int, frame: bytes) -> bytes | None:
        f = self._faults
        if servo_id in f.silent:
            return None
        rng = self._rng
        if f.wrong_id and rng.random() < f.wrong_id:
            self.counts.faults_applied += 1
            # A stray or misaddressed device: an ID that is not on this bus. (An ID byte
            # damaged on the wire fails the CRC/checksum instead: see ``corrupt``.)
            strays = [i for i in range(253) if i not in self.servos]
            other = strays[(servo_id * 7) % len(strays)]
            # ... answering with its own data (same length, other values).
            if self._dxl:
                body = wire.dxl_unstuff(frame[7:-2])
                noise = bytes(rng.randrange(256) for _ in body[2:])
                frame = wire.dxl_encode(other, body[0], body[1:2] + noise)
            else:
                noise = bytes(rng.randrange(256) for _ in frame[5:-1])
                frame = wire.sts_encode(other, frame[4], noise)
        if f.corrupt and rng.random() < f.corrupt:
            self.counts.faults_applied += 1
            buf = bytearray(frame)
            buf[-1] ^= 1 << rng.randrange(8)
            frame = bytes(buf)
        if f.truncate and rng.random() < f.truncate:
            self.counts.faults_applied += 1
            frame = frame[:rng.randrange(3, len(frame))]
        if f.noise and rng.random() < f.noise:
            self.counts.faults_applied += 1
            frame = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12))) + frame
        return frame


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
