"""A receiver whose queue is full survives a stall (libzmq 4.3.5's ``_input_stopped`` abort).

libzmq aborts the whole process when a socket's own ZMTP heartbeat times out while its
receive queue is full (zeromq/libzmq#3937, #4767). ``transport.sockets`` gives
subscribers no heartbeat of their own (the publisher's still drops a dead
subscriber) and TCP keepalive instead, and the console's control DEALER (which keeps its
heartbeat) a receive queue a stall cannot fill. The stall runs in a child process: the bug is
an abort, which would take pytest with it (without the fix it aborts on every run here).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import zmq

from transport.keys import ClientKeys
from transport.sockets import RECEIVE_ONLY, client_socket

STALLED_SUBSCRIBER = textwrap.dedent("""
    import threading, time
    import zmq
    from transport.sockets import _common

    # The link's socket options (transport.sockets._common) on plain TCP sockets: the
    # abort needs no CURVE (with it, it is rarer, not gone). Heartbeats 100/300 ms as
    # the robot's telemetry/video PUB and the console's SUB.
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    _common(pub, zmq.PUB, 1 << 20, 10, 100, 300)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = ctx.socket(zmq.SUB)
    _common(sub, zmq.SUB, 1 << 20, 4, 100, 300)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    stop = threading.Event()

    def publish():
        while not stop.is_set():
            try:
                pub.send(b"x" * 20000, zmq.NOBLOCK)
            except zmq.Again:
                pass
            time.sleep(0.0005)

    def receive(seconds):
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            if sub.poll(50):
                sub.recv()
                n += 1
        return n

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    before = receive(1.0)
    time.sleep(1.5)  # the receiver stalls with a full queue: 5 heartbeat timeouts long
    after = receive(1.5)
    stop.set()
    t.join()
    print(f"ok before={before} after={after}", flush=True)
""")


STALLED_DEALER = textwrap.dedent("""
    import threading, time
    import zmq
    from transport.sockets import _common

    # The console's control DEALER (its own heartbeat kept) and the robot's ROUTER
    # sending to it faster than a stalled console thread reads (pings and replies).
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    _common(router, zmq.ROUTER, 1 << 20, 100, 100, 300)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    _common(dealer, zmq.DEALER, 1 << 20, 100, 100, 300)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"hello")
    peer = router.recv_multipart()[0]
    stop = threading.Event()

    def publish():
        while not stop.is_set():
            try:
                router.send_multipart([peer, b"x" * 2000], zmq.NOBLOCK)
            except zmq.Again:
                pass
            time.sleep(0.0002)

    def receive(seconds):
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            if dealer.poll(50):
                dealer.recv()
                n += 1
        return n

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    before = receive(1.0)
    time.sleep(1.5)  # the console thread stalls: 5 heartbeat timeouts long
    after = receive(1.5)
    stop.set()
    t.join()
    print(f"ok before={before} after={after}", flush=True)
""")


@pytest.mark.parametrize("script", [STALLED_SUBSCRIBER, STALLED_DEALER],
                         ids=["subscriber", "console_dealer"])
def test_a_stalled_receiver_with_a_full_queue_does_not_abort(script: str) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=60, cwd=root, check=False)
    assert "Assertion failed" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stderr[-2000:]
    words = dict(w.split("=") for w in proc.stdout.split()[1:])
    assert int(words["before"]) > 0 and int(words["after"]) > 0, proc.stdout


def test_subscribers_trade_zmtp_heartbeats_for_tcp_keepalive(keys: Path) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        surgeon = ClientKeys.load_surgeon(keys)
        for kind in (zmq.SUB, zmq.PULL, zmq.PUSH, zmq.DEALER):
            sock = client_socket(ctx, kind, "tcp://127.0.0.1:9", surgeon, 1 << 16)
            try:
                receive_only = kind in RECEIVE_ONLY
                assert sock.getsockopt(zmq.HEARTBEAT_IVL) == (0 if receive_only else 100)
                assert sock.getsockopt(zmq.TCP_KEEPALIVE) == (1 if receive_only else -1)
            finally:
                sock.close(0)
    finally:
        ctx.destroy(linger=0)
