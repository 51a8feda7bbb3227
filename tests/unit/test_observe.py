"""The local observer feed: validated schema messages over a real ipc PUB/SUB pair."""

from __future__ import annotations

import time
from pathlib import Path

from robot_side.observe import CommandRing, ObserverClient, ObserverFeed
from transport.schema import (
    COMMAND_BATCH_MAX,
    Command,
    CommandBatch,
    SafetyEvent,
    decode_as,
    encode,
)


def test_feed_delivers_validated_messages_and_ages_them(tmp_path: Path) -> None:
    path = tmp_path / "observe.sock"
    with ObserverFeed(path) as feed, ObserverClient(path) as client:
        assert client.age_ns(time.monotonic_ns()) is None
        event = SafetyEvent(seq=1, t_ns=5, code="command_timeout", state_from="following",
                            state_to="hold")
        got = None
        deadline = time.monotonic() + 5.0
        while got is None and time.monotonic() < deadline:
            feed.publish(event)  # PUB drops until the subscription has propagated
            got = client.recv(50)
        assert got == event
        age = client.age_ns(time.monotonic_ns())
        assert age is not None and 0 <= age < 5_000_000_000


def test_invalid_message_is_counted_not_raised(tmp_path: Path) -> None:
    import zmq

    path = tmp_path / "observe.sock"
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"ipc://{path}")
    try:
        with ObserverClient(path) as client:
            deadline = time.monotonic() + 5.0
            while client.bad_messages == 0 and time.monotonic() < deadline:
                pub.send(b"\xc1 not msgpack")
                assert client.recv(50) is None
            assert client.bad_messages >= 1
            assert client.last_recv_ns is None
    finally:
        pub.close(0)


# ------------------------------------------------------------------ commands as received
def _sample(i: int, recv_ns: int) -> tuple[Command, int]:
    # Every third command is a joint-space master's: its joints are recorded too.
    return Command(seq=i, t_send_ns=recv_ns - 500, position=(0.001 * i, 0.0, 0.0),
                   orientation=(1.0, 0.0, 0.0, 0.0), grip=0.5, clutch=False,
                   operator_present=True, session=0xDEADBEEF,
                   joints=(0.01 * i, -0.2, 0.3) if i % 3 == 0 else None), recv_ns


def _encoded(n: int) -> list[bytes]:
    ring = CommandRing()
    for i in range(n):
        ring.add(*_sample(i, 1_000 + i))
    return list(ring.batches())


def test_command_ring_batches_in_order_and_keeps_the_token_out() -> None:
    ring = CommandRing()
    for i in range(100):
        ring.add(*_sample(i, 1_000 + i))
    batches: list[CommandBatch] = [decode_as(b, CommandBatch) for b in ring.batches()]
    assert [len(b.commands) for b in batches] == [COMMAND_BATCH_MAX, COMMAND_BATCH_MAX, 4]
    got = [rc for b in batches for rc in b.commands]
    assert [rc.cmd.seq for rc in got] == list(range(100))
    assert [rc.recv_ns for rc in got] == [1_000 + i for i in range(100)]
    assert all(rc.cmd.session is None for rc in got), "a credential never reaches a record"
    assert [rc.cmd.joints is not None for rc in got] == [i % 3 == 0 for i in range(100)]
    # The fast encoder gives the schema's own bytes (what a generic encode would).
    assert all(encode(b) == raw for b, raw in zip(batches, _encoded(100), strict=True))
    assert len(ring) == 0 and ring.lost == 0 and ring.published == 100


def test_a_ring_nobody_empties_overwrites_its_oldest_and_counts_them() -> None:
    ring = CommandRing(maxlen=10)
    for i in range(25):
        ring.add(*_sample(i, i))
    (raw,) = list(ring.batches())
    batch = decode_as(raw, CommandBatch)
    assert [rc.cmd.seq for rc in batch.commands] == list(range(15, 25))
    assert batch.lost == 15


def test_command_batches_cross_the_feed(tmp_path: Path) -> None:
    path = tmp_path / "observe.sock"
    ring = CommandRing()
    with ObserverFeed(path) as feed, ObserverClient(path) as client:
        got: list[int] = []
        deadline = time.monotonic() + 5.0
        seq = 0
        while not got and time.monotonic() < deadline:
            seq += 1
            ring.add(*_sample(seq, seq))
            for batch in ring.batches():  # PUB drops until the subscription has propagated
                feed.publish_encoded(batch)
            msg = client.recv(50)
            if isinstance(msg, CommandBatch):
                got = [rc.cmd.seq for rc in msg.commands]
        assert got and got[0] >= 1
