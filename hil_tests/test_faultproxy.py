"""The fault proxy against real CurveZMQ sockets, and the pure fault models.

Every link here is a real pyzmq PUSH/PULL pair over loopback TCP with CURVE (an
allow-any authenticator: this tests the proxy, not authentication). Receivers use
NOBLOCK after poll(): after a CURVE decode error libzmq may report POLLIN for a
pipe that is torn down before recv(), and a blocking recv() would then hang.
Figures are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import bisect
import itertools
import random
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from hil_tests.faultproxy import FaultProxy, ProxySet, handle_request, parse_route
from hil_tests.faults import BlackoutWindow, Decision, FaultModel, FaultSpec
from hil_tests.relay import (
    COMMAND,
    HIGH_WATER_BYTES,
    LONG,
    MORE,
    RECV_BYTES,
    AddedLatency,
    Counters,
    FaultedStream,
)
from telesurgery.errors import ConfigError

LOOPBACK = "127.0.0.1"
HEADER = struct.Struct("<QQ")  # seq, sender monotonic ns
WARM_UP = 10**9


# ---------------------------------------------------------------- helpers
@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    yield ctx
    auth.stop()
    ctx.destroy(linger=0)


@dataclass
class Received:
    seq: int
    latency_ns: int


def body(seq: int, size: int) -> bytes:
    filler = seq.to_bytes(8, "little") * (size // 8 + 1)
    return HEADER.pack(seq, time.monotonic_ns()) + filler[:size]


class Link:
    """A CURVE (or NULL) sender/receiver pair; the client side dials ``connect(port)``.

    ``downstream=True`` puts the sender on the server side (robot -> console).
    """

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], *, curve: bool = True,
                 downstream: bool = False) -> None:
        server_type, client_type = (zmq.PUSH, zmq.PULL) if downstream else (zmq.PULL, zmq.PUSH)
        self.server = ctx.socket(server_type)
        self.client = ctx.socket(client_type)
        if curve:
            spub, ssec = zmq.curve_keypair()
            cpub, csec = zmq.curve_keypair()
            self.server.curve_server = True
            self.server.curve_secretkey, self.server.curve_publickey = ssec, spub
            self.client.curve_serverkey = spub
            self.client.curve_publickey, self.client.curve_secretkey = cpub, csec
        self.client.setsockopt(zmq.RECONNECT_IVL, 20)
        self.server.bind(f"tcp://{LOOPBACK}:*")
        self.server_port = int(self.server.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        self.tx, self.rx = (self.server, self.client) if downstream else (self.client, self.server)

    def connect(self, port: int) -> None:
        self.client.connect(f"tcp://{LOOPBACK}:{port}")

    def send(self, seq: int, size: int = 16) -> None:
        self.tx.send(body(seq, size))

    def stream(self, first: int, count: int, rate_hz: float, size: int = 16,
               drain: bool = True) -> list[Received]:
        """Send ``count`` messages paced at ``rate_hz``; collect what arrives meanwhile."""
        got: list[Received] = []
        t0 = time.monotonic()
        for i in range(count):
            self.send(first + i, size)
            if drain:
                self.drain(got)
            delay = t0 + (i + 1) / rate_hz - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return got

    def drain(self, got: list[Received]) -> None:
        while True:
            try:
                data = self.rx.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            got.append(self._check(data))

    def recv_until(self, last_seq: int, got: list[Received], timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not got or got[-1].seq < last_seq:
            if time.monotonic() > deadline:
                raise AssertionError(f"seq {last_seq} never arrived; last {got[-1:]}")
            if self.rx.poll(50):
                self.drain(got)

    def finish(self, got: list[Received], first: int, markers: int = 5) -> None:
        """Send markers on the clean link and wait for them: everything before is in.

        Markers sent while libzmq is still re-handshaking after a dropped session are
        lost with that session; then keep sending one more until one arrives.
        """
        for i in range(markers):
            self.send(first + i)
        try:
            self.recv_until(first + markers - 1, got, timeout_s=2.0)
            return
        except AssertionError:
            pass
        seq = first + markers
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            self.send(seq)
            if self.rx.poll(50):
                self.drain(got)
            if got and got[-1].seq >= first:
                return
            seq += 1
        raise AssertionError(f"no marker from {first} arrived; last {got[-1:]}")

    @staticmethod
    def _check(data: bytes) -> Received:
        seq, sent = HEADER.unpack_from(data)
        now = time.monotonic_ns()
        expected = body(seq, len(data) - HEADER.size)[HEADER.size:]
        assert data[HEADER.size:] == expected, f"message {seq} delivered with a wrong body"
        return Received(seq, now - sent)

    def close(self) -> None:
        self.client.close(linger=0)
        self.server.close(linger=0)


@pytest.fixture
def link(zctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Link]:
    lk = Link(zctx)
    yield lk
    lk.close()


@pytest.fixture
def proxied(link: Link) -> Iterator[tuple[Link, FaultProxy]]:
    with FaultProxy((LOOPBACK, 0), (LOOPBACK, link.server_port), "test", seed=1234) as proxy:
        link.connect(proxy.port)
        link.send(WARM_UP)
        link.recv_until(WARM_UP, [])
        proxy.reset_stats()
        yield link, proxy


def wait_processed(proxy: FaultProxy, count: int, timeout_s: float = 5.0) -> None:
    """Wait until the proxy has decided on ``count`` upstream messages (or gave up trying:
    messages in flight when libzmq drops a session never reach it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        up = proxy.stats()["upstream"]
        if up["messages"] + up["dropped"] >= count:
            return
        time.sleep(0.01)


def seqs(got: list[Received]) -> list[int]:
    return [r.seq for r in got]


def assert_strictly_increasing(got: list[Received]) -> None:
    s = seqs(got)
    bad = [(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(s)) if a >= b]
    assert not bad, f"duplicate or out-of-order delivery at (index, seq, next): {bad[:5]}"


def interleaved_runs(got: list[Received]) -> int:
    """The fewest in-order runs the delivery interleaves (its longest falling subsequence).

    Each connection delivers in order, but a PULL socket fair-queues between its pipes:
    right after a reconnect the old session's unread tail alternates with the new
    session's head. So a delivery over ``n`` reconnects interleaves at most ``n + 1`` runs.
    """
    tails: list[int] = []  # tails[k]: the largest last element of a falling run of length k+1
    for seq in seqs(got):
        key = -seq
        k = bisect.bisect_left(tails, key)
        tails[k:k + 1] = [key]
    return len(tails)


def one_way_latencies(lk: Link, count: int, size: int = 16) -> list[int]:
    got: list[Received] = []
    for seq in range(count):
        lk.send(seq, size)
        lk.recv_until(seq, got)
    return [r.latency_ns for r in got]


def median_us(values: list[int]) -> float:
    return statistics.median(values) / 1e3


# ---------------------------------------------------------------- pure models
def test_fault_spec_rejects_bad_values_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"faults\.loss"):
        FaultSpec(loss=1.5)
    with pytest.raises(ConfigError, match=r"faults\.delay_ms"):
        FaultSpec(delay_ms=float("nan"))
    with pytest.raises(ConfigError, match="lose"):
        FaultSpec.from_dict({"lose": 0.1})
    assert FaultSpec.from_dict({"loss": 0.2}).loss == 0.2
    assert FaultSpec().clean and not FaultSpec(jitter_ms=1).clean


def test_bernoulli_loss_rate_and_seed_determinism() -> None:
    decide = FaultModel(FaultSpec(loss=0.2), random.Random(7)).decide
    drops = [decide(i).drop for i in range(20_000)]
    assert 0.18 < sum(drops) / len(drops) < 0.22
    again = FaultModel(FaultSpec(loss=0.2), random.Random(7)).decide
    assert drops == [again(i).drop for i in range(20_000)]


def burst_lengths(lost: list[bool]) -> list[int]:
    bursts, run = [], 0
    for is_lost in [*lost, False]:
        if is_lost:
            run += 1
        elif run:
            bursts.append(run)
            run = 0
    return bursts


def test_gilbert_elliott_mean_burst_is_one_over_r() -> None:
    model = FaultModel(FaultSpec(ge_p=0.02, ge_r=0.25), random.Random(3))
    lost = [model.decide(i).drop for i in range(50_000)]
    assert 3.4 < statistics.mean(burst_lengths(lost)) < 4.6  # 1 / r = 4
    bernoulli = FaultModel(FaultSpec(loss=0.074), random.Random(3))
    assert statistics.mean(burst_lengths([bernoulli.decide(i).drop for i in range(50_000)])) < 1.2


def test_delay_with_jitter_never_releases_out_of_order() -> None:
    model = FaultModel(FaultSpec(delay_ms=20, jitter_ms=15), random.Random(5))
    releases = [now + model.decide(now).delay_ns for now in range(0, 200_000_000, 1_000_000)]
    assert releases == sorted(releases)
    assert min(r - n for r, n in zip(releases, range(0, 200_000_000, 1_000_000), strict=True)) \
        >= 5_000_000


def test_reorder_decision_is_not_clamped_and_blackout_spec_drops_all() -> None:
    model = FaultModel(FaultSpec(delay_ms=10, jitter_ms=9, reorder=1.0), random.Random(1))
    assert all(model.decide(i).reorder for i in range(10))
    assert all(FaultModel(FaultSpec(blackout=True), random.Random()).decide(i).drop
               for i in range(10))


def test_blackout_window_ends_on_time_or_on_request() -> None:
    window = BlackoutWindow()
    window.begin(1_000, 0.5)
    assert window.active(1_000) and window.active(500_000_999)
    assert not window.active(500_001_000)
    window.begin(0, None)
    assert window.active(10**15) and window.ends_at_ns() is None
    window.end()
    assert not window.active(0)
    with pytest.raises(ConfigError, match="blackout"):
        window.begin(0, -1.0)


def test_stream_parser_splits_frames_at_any_boundary_and_passes_commands() -> None:
    out, peer = socket.socketpair()
    verdicts = iter([True, False, True])  # drop, pass, drop: one per application message
    counters = Counters()
    stream = FaultedStream(out, counters, lambda now: Decision(drop=next(verdicts)),
                           random.Random(1), "parser")
    greeting = b"\xff" + bytes(8) + b"\x7f\x03\x01" + b"NULL".ljust(20, b"\0") + bytes(32)
    ready = bytes([COMMAND, 6]) + b"\x05READY"
    two_parts = bytes([MORE, 3]) + b"abc" + bytes([0, 2]) + b"de"
    ping = bytes([COMMAND, 7]) + b"\x04PING\x00\x00"
    long_frame = bytes([LONG]) + (300).to_bytes(8, "big") + b"x" * 300
    curve_message = bytes([COMMAND, 24]) + b"\x07MESSAGE" + bytes(8) + b"ciphertxt"[:8]
    for byte in greeting + ready + two_parts + ping + long_frame + curve_message:
        stream.feed(bytes([byte]), 0)  # the worst case: one byte per recv()
    stream.feed(b"\xf0 not a frame", 0)  # garbage: the rest is relayed raw
    stream.pump(0, blacked_out=False)
    peer.settimeout(5)
    expected = greeting + ready + ping + long_frame + b"\xf0 not a frame"
    received = b""
    while len(received) < len(expected):
        received += peer.recv(65536)
    assert received == expected
    assert (counters.messages, counters.dropped) == (1, 2) and stream.raw
    out.close()
    peer.close()


def test_stream_measures_what_the_proxy_itself_adds_beyond_the_fault_delay() -> None:
    out, peer = socket.socketpair()
    added = AddedLatency()
    delays = iter([0, 5_000_000])  # a clean message, then one a fault delays by 5 ms
    stream = FaultedStream(out, Counters(), lambda now: Decision(delay_ns=next(delays)),
                           random.Random(1), "added", added)
    greeting = b"\xff" + bytes(8) + b"\x7f\x03\x01" + b"NULL".ljust(20, b"\0") + bytes(32)
    t0 = time.monotonic_ns()
    stream.feed(greeting + bytes([0, 1]) + b"a" + bytes([0, 1]) + b"b", t0)
    stream.pump(time.monotonic_ns(), blacked_out=False)  # the clean one leaves at once
    assert added.n == 1
    time.sleep(0.006)
    stream.pump(time.monotonic_ns(), blacked_out=False)
    t_end = time.monotonic_ns()
    assert added.n == 2
    figures = added.percentiles()
    # The fault's own 5 ms are not charged to the proxy: what is left is its handling.
    assert 0 <= figures["max_us"] * 1000 <= t_end - t0 - 5_000_000
    assert "added_latency" in FaultProxy(("127.0.0.1", 0), ("127.0.0.1", 9)).stats()["upstream"]
    out.close()
    peer.close()


# ---------------------------------------------------------------- through the proxy
def test_clean_link_delivers_everything_in_order_with_small_added_latency(
        link: Link, zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    direct = Link(zctx)
    try:
        direct.connect(direct.server_port)
        direct_lat = one_way_latencies(direct, 500)
    finally:
        direct.close()
    with FaultProxy((LOOPBACK, 0), (LOOPBACK, link.server_port), "clean") as proxy:
        link.connect(proxy.port)
        proxied_lat = one_way_latencies(link, 500)
        got = link.stream(1000, 1000, rate_hz=1000)
        link.finish(got, 2000)
        stats = proxy.stats()
    assert seqs(got)[:1000] == list(range(1000, 2000))
    assert stats["upstream"]["messages"] == 500 + 1000 + 5
    assert stats["upstream"]["dropped"] == 0 and stats["connections"] == 1
    d50, p50 = median_us(direct_lat), median_us(proxied_lat)
    d99, p99 = (statistics.quantiles(v, n=100)[98] / 1e3 for v in (direct_lat, proxied_lat))
    print(f"\nclean link one-way, 32 B CURVE: direct p50 {d50:.0f} us p99 {d99:.0f} us; "
          f"via proxy p50 {p50:.0f} us p99 {p99:.0f} us; added p50 {p50 - d50:.0f} us")
    assert p50 - d50 < 5_000  # generous: the figure is printed, not timed here


def test_bernoulli_loss_drops_about_a_fifth_and_keeps_the_session(proxied) -> None:
    lk, proxy = proxied
    proxy.set_faults(upstream=FaultSpec(loss=0.2))
    got = lk.stream(0, 1000, rate_hz=1000)
    wait_processed(proxy, 1000)
    proxy.set_faults()
    lk.finish(got, 1000)
    lost = 1000 - sum(1 for r in got if r.seq < 1000)
    stats = proxy.stats()
    assert 120 < lost < 280
    assert stats["upstream"]["dropped"] == lost
    assert stats["connections"] == 0  # a gap in CURVE nonces is fine: no reconnect
    assert_strictly_increasing(got)


def test_gilbert_elliott_losses_come_in_bursts(proxied) -> None:
    lk, proxy = proxied
    proxy.set_faults(upstream=FaultSpec(ge_p=0.03, ge_r=0.3))
    got = lk.stream(0, 1500, rate_hz=1500)
    wait_processed(proxy, 1500)
    proxy.set_faults()
    lk.finish(got, 1500)
    arrived = {r.seq for r in got}
    bursts = burst_lengths([seq not in arrived for seq in range(1500)])
    print(f"\nGilbert-Elliott: {sum(bursts)} lost in {len(bursts)} bursts, "
          f"mean burst {statistics.mean(bursts):.2f}")
    assert len(bursts) >= 5 and statistics.mean(bursts) > 1.5
    assert proxy.stats()["connections"] == 0


def test_delay_makes_every_message_late_and_keeps_order(proxied) -> None:
    lk, proxy = proxied
    proxy.set_faults(upstream=FaultSpec(delay_ms=50))
    got = lk.stream(0, 200, rate_hz=1000)
    lk.recv_until(199, got)
    assert seqs(got) == list(range(200))
    assert min(r.latency_ns for r in got) >= 49_500_000
    proxy.set_faults(upstream=FaultSpec(delay_ms=20, jitter_ms=15))
    got = lk.stream(200, 300, rate_hz=1000)
    lk.recv_until(499, got)
    assert seqs(got) == list(range(200, 500))  # jitter never reorders a TCP stream
    assert min(r.latency_ns for r in got) >= 4_500_000


def test_blackout_drops_the_window_and_traffic_resumes(proxied) -> None:
    lk, proxy = proxied
    got = lk.stream(0, 100, rate_hz=1000)
    lk.recv_until(99, got)
    start = time.monotonic()
    proxy.blackout(1.0)
    got += lk.stream(100, 200, rate_hz=1000)  # ~0.2 s: well inside the 1 s window
    inside = time.monotonic() - start
    while proxy.stats()["blackout"]:  # it ends by itself
        assert time.monotonic() - start < 10, "the blackout never ended"
        time.sleep(0.01)
    ended = time.monotonic() - start
    got += lk.stream(300, 200, rate_hz=1000)
    lk.finish(got, 500)
    print(f"\nblackout 1 s: 200 messages sent in {inside:.2f} s, ended after {ended:.2f} s")
    assert inside < 1.0 <= ended + 0.01
    arrived = set(seqs(got))
    assert arrived.isdisjoint(range(100, 300))
    assert set(range(300, 505)) <= arrived  # resumes after the window, same session
    stats = proxy.stats()
    assert stats["upstream"]["dropped"] == 200
    assert stats["connections"] == 0 and stats["active"] == 1  # TCP stayed up


def test_blackout_hold_delivers_the_backlog_afterwards_in_order(proxied) -> None:
    lk, proxy = proxied
    proxy.blackout(None, mode="hold")
    got = lk.stream(0, 200, rate_hz=1000)
    time.sleep(0.1)
    lk.drain(got)
    assert got == []
    proxy.end_blackout()
    lk.recv_until(199, got)
    assert seqs(got) == list(range(200))
    assert min(r.latency_ns for r in got) >= 90_000_000


def test_held_backlog_is_bounded_by_backpressure_not_memory(proxied) -> None:
    lk, proxy = proxied
    proxy.blackout(None, mode="hold")
    for seq in range(300):  # 30 MB: far more than the proxy may hold
        lk.send(seq, 100_000)
    deadline = time.monotonic() + 10
    previous = -1
    while time.monotonic() < deadline:  # until the proxy stops reading (queue stable)
        time.sleep(0.2)
        queued = proxy.stats()["upstream"]["queued_bytes"]
        if queued == previous:
            break
        previous = queued
    print(f"\nhold blackout with 30 MB sent: proxy holds {queued / 1e6:.1f} MB")
    assert 0 < queued <= HIGH_WATER_BYTES + RECV_BYTES
    proxy.end_blackout()
    got: list[Received] = []
    lk.recv_until(299, got, timeout_s=30)
    assert seqs(got) == list(range(300))  # held, then delivered whole and in order


@pytest.mark.parametrize("fault", ["duplicate", "reorder", "corrupt"])
def test_nonce_and_mac_faults_never_deliver_a_wrong_message_and_recover(proxied, fault) -> None:
    lk, proxy = proxied
    proxy.set_faults(upstream=FaultSpec.from_dict({fault: 0.02}))
    got = lk.stream(0, 1000, rate_hz=1000)
    wait_processed(proxy, 1000, timeout_s=1.0)
    proxy.set_faults()
    lk.finish(got, 1000)  # the link recovers by itself (reconnect + handshake)
    stats = proxy.stats()
    injected = {"duplicate": "duplicated", "reorder": "reordered", "corrupt": "corrupted"}[fault]
    print(f"\n{fault}: {stats['upstream'][injected]} injected, {stats['connections']} "
          f"connections, {sum(1 for r in got if r.seq < 1000)}/1000 delivered")
    assert stats["upstream"][injected] > 0
    assert stats["connections"] >= 1  # libzmq dropped the session and the client came back
    # No altered body (checked on receipt) and never the same message twice.
    assert len(set(seqs(got))) == len(got), "a message was delivered twice"
    # In order within each session. Across a reconnect libzmq's fair queue may alternate
    # the old session's unread tail with the new one's head (seen in CI: 1000, 975, 1001,
    # 976...): no ZeroMQ guarantee covers it, so the robot's CommandGate never takes an
    # older command as fresh (tests/test_gate.py).
    runs = interleaved_runs(got)
    late = sum(1 for a, b in itertools.pairwise(seqs(got)) if a > b)
    print(f"{fault}: {late} older message(s) delivered after a newer one, {runs} run(s)")
    assert runs <= stats["connections"] + 1, \
        f"{runs} interleaved runs over {stats['connections']} reconnects: {seqs(got)}"


def test_faults_set_live_change_behaviour_mid_stream(proxied) -> None:
    lk, proxy = proxied
    got = lk.stream(0, 200, rate_hz=1000)
    lk.recv_until(199, got)
    proxy.set_faults(upstream=FaultSpec(loss=1.0))
    lk.stream(200, 200, rate_hz=1000)
    wait_processed(proxy, 400)
    proxy.set_faults()
    got += lk.stream(400, 200, rate_hz=1000)
    lk.recv_until(599, got)
    assert seqs(got) == [*range(200), *range(400, 600)]


def test_downstream_faults_apply_to_server_to_client_only(
        zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    lk = Link(zctx, downstream=True)
    try:
        with FaultProxy((LOOPBACK, 0), (LOOPBACK, lk.server_port), "down", seed=5) as proxy:
            proxy.set_faults(upstream=FaultSpec(loss=1.0), downstream=FaultSpec(delay_ms=30))
            lk.connect(proxy.port)
            got: list[Received] = []
            for seq in range(50):
                lk.send(seq)
            lk.recv_until(49, got)
        assert seqs(got) == list(range(50))
        assert min(r.latency_ns for r in got) >= 29_500_000
    finally:
        lk.close()


def test_null_mechanism_multipart_messages_are_dropped_whole(
        zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    lk = Link(zctx, curve=False)
    try:
        with FaultProxy((LOOPBACK, 0), (LOOPBACK, lk.server_port), "null", seed=9) as proxy:
            lk.connect(proxy.port)
            proxy.set_faults(upstream=FaultSpec(loss=0.5))
            for seq in range(300):
                lk.tx.send_multipart([b"head-%d" % seq, body(seq, 64)])
            wait_processed(proxy, 300)
            proxy.set_faults()
            lk.tx.send_multipart([b"head-end", body(300, 64)])
            parts: list[list[bytes]] = []
            deadline = time.monotonic() + 10
            while (not parts or parts[-1][0] != b"head-end") and time.monotonic() < deadline:
                if lk.rx.poll(50):
                    parts.append(lk.rx.recv_multipart())
        assert parts[-1][0] == b"head-end"
        for head, payload in parts:
            assert head == b"head-%d" % HEADER.unpack_from(payload)[0] or head == b"head-end"
        assert 90 < len(parts) - 1 < 210
    finally:
        lk.close()


def test_non_zmtp_peers_are_relayed_raw_and_unreachable_targets_counted() -> None:
    server = socket.create_server((LOOPBACK, 0))
    with FaultProxy((LOOPBACK, 0), server.getsockname()[:2], "raw") as proxy, \
            socket.create_connection((LOOPBACK, proxy.port), timeout=5) as client:
        peer, _ = server.accept()
        payload = b"GET / HTTP/1.0\r\n" * 8  # not a ZMTP greeting: relayed untouched
        client.sendall(payload)
        received = b""
        peer.settimeout(5)
        while len(received) < len(payload):
            received += peer.recv(4096)
        assert received == payload
        peer.close()
    server.close()
    free = socket.socket()
    free.bind((LOOPBACK, 0))
    dead_port = free.getsockname()[1]
    free.close()  # nothing listens here now
    with FaultProxy((LOOPBACK, 0), (LOOPBACK, dead_port), "dead") as proxy:
        with socket.create_connection((LOOPBACK, proxy.port), timeout=5) as client:
            client.settimeout(5)
            assert client.recv(1) == b""  # the proxy closes the client
        assert proxy.stats()["connect_failures"] == 1


# ---------------------------------------------------------------- several links, big messages
def test_proxy_set_carries_commands_and_video_concurrently(
        zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    command, video = Link(zctx), Link(zctx, downstream=True)
    routes = {"command": ((LOOPBACK, 0), (LOOPBACK, command.server_port)),
              "video": ((LOOPBACK, 0), (LOOPBACK, video.server_port))}
    try:
        with ProxySet(routes, seed=3) as proxies:
            command.connect(proxies.ports["command"])
            video.connect(proxies.ports["video"])
            for lk in (command, video):
                lk.send(WARM_UP)
                lk.recv_until(WARM_UP, [])
            frames: list[Received] = []
            commands: list[Received] = []
            # One thread per socket: 1 kHz commands up, ~30 fps of 60 KB frames down.
            threads = [threading.Thread(target=video.stream, args=(0, 30, 30, 60_000, False)),
                       threading.Thread(target=video.recv_until, args=(29, frames)),
                       threading.Thread(target=command.recv_until, args=(999, commands))]
            for thread in threads:
                thread.start()
            command.stream(0, 1000, rate_hz=1000, drain=False)
            for thread in threads:
                thread.join(timeout=30)
            stats = proxies.stats()
        assert seqs(commands) == list(range(1000))
        assert seqs(frames) == list(range(30))
        assert stats["video"]["downstream"]["messages"] == 31
        assert stats["command"]["upstream"]["messages"] == 1001
        cmd_ms = [r.latency_ns / 1e6 for r in commands]
        vid_ms = [r.latency_ns / 1e6 for r in frames]
        print(f"\nconcurrent via proxy: command p50 {statistics.median(cmd_ms):.2f} ms "
              f"max {max(cmd_ms):.2f} ms; 60 KB video p50 {statistics.median(vid_ms):.2f} ms "
              f"max {max(vid_ms):.2f} ms")
    finally:
        command.close()
        video.close()


def throughput_mb_s(lk: Link, count: int, size: int) -> float:
    got: list[Received] = []
    start = time.perf_counter_ns()
    for seq in range(count):
        lk.send(seq, size)
        lk.drain(got)
    lk.recv_until(count - 1, got, timeout_s=60)
    return count * size / ((time.perf_counter_ns() - start) / 1e9) / 1e6


@pytest.mark.slow
def test_throughput_and_video_latency_figures(zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    direct = Link(zctx)
    proxied_link = Link(zctx)
    try:
        direct.connect(direct.server_port)
        with FaultProxy((LOOPBACK, 0), (LOOPBACK, proxied_link.server_port), "bench") as proxy:
            proxied_link.connect(proxy.port)
            figures = {}
            for name, lk in (("direct", direct), ("proxy", proxied_link)):
                lk.send(WARM_UP)
                lk.recv_until(WARM_UP, [])
                figures[name] = (median_us(one_way_latencies(lk, 60, size=100_000)),
                                 throughput_mb_s(lk, 300, 100_000))
            assert proxy.stats()["upstream"]["dropped"] == 0
    finally:
        direct.close()
        proxied_link.close()
    (d_lat, d_tp), (p_lat, p_tp) = figures["direct"], figures["proxy"]
    print(f"\n100 KB messages: one-way p50 direct {d_lat:.0f} us, via proxy {p_lat:.0f} us "
          f"(added {p_lat - d_lat:.0f} us); throughput direct {d_tp:.0f} MB/s, "
          f"via proxy {p_tp:.0f} MB/s")
    assert p_tp > 10  # 30 fps of 100 KB is 3 MB/s


# ---------------------------------------------------------------- out of process
def test_routes_and_requests_are_validated() -> None:
    assert parse_route("video@0.0.0.0:0=10.231.1.2:5557") == (
        "video", ("0.0.0.0", 0), ("10.231.1.2", 5557))
    assert parse_route("127.0.0.1:1=127.0.0.1:2")[0] == "127.0.0.1:1"
    for bad in ("127.0.0.1:1", "a@host=127.0.0.1:2", "x@h:99999=h:1"):
        with pytest.raises(ConfigError, match="--listen"):
            parse_route(bad)
    with ProxySet({"a": ((LOOPBACK, 0), (LOOPBACK, 9))}) as proxies:
        for request, why in (([], "JSON object"), ({"stats": 1, "ports": 1}, "exactly one"),
                             ({"faults": {"sideways": {}}}, "upstream"),
                             ({"faults": {"upstream": {"loss": 2}}}, r"faults\.upstream\.loss"),
                             ({"faults": {}, "only": ["b"]}, "no such proxy"),
                             ({"blackout": "long"}, "seconds"),
                             ({"blackout": 1, "mode": "pause"}, "blackout mode")):
            with pytest.raises(ConfigError, match=why):
                handle_request(proxies, request)
        assert handle_request(proxies, {"blackout": 0.2, "mode": "hold"}) == {"ok": True}
        assert proxies["a"].stats()["blackout"] and proxies["a"].blackout_mode == "hold"


def test_out_of_process_proxy_obeys_its_control_socket(link: Link, tmp_path) -> None:
    control = f"ipc://{tmp_path}/ctl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil_tests.faultproxy", "--listen",
         f"command@{LOOPBACK}:0={LOOPBACK}:{link.server_port}", "--control", control,
         "--seed", "1"], stdout=subprocess.PIPE, text=True)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.RCVTIMEO, 10_000)
    req.setsockopt(zmq.LINGER, 0)

    def call(request: object) -> dict[str, Any]:
        req.send_json(request)
        reply = req.recv_json()
        assert isinstance(reply, dict)
        return reply

    try:
        assert proc.stdout is not None
        words = proc.stdout.readline().split()
        assert words[:4] == ["faultproxy", "ready", "command", "port"]
        req.connect(control)
        port = call({"ports": True})["ports"]["command"]
        assert port == int(words[4])
        link.connect(port)
        link.send(WARM_UP)
        link.recv_until(WARM_UP, [])
        assert call({"faults": {"upstream": {"loss": 1.0}}}) == {"ok": True}
        link.stream(0, 50, rate_hz=1000)
        deadline = time.monotonic() + 10
        while call({"stats": True})["stats"]["command"]["upstream"]["dropped"] < 50:
            assert time.monotonic() < deadline, "the proxy never dropped the 50 messages"
            time.sleep(0.02)
        bad = call({"faults": {"upstream": {"lose": 0.2}}})
        assert not bad["ok"] and "lose" in bad["error"] and bad["errors"] == 1
        assert call({"faults": {}}) == {"ok": True}  # clean again; still running
        got = link.stream(50, 50, rate_hz=1000)
        link.recv_until(99, got)
        assert seqs(got) == list(range(50, 100))
        assert call({"reset_stats": True}) == {"ok": True}
        assert call({"stop": True}) == {"ok": True}
        assert proc.wait(timeout=10) == 0
    finally:
        req.close()
        ctx.term()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
