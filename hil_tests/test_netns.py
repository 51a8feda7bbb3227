"""Hosts in network namespaces: a real veth, real processes inside, real tbf.

Skips with the reason from ``netns_available()`` where namespaces are impossible.
Ports inside a pair's namespaces are private to it, so fixed ports are safe here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from hil_tests.netns import (
    NetnsPair,
    list_namespaces,
    netns_available,
    remove_stale_namespaces,
)
from telesurgery.errors import ConfigError

AVAILABLE, REASON = netns_available()
pytestmark = [pytest.mark.hil, pytest.mark.skipif(not AVAILABLE, reason=REASON)]
PY = sys.executable

RECEIVER = """
import sys, zmq
ctx = zmq.Context()
pull = ctx.socket(zmq.PULL)
pull.bind(sys.argv[1])
print("bound", flush=True)
got = []
while len(got) < int(sys.argv[2]) and pull.poll(10000):
    got.append(int(pull.recv()))
print(" ".join(map(str, got)), flush=True)
"""

SENDER = """
import sys, time, zmq
ctx = zmq.Context()
push = ctx.socket(zmq.PUSH)
push.connect(sys.argv[1])
for i in range(int(sys.argv[2])):
    push.send(str(i).encode())
    time.sleep(0.001)
push.close(linger=5000)
"""

SINK = """
import socket, sys, time
srv = socket.create_server((sys.argv[1], 7000))
print("listening", flush=True)
conn, _ = srv.accept()
total, first = 0, None
while chunk := conn.recv(65536):
    first = first or time.monotonic()
    total += len(chunk)
print(total, time.monotonic() - first, flush=True)
"""

SOURCE = """
import socket, sys
with socket.create_connection((sys.argv[1], 7000), timeout=10) as s:
    s.sendall(b"x" * int(sys.argv[2]))
"""


def test_zeromq_talks_across_the_veth(netns_pair: NetnsPair) -> None:
    pair = netns_pair
    assert pair.console_ip != pair.robot_ip
    receiver = pair.run("robot", [PY, "-c", RECEIVER, f"tcp://{pair.robot_ip}:5555", "50"],
                        stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    assert receiver.stdout.readline().strip() == "bound"
    sender = pair.run("console", [PY, "-c", SENDER, f"tcp://{pair.robot_ip}:5555", "50"])
    assert sender.wait(timeout=30) == 0
    out, _ = receiver.communicate(timeout=30)
    assert [int(x) for x in out.split()] == list(range(50))
    # The robot's address is not reachable from the host namespace.
    assert pair.robot_ip not in subprocess.run(["ip", "-brief", "addr"], capture_output=True,
                                               text=True, check=True).stdout


def measure_kbit(pair: NetnsPair, nbytes: int) -> float:
    sink = pair.run("robot", [PY, "-c", SINK, pair.robot_ip], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None and sink.stdout.readline().strip() == "listening"
    source = pair.run("console", [PY, "-c", SOURCE, pair.robot_ip, str(nbytes)])
    assert source.wait(timeout=60) == 0
    out, _ = sink.communicate(timeout=60)
    total, seconds = out.split()
    assert int(total) == nbytes
    return int(total) * 8 / 1000 / max(float(seconds), 1e-6)


@pytest.mark.slow
def test_tbf_limits_the_throughput(netns_pair: NetnsPair) -> None:
    pair = netns_pair
    free = measure_kbit(pair, 8_000_000)
    pair.rate_limit("console", kbit=2000, burst=16000, latency_ms=200)
    limited = measure_kbit(pair, 400_000)  # ~1.6 s at 2 Mbit/s
    pair.clear_rate_limit("console")
    print(f"\nveth throughput: unlimited {free / 1000:.0f} Mbit/s, "
          f"tbf 2 Mbit/s -> {limited / 1000:.2f} Mbit/s")
    assert limited < 2000 * 1.6  # the burst lets a little through at line rate
    assert free > 5 * limited
    with pytest.raises(ConfigError, match="kbit"):
        pair.rate_limit("console", kbit=0, burst=1000, latency_ms=10)


def test_cleanup_removes_namespaces_and_processes_even_on_error() -> None:
    pair = NetnsPair()
    with pytest.raises(RuntimeError, match="boom"), pair:
        sleeper = pair.run("robot", ["sleep", "60"])
        assert {pair.console_ns, pair.robot_ns} <= set(list_namespaces())
        raise RuntimeError("boom")
    assert sleeper.poll() is not None
    assert not {pair.console_ns, pair.robot_ns} & set(list_namespaces())
    pair.cleanup()  # idempotent


def test_fault_proxy_inside_a_namespace_driven_over_ipc(netns_pair: NetnsPair,
                                                        tmp_path: Path) -> None:
    pair = netns_pair
    control = f"ipc://{tmp_path}/proxy.ctl"
    receiver = pair.run("robot", [PY, "-c", RECEIVER, "tcp://127.0.0.1:5555", "20"],
                        stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "bound"
    proxy = pair.run("robot", [PY, "-m", "hil_tests.faultproxy", "--listen",
                               f"command@{pair.robot_ip}:6000=127.0.0.1:5555",
                               "--control", control], stdout=subprocess.PIPE, text=True)
    assert proxy.stdout is not None
    assert proxy.stdout.readline().split() == ["faultproxy", "ready", "command", "port",
                                               "6000"]
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.RCVTIMEO, 10000)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(control)  # a path-based unix socket reaches into the namespace
    try:
        req.send_json({"faults": {"upstream": {"delay_ms": 5}}})
        assert req.recv_json() == {"ok": True}
        sender = pair.run("console", [PY, "-c", SENDER, f"tcp://{pair.robot_ip}:6000", "20"])
        assert sender.wait(timeout=30) == 0
        out, _ = receiver.communicate(timeout=30)
        assert [int(x) for x in out.split()] == list(range(20))
        req.send_json({"stats": True})
        reply = req.recv_json()
        assert isinstance(reply, dict)
        assert reply["stats"]["command"]["upstream"]["messages"] == 20
        req.send_json({"stop": True})
        assert req.recv_json() == {"ok": True}
        assert proxy.wait(timeout=10) == 0
    finally:
        req.close()
        ctx.term()


def test_namespaces_left_by_a_dead_process_are_removed() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"ts-con-{dead.pid}-0"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=10)
    try:
        assert stale in remove_stale_namespaces()
        assert stale not in list_namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, timeout=10, check=False)


def test_missing_tools_give_a_stated_reason(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no iproute2
    netns_available.cache_clear()
    try:
        ok, reason = netns_available()
    finally:
        monkeypatch.undo()
        netns_available.cache_clear()
    assert not ok and "iproute2" in reason
    assert netns_available() == (True, "")
