"""The local observer feed: validated schema messages over a real ipc PUB/SUB pair."""

from __future__ import annotations

import time
from pathlib import Path

from robot_side.observe import ObserverClient, ObserverFeed
from transport.schema import SafetyEvent


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
