"""The robot's local observer feed: what runs outside the control process watches here.

The control process publishes, once, what its observers need (``Telemetry`` at
``observe.hz`` and every audited ``SafetyEvent``) on a Unix-domain ZeroMQ PUB
socket in the robot's runtime folder. The ROS 2 bridge, the supervision page and
the session recorder are separate processes that subscribe; none of them can
slow the control loop (a PUB socket drops for a slow subscriber at its high-water
mark) and none of them can send anything back on this socket.

The surgeon's commands as received reach the feed too, without costing the control
loop: the control thread appends each command its gate accepts (a reference, with its
robot receive time) to a ``CommandRing``; the network thread takes them from there and
publishes them in ``CommandBatch`` messages (``publish_encoded``). Nothing is encoded
per command in the control thread, and a ring that nobody empties overwrites its oldest,
counting them.

Access is by file permissions: the socket lives in the robot's 0700 runtime
folder, so only the robot's own account (and root) can connect. Messages are
the wire schema's (``transport.schema``), one frame each, so an observer
validates exactly what a console validates.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import zmq

from telesurgery.errors import SchemaError
from transport.schema import (
    COMMAND_BATCH_MAX,
    VERSION,
    Command,
    CommandBatch,
    Message,
    decode,
    encode,
)

log = logging.getLogger(__name__)

PUB_HWM = 1000
"""Messages a slow observer may lag before the feed drops for it (never blocks)."""


def endpoint(path: Path) -> str:
    return f"ipc://{path}"


def encode_command_batch(seq: int, samples: list[tuple[Command, int]], lost: int) -> bytes:
    """The bytes ``encode(CommandBatch(...))`` gives, without the session token (a
    credential stays out of every record), at a fraction of the generic encoder's cost."""
    commands = []
    for c, recv_ns in samples:
        commands.append({"recv_ns": recv_ns, "cmd": {
            "seq": c.seq, "t_send_ns": c.t_send_ns, "position": list(c.position),
            "orientation": list(c.orientation), "grip": c.grip, "clutch": c.clutch,
            "operator_present": c.operator_present, "video_age_us": c.video_age_us,
            "t_sample_ns": c.t_sample_ns, "session": None,
            "joints": None if c.joints is None else list(c.joints)}})
    data: bytes = msgpack.packb({"v": VERSION, "t": CommandBatch.TYPE, "seq": seq,
                                 "commands": commands, "lost": lost}, use_bin_type=True)
    return data


COMMAND_RING = 4096
"""Commands the ring holds for the network thread: 4 s at 1 kHz."""


class CommandRing:
    """Control thread -> network thread: commands as received, for the observer feed.

    ``add`` is the control thread's whole share (one bounded-deque append and a length
    check, both atomic under the GIL); ``batches`` runs in the network thread.
    """

    def __init__(self, maxlen: int = COMMAND_RING) -> None:
        self._ring: collections.deque[tuple[Command, int]] = collections.deque(maxlen=maxlen)
        self.lost = 0
        """Commands overwritten before the network thread took them (never decreases)."""
        self.published = 0
        self._seq = 0

    def add(self, cmd: Command, recv_ns: int) -> None:
        """Every command the gate accepts, with its robot receive time (``CommandPort``'s
        ``on_accepted``): also those a newer one in the same drain supersedes."""
        if len(self._ring) == self._ring.maxlen:
            self.lost += 1
        self._ring.append((cmd, recv_ns))

    def batches(self) -> Iterator[bytes]:
        """What is waiting, oldest first: encoded ``CommandBatch`` messages of at most
        ``COMMAND_BATCH_MAX`` commands each, for ``ObserverFeed.publish_encoded``.

        Built as plain maps and packed once (``encode_command_batch``): the schema's
        generic encoder costs ~10x more per command, in a thread that shares the GIL with
        the control loop.
        """
        ring = self._ring
        while ring:
            taken: list[tuple[Command, int]] = []
            while ring and len(taken) < COMMAND_BATCH_MAX:
                taken.append(ring.popleft())
            self._seq += 1
            self.published += len(taken)
            yield encode_command_batch(self._seq, taken, self.lost)

    def __len__(self) -> int:
        return len(self._ring)


class ObserverFeed:
    """The publishing end; owned by one thread of the control process."""

    def __init__(self, path: Path, ctx: zmq.Context[Any] | None = None) -> None:
        self.path = path
        self._ctx = ctx or zmq.Context.instance()
        self._sock: zmq.Socket[Any] = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, PUB_HWM)
        try:
            self._sock.bind(endpoint(path))
        except zmq.ZMQError:
            self._sock.close(0)
            raise
        self.published = 0

    def publish(self, msg: Message) -> None:
        try:
            self._sock.send(encode(msg), zmq.NOBLOCK)
            self.published += 1
        except zmq.Again:
            pass  # no subscriber keeps up: the feed drops, the loop never waits

    def publish_encoded(self, data: bytes) -> None:
        """Bytes already encoded by the schema's rules (``encode_command_batch``)."""
        try:
            self._sock.send(data, zmq.NOBLOCK)
            self.published += 1
        except zmq.Again:
            pass

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> ObserverFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ObserverClient:
    """The subscribing end: validated messages and the time the last one arrived."""

    def __init__(self, path: Path, ctx: zmq.Context[Any] | None = None) -> None:
        self.path = path
        self._ctx = ctx or zmq.Context.instance()
        self._sock: zmq.Socket[Any] = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 10_000)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(endpoint(path))
        self.last_recv_ns: int | None = None
        self.bad_messages = 0

    def recv(self, timeout_ms: int) -> Message | None:
        """The next valid message, or None after ``timeout_ms`` without one."""
        if not self._sock.poll(timeout_ms):
            return None
        data = self._sock.recv()
        try:
            msg = decode(data)
        except SchemaError as err:
            self.bad_messages += 1
            if self.bad_messages == 1 or self.bad_messages % 1000 == 0:
                log.warning("observer feed: invalid message (%s), %d so far", err,
                            self.bad_messages)
            return None
        self.last_recv_ns = time.monotonic_ns()
        return msg

    @property
    def socket(self) -> zmq.Socket[Any]:
        """For a ``zmq.Poller`` that waits on this feed and other sockets at once."""
        return self._sock

    def age_ns(self, now_ns: int) -> int | None:
        """How long since the last valid message; None if none ever came."""
        return None if self.last_recv_ns is None else now_ns - self.last_recv_ns

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> ObserverClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
