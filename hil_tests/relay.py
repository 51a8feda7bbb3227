"""The fault proxy's I/O engine: a selectors loop relaying ZMTP 3.x connections.

``Relay.run()`` accepts clients, connects each to the target and hands every
direction of every connection to a ``FaultedStream``, which the loop feeds with
what it read and pumps to write whatever is due. The ``RelayPolicy`` (the
``FaultProxy``) decides the faults and the blackout; the relay only applies them.

In a stream the 64-byte greeting is relayed untouched, then each ZMTP frame
(flags byte: bit 0 MORE, bit 1 LONG, bit 2 COMMAND; a 1- or 8-byte big-endian
size; the body) is classified:

* a CURVE ``MESSAGE`` command (body starts with ``b"\\x07MESSAGE"``) is one
  application message;
* under NULL/PLAIN, data frames up to one without MORE are one application message;
* every other command (HELLO/WELCOME/INITIATE/READY, plain PING/PONG, ...) is
  control: never dropped, corrupted or delayed (only a blackout holds it back),
  and never overtakes a message.

A peer that does not send a ZMTP 3.x greeting, or a frame header that makes no
sense, switches the stream to raw relay: bytes still flow, faults stop.
"""

from __future__ import annotations

import errno
import logging
import random
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hil_tests.faults import Decision
from telesurgery.gaps import COMMAND_GAPS_MS, PICTURE_AGES_MS, GapCounter

log = logging.getLogger(__name__)

GREETING_BYTES = 64
MORE, LONG, COMMAND = 0x01, 0x02, 0x04
CURVE_MESSAGE_PREFIX = b"\x07MESSAGE"
CURVE_BOX_OFFSET = 16
"""Command name (8 bytes) + nonce (8): corrupting past this breaks the MAC, not the framing."""
MAX_FRAME_BYTES = 64 * 1024 * 1024
"""A larger declared frame is taken as garbage and the stream falls back to raw relay."""
HIGH_WATER_BYTES = 8 * 1024 * 1024
"""Stop reading the sender when this much waits (TCP backpressure instead of memory)."""
REORDER_WAIT_NS = 200_000_000
"""A message held back for reordering goes out anyway if nothing overtakes it this soon."""
RECV_BYTES = 256 * 1024
IDLE_WAKE_S = 0.5
ARRIVAL_GAPS_MS = COMMAND_GAPS_MS + PICTURE_AGES_MS
"""One proxy relays commands (1 kHz) and video (30 fps): both streams' thresholds."""


@dataclass
class Counters:
    """Per-direction statistics; reset in place so streams may keep a reference."""

    messages: int = 0
    """Application messages accepted for forwarding (not dropped)."""
    dropped: int = 0
    duplicated: int = 0
    corrupted: int = 0
    reordered: int = 0
    """Messages that a later message actually overtook."""
    control: int = 0
    """Greeting chunks, handshake/heartbeat frames and raw-relay chunks."""
    bytes: int = 0
    """Bytes written to the receiving side."""


class AddedLatency:
    """What the proxy itself adds to each application message, beyond the fault's delay.

    From the moment its bytes were read (after the proxy's own wake-up, which this
    cannot see) to the moment they were handed to the receiving socket, minus the
    delay a fault asked for. A preallocated ring: nothing is allocated per message.
    """

    def __init__(self, size: int = 1 << 18) -> None:
        self._ns = np.zeros(size, dtype=np.int64)
        self.n = 0
        self.arrival_gaps = GapCounter(ARRIVAL_GAPS_MS)
        """Intervals between messages as the proxy read them: its own late wake-ups
        (scheduling, the GIL of its other relays) show here, which ``add`` cannot see."""

    def add(self, ns: int) -> None:
        self._ns[self.n % len(self._ns)] = ns
        self.n += 1

    def arrived(self, now_ns: int) -> None:
        self.arrival_gaps.event(now_ns)

    def reset(self) -> None:
        self.n = 0
        self.arrival_gaps = GapCounter(ARRIVAL_GAPS_MS)

    def percentiles(self) -> dict[str, Any]:
        k = min(self.n, len(self._ns))
        if k == 0:
            return {"n": 0}
        p50, p99 = np.percentile(self._ns[:k], [50, 99]) / 1000.0
        return {"n": self.n, "p50_us": round(float(p50), 1), "p99_us": round(float(p99), 1),
                "max_us": round(float(self._ns[:k].max()) / 1000.0, 1),
                "arrival_gaps": self.arrival_gaps.summary()}


@dataclass
class _Item:
    release_ns: int
    data: bytes
    app: bool
    seq: int = 0


def corrupt_frames(frames: list[bytes], rng: random.Random) -> bytes:
    """Flip one byte in the body of one frame, past a CURVE command's name and nonce."""
    index = rng.randrange(len(frames))
    frame = bytearray(frames[index])
    header = 9 if frame[0] & LONG else 2
    start = header + (CURVE_BOX_OFFSET if frame[0] & COMMAND else 0)
    if start >= len(frame):
        start = min(header, len(frame) - 1)
    frame[rng.randrange(start, len(frame))] ^= rng.randrange(1, 256)
    return b"".join([*frames[:index], bytes(frame), *frames[index + 1:]])


class FaultedStream:
    """Parses, faults and schedules the bytes going to ``dst``; not thread-safe."""

    def __init__(self, dst: socket.socket, counters: Counters,  # noqa: PLR0917
                 decide: Callable[[int], Decision], rng: random.Random, label: str,
                 added: AddedLatency | None = None) -> None:
        self.dst = dst
        self.counters = counters
        self.added = added
        self._written: list[int] = []
        """Release times of the application messages in ``outbuf`` not yet measured."""
        self.decide = decide
        self.rng = rng
        self.label = label
        self.greeting = bytearray()
        self.raw = False
        self.inbuf = bytearray()
        self.unit: list[bytes] = []
        self.queue: deque[_Item] = deque()
        self.queued_bytes = 0
        self.held: _Item | None = None
        self.seq = 0
        self.outbuf = bytearray()
        self.closing = False
        """The sender closed: deliver what is waiting, then end the connection."""

    def backpressured(self) -> bool:
        return self.queued_bytes + len(self.outbuf) > HIGH_WATER_BYTES

    def has_output(self) -> bool:
        return bool(self.outbuf)

    def drained(self) -> bool:
        return not (self.queue or self.held or self.outbuf)

    # ------------------------------------------------------------ ingress
    def feed(self, chunk: bytes, now_ns: int) -> None:
        if len(self.greeting) < GREETING_BYTES:
            # Relayed as it arrives: libzmq waits for the peer's signature before
            # sending the rest of its greeting, so buffering it would deadlock.
            take = chunk[: GREETING_BYTES - len(self.greeting)]
            self.greeting += take
            self._control(take, now_ns)
            chunk = chunk[len(take):]
            if len(self.greeting) == GREETING_BYTES and not self._is_zmtp3():
                self._go_raw("peer is not ZMTP 3.x")
        if not chunk:
            return
        if self.raw:
            self._control(chunk, now_ns)
            return
        self.inbuf += chunk
        self._parse(now_ns)

    def _is_zmtp3(self) -> bool:
        g = self.greeting
        return g[0] == 0xFF and g[9] == 0x7F and g[10] >= 3

    def _go_raw(self, why: str) -> None:
        log.warning("%s: %s; relaying raw bytes without faults", self.label, why)
        self.raw = True

    def _parse(self, now_ns: int) -> None:
        buf, pos, bad = self.inbuf, 0, ""
        while len(buf) - pos >= 2:
            flags = buf[pos]
            if flags & ~(MORE | LONG | COMMAND):
                bad = f"bad ZMTP frame flags 0x{flags:02x}"
                break
            if flags & LONG:
                if len(buf) - pos < 9:
                    break
                size, header = int.from_bytes(buf[pos + 1:pos + 9], "big"), 9
            else:
                size, header = buf[pos + 1], 2
            if size > MAX_FRAME_BYTES:
                bad = f"ZMTP frame of {size} bytes"
                break
            end = pos + header + size
            if end > len(buf):
                break
            frame = bytes(buf[pos:end])
            pos = end
            if flags & COMMAND:
                if frame[header:header + len(CURVE_MESSAGE_PREFIX)] == CURVE_MESSAGE_PREFIX:
                    self._message([frame], now_ns)
                else:
                    self._control(frame, now_ns)
            else:
                self.unit.append(frame)
                if not flags & MORE:
                    unit, self.unit = self.unit, []
                    self._message(unit, now_ns)
        del buf[:pos]
        if bad:
            self._go_raw(bad)
            self._control(b"".join(self.unit) + bytes(buf), now_ns)
            self.unit.clear()
            buf.clear()

    def _control(self, data: bytes, now_ns: int) -> None:
        self.counters.control += 1
        self._enqueue(_Item(now_ns, data, app=False))

    def _message(self, frames: list[bytes], now_ns: int) -> None:
        counters = self.counters
        decision = self.decide(now_ns)
        if decision.drop:
            counters.dropped += 1
            return
        data = b"".join(frames)
        if decision.corrupt:
            data = corrupt_frames(frames, self.rng)
            counters.corrupted += 1
        counters.messages += 1
        if self.added is not None:
            self.added.arrived(now_ns)
        release_ns = now_ns + decision.delay_ns
        if decision.reorder and self.held is None:
            self.held = _Item(release_ns + REORDER_WAIT_NS, data, app=True, seq=self.seq)
        else:
            self._enqueue(_Item(release_ns, data, app=True))
        if decision.duplicate:
            counters.duplicated += 1
            self._enqueue(_Item(release_ns, data, app=True))

    def _enqueue(self, item: _Item) -> None:
        self.seq += 1
        item.seq = self.seq
        self.queue.append(item)
        self.queued_bytes += len(item.data)

    def purge_messages(self) -> None:
        """Drop every waiting application message (a dropping blackout has begun)."""
        dropped = sum(1 for i in self.queue if i.app) + (self.held is not None)
        self.queue = deque(i for i in self.queue if not i.app)
        self.queued_bytes = sum(len(i.data) for i in self.queue)
        self.held = None
        self.counters.dropped += dropped

    # ------------------------------------------------------------ egress
    def pump(self, now_ns: int, blacked_out: bool) -> int | None:
        """Write what is due (nothing new during a blackout); return the next due time."""
        if not blacked_out:
            while self.queue and self.queue[0].release_ns <= now_ns:
                item = self.queue.popleft()
                self.queued_bytes -= len(item.data)
                self.outbuf += item.data
                if item.app and self.added is not None:
                    self._written.append(item.release_ns)
                if self.held is not None and item.app and item.seq > self.held.seq:
                    self.outbuf += self.held.data
                    self.held = None
                    self.counters.reordered += 1
            if self.held is not None and self.held.release_ns <= now_ns:
                self.outbuf += self.held.data
                self.held = None
        if self.outbuf:
            try:
                sent = self.dst.send(self.outbuf)
            except BlockingIOError:
                sent = 0
            del self.outbuf[:sent]
            self.counters.bytes += sent
            if self._written and sent and self.added is not None:
                written_ns = time.monotonic_ns()
                for release_ns in self._written:
                    self.added.add(written_ns - release_ns)
                self._written.clear()
        if blacked_out:
            return None
        due = [i.release_ns for i in (self.queue[0] if self.queue else None, self.held) if i]
        return min(due) if due else None


class RelayPolicy(Protocol):
    """What the relay asks its owner; every call is made with ``lock`` held."""

    lock: threading.Lock
    counters: dict[str, Counters]
    added: dict[str, AddedLatency]

    def decision(self, direction: str, now_ns: int) -> Decision: ...

    def blackout_state(self, now_ns: int) -> tuple[bool, bool, int | None]:
        """(blacked out, purge waiting messages now, when the blackout ends)."""
        ...

    def count_connection(self, ok: bool) -> None: ...


class _Connection:
    def __init__(self, policy: RelayPolicy, client: socket.socket, server: socket.socket,
                 rng: random.Random, label: str) -> None:
        self.client = client
        self.server = server
        self.connected = False
        self.up = FaultedStream(server, policy.counters["upstream"],
                                lambda now: policy.decision("upstream", now), rng,
                                f"{label} upstream", policy.added["upstream"])
        self.down = FaultedStream(client, policy.counters["downstream"],
                                  lambda now: policy.decision("downstream", now), rng,
                                  f"{label} downstream", policy.added["downstream"])
        self.events = {client: 0, server: 0}

    def wanted_events(self, sock: socket.socket) -> int:
        if sock is self.server and not self.connected:
            return selectors.EVENT_WRITE
        inbound, outbound = (self.up, self.down) if sock is self.client else (self.down, self.up)
        events = 0 if inbound.backpressured() or inbound.closing else selectors.EVENT_READ
        return events | (selectors.EVENT_WRITE if outbound.has_output() else 0)

    def update_registration(self, sel: selectors.BaseSelector) -> None:
        for sock in (self.client, self.server):
            old, new = self.events[sock], self.wanted_events(sock)
            if old == new:
                continue
            if not old:
                sel.register(sock, new, self)
            elif not new:
                sel.unregister(sock)
            else:
                sel.modify(sock, new, self)
            self.events[sock] = new

    def close(self, sel: selectors.BaseSelector) -> None:
        for sock in (self.client, self.server):
            if self.events[sock]:
                sel.unregister(sock)
            self.events[sock] = 0
            sock.close()


class Relay:
    """Runs in the proxy's thread until ``stopping`` is set; owns every connection."""

    def __init__(self, listener: socket.socket, wake: socket.socket, target: tuple[str, int],
                 policy: RelayPolicy, *, rng: random.Random, label: str,
                 source: str | None = None) -> None:
        self.listener = listener
        self.source = source
        """Address the relayed connections leave from (a path's own, dual path)."""
        self.wake = wake
        self.target = target
        self.policy = policy
        self.rng = rng
        self.label = label
        self.conns: list[_Connection] = []
        self.sel = selectors.DefaultSelector()

    def run(self, stopping: threading.Event) -> None:
        sel = self.sel
        sel.register(self.listener, selectors.EVENT_READ, None)
        sel.register(self.wake, selectors.EVENT_READ, None)
        timeout: float | None = IDLE_WAKE_S
        try:
            while not stopping.is_set():
                for key, mask in sel.select(timeout):
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fileobj is self.wake:
                        self._drain_wake()
                    else:
                        self._on_ready(key.data, key.fileobj, mask)  # type: ignore[arg-type]
                timeout = self._pump_all()
        finally:
            for conn in self.conns:
                conn.close(sel)
            self.conns.clear()
            sel.close()

    def active(self) -> int:
        return len(self.conns)

    def queued_bytes(self) -> dict[str, int]:
        """Bytes waiting in the proxy per direction (a gauge for stats)."""
        conns = list(self.conns)
        return {"upstream": sum(c.up.queued_bytes + len(c.up.outbuf) for c in conns),
                "downstream": sum(c.down.queued_bytes + len(c.down.outbuf) for c in conns)}

    def _drain_wake(self) -> None:
        try:
            while self.wake.recv(4096):
                pass
        except BlockingIOError:
            pass  # drained: the wake-up has done its job

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:  # e.g. out of file descriptors: refuse this one, keep serving
            log.warning("%s: accept failed: %s", self.label, exc)
            return
        server = socket.socket(client.family, socket.SOCK_STREAM)
        for sock in (client, server):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(self.policy, client, server, self.rng, self.label)
        try:
            if self.source is not None:
                server.bind((self.source, 0))
            err = server.connect_ex(self.target)
        except OSError as exc:  # an unresolvable target name
            err = exc.errno or errno.EHOSTUNREACH
        if err not in (0, errno.EINPROGRESS):
            self._connect_failed(conn, err)
            return
        self.conns.append(conn)
        with self.policy.lock:
            self.policy.count_connection(True)
        conn.update_registration(self.sel)

    def _connect_failed(self, conn: _Connection, err: int) -> None:
        log.warning("%s: connect to %s:%d failed (%s); closing the client", self.label,
                    *self.target, errno.errorcode.get(err, err))
        with self.policy.lock:
            self.policy.count_connection(False)
        conn.close(self.sel)
        if conn in self.conns:
            self.conns.remove(conn)

    def _on_ready(self, conn: _Connection, sock: socket.socket, mask: int) -> None:
        if conn not in self.conns:
            return
        if sock is conn.server and not conn.connected:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._connect_failed(conn, err)
                return
            conn.connected = True
        if not mask & selectors.EVENT_READ:
            return
        try:
            chunk = sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as err:
            log.info("%s: connection reset: %s", self.label, err)
            self._drop(conn)
            return
        stream = conn.up if sock is conn.client else conn.down
        if not chunk:
            # ZeroMQ never half-closes: once what this side sent is delivered, the
            # whole connection ends (_pump_all closes it).
            stream.closing = True
            conn.update_registration(self.sel)
            return
        with self.policy.lock:
            stream.feed(chunk, time.monotonic_ns())

    def _drop(self, conn: _Connection) -> None:
        conn.close(self.sel)
        self.conns.remove(conn)

    def _pump_all(self) -> float:
        now = time.monotonic_ns()
        policy = self.policy
        with policy.lock:
            blacked_out, purge, next_due = policy.blackout_state(now)
            if purge:
                for conn in self.conns:
                    conn.up.purge_messages()
                    conn.down.purge_messages()
        for conn in list(self.conns):
            if not conn.connected:
                continue
            try:
                with policy.lock:
                    dues = [conn.up.pump(now, blacked_out), conn.down.pump(now, blacked_out)]
            except OSError as err:
                log.info("%s: connection closed while sending: %s", self.label, err)
                self._drop(conn)
                continue
            if any(st.closing and st.drained() for st in (conn.up, conn.down)):
                self._drop(conn)
                continue
            for due in dues:
                if due is not None:
                    next_due = due if next_due is None else min(next_due, due)
            conn.update_registration(self.sel)
        if next_due is None:
            return IDLE_WAKE_S
        return max(0.0, min(IDLE_WAKE_S, (next_due - time.monotonic_ns()) / 1e9))
