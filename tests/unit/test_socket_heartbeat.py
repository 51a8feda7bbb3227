"""A receiver whose queue is full survives a stall (libzmq 4.3.5's ``_input_stopped`` abort).

libzmq aborts the whole process when a socket's own ZMTP heartbeat times out while its
receive queue is full (zeromq/libzmq#3937, #4767). ``transport.sockets`` gives
subscribers and the console's control DEALER no heartbeat of their own (the robot's PINGs
and their TTL still drop a dead peer) and TCP keepalive instead, and the DEALER a receive
queue a stall cannot fill. Each stall runs in a child process: the bug is an abort, which
would take pytest with it (without the fix each aborts on every run here).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from transport.keys import ClientKeys
from transport.sockets import NO_ZMTP_HEARTBEAT, _common, client_socket

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

    # The console's control DEALER and the robot's ROUTER sending to it faster than a
    # stalled console thread reads (pings and replies).
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


DEALER_WHOSE_ROBOT_GOES = textwrap.dedent("""
    import time
    import zmq
    from transport.sockets import _common

    # "Assertion failed: !_io_error (stream_engine_base.cpp:310)", the abort of the
    # 10-minute soaks: the console's DEALER queue is full (its engine stopped reading),
    # the robot's end goes away (RST), libzmq only records the error until the queue
    # drains, and a PING tick of the DEALER's own heartbeat writes on that engine.
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    _common(router, zmq.ROUTER, 1 << 20, 100, 100, 300)
    router.setsockopt(zmq.SNDHWM, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    _common(dealer, zmq.DEALER, 1 << 20, 100, 100, 300)
    dealer.setsockopt(zmq.IMMEDIATE, 1)
    # A small queue so that input stops at once: DEALER_RCVHWM makes that rarer, but the
    # soaks aborted with it in place; the fix is the absent heartbeat timer, not the bound.
    dealer.setsockopt(zmq.RCVHWM, 100)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"hello")
    peer = router.recv_multipart()[0]
    for _ in range(300):  # more than the DEALER's queue holds
        router.send_multipart([peer, b"x" * 2000])
    time.sleep(0.1)
    router.close(0)  # the robot's end goes away while the console's input is stopped
    time.sleep(0.6)  # heartbeat ticks after the connection error
    n = 0
    while dealer.poll(200):
        dealer.recv()
        n += 1
    print(f"ok before=1 after={n}", flush=True)
""")


SUBSCRIBER_WHOSE_PUBLISHER_PINGED = textwrap.dedent("""
    import threading, time
    import zmq
    from transport.sockets import _common

    # The robot's PUB and the console's SUB with the link's options (the telemetry PUB's
    # 100/300 ms). The subscriber stalls 1 s with its 4-message queue full: its input
    # stops with the publisher's PINGs read but not processed; the publisher drops the
    # silent subscriber; when the queue drains, libzmq processes a PING and answers it
    # on the dead engine ("!_io_error") unless the publisher never pings (the fix).
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    _common(pub, zmq.PUB, 1 << 20, 4, 100, 300)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = ctx.socket(zmq.SUB)
    _common(sub, zmq.SUB, 1 << 20, 4, 100, 300)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    stop = threading.Event()

    def publish():
        while not stop.is_set():
            try:
                pub.send(b"x" * 3000, zmq.NOBLOCK)
            except zmq.Again:
                pass
            time.sleep(1 / 30)

    def receive(seconds):
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            if sub.poll(20):
                sub.recv()
                n += 1
        return n

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    before = receive(0.5)
    after = 0
    for _ in range(3):
        time.sleep(1.0)
        after += receive(0.3)
    stop.set()
    t.join()
    print(f"ok before={before} after={after}", flush=True)
""")


@pytest.mark.parametrize("script", [STALLED_SUBSCRIBER, SUBSCRIBER_WHOSE_PUBLISHER_PINGED,
                                    STALLED_DEALER, DEALER_WHOSE_ROBOT_GOES],
                         ids=["subscriber", "subscriber_publisher_pinged", "console_dealer",
                              "console_dealer_peer_gone"])
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
                quiet = kind in NO_ZMTP_HEARTBEAT
                assert sock.getsockopt(zmq.HEARTBEAT_IVL) == (0 if quiet else 100)
                assert sock.getsockopt(zmq.TCP_KEEPALIVE) == (1 if quiet else -1)
            finally:
                sock.close(0)
    finally:
        ctx.destroy(linger=0)


HUNG_ROBOT = textwrap.dedent("""
    import sys
    import zmq
    from transport.sockets import _common

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    _common(router, zmq.ROUTER, 1 << 20, 100, 100, 300)  # the robot's control ROUTER
    print(router.bind_to_random_port("tcp://127.0.0.1"), flush=True)
    while True:
        router.send_multipart(router.recv_multipart())
""")


def test_the_console_dealer_drops_a_hung_robot_without_a_heartbeat_of_its_own() -> None:
    """The robot's PINGs carry a TTL: a robot process that hangs (its kernel still answers
    TCP, so keepalive never fires) is dropped by the console in ~heartbeat_timeout_ms."""
    root = Path(__file__).resolve().parents[2]
    robot = subprocess.Popen([sys.executable, "-c", HUNG_ROBOT], cwd=root,
                             stdout=subprocess.PIPE, text=True)
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        assert robot.stdout is not None
        port = int(robot.stdout.readline())
        dealer = ctx.socket(zmq.DEALER)
        _common(dealer, zmq.DEALER, 1 << 20, 100, 100, 300)
        assert dealer.getsockopt(zmq.HEARTBEAT_IVL) == 0
        monitor = dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(b"hello")
        assert dealer.poll(10_000), "the robot never answered"
        dealer.recv()
        time.sleep(1.0)  # the TTL arms on the robot's first PING (every 100 ms)
        robot.send_signal(signal.SIGSTOP)
        # Bounded far below "never" (the heartbeat TTL is 0.3 s); not a speed figure.
        assert monitor.poll(5_000), "the console never noticed the hung robot"
        dealer.disable_monitor()
        monitor.close(0)
        dealer.close(0)
    finally:
        robot.send_signal(signal.SIGKILL)
        robot.wait(10)
        ctx.destroy(linger=0)
