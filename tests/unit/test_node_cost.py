"""The cheaper paths of issue 11 give exactly what the plain ones gave.

Each faster path (encode, joint values, the loop's jitter percentile, the serial
write and read) is held to a reference written the plain way, so a speed-up can
never change bytes, values or what reaches the port.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import msgpack
import numpy as np
import pytest

from robot_side.driver import SerialConfig, SerialManipulator
from robot_side.manipulator.serial import SerialBackend
from robot_side.serial_protocol import StateReport
from robot_side.telemetry import JOINT_BOUND, MAX_JOINTS, _joint_values
from telesurgery.pacer import Pacer, p99_linear
from transport.codec import OMITTED_WHEN_NONE, VERSION
from transport.messages import Message
from transport.schema import LinkReport, PathReport, Pose, Telemetry, decode, encode
from transport.validators import _FIELD_NAMES


def _plain(value: Any) -> Any:
    """The encoder as it was: every nested message and tuple converted in Python."""
    if isinstance(value, Message):
        return {n: _plain(getattr(value, n)) for n in _FIELD_NAMES[type(value)]}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _reference_encode(msg: Message) -> bytes:
    body: dict[str, Any] = {"v": VERSION, "t": msg.TYPE}
    for name in _FIELD_NAMES[type(msg)]:
        value = getattr(msg, name)
        if value is not None or name not in OMITTED_WHEN_NONE:
            body[name] = _plain(value)
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def _telemetry(**extra: Any) -> Telemetry:
    return Telemetry(
        seq=7, t_ns=123, state="following", reason="engaged",
        measured_js=(0.1, -0.2, 0.3), setpoint_js=(0.1, -0.2, 0.31),
        measured_cp=Pose((0.01, 0.02, 0.03), (1.0, 0.0, 0.0, 0.0)),
        setpoint_cp=Pose((0.011, 0.02, 0.03), (0.0, 1.0, 0.0, 0.0)),
        link=LinkReport(rtt_us=400, latency_us=200, jitter_us=30, loss=0.0, video_age_us=None),
        scale=1.0, estop=False, firmware_flags=3, loop_jitter_us=12, tracking_error_m=0.001,
        **extra)


@pytest.mark.parametrize("extra", [
    {},
    {"commander": "alice", "handoff_from": "bob", "handoff_id": 4, "audit_head": "ab" * 8},
    {"paths": (PathReport("a", True, 100, 50, 5, 0.0), PathReport("b", False))},
])
def test_encode_gives_the_bytes_of_a_fully_converted_body(extra: dict[str, Any]) -> None:
    msg = _telemetry(**extra)
    assert encode(msg) == _reference_encode(msg)
    assert decode(encode(msg)) == msg


def test_encode_still_refuses_what_msgpack_cannot_carry() -> None:
    with pytest.raises(TypeError):
        encode(_telemetry(reason=object()))  # type: ignore[arg-type]


def _reference_joint_values(values: Any) -> tuple[float, ...]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) > MAX_JOINTS or not np.all(np.isfinite(array)):
        return ()
    return tuple(np.clip(array, -JOINT_BOUND, JOINT_BOUND).tolist())


@pytest.mark.parametrize("values", [
    (), (0.0, -0.0, 1.5), (1, 2, 3), [True, 0.5], (1e300, -1e300, 2e6, -2e6),
    (math.nan, 0.0), (0.0, math.inf), (-math.inf,), tuple(range(MAX_JOINTS)),
    tuple(range(MAX_JOINTS + 1)), np.array([0.5, -3e6]), np.zeros((2, 2)), ["1.5", 2],
])
def test_joint_values_are_numpys(values: Any) -> None:
    got = _joint_values(values)
    want = _reference_joint_values(values)
    assert got == want
    assert all(type(v) is float for v in got)
    assert [math.copysign(1, v) for v in got] == [math.copysign(1, v) for v in want]


def test_p99_is_numpys_percentile() -> None:
    rng = np.random.default_rng(11)
    for n in [*range(1, 130), 1000]:
        values = np.abs(rng.integers(-10**7, 10**7, size=n))
        assert p99_linear(values) == np.percentile(values, 99)
        values[:] = values[0]
        assert p99_linear(values) == np.percentile(values, 99)


def test_loop_jitter_across_the_rings_wrap() -> None:
    pacer = Pacer(1_000_000, history=64)
    rng = np.random.default_rng(5)
    pacer._errors[:] = rng.integers(-900_000, 900_000, size=64)
    for count in (10, 63, 64, 100, 130):  # unwrapped and wrapped windows of the ring
        pacer._count = count
        n = min(count, 64, 50)
        end = count % 64
        idx = np.arange(end - n, end) % 64
        want = int(np.percentile(np.abs(pacer._errors[idx]), 99) / 1000)
        assert pacer.recent_jitter_us(50) == want


class _Fd:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


def test_a_partial_first_write_sends_the_rest_once() -> None:
    """A frame larger than the descriptor takes at once: every byte exactly once, in order."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    data = np.random.default_rng(3).bytes(256 * 1024)  # more than a pipe holds
    got = bytearray()

    def drain() -> None:  # to the end of the stream: a byte sent twice shows up
        while chunk := os.read(r, 65536):
            got.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        SerialManipulator(SerialConfig(port="unused", write_timeout_ms=10_000))._write_all(
            _Fd(w), data)
    finally:
        os.close(w)
        reader.join(30.0)
        os.close(r)
    assert len(got) == len(data) and bytes(got) == data


def _report(positions: tuple[float, ...]) -> StateReport:
    zeros = (0.0,) * len(positions)
    return StateReport(1, 0, positions, zeros, zeros, 0.5, 0, 1)


def test_a_report_is_converted_once_and_every_new_one_is_read() -> None:
    """An unchanged report gives the same sample; a new one (even with equal values but a
    new arrival time) always gives a new sample: the loop never reads an old arrival."""
    arm = SerialBackend(SerialConfig(port="unused", n_joints=3))
    first = (_report((0.1, 0.2, 0.3)), 1_000)
    arm.driver._latest = first
    a, _ = arm._read()
    b, _ = arm._read()
    assert a is not None and a is b and a.received_ns == 1_000
    arm.driver._latest = (first[0], 2_000)  # the same values, arrived again later
    c, _ = arm._read()
    assert c is not None and c.received_ns == 2_000
    arm.driver._latest = (_report((0.4, 0.5, 0.6)), 3_000)
    d, _ = arm._read()
    assert d is not None and d.positions == (0.4, 0.5, 0.6) and d.received_ns == 3_000
