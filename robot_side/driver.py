"""The manipulator driver: the serial protocol over any port pyserial can open.

The driver never decides to move. It transmits exactly what it is told
(targets, hold, release, heartbeat), keeps the newest ``StateReport`` with the
monotonic time it arrived (older ones are worthless to a control loop), queues
fault reports in a bounded deque, and reports a vanished port by raising
``SerialLinkError`` and clearing ``connected``. ``reconnect()`` only re-opens
and re-handshakes: the firmware holds on a new handshake and stays put until
the caller sends ``release()`` and targets.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import serial
import serial.tools.list_ports

from robot_side.gilwindow import ControlWindow
from robot_side.lateperiods import Busy
from robot_side.serial_protocol import (
    PROTOCOL_VERSION,
    FaultReport,
    FrameDecoder,
    Heartbeat,
    Hello,
    Hold,
    JointTargets,
    Message,
    Release,
    StateReport,
    default_link_path,
    encode_frame,
)
from telesurgery.config import check
from telesurgery.errors import SchemaError, SerialLinkError
from telesurgery.pacer import try_realtime
from telesurgery.seqnum import U32, u32_reached

log = logging.getLogger(__name__)

READER_CHUNK_NS = 100_000
"""A report's decode and hand-over (~30-60 us cold): started no nearer than this to a
control deadline, so the control thread does not wake to a GIL the reader holds."""

MAX_FAULTS = 64
READ_TIMEOUT_S = 0.05
HELLO_RETRY_S = 0.1


@dataclass(frozen=True)
class SerialConfig:
    port: str = "auto"
    """A device, a pyserial URL, or "auto": the emulator's link, else the only serial port."""
    baudrate: int = 1_000_000
    n_joints: int = 6
    write_timeout_ms: int = 20
    reconnect_interval_ms: int = 500
    handshake_timeout_ms: int = 500
    exclusive: bool = True
    """Lock the port (flock on POSIX) so a second process cannot interleave frames."""

    def __post_init__(self) -> None:
        check(bool(self.port), "serial.port", self.port, "must not be empty")
        check(self.baudrate > 0, "serial.baudrate", self.baudrate, "must be > 0")
        check(1 <= self.n_joints <= 16, "serial.n_joints", self.n_joints, "must be in 1..16")
        for name in ("write_timeout_ms", "reconnect_interval_ms", "handshake_timeout_ms"):
            value = getattr(self, name)
            check(0 < value <= 60_000, f"serial.{name}", value, "must be in 1..60000")


def resolve_port(port: str) -> str:
    """Turn "auto" into a concrete port; anything else is used as given."""
    if port != "auto":
        return port
    link = default_link_path()
    if link.exists():
        return str(link)
    ports: list[str] = [p.device for p in serial.tools.list_ports.comports()]
    if len(ports) == 1:
        return ports[0]
    raise SerialLinkError(f"serial.port = 'auto': no emulator link at {link} and "
                          f"{len(ports)} serial ports {ports}; set serial.port")


def _chunk_reader(ser: Any) -> Callable[[], bytes]:
    """Whatever has arrived, in one select and one read per wake-up.

    pyserial's ``read(in_waiting)`` costs an ioctl, a select and a read per call,
    each a GIL hand-off; on a loaded machine that starves the reader. With a file
    descriptor we read it directly; other URL backends keep pyserial's read.
    """
    try:
        fd = ser.fileno()
    except (AttributeError, OSError, ValueError, serial.SerialException):
        return lambda: bytes(ser.read(max(1, ser.in_waiting)))

    def read() -> bytes:
        if not select.select([fd], [], [], READ_TIMEOUT_S)[0]:
            return b""
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return b""
        if not data:
            raise SerialLinkError("port readable but returned no data: the device is gone")
        return data

    return read


class SerialManipulator:
    def __init__(self, cfg: SerialConfig) -> None:
        self.cfg = cfg
        self.port = cfg.port
        self.connected = False
        self.firmware: Hello | None = None
        self._ser: Any = None
        self._decoder = FrameDecoder("driver rx")
        self._reader: threading.Thread | None = None
        self._halt = threading.Event()
        self.busy = Busy()
        """When this thread last ran Python (the node's late-period explainer)."""
        self.window: ControlWindow | None = None
        """The control period's phase: the reader decodes outside it (set by the node)."""
        self._cond = threading.Condition()
        self._latest: tuple[StateReport, int] | None = None
        self._hello: Hello | None = None
        self._faults: collections.deque[FaultReport] = collections.deque(maxlen=MAX_FAULTS)
        self._write_lock = threading.Lock()
        self._seq = 0
        self._frames_sent = 0
        self._need_delimiter = True
        self._last_reconnect_ns: int | None = None
        self._lost_reason = "never opened"
        self._extra: dict[str, int] = dict.fromkeys(
            ("state_reports", "fault_reports", "faults_dropped", "write_errors",
             "write_timeouts", "rejected_commands", "reconnects", "reconnect_failures",
             "disconnects"), 0)

    # ------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Open the port and handshake; ``SerialLinkError`` names the port on failure."""
        if self.connected:
            return
        self.port = resolve_port(self.cfg.port)
        try:
            self._ser = serial.serial_for_url(
                self.port, baudrate=self.cfg.baudrate, timeout=READ_TIMEOUT_S,
                write_timeout=self.cfg.write_timeout_ms / 1000, exclusive=self.cfg.exclusive)
            self._ser.reset_input_buffer()  # stale reports queued while nobody listened
        except (serial.SerialException, OSError, ValueError) as err:
            self._ser = None
            raise SerialLinkError(f"{self.port}: cannot open: {err}") from err
        self._decoder.reset()
        with self._cond:
            self._latest, self._hello = None, None
        self._halt.clear()
        self._reader = threading.Thread(target=self._read_loop, name="serial-reader",
                                        daemon=True)
        self._reader.start()
        self.connected = True
        self._need_delimiter = True
        try:
            self._handshake()
        except SerialLinkError:
            self.close()
            raise

    def _handshake(self) -> None:
        deadline = time.monotonic_ns() + self.cfg.handshake_timeout_ms * 1_000_000
        hello: Hello | None = None
        while hello is None:
            left_s = (deadline - time.monotonic_ns()) / 1e9
            if left_s <= 0:
                raise SerialLinkError(f"{self.port}: no Hello from firmware within "
                                      f"{self.cfg.handshake_timeout_ms} ms")
            self._send(lambda seq: Hello(seq, PROTOCOL_VERSION, self.cfg.n_joints))
            with self._cond:
                self._cond.wait_for(lambda: self._hello is not None or not self.connected,
                                    timeout=min(HELLO_RETRY_S, left_s))
                hello = self._hello
            if not self.connected:
                raise SerialLinkError(f"{self.port}: lost during handshake: {self._lost_reason}")
        if hello.protocol_version != PROTOCOL_VERSION or hello.n_joints != self.cfg.n_joints:
            raise SerialLinkError(
                f"{self.port}: firmware speaks protocol v{hello.protocol_version} with "
                f"{hello.n_joints} joints; driver expects v{PROTOCOL_VERSION} with "
                f"{self.cfg.n_joints}")
        self.firmware = hello
        log.info("serial %s: firmware %r, protocol v%d, %d joints", self.port,
                 hello.firmware_version, hello.protocol_version, hello.n_joints)

    def close(self) -> None:
        self._halt.set()
        ser, self._ser = self._ser, None
        if ser is not None:
            cancel = getattr(ser, "cancel_read", None)
            if cancel is not None:
                cancel()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=2.0)
            if reader.is_alive():
                log.error("serial %s: reader thread did not stop within 2 s", self.port)
        if ser is not None:
            try:
                ser.close()
            except (serial.SerialException, OSError) as err:
                log.debug("serial %s: close failed: %s", self.port, err)
        self.connected = False

    def reconnect(self) -> bool:
        """One attempt, at most every ``reconnect_interval_ms``; never sends motion."""
        if self.connected:
            return True
        now = time.monotonic_ns()
        interval = self.cfg.reconnect_interval_ms * 1_000_000
        if self._last_reconnect_ns is not None and now - self._last_reconnect_ns < interval:
            return False
        self._last_reconnect_ns = now
        self.close()
        try:
            self.open()
        except SerialLinkError as err:
            self._extra["reconnect_failures"] += 1
            log.info("serial reconnect failed: %s", err)
            return False
        self._extra["reconnects"] += 1
        log.warning("serial %s: reconnected; the firmware holds until release()", self.port)
        return True

    def __enter__(self) -> SerialManipulator:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------ reading
    def _read_loop(self) -> None:
        # The control loop judges the firmware's freshness by when this thread read
        # its report: a starved reader reads as a silent firmware.
        try_realtime(48)
        read = _chunk_reader(self._ser)
        busy = self.busy
        while not self._halt.is_set():
            try:
                busy.end_ns = time.monotonic_ns()
                data = read()
                arrived = busy.start_ns = time.monotonic_ns()
            except (serial.SerialException, OSError, TypeError, AttributeError,
                    ValueError) as err:
                # TypeError/AttributeError: pyserial's own fd was closed under us by close().
                if not self._halt.is_set():
                    self._mark_lost(f"read failed: {err}")
                return
            if data:
                # Stamped on arrival, before any wait: a report is never younger than it is.
                if self.window is not None and self.window.wait_quiet(READER_CHUNK_NS):
                    busy.start_ns = time.monotonic_ns()
                self._dispatch(self._decoder.feed(data), arrived)

    def _dispatch(self, messages: list[Message], now: int) -> None:
        with self._cond:
            for msg in messages:
                if isinstance(msg, StateReport):
                    self._latest = (msg, now)
                    self._extra["state_reports"] += 1
                elif isinstance(msg, FaultReport):
                    self._extra["fault_reports"] += 1
                    if len(self._faults) == self._faults.maxlen:
                        self._extra["faults_dropped"] += 1
                    self._faults.append(msg)
                    log.warning("serial %s: firmware fault %d: %s", self.port, msg.code,
                                msg.detail)
                elif isinstance(msg, Hello):
                    self._hello = msg
                else:
                    log.warning("serial %s: unexpected %s from firmware", self.port,
                                type(msg).__name__)
            self._cond.notify_all()

    def _mark_lost(self, reason: str) -> None:
        if self.connected:
            self._extra["disconnects"] += 1
            log.error("serial %s lost: %s", self.port, reason)
        self._lost_reason = reason
        self.connected = False
        with self._cond:
            self._cond.notify_all()

    def latest_state(self) -> tuple[StateReport, int] | None:
        """The newest state report and its receive time (``time.monotonic_ns``)."""
        with self._cond:
            return self._latest

    def wait_for_ack(self, seq: int, timeout_s: float) -> StateReport | None:
        """First state report showing the firmware received frame ``seq`` (or later)."""
        def acked() -> bool:
            latest = self._latest
            return latest is not None and u32_reached(latest[0].last_rx_seq, seq)

        with self._cond:
            if self._cond.wait_for(lambda: acked() or not self.connected, timeout=timeout_s):
                return self._latest[0] if self._latest is not None and acked() else None
            return None

    def drain_faults(self) -> list[FaultReport]:
        if not self._faults:  # every period: no lock taken for nothing (issue 11)
            return []
        with self._cond:
            faults = list(self._faults)
            self._faults.clear()
            return faults

    @property
    def counters(self) -> dict[str, int]:
        counts = dict(self._decoder.counts)
        counts["resyncs"] = self._decoder.bad_frames
        counts.update(self._extra)
        return counts

    # ------------------------------------------------------------ writing
    def send_targets(self, positions: Sequence[float], grip: float) -> int:
        """Joint targets exactly as given (the firmware clamps to its limits). Returns seq."""
        try:
            values = tuple(float(p) for p in positions)
            if len(values) != self.cfg.n_joints:
                raise SchemaError("positions", f"{len(values)} values for "
                                               f"{self.cfg.n_joints} joints")
            JointTargets(0, values, float(grip))  # NaN/inf/size: refused before the port
        except (SchemaError, TypeError, ValueError) as err:
            self._extra["rejected_commands"] += 1
            log.error("serial %s: targets rejected, nothing sent: %s", self.port, err)
            raise
        return self._send(lambda seq: JointTargets(seq, values, float(grip)))

    def hold(self, brake: bool = False) -> int:
        return self._send(lambda seq: Hold(seq, brake))

    def release(self) -> int:
        return self._send(Release)

    def heartbeat(self) -> int:
        return self._send(Heartbeat)

    def _send(self, make: Callable[[int], Message]) -> int:
        return self.send_many((make,))

    @property
    def last_sent_seq(self) -> int | None:
        """Sequence number of the last frame written; None before the first."""
        return None if self._frames_sent == 0 else (self._seq - 1) % U32

    def send_many(self, makers: Sequence[Callable[[int], Message]],
                  deadline_ns: int | None = None) -> int:
        """Encode one frame per maker (consecutive seqs) and write them in ONE write.

        Returns the seq of the last frame. ``deadline_ns`` (monotonic) bounds how long
        stuck bytes may wait; default ``write_timeout_ms`` from now.
        """
        return self.send_encoded([_encoder(make) for make in makers], deadline_ns)

    def send_encoded(self, encoders: Sequence[Callable[[int], bytes]],
                     deadline_ns: int | None = None) -> int:
        """``send_many`` with each frame's bytes made by ``encoder(seq)`` (e.g.
        ``serial_protocol.encode_targets_frame``, the period's frame without a message
        object); the checks are the encoder's."""
        with self._write_lock:
            ser = self._ser
            if not self.connected or ser is None:
                raise SerialLinkError(f"{self.port}: not connected ({self._lost_reason})")
            seq = self._seq
            count = len(encoders)
            if count == 1:  # the usual period: one frame, no list to join
                frame = encoders[0](seq)
            else:
                frame = b"".join([encode((seq + i) % U32) for i, encode in enumerate(encoders)])
            last = (seq + count - 1) % U32
            if self._need_delimiter:
                # Ends whatever partial frame the firmware holds from before.
                frame = b"\0" + frame
            try:
                self._write_all(ser, frame, deadline_ns)
            except serial.SerialTimeoutException as err:
                self._extra["write_timeouts"] += 1
                self._need_delimiter = True
                log.error("serial %s: write timed out (%s)", self.port, err)
                raise SerialLinkError(f"{self.port}: write timed out") from err
            except (serial.SerialException, OSError, TypeError, AttributeError) as err:
                self._extra["write_errors"] += 1
                self._mark_lost(f"write failed: {err}")
                raise SerialLinkError(f"{self.port}: write failed: {err}") from err
            self._need_delimiter = False
            self._seq = (last + 1) % U32
            self._frames_sent += count
            return last

    def _write_all(self, ser: Any, data: bytes, deadline_ns: int | None = None) -> None:
        """Write with a deadline that only expires when bytes are really stuck.

        pyserial's own write timeout also fires when the whole frame went out but
        the thread was descheduled for longer than the timeout, which on a busy
        machine turns a healthy port into a "failed" one. With a file descriptor
        we write it ourselves; other URL backends keep pyserial's behaviour.
        """
        try:
            fd = ser.fileno()
        except (AttributeError, OSError, ValueError, serial.SerialException):
            ser.write(data)
            return
        try:  # the usual case, a period's frame taken whole: one syscall, nothing more
            written = os.write(fd, data)
        except BlockingIOError:
            written = 0
        if written == len(data):
            return
        deadline = (deadline_ns if deadline_ns is not None
                    else time.monotonic_ns() + self.cfg.write_timeout_ms * 1_000_000)
        view = memoryview(data)[written:]  # what the first write left
        while view:
            try:
                view = view[os.write(fd, view):]
                continue
            except BlockingIOError:
                pass
            left_ns = deadline - time.monotonic_ns()
            if left_ns <= 0 or not select.select([], [fd], [], left_ns / 1e9)[1]:
                raise serial.SerialTimeoutException(
                    f"{len(view)} of {len(data)} bytes still unsent")


def _encoder(make: Callable[[int], Message]) -> Callable[[int], bytes]:
    return lambda seq: encode_frame(make(seq))
