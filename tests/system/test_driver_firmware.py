"""Driver + firmware emulator over a real pseudo-terminal, plus the firmware model alone.

Timing bounds are generous on purpose (the machine is shared); what is asserted is
logic and ordering, and the firmware's own clock for the watchdog figure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from helpers import wait_until

from robot_side import serial_protocol as sp
from robot_side.driver import SerialConfig, SerialManipulator
from robot_side.firmware_model import FirmwareModel, Mode, default_params
from robot_side.firmware_sim import FirmwareEmulator
from telesurgery.errors import ConfigError, SchemaError, SerialLinkError

WATCHDOG_MS = 100.0
"""The design default; the tests about the watchdog use it."""
RELAXED_WATCHDOG_MS = 300.0
"""Other tests stream from a Python thread on a loaded machine: a starved sender must
not trip the watchdog in a test that is about something else."""
SLACK_MS = 400.0
"""Scheduling slack on a loaded machine; the firmware's own figure is what gets reported."""
GOAL = (0.5, -0.4, 0.3, 0.0, 0.2, -0.1)


def stream(drv: SerialManipulator, targets: tuple[float, ...], seconds: float,
           period_s: float = 0.005) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        drv.send_targets(targets, 0.5)
        time.sleep(period_s)


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[FirmwareEmulator]:
    with FirmwareEmulator(link=tmp_path / "ttyTS0", watchdog_ms=RELAXED_WATCHDOG_MS,
                          seed=1) as e:
        yield e


@pytest.fixture
def emu100(tmp_path: Path) -> Iterator[FirmwareEmulator]:
    with FirmwareEmulator(link=tmp_path / "ttyTS0", watchdog_ms=WATCHDOG_MS, seed=1) as e:
        yield e


def _driver(emu: FirmwareEmulator) -> SerialManipulator:
    return SerialManipulator(SerialConfig(port=emu.port_path, reconnect_interval_ms=50))


@pytest.fixture
def drv(emu: FirmwareEmulator) -> Iterator[SerialManipulator]:
    with _driver(emu) as d:
        yield d


@pytest.fixture
def drv100(emu100: FirmwareEmulator) -> Iterator[SerialManipulator]:
    with _driver(emu100) as d:
        yield d


def following(drv: SerialManipulator, emu: FirmwareEmulator) -> None:
    drv.release()
    assert wait_until(lambda: emu.snapshot().mode == "following")


# ---------------------------------------------------------------- handshake and motion
def test_handshake(drv: SerialManipulator, emu: FirmwareEmulator) -> None:
    assert drv.connected
    assert drv.firmware is not None
    assert (drv.firmware.protocol_version, drv.firmware.n_joints) == (sp.PROTOCOL_VERSION, 6)
    assert emu.port_path.endswith("ttyTS0") and Path(emu.port_path).resolve() == Path(
        str(emu.tty_path))
    assert wait_until(lambda: drv.latest_state() is not None)
    assert emu.snapshot().braked, "firmware powers up braked"


def test_handshake_mismatch_names_the_port(emu: FirmwareEmulator) -> None:
    with pytest.raises(SerialLinkError, match=r"ttyTS0.*6 joints.*expects v1 with 5"):
        SerialManipulator(SerialConfig(port=emu.port_path, n_joints=5)).open()


def test_missing_port_names_the_port(tmp_path: Path) -> None:
    with pytest.raises(SerialLinkError, match="nope"):
        SerialManipulator(SerialConfig(port=str(tmp_path / "nope"))).open()


def test_silent_port_times_out_handshake(tmp_path: Path) -> None:
    master, slave = os.openpty()  # a port with nobody behind it
    try:
        cfg = SerialConfig(port=os.ttyname(slave), handshake_timeout_ms=150)
        with pytest.raises(SerialLinkError, match="no Hello"):
            SerialManipulator(cfg).open()
    finally:
        os.close(master)
        os.close(slave)


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"serial\.write_timeout_ms"):
        SerialConfig(write_timeout_ms=0)
    with pytest.raises(ConfigError, match=r"serial\.n_joints"):
        SerialConfig(n_joints=0)


def test_arm_follows_a_stream_of_targets(drv: SerialManipulator, emu: FirmwareEmulator) -> None:
    following(drv, emu)
    start = emu.snapshot().positions
    for k in range(1, 41):  # a ramp, like a surgeon's motion, then hold the goal
        stream(drv, tuple(g * k / 40 for g in GOAL), 0.01)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not all(
            abs(p - g) < 1e-3 for p, g in zip(emu.snapshot().positions, GOAL, strict=True)):
        stream(drv, GOAL, 0.02)
    assert all(abs(p - g) < 1e-3 for p, g in zip(emu.snapshot().positions, GOAL, strict=True))
    assert start == (0.0,) * 6, "it got there by moving"
    stream(drv, GOAL, 0.05)
    latest = drv.latest_state()
    assert latest is not None
    assert all(abs(p - g) < 1e-3 for p, g in zip(latest[0].positions, GOAL, strict=True))
    assert sp.FwFlags.FOLLOWING in sp.FwFlags(latest[0].flags)
    assert drv.counters["frames_ok"] > 10 and drv.counters["resyncs"] == 0


def test_velocity_limit_is_respected(drv: SerialManipulator, emu: FirmwareEmulator) -> None:
    following(drv, emu)
    peak = 0.0
    end = time.monotonic() + 0.4
    while time.monotonic() < end:
        drv.send_targets((2.5,) * 6, 0.0)
        peak = max(peak, *map(abs, emu.snapshot().velocities))
        time.sleep(0.005)
    assert 0.5 < peak <= 2.5 + 1e-9


def test_targets_beyond_limits_are_clamped(drv: SerialManipulator, emu: FirmwareEmulator) -> None:
    following(drv, emu)
    drv.send_targets((5.0, 0, 0, 0, 0, 0), 0.0)
    assert wait_until(lambda: sp.FwFlags.JOINT_LIMIT in sp.FwFlags(emu.snapshot().flags))
    assert emu.snapshot().targets[0] == pytest.approx(2.9, abs=1e-6)
    assert wait_until(lambda: any(f.code == sp.FaultCode.JOINT_LIMIT
                                  for f in drv.drain_faults()))


def test_second_driver_cannot_share_the_port(drv: SerialManipulator,
                                             emu: FirmwareEmulator) -> None:
    with pytest.raises(SerialLinkError, match="ttyTS0"):
        SerialManipulator(SerialConfig(port=emu.port_path)).open()
    assert drv.connected


def test_fault_queue_is_bounded(drv: SerialManipulator, emu: FirmwareEmulator) -> None:
    following(drv, emu)
    for k in range(160):  # every re-entry beyond the limit is one fault report
        drv.send_targets((5.0 if k % 2 else 0.0, 0, 0, 0, 0, 0), 0.0)
        time.sleep(0.001)
    assert wait_until(lambda: drv.counters["faults_dropped"] > 0)
    assert len(drv.drain_faults()) <= 64
    assert drv.drain_faults() == []


def test_bad_targets_are_refused_before_the_port(drv: SerialManipulator) -> None:
    for bad in ((float("nan"),) * 6, (0.0,) * 5):
        with pytest.raises(SchemaError):
            drv.send_targets(bad, 0.0)
    assert drv.counters["rejected_commands"] == 2


# ---------------------------------------------------------------- injected serial faults
@pytest.mark.parametrize(("fault", "counters"), [
    ("corrupt", ("crc_errors", "cobs_errors", "length_errors")),
    ("garbage", ("garbage_bytes",)),
    ("truncate", ("crc_errors", "cobs_errors", "length_errors")),
    ("drop", ("seq_gaps",)),
])
def test_each_injected_fault_is_detected(drv: SerialManipulator, emu: FirmwareEmulator,
                                         fault: str, counters: tuple[str, ...]) -> None:
    before = drv.counters
    emu.inject(**{fault: 0.3})
    assert wait_until(lambda: sum(drv.counters[c] - before[c] for c in counters) >= 5)
    if fault != "drop":
        assert drv.counters["resyncs"] > before["resyncs"]
    emu.inject()
    ok = drv.counters["state_reports"]
    assert wait_until(lambda: drv.counters["state_reports"] > ok + 20), "reports flow again"


def test_delayed_replies_show_in_round_trip(drv: SerialManipulator, emu: FirmwareEmulator) -> None:
    emu.inject(delay_ms=80.0)
    t0 = time.monotonic_ns()
    assert drv.wait_for_ack(drv.heartbeat(), timeout_s=3.0) is not None
    assert time.monotonic_ns() - t0 >= 80e6


def test_corrupted_commands_do_not_feed_the_watchdog(drv: SerialManipulator,
                                                     emu: FirmwareEmulator) -> None:
    following(drv, emu)
    emu.inject(rx_corrupt=1.0)
    end = time.monotonic() + 5.0  # without the rule the stream keeps it alive all along
    while time.monotonic() < end and not emu.snapshot().watchdog_tripped:
        drv.send_targets(GOAL, 0.0)
        time.sleep(0.005)
    snap = emu.snapshot()
    assert snap.watchdog_tripped and snap.braked and snap.frames_bad > 0
    assert wait_until(lambda: sp.FwFlags.RX_ERRORS in sp.FwFlags(drv.latest_state()[0].flags)
                      or drv.latest_state()[0].flags & sp.FwFlags.WATCHDOG_TRIPPED)


def test_stuck_joint_faults_and_brakes(drv: SerialManipulator, emu: FirmwareEmulator) -> None:
    following(drv, emu)
    emu.inject(stuck_joint=2)
    end = time.monotonic() + 2.0
    while time.monotonic() < end and not emu.snapshot().braked:
        drv.send_targets(GOAL, 0.0)
        time.sleep(0.005)
    snap = emu.snapshot()
    assert snap.braked and snap.positions[2] == 0.0
    flags = sp.FwFlags(snap.flags)
    assert sp.FwFlags.STUCK_JOINT in flags and sp.FwFlags.FAULT in flags
    assert wait_until(lambda: any(f.code == sp.FaultCode.STUCK_JOINT
                                  for f in drv.drain_faults()))


# ---------------------------------------------------------------- watchdog and e-stop
def test_watchdog_brakes_and_needs_release(drv100: SerialManipulator,
                                           emu100: FirmwareEmulator) -> None:
    drv, emu = drv100, emu100
    following(drv, emu)
    stream(drv, GOAL, 0.15)
    assert wait_until(lambda: emu.snapshot().watchdog_tripped, timeout_s=3.0)
    snap = emu.snapshot()
    assert snap.braked and snap.velocities == (0.0,) * 6
    assert snap.trip_latency_ms is not None
    assert WATCHDOG_MS <= snap.trip_latency_ms <= WATCHDOG_MS + SLACK_MS
    held = snap.positions
    stream(drv, (0.0,) * 6, 0.2)  # a fresh stream alone never resumes motion
    snap = emu.snapshot()
    assert snap.braked and snap.positions == held and snap.targets_ignored > 0
    assert any(f.code == sp.FaultCode.NOT_RELEASED for f in drv.drain_faults())
    drv.release()
    stream(drv, (0.0,) * 6, 0.2)
    assert emu.snapshot().mode == "following" and emu.snapshot().positions != held


def test_heartbeats_keep_the_watchdog_fed(drv: SerialManipulator, emu: FirmwareEmulator) -> None:
    following(drv, emu)
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        drv.heartbeat()
        time.sleep(0.01)
    assert not emu.snapshot().watchdog_tripped


def test_estop_latches_until_released_and_release_frame(drv: SerialManipulator,
                                                        emu: FirmwareEmulator) -> None:
    following(drv, emu)
    emu.press_estop()
    assert emu.snapshot().braked
    drv.release()
    stream(drv, GOAL, 0.1)
    snap = emu.snapshot()
    assert snap.braked and snap.estop_pressed, "Release is refused while the button is pressed"
    assert wait_until(lambda: any(f.code == sp.FaultCode.ESTOP for f in drv.drain_faults()))
    emu.release_estop()
    stream(drv, GOAL, 0.1)
    assert emu.snapshot().braked, "releasing the button alone does not move the arm"
    following(drv, emu)


def test_new_handshake_never_inherits_motion(drv: SerialManipulator,
                                             emu: FirmwareEmulator) -> None:
    following(drv, emu)
    drv.close()
    with SerialManipulator(SerialConfig(port=emu.port_path)):
        assert emu.snapshot().mode in ("holding", "braked")


DRIVER_SCRIPT = textwrap.dedent("""
    import sys, time
    from robot_side.driver import SerialConfig, SerialManipulator
    d = SerialManipulator(SerialConfig(port=sys.argv[1]))
    d.open()
    d.release()
    print("STREAMING", flush=True)
    while True:
        d.send_targets((0.3, 0.3, 0.3, 0.3, 0.3, 0.3), 0.0)
        time.sleep(0.004)
""")


def test_sigkilled_robot_process_leaves_the_arm_braked(emu100: FirmwareEmulator) -> None:
    emu = emu100
    proc = subprocess.Popen([sys.executable, "-c", DRIVER_SCRIPT, emu.port_path],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "STREAMING"
        assert wait_until(lambda: emu.snapshot().mode == "following"
                          and abs(emu.snapshot().velocities[0]) > 0.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert wait_until(lambda: emu.snapshot().braked, timeout_s=3.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    snap = emu.snapshot()
    assert snap.watchdog_tripped and snap.velocities == (0.0,) * 6
    assert snap.trip_latency_ms is not None
    assert WATCHDOG_MS <= snap.trip_latency_ms <= WATCHDOG_MS + SLACK_MS
    print(f"\nSIGKILLed driver process: firmware braked after {snap.trip_latency_ms:.1f} ms "
          f"of silence (watchdog {WATCHDOG_MS:.0f} ms, firmware clock)")
    time.sleep(0.1)
    assert emu.snapshot().positions == snap.positions


# ---------------------------------------------------------------- vanishing port
def test_vanished_port_faults_and_reconnects_holding(drv: SerialManipulator,
                                                     emu: FirmwareEmulator) -> None:
    following(drv, emu)
    old_tty = emu.tty_path
    emu.vanish()
    assert wait_until(lambda: not drv.connected)
    with pytest.raises(SerialLinkError, match="ttyTS0"):
        drv.send_targets(GOAL, 0.0)
    assert not drv.reconnect()  # nothing to reconnect to yet
    failures = drv.counters["reconnect_failures"]
    assert not drv.reconnect() and drv.counters["reconnect_failures"] == failures, \
        "reconnect attempts are rate-limited"
    emu.reappear()
    assert emu.tty_path is not None and old_tty is not None
    assert wait_until(drv.reconnect, timeout_s=5.0, step_s=0.06)
    assert drv.counters["reconnects"] == 1 and drv.counters["disconnects"] == 1
    snap = emu.snapshot()
    assert snap.mode != "following", "reconnecting never resumes motion"
    held = snap.positions
    stream(drv, GOAL, 0.15)
    assert emu.snapshot().positions == held
    following(drv, emu)
    stream(drv, GOAL, 0.15)
    assert emu.snapshot().positions != held


# ---------------------------------------------------------------- the model alone
def test_model_watchdog_is_exact_with_injected_time() -> None:
    model = FirmwareModel(default_params(2), watchdog_ms=100.0, now_ns=0)
    model.on_message(sp.Release(0), now_ns=0)
    model.on_message(sp.JointTargets(1, (1.0, 1.0)), now_ns=0)
    for t in range(1, 101):
        assert model.step(t * 1_000_000) == []
    assert model.mode is Mode.FOLLOWING
    (fault,) = model.step(100_000_001)
    assert fault.code == sp.FaultCode.WATCHDOG and model.mode is Mode.BRAKED
    assert model.velocities == [0.0, 0.0]


def test_model_hold_never_lifts_the_brake() -> None:
    model = FirmwareModel(default_params(2), watchdog_ms=100.0, now_ns=0)
    model.on_message(sp.Hold(0, brake=False), now_ns=0)
    assert model.mode is Mode.BRAKED
    model.on_message(sp.Release(1), now_ns=0)
    model.on_message(sp.Hold(2, brake=False), now_ns=0)
    assert model.mode is Mode.HOLDING
    model.on_message(sp.Hold(3, brake=True), now_ns=0)
    assert model.mode is Mode.BRAKED


def test_model_release_holds_where_it_is() -> None:
    model = FirmwareModel(default_params(1), watchdog_ms=100.0, now_ns=0)
    model.on_message(sp.Release(0), now_ns=0)
    model.on_message(sp.JointTargets(1, (1.0,)), now_ns=0)
    model.step(200_000_000)
    model.on_message(sp.Hold(2, brake=True), now_ns=200_000_000)
    pos = model.positions[0]
    model.on_message(sp.Release(3), now_ns=200_000_000)
    model.step(250_000_000)
    assert model.positions[0] == pytest.approx(pos) and model.targets == [pos]


def test_model_wrong_joint_count_holds() -> None:
    model = FirmwareModel(default_params(2), watchdog_ms=100.0, now_ns=0)
    model.on_message(sp.Release(0), now_ns=0)
    (fault,) = model.on_message(sp.JointTargets(1, (1.0,)), now_ns=0)
    assert fault.code == sp.FaultCode.BAD_TARGET and model.mode is Mode.HOLDING


def test_inject_validates(emu: FirmwareEmulator) -> None:
    with pytest.raises(ConfigError, match=r"inject\.drop"):
        emu.inject(drop=1.5)
    with pytest.raises(ConfigError, match=r"inject\.stuck_joint"):
        emu.inject(stuck_joint=6)


# ---------------------------------------------------------------- the CLI
def test_cli_prints_port_and_obeys_control_socket(tmp_path: Path) -> None:
    ctl = f"ipc://{tmp_path}/ctl"
    link = tmp_path / "link"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from robot_side.firmware_sim import main; "
         "sys.exit(main(sys.argv[1:]))", "--link", str(link), "--control", ctl],
        stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    try:
        assert proc.stdout is not None
        words = proc.stdout.readline().split()
        assert words[0] == "PORT" and words[1].startswith("/dev/pts/")
        assert words[2:] == ["LINK", str(link)]
        req.connect(ctl)

        def call(obj: object) -> dict:
            req.send(json.dumps(obj).encode())
            return json.loads(req.recv())

        with SerialManipulator(SerialConfig(port=str(link))) as d:
            assert call({"inject": {"corrupt": 1.0}})["ok"]
            assert wait_until(lambda: d.counters["resyncs"] > 3)
            assert call({"estop": True})["state"]["estop_pressed"]
            assert call({"state": True})["state"]["braked"]
            reply = call({"inject": {"bogus": 1}})
            assert not reply["ok"] and "bogus" in reply["error"]
            assert not call({"launch": "rockets"})["ok"]
            assert call({"vanish": True})["ok"]
            assert wait_until(lambda: not d.connected)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        req.close()
        ctx.term()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_network_control_socket() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from robot_side.firmware_sim import main; "
         "sys.exit(main(sys.argv[1:]))", "--control", "tcp://0.0.0.0:5555"],
        check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "ipc://" in proc.stderr


# ---------------------------------------------------------------- figures
def _percentiles(values_us: list[float]) -> str:
    v = sorted(values_us)
    return (f"median {v[len(v) // 2]:.0f} us, p99 {v[int(len(v) * 0.99)]:.0f} us, "
            f"max {v[-1]:.0f} us")


def test_print_figures(drv100: SerialManipulator, emu100: FirmwareEmulator) -> None:
    """Run with ``-s`` to see the figures; asserts only that they were measured."""
    drv, emu = drv100, emu100
    state = sp.StateReport(1, 5, GOAL, GOAL, GOAL, 0.5, 3, 7)
    targets = sp.JointTargets(1, GOAL, 0.5)
    n = 2000
    t0 = time.perf_counter_ns()
    frames = [sp.encode_frame(state) for _ in range(n)]
    t1 = time.perf_counter_ns()
    dec = sp.FrameDecoder()
    for f in frames:
        dec.feed(f)
    t2 = time.perf_counter_ns()
    tf = sp.encode_frame(targets)
    t3 = time.perf_counter_ns()
    for _ in range(n):
        dec.feed(sp.encode_frame(targets))
    t4 = time.perf_counter_ns()
    rtts: list[float] = []
    for _ in range(300):
        t = time.perf_counter_ns()
        seq = drv.heartbeat()
        assert drv.wait_for_ack(seq, timeout_s=2.0) is not None, (drv.counters, emu.tx_lost)
        rtts.append((time.perf_counter_ns() - t) / 1e3)
    following(drv, emu)
    stream(drv, GOAL, 0.1)
    assert wait_until(lambda: emu.snapshot().watchdog_tripped, timeout_s=3.0)
    trip_ms = emu.snapshot().trip_latency_ms
    assert trip_ms is not None
    print(f"\nStateReport (6 joints, {len(frames[0])} B on the wire): encode "
          f"{(t1 - t0) / n / 1e3:.1f} us, decode {(t2 - t1) / n / 1e3:.1f} us")
    print(f"JointTargets ({len(tf)} B): encode+decode {(t4 - t3) / n / 1e3:.1f} us")
    print(f"round trip over the pty (heartbeat -> state report acking it): "
          f"{_percentiles(rtts)}")
    print(f"firmware watchdog ({WATCHDOG_MS:.0f} ms): braked after {trip_ms:.1f} ms of silence "
          f"(firmware clock)")


def test_print_raw_pty_round_trip(emu: FirmwareEmulator) -> None:
    """Hello -> Hello: the pty hop plus one emulator wake-up, without the report period.

    A reply can be lost when this thread is starved and the 4 KiB pty buffer fills
    with state reports; such a round is retried, not counted.
    """
    import serial

    dec = sp.FrameDecoder()
    rtts: list[float] = []
    deadline = time.monotonic() + 20.0
    with serial.Serial(emu.port_path, timeout=0.05) as port:
        port.reset_input_buffer()
        seq = 0
        while len(rtts) < 300 and time.monotonic() < deadline:
            seq += 1
            t = time.perf_counter_ns()
            port.write(sp.encode_frame(sp.Hello(seq, sp.PROTOCOL_VERSION, 6)))
            give_up = time.monotonic() + 0.2
            while time.monotonic() < give_up:
                msgs = dec.feed(port.read(max(1, port.in_waiting)))
                if any(isinstance(m, sp.Hello) for m in msgs):
                    rtts.append((time.perf_counter_ns() - t) / 1e3)
                    break
    assert len(rtts) >= 30
    print(f"\nraw round trip over the pty (Hello -> Hello reply, {len(rtts)} rounds): "
          f"{_percentiles(rtts)}")
