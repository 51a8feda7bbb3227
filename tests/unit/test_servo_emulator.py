"""The servo emulators checked against the vendors' SDKs as independent clients.

The ROBOTIS ``dynamixel_sdk`` and Feetech ``scservo_sdk`` packet handlers talk to
``ServoBusEmulator`` over a real pty: a framing, CRC, stuffing or control-table
mistake in the emulator shows up as an SDK communication error here.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator

import dynamixel_sdk as dxl
import pytest
import scservo_sdk as scs

from robot_side.servos import emulator, wire
from robot_side.servos.emulator import ServoBusEmulator
from robot_side.servos.model import ticks_of
from robot_side.servos.tables import DYNAMIXEL_X, FEETECH_STS

IDS = (1, 2, 3)


@pytest.fixture(autouse=True)
def patient_sdks(monkeypatch) -> None:
    """The SDKs wait 2 x 16 ms (an FTDI latency timer) for a status; on a loaded shared
    machine the emulator thread can be later than that, so both wait 2 x 100 ms here."""
    import dynamixel_sdk.port_handler
    import scservo_sdk.port_handler

    monkeypatch.setattr(dynamixel_sdk.port_handler, "LATENCY_TIMER", 100)
    monkeypatch.setattr(scservo_sdk.port_handler, "LATENCY_TIMER", 100)


def wait_for(cond: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@pytest.fixture
def dxl_bus(tmp_path) -> Iterator[tuple[ServoBusEmulator, object, object]]:
    with ServoBusEmulator("dynamixel", IDS, link=tmp_path / "ttyDXL", seed=1) as emu:
        port = dxl.PortHandler(emu.port_path)
        assert port.openPort()
        yield emu, port, dxl.PacketHandler(2.0)
        port.closePort()


@pytest.fixture
def sts_bus(tmp_path) -> Iterator[tuple[ServoBusEmulator, object, object]]:
    with ServoBusEmulator("feetech", IDS, link=tmp_path / "ttySTS", seed=1) as emu:
        port = scs.PortHandler(emu.port_path)
        assert port.openPort()
        yield emu, port, scs.PacketHandler(0)
        port.closePort()


def test_crc16_matches_the_sdk_table() -> None:
    ph = dxl.PacketHandler(2.0)
    rng = random.Random(7)
    for _ in range(200):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        assert wire.crc16(data) == ph.updateCRC(0, list(data), len(data))


def test_dxl_stuffing_round_trip_and_decoder_resync() -> None:
    params = bytes([0xFF, 0xFF, 0xFD, 0x01, 0xFF, 0xFF, 0xFD])
    frame = wire.dxl_encode(5, wire.INST_WRITE, params)
    assert b"\xff\xff\xfd\xfd" in frame[7:]
    dec = wire.DxlDecoder()
    packets = dec.feed(b"\x00\xff\x13" + frame[:9]) + dec.feed(frame[9:] + frame)
    assert [(p.servo_id, p.instruction, p.params) for p in packets] == \
        [(5, wire.INST_WRITE, params)] * 2
    assert dec.counts.garbage_bytes == 3
    broken = bytearray(frame)
    broken[-1] ^= 0x40
    assert dec.feed(bytes(broken)) == []
    assert dec.counts.bad_checksum == 1


def test_sts_decoder_counts_bad_checksums_and_noise() -> None:
    frame = wire.sts_encode(3, wire.INST_WRITE, bytes([42, 0x00, 0x08]))
    dec = wire.StsDecoder()
    bad = bytearray(frame)
    bad[-1] ^= 1
    packets = dec.feed(b"\x17\xff" + bytes(bad) + frame)
    assert [(p.servo_id, p.params) for p in packets] == [(3, bytes([42, 0x00, 0x08]))]
    assert dec.counts.bad_checksum == 1
    assert dec.counts.garbage_bytes >= 1


# ------------------------------------------------------------------ Dynamixel
def test_dxl_sdk_ping_read_write_and_motion(dxl_bus) -> None:
    _emu, port, ph = dxl_bus
    model, result, error = ph.ping(port, 2)
    assert (model, result, error) == (1020, dxl.COMM_SUCCESS, 0)
    _, result, _ = ph.ping(port, 9)
    assert result == dxl.COMM_RX_TIMEOUT
    pos, result, _ = ph.read4ByteTxRx(port, 2, 132)
    assert result == dxl.COMM_SUCCESS and pos == 2048
    assert ph.write1ByteTxRx(port, 2, 64, 1) == (dxl.COMM_SUCCESS, 0)
    assert ph.write4ByteTxRx(port, 2, 116, 2548) == (dxl.COMM_SUCCESS, 0)
    assert wait_for(lambda: abs(ph.read4ByteTxRx(port, 2, 132)[0] - 2548) <= 2)
    # EEPROM is locked while the torque is on: Access error, as the e-manual says.
    result, error = ph.write4ByteTxRx(port, 2, 48, 3000)
    assert result == dxl.COMM_SUCCESS and error == wire.DXL_ERR_ACCESS


def test_dxl_sdk_sync_write_sync_read_and_bulk_read(dxl_bus) -> None:
    _emu, port, ph = dxl_bus
    torque = dxl.GroupSyncWrite(port, ph, 64, 1)
    goals = dxl.GroupSyncWrite(port, ph, 116, 4)
    for i in IDS:
        torque.addParam(i, [1])
        goals.addParam(i, list((2048 + 100 * i).to_bytes(4, "little")))
    assert torque.txPacket() == dxl.COMM_SUCCESS
    assert goals.txPacket() == dxl.COMM_SUCCESS
    start, length = DYNAMIXEL_X.read_block
    reader = dxl.GroupSyncRead(port, ph, start, length)
    for i in IDS:
        reader.addParam(i)

    def settled() -> bool:
        if reader.txRxPacket() != dxl.COMM_SUCCESS:
            return False
        return all(abs(reader.getData(i, 132, 4) - (2048 + 100 * i)) <= 2 for i in IDS)

    assert wait_for(settled)
    assert all(reader.getData(i, 144, 2) == 120 for i in IDS)  # 12.0 V
    bulk = dxl.GroupBulkRead(port, ph)
    assert bulk.addParam(1, 132, 4) and bulk.addParam(3, 70, 1)
    assert bulk.txRxPacket() == dxl.COMM_SUCCESS
    assert abs(bulk.getData(1, 132, 4) - 2148) <= 2 and bulk.getData(3, 70, 1) == 0


def test_dxl_crc_error_and_truncation_are_comm_errors_for_the_sdk(dxl_bus) -> None:
    emu, port, ph = dxl_bus
    emu.inject(corrupt=1.0)
    assert ph.read4ByteTxRx(port, 1, 132)[1] == dxl.COMM_RX_CORRUPT
    emu.inject(truncate=1.0)
    assert ph.read4ByteTxRx(port, 1, 132)[1] in (dxl.COMM_RX_CORRUPT, dxl.COMM_RX_TIMEOUT)
    emu.inject(wrong_id=1.0)
    assert ph.read4ByteTxRx(port, 1, 132)[1] == dxl.COMM_RX_TIMEOUT
    emu.inject(silent=[1])
    assert ph.ping(port, 1)[1] == dxl.COMM_RX_TIMEOUT
    assert ph.ping(port, 2)[1] == dxl.COMM_SUCCESS
    emu.inject(noise=1.0)
    assert ph.ping(port, 2)[:2] == (1020, dxl.COMM_SUCCESS)  # the SDK resyncs past noise
    emu.inject()
    assert ph.read4ByteTxRx(port, 1, 132)[1:] == (dxl.COMM_SUCCESS, 0)


def test_dxl_instruction_with_bad_crc_gets_a_crc_error_status(dxl_bus) -> None:
    emu, port, ph = dxl_bus
    frame = bytearray(wire.dxl_encode(2, wire.INST_PING))
    frame[-2] ^= 0xFF
    port.clearPort()
    port.writePort(bytes(frame))
    port.setPacketTimeout(11)
    rx, result = ph.rxPacket(port, False)
    assert result == dxl.COMM_SUCCESS and rx[8] == wire.DXL_ERR_CRC
    assert emu.rx_counts()["bad_checksum"] == 1


def test_dxl_hardware_error_sets_alert_and_stops_torque(dxl_bus) -> None:
    emu, port, ph = dxl_bus
    ph.write1ByteTxRx(port, 3, 64, 1)
    emu.inject_overload(3)
    _, result, error = ph.ping(port, 3)
    assert result == dxl.COMM_SUCCESS and error & wire.DXL_ERR_ALERT
    assert ph.read1ByteTxRx(port, 3, 70)[0] == 1 << 5
    assert ph.read1ByteTxRx(port, 3, 64)[0] == 0
    emu.inject_overload(3, False)
    assert ph.reboot(port, 3)[0] == dxl.COMM_SUCCESS
    assert ph.read1ByteTxRx(port, 3, 70)[:2] == (0, dxl.COMM_SUCCESS)


def test_dxl_bus_watchdog_stops_a_servo_on_a_silent_bus(dxl_bus) -> None:
    emu, port, ph = dxl_bus
    assert ph.write1ByteTxRx(port, 1, 98, 3) == (dxl.COMM_SUCCESS, 0)  # 60 ms
    ph.write1ByteTxRx(port, 1, 64, 1)
    ph.write4ByteTxRx(port, 1, 116, 4000)  # a long move, then the controller goes quiet
    assert wait_for(lambda: emu.snapshot(1).watchdog_tripped)
    snap = emu.snapshot(1)
    assert snap.position_rad < (4000 - 2048) * DYNAMIXEL_X.rad_per_tick - 0.1
    assert snap.goal_rad == pytest.approx(snap.position_rad, abs=0.01)
    assert ph.read1ByteTxRx(port, 1, 98)[0] == 0xFF
    assert ph.write4ByteTxRx(port, 1, 116, 2048)[1] == wire.DXL_ERR_DATA_RANGE
    assert ph.write1ByteTxRx(port, 1, 98, 0) == (dxl.COMM_SUCCESS, 0)
    assert ph.write4ByteTxRx(port, 1, 116, 2048) == (dxl.COMM_SUCCESS, 0)


# ------------------------------------------------------------------ Feetech
def test_sts_sdk_ping_read_write_and_sync(sts_bus) -> None:
    _emu, port, ph = sts_bus
    assert ph.ping(port, 1) == (777, scs.COMM_SUCCESS, 0)
    assert ph.ping(port, 7)[1] == scs.COMM_RX_TIMEOUT
    assert ph.read2ByteTxRx(port, 2, 56) == (2048, scs.COMM_SUCCESS, 0)
    writer = scs.GroupSyncWrite(port, ph, 42, 2)
    for i in IDS:
        assert ph.write1ByteTxRx(port, i, 40, 1) == (scs.COMM_SUCCESS, 0)
        writer.addParam(i, list(ticks_of(FEETECH_STS, -0.2 * i).to_bytes(2, "little")))
    assert writer.txPacket() == scs.COMM_SUCCESS
    start, length = FEETECH_STS.read_block
    reader = scs.GroupSyncRead(port, ph, start, length)
    for i in IDS:
        reader.addParam(i)

    def settled() -> bool:
        if reader.txRxPacket() != scs.COMM_SUCCESS:
            return False
        return all(abs(reader.getData(i, 56, 2) - ticks_of(FEETECH_STS, -0.2 * i)) <= 2
                   for i in IDS)

    assert wait_for(settled)
    assert reader.getData(1, 62, 1) == 74  # 7.4 V


def test_sts_checksum_error_and_status_bits(sts_bus) -> None:
    emu, port, ph = sts_bus
    emu.inject(corrupt=1.0)
    assert ph.read2ByteTxRx(port, 1, 56)[1] == scs.COMM_RX_CORRUPT
    emu.inject(wrong_id=1.0)
    assert ph.read2ByteTxRx(port, 1, 56)[1] == scs.COMM_RX_TIMEOUT
    emu.inject()
    emu.inject_error(2, 1 << 2)  # overheating
    value, result, error = ph.read1ByteTxRx(port, 2, 65)
    assert (value, result, error) == (4, scs.COMM_SUCCESS, 4)
    assert ph.read1ByteTxRx(port, 2, 63)[0] == 80
    emu.inject_error(2, 0)
    ph.write1ByteTxRx(port, 2, 40, 1)  # torque on again clears the latched bit
    assert ph.read1ByteTxRx(port, 2, 65)[:3] == (0, scs.COMM_SUCCESS, 0)


# ------------------------------------------------------------------ the line
class _PreemptedAfterClose:
    """The emulator module's ``os`` with a 5 ms pause after every ``close``: the thread
    that unplugs the bus preempted right after closing a descriptor (``os.close``
    releases the GIL; on a loaded machine the reader runs meanwhile), forced on
    every close instead of waiting for load to line it up."""

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    @staticmethod
    def close(fd: int) -> None:
        os.close(fd)
        time.sleep(0.005)


def test_unplugging_under_the_reader_never_stops_the_bus(tmp_path, monkeypatch,
                                                          caplog) -> None:
    """CI once saw the reader fail on a closed descriptor at an unplug (and the bus never
    answer again): the unplug closed the line while the reader held its descriptor."""
    monkeypatch.setattr(emulator, "os", _PreemptedAfterClose())
    with ServoBusEmulator("dynamixel", IDS, link=tmp_path / "ttyDXL", seed=1) as emu:
        for _ in range(8):
            emu.vanish()
            time.sleep(0.003)  # the reader's poll period and a half
            emu.reappear()
        port = dxl.PortHandler(emu.port_path)
        assert port.openPort()
        try:
            model, result, _ = dxl.PacketHandler(2.0).ping(port, 2)
        finally:
            port.closePort()
    assert (model, result) == (1020, dxl.COMM_SUCCESS)
    assert "read failed" not in caplog.text
