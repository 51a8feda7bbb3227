"""Serial protocol: CRC-32C and COBS vectors, golden frames, and every kind of damage."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_side import serial_protocol as sp
from telesurgery.errors import SchemaError

STATE = sp.StateReport(11, 123456, (0.0, 0.5, -0.5, 1.0, 0.0, 0.25), (0.0,) * 6,
                       (0.0, 1.0, 0.0, 0.0, 0.0, 0.0), 0.5, int(sp.FwFlags.FOLLOWING), 10)
SAMPLES: list[sp.Message] = [
    sp.Hello(0, sp.PROTOCOL_VERSION, 6, "ts-sim 1.0"),
    sp.JointTargets(7, (0.0, 0.5, -0.5, 1.0, 0.0, 0.25), 0.5),
    sp.Hold(8, True),
    sp.Hold(8, False),
    sp.Release(9),
    sp.Heartbeat(10),
    STATE,
    sp.FaultReport(12, int(sp.FaultCode.WATCHDOG), "watchdog"),
]


# ---------------------------------------------------------------- CRC-32C
@pytest.mark.parametrize(("data", "crc"), [
    (b"123456789", 0xE3069283),
    (b"", 0x00000000),
    (bytes(32), 0x8A9136AA),                 # RFC 3720 B.4 vectors
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_crc32c_known_vectors(data: bytes, crc: int) -> None:
    assert sp.crc32c(data) == crc


def _crc32c_bitwise(data: bytes) -> int:
    """The definition, one bit at a time: the reference the library is checked against."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


@given(st.binary(max_size=300), st.integers(0, 300))
def test_crc32c_matches_the_bitwise_definition_and_continues(data: bytes, cut: int) -> None:
    cut = min(cut, len(data))
    assert sp.crc32c(data) == _crc32c_bitwise(data)
    assert sp.crc32c(data[cut:], sp.crc32c(data[:cut])) == sp.crc32c(data)
    assert sp.crc32c(memoryview(data)) == sp.crc32c(bytearray(data)) == sp.crc32c(data)


# ---------------------------------------------------------------- COBS
RUN_254 = bytes(range(1, 255))
COBS_VECTORS = [  # Cheshire & Baker / Wikipedia examples
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (RUN_254, b"\xff" + RUN_254),
    (b"\x00" + RUN_254, b"\x01\xff" + RUN_254),
    (bytes(range(1, 256)), b"\xff" + RUN_254 + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize(("raw", "encoded"), COBS_VECTORS)
def test_cobs_known_vectors(raw: bytes, encoded: bytes) -> None:
    assert sp.cobs_encode(raw) == encoded
    assert sp.cobs_decode(encoded) == raw


@given(st.binary(max_size=1200) | st.lists(st.sampled_from([b"\0", RUN_254, b"\x07"]),
                                           max_size=8).map(b"".join))
def test_cobs_round_trip_has_no_zero(data: bytes) -> None:
    encoded = sp.cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + len(data) // 254 + 1
    assert sp.cobs_decode(encoded) == data


def _reference_cobs_encode(data: bytes) -> bytes:
    """The byte-at-a-time Python COBS this module used before the C extension."""
    out = bytearray()
    chunks = data.split(b"\0")
    for i, chunk in enumerate(chunks):
        n_full = len(chunk) // 254
        for k in range(n_full):
            out += b"\xff" + chunk[254 * k : 254 * (k + 1)]
        rest = chunk[254 * n_full :]
        if rest or i < len(chunks) - 1 or not n_full:
            out += bytes([len(rest) + 1]) + rest
    return bytes(out)


def _reference_cobs_decode(data: bytes) -> bytes | None:
    """The Python COBS decoder used before; None where it raised."""
    out, i, n = bytearray(), 0, len(data)
    if n == 0:
        return None
    while i < n:
        code, end = data[i], i + data[i]
        if code == 0 or end > n or 0 in data[i + 1 : end]:
            return None
        out += data[i + 1 : end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def test_cobs_uses_the_c_extension() -> None:
    """The pure-Python fallback of the ``cobs`` package is correct but costs the rig's
    firmware emulator and the robot's serial reader a loop per frame: build the wheel."""
    from cobs import cobs

    assert cobs._using_extension


_COBS_PIECES = st.lists(st.sampled_from([b"\0", RUN_254, b"\x07", RUN_254[:253], b"\xff"]),
                        max_size=8).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=700) | _COBS_PIECES)
def test_cobs_encode_bytes_unchanged(data: bytes) -> None:
    assert sp.cobs_encode(data) == _reference_cobs_encode(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80) | _COBS_PIECES
       | st.binary(max_size=300).map(_reference_cobs_encode))
def test_cobs_decode_accepts_and_rejects_as_before(data: bytes) -> None:
    try:
        got: bytes | None = sp.cobs_decode(data)
    except SchemaError as err:
        assert err.field == "cobs"
        got = None
    assert got == _reference_cobs_decode(data)


@pytest.mark.parametrize("bad", [b"", b"\x05\x11\x22", b"\x03\x11\x00", b"\x00"])
def test_cobs_decode_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(SchemaError) as err:
        sp.cobs_decode(bad)
    assert err.value.field == "cobs"


# ---------------------------------------------------------------- messages
GOLDEN = {  # a change here is a protocol change: bump PROTOCOL_VERSION and the doc
    "hold": (sp.Hold(8, True), "040111080101060110950dcb00"),
    "heartbeat": (sp.Heartbeat(10), "0401130a010105d386283600"),
    "targets": (sp.JointTargets(7, (0.0, 0.5, -0.5, 1.0, 0.0, 0.25), 0.5),
                "0401100701010206010101010101023f010102bf0103803f010101010103803e0101063f"
                "a0aab27f00"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_frames(name: str) -> None:
    msg, hex_frame = GOLDEN[name]
    assert sp.encode_frame(msg).hex() == hex_frame
    assert sp.FrameDecoder().feed(bytes.fromhex(hex_frame)) == [msg]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: sp.Message) -> None:
    frame = sp.encode_frame(msg)
    assert frame.endswith(b"\0") and 0 not in frame[:-1]
    assert len(frame) <= sp.MAX_ENCODED + 1
    assert sp.FrameDecoder().feed(frame) == [msg]


def test_every_type_has_a_sample() -> None:
    assert {type(m) for m in SAMPLES} == set(sp.MESSAGE_TYPES.values())


def test_largest_frame_fits() -> None:
    n = sp.MAX_JOINTS
    big = sp.StateReport(2**32 - 1, 2**64 - 1, (1.0,) * n, (1.0,) * n, (1.0,) * n, 1.0,
                         2**32 - 1, 2**32 - 1)
    assert sp.FrameDecoder().feed(sp.encode_frame(big)) == [big]


@pytest.mark.parametrize(("make", "field"), [
    (lambda: sp.JointTargets(0, (math.nan,) * 6), "positions[0]"),
    (lambda: sp.JointTargets(0, (0.0, math.inf)), "positions[1]"),
    (lambda: sp.JointTargets(0, (0.0,) * 17), "positions"),
    (lambda: sp.JointTargets(0, ()), "positions"),
    (lambda: sp.JointTargets(0, (0.0,), grip=math.nan), "grip"),
    (lambda: sp.JointTargets(0, (1e9,)), "positions[0]"),
    (lambda: sp.Hold(-1), "seq"),
    (lambda: sp.Heartbeat(2**32), "seq"),
    (lambda: sp.Hello(0, 1, 0), "n_joints"),
    (lambda: sp.StateReport(0, 0, (0.0,), (0.0, 0.0), (0.0,), 0.0, 0, 0), "velocities"),
    (lambda: sp.FaultReport(0, 70000), "code"),
])
def test_invalid_messages_are_refused(make, field: str) -> None:
    with pytest.raises(SchemaError) as err:
        make()
    assert err.value.field == field


def test_overlong_text_is_refused_when_encoding() -> None:
    with pytest.raises(SchemaError, match="detail"):
        sp.encode_frame(sp.FaultReport(0, 1, "x" * 65))


def _frame_from_payload(data: bytes) -> bytes:
    return sp.cobs_encode(data + sp.crc32c(data).to_bytes(4, "little")) + b"\0"


@pytest.mark.parametrize(("payload", "counter"), [
    (bytes([2, sp.MsgType.HEARTBEAT, 0, 0, 0, 0]), "version_errors"),
    (bytes([1, 0x7F, 0, 0, 0, 0]), "type_errors"),
    (bytes([1, sp.MsgType.HEARTBEAT, 0, 0, 0, 0, 9]), "length_errors"),
    (bytes([1, sp.MsgType.HOLD, 0, 0, 0, 0, 2]), "value_errors"),
    (bytes([1, sp.MsgType.JOINT_TARGETS, 0, 0, 0, 0, 1]) + b"\x00\x00\xc0\x7f" * 2,
     "value_errors"),  # a NaN target with a valid CRC still never reaches the firmware
])
def test_valid_crc_but_bad_content_is_counted(payload: bytes, counter: str) -> None:
    dec = sp.FrameDecoder()
    assert dec.feed(_frame_from_payload(payload)) == []
    assert dec.counts[counter] == 1
    assert dec.last_error


def test_hello_of_another_version_is_decoded_so_the_mismatch_can_be_named() -> None:
    hello = sp.Hello(0, 2, 6, "future")
    assert sp.FrameDecoder().feed(sp.encode_frame(hello)) == [hello]


# ---------------------------------------------------------------- damage
@pytest.mark.parametrize("msg", [STATE, SAMPLES[1], SAMPLES[7]], ids=lambda m: type(m).__name__)
def test_every_single_bit_flip_is_detected(msg: sp.Message) -> None:
    frame = sp.encode_frame(msg)
    after = sp.encode_frame(sp.Heartbeat(1000))
    for bit in range(8 * len(frame)):
        damaged = bytearray(frame)
        damaged[bit // 8] ^= 1 << (bit % 8)
        dec = sp.FrameDecoder()
        out = dec.feed(bytes(damaged) + after + after)
        # Nothing wrong is ever decoded; a flipped delimiter may also take the next frame.
        assert out in ([sp.Heartbeat(1000)] * 2, [sp.Heartbeat(1000)]), bit
        assert dec.bad_frames >= 1, bit


@pytest.mark.parametrize("msg", [STATE, SAMPLES[1]], ids=lambda m: type(m).__name__)
def test_every_truncation_is_detected_and_the_next_frame_survives(msg: sp.Message) -> None:
    frame = sp.encode_frame(msg)
    follow = sp.encode_frame(sp.Heartbeat(5))
    for cut in range(1, len(frame) - 1):
        dec = sp.FrameDecoder()
        assert dec.feed(frame[:cut] + b"\0" + follow) == [sp.Heartbeat(5)], cut
        assert dec.bad_frames == 1, cut


def test_garbage_flood_is_bounded_and_resynchronises() -> None:
    dec = sp.FrameDecoder()
    noise = bytes(range(1, 256)) * 40
    for _ in range(100):  # ~1 MB without a single delimiter
        assert dec.feed(noise) == []
        assert dec.pending_bytes <= sp.MAX_ENCODED
    assert dec.counts["length_errors"] >= 1
    assert dec.feed(b"\0" + sp.encode_frame(STATE)) == [STATE]
    assert dec.counts["garbage_bytes"] >= 100 * len(noise)


def test_sequence_gaps_are_counted() -> None:
    dec = sp.FrameDecoder()
    for seq in (0, 1, 3, 7, 8):
        dec.feed(sp.encode_frame(sp.Heartbeat(seq)))
    assert dec.counts["seq_gaps"] == 2
    assert dec.counts["frames_lost"] == 1 + 3
    dec.feed(sp.encode_frame(sp.Hello(0, 1, 6)))  # the peer restarted: not a gap
    dec.feed(sp.encode_frame(sp.Heartbeat(1)))
    assert dec.counts["seq_gaps"] == 2


def test_a_frame_split_across_reads_is_decoded() -> None:
    frame = sp.encode_frame(STATE)
    dec = sp.FrameDecoder()
    out = [m for i in range(len(frame)) for m in dec.feed(frame[i : i + 1])]
    assert out == [STATE]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40), st.integers(0, 2**32 - 1)), min_size=1,
                max_size=12),
       st.binary(max_size=30))
def test_garbage_interleaved_with_frames(chunks: list[tuple[bytes, int]], tail: bytes) -> None:
    """Garbage damages at most the one frame it touches; nothing raises or is invented."""
    stream = bytearray()
    sent: list[sp.Message] = []
    must_decode: list[sp.Message] = []
    for garbage, seq in chunks:
        msg = sp.Heartbeat(seq) if seq % 2 else sp.JointTargets(seq, (float(seq % 999),) * 6, 0.5)
        stream += garbage
        # COBS resynchronises at a delimiter: a frame right after one is always intact.
        if not garbage or garbage.endswith(b"\0"):
            must_decode.append(msg)
        stream += sp.encode_frame(msg)
        sent.append(msg)
    stream += tail
    dec = sp.FrameDecoder()
    out = dec.feed(bytes(stream))
    assert all(m in out for m in must_decode)
    it = iter(sent)
    assert all(any(m == s for s in it) for m in out), "decoded something never sent"
    assert dec.pending_bytes <= sp.MAX_ENCODED


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    dec = sp.FrameDecoder()
    dec.feed(data)
    assert dec.pending_bytes <= sp.MAX_ENCODED


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 3), st.sampled_from([*sorted(sp.MESSAGE_TYPES), 0x7E]),
       st.integers(0, 2**32 - 1), st.binary(max_size=240))
def test_valid_crc_with_arbitrary_content_is_decoded_or_refused(
        version: int, type_: int, seq: int, body: bytes) -> None:
    """Past the CRC, every field is still checked: a message or a SchemaError, nothing else."""
    data = bytes([version, type_]) + seq.to_bytes(4, "little") + body
    try:
        msg = sp.decode_payload(data + sp.crc32c(data).to_bytes(4, "little"))
    except SchemaError:
        return
    assert (msg.seq, int(msg.TYPE)) == (seq, type_)
    assert sp.FrameDecoder().feed(sp.encode_frame(msg)) == [msg]


# ---------------------------------------------------------------- the period's fast frame
@settings(max_examples=300, deadline=None)
@given(seq=st.integers(0, sp.U32 - 1),
       q=st.lists(st.floats(-2e6, 2e6, width=32) | st.sampled_from(
           [math.nan, math.inf, -math.inf, sp.MAX_ABS_VALUE, -sp.MAX_ABS_VALUE]),
                  min_size=0, max_size=sp.MAX_JOINTS + 1),
       grip=st.floats(allow_nan=True, allow_infinity=True, width=32))
def test_fast_targets_frame_is_the_messages_frame_or_the_same_refusal(
        seq: int, q: list[float], grip: float) -> None:
    """``encode_targets_frame`` (the frame written every period, no message object) puts
    the same bytes on the wire as ``JointTargets`` + ``encode_frame`` and refuses exactly
    what the message refuses: NaN, inf, beyond MAX_ABS_VALUE, no or too many joints."""
    try:
        expected: bytes | str = sp.encode_frame(sp.JointTargets(seq, tuple(q), grip))
    except SchemaError as err:
        expected = err.field
    try:
        got: bytes | str = sp.encode_targets_frame(seq, q, grip)
    except SchemaError as err:
        got = err.field
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_short_and_long_cobs_encode_round_trip(data: bytes) -> None:
    """The short-payload COBS branch and the general one both round-trip and never
    emit a zero byte (either side of the 254-byte boundary)."""
    enc = sp.cobs_encode(data)
    assert b"\0" not in enc
    assert sp.cobs_decode(enc) == data
