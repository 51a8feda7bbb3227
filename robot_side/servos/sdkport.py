"""The vendors' SDK port handlers, with three things changed for a control loop.

Both SDKs (ROBOTIS ``dynamixel_sdk`` and Feetech ``scservo_sdk``) share one
``PortHandler`` design, and three of its choices do not fit here:

* packet timeouts are measured on the wall clock (``time.time()``): a clock step
  would cut a read short or stretch it; here they use ``time.monotonic_ns``;
* ``readPort`` polls a port opened with ``timeout=0``, so waiting for a status
  packet spins a core; here it waits in ``select`` until a byte or the deadline;
* every timeout adds 2 x 16 ms for the FTDI latency timer; here the slack is
  ``latency_ms`` (set the adapter's latency timer to 1 ms, see README "Real
  hardware"), so a silent servo costs a few milliseconds, not 34.

``rx_bytes`` counts every byte read, so a backend can count what the packet handler
skipped silently (noise before a header): bytes read minus the packet returned.

Everything else (framing, CRC/checksum, stuffing, sync/bulk read and write) is
the SDK's own packet handler, unmodified.
"""

from __future__ import annotations

import select
import time
from typing import Any

import dynamixel_sdk
import scservo_sdk


class _MonotonicPort:
    """Mixin over an SDK ``PortHandler``; ``latency_ms`` is the slack beyond the wire time."""

    latency_ms: float = 10.0
    rx_bytes: int = 0
    ser: Any
    packet_start_time: float
    packet_timeout: float
    tx_time_per_byte: float

    def getCurrentTime(self) -> float:
        return time.monotonic_ns() / 1e6

    def setPacketTimeout(self, packet_length: int) -> None:
        self.packet_start_time = self.getCurrentTime()
        self.packet_timeout = self.tx_time_per_byte * packet_length + self.latency_ms

    def readPort(self, length: int) -> bytes:
        ser = self.ser
        data: bytes = ser.read(length)
        if data:
            self.rx_bytes += len(data)
            return data
        left_ms = self.packet_timeout - (self.getCurrentTime() - self.packet_start_time)
        if left_ms > 0:
            try:
                select.select([ser.fileno()], [], [], min(left_ms, 50.0) / 1000)
            except (OSError, ValueError):
                return b""
            data = ser.read(length)
            self.rx_bytes += len(data)
        return data

    def clearPort(self) -> None:
        self.ser.reset_input_buffer()


class DxlPort(_MonotonicPort, dynamixel_sdk.PortHandler):  # type: ignore[misc]
    def __init__(self, port_name: str, latency_ms: float) -> None:
        dynamixel_sdk.PortHandler.__init__(self, port_name)
        self.latency_ms = latency_ms


class StsPort(_MonotonicPort, scservo_sdk.PortHandler):  # type: ignore[misc]
    def __init__(self, port_name: str, latency_ms: float) -> None:
        scservo_sdk.PortHandler.__init__(self, port_name)
        self.latency_ms = latency_ms
