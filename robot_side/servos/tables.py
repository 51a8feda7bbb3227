"""Control-table facts of the two servo families, from the vendors' public manuals.

Only the registers this project reads or writes are listed. Dynamixel X-series
(XM430-W350, the OpenManipulator-X and Koch joints; ROBOTIS e-manual) stores
multi-byte values little-endian, two's complement. Feetech STS3215 (the SO-100 /
SO-101 joints; Feetech's STS memory table as used by the SCServo SDK and LeRobot)
stores them little-endian with a sign *bit* (sign-magnitude), at bit 15 for
positions and speeds and bit 10 for load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    addr: int
    size: int
    sign_bit: int | None = None
    """None: two's complement (Dynamixel); n: sign-magnitude with the sign at bit n."""

    def encode(self, value: int) -> bytes:
        if self.sign_bit is not None:
            raw = (-value) | (1 << self.sign_bit) if value < 0 else value
        else:
            raw = value & ((1 << (8 * self.size)) - 1)
        return int(raw & ((1 << (8 * self.size)) - 1)).to_bytes(self.size, "little")

    def decode(self, data: bytes | bytearray) -> int:
        raw = int.from_bytes(bytes(data[:self.size]), "little")
        if self.sign_bit is not None:
            if raw & (1 << self.sign_bit):
                return -(raw & ~(1 << self.sign_bit))
            return raw
        if raw & (1 << (8 * self.size - 1)):
            return raw - (1 << (8 * self.size))
        return raw

    def signed_range(self) -> tuple[int, int]:
        if self.sign_bit is not None:
            top = (1 << self.sign_bit) - 1
            return -top, top
        half = 1 << (8 * self.size - 1)
        return -half, half - 1


@dataclass(frozen=True)
class ServoFamily:
    name: str
    model_number: int
    model_name: str
    table_size: int
    ticks_per_rev: int
    centre_tick: int
    model_number_field: Field
    torque_enable: Field
    goal_position: Field
    present_position: Field
    present_velocity: Field
    present_load: Field
    present_voltage: Field
    present_temperature: Field
    hardware_error: Field
    min_position_limit: Field
    max_position_limit: Field
    return_delay: Field
    bus_watchdog: Field | None
    """Dynamixel's Bus Watchdog (units of 20 ms); Feetech STS has none."""
    velocity_unit_rad_s: float
    load_unit: float
    """Present load per unit as a fraction of the servo's rated torque (0.1 % both)."""
    voltage_unit_v: float
    max_speed_rad_s: float
    """No-load speed at the nominal supply; the emulator's follower moves no faster."""
    nominal_voltage_v: float
    error_bits: tuple[tuple[int, str], ...]
    """Hardware-error register bits and what each means, in plain words."""
    read_block: tuple[int, int]
    """(start, length) of the contiguous block the backends sync-read every cycle."""

    @property
    def rad_per_tick(self) -> float:
        return 2 * math.pi / self.ticks_per_rev

    def describe_error(self, bits: int) -> str:
        words = [text for bit, text in self.error_bits if bits & (1 << bit)]
        unknown = bits & ~sum(1 << bit for bit, _ in self.error_bits)
        if unknown:
            words.append(f"unknown bits 0x{unknown:02x}")
        return ", ".join(words) if words else "no error"


def _dxl(addr: int, size: int) -> Field:
    return Field(addr, size)


DYNAMIXEL_X = ServoFamily(
    name="dynamixel",
    model_number=1020,
    model_name="XM430-W350",
    table_size=300,
    ticks_per_rev=4096,
    centre_tick=2048,
    model_number_field=_dxl(0, 2),
    torque_enable=_dxl(64, 1),
    goal_position=_dxl(116, 4),
    present_position=_dxl(132, 4),
    present_velocity=_dxl(128, 4),
    present_load=_dxl(126, 2),
    present_voltage=_dxl(144, 2),
    present_temperature=_dxl(146, 1),
    hardware_error=_dxl(70, 1),
    min_position_limit=_dxl(52, 4),
    max_position_limit=_dxl(48, 4),
    return_delay=_dxl(9, 1),
    bus_watchdog=_dxl(98, 1),
    velocity_unit_rad_s=0.229 * 2 * math.pi / 60,
    load_unit=0.001,
    voltage_unit_v=0.1,
    max_speed_rad_s=46 * 2 * math.pi / 60,  # 46 rpm at 12 V
    nominal_voltage_v=12.0,
    error_bits=((0, "input voltage out of range"), (2, "overheating"),
                (3, "motor encoder error"), (4, "electrical shock (driver fault)"),
                (5, "overload")),
    read_block=(126, 21),  # present load 126 .. present temperature 146
)

FEETECH_STS = ServoFamily(
    name="feetech",
    model_number=777,
    model_name="STS3215",
    table_size=256,
    ticks_per_rev=4096,
    centre_tick=2048,
    model_number_field=Field(3, 2),
    torque_enable=Field(40, 1),
    goal_position=Field(42, 2, sign_bit=15),
    present_position=Field(56, 2, sign_bit=15),
    present_velocity=Field(58, 2, sign_bit=15),
    present_load=Field(60, 2, sign_bit=10),
    present_voltage=Field(62, 1),
    present_temperature=Field(63, 1),
    hardware_error=Field(65, 1),
    min_position_limit=Field(9, 2),
    max_position_limit=Field(11, 2),
    return_delay=Field(7, 1),
    bus_watchdog=None,
    velocity_unit_rad_s=2 * math.pi / 4096,  # steps per second
    load_unit=0.001,
    voltage_unit_v=0.1,
    max_speed_rad_s=45 * 2 * math.pi / 60,  # ~0.222 s/60 deg at 7.4 V
    nominal_voltage_v=7.4,
    error_bits=((0, "input voltage out of range"), (1, "angle sensor error"),
                (2, "overheating"), (3, "overcurrent"), (5, "overload")),
    read_block=(56, 10),  # present position 56 .. status 65
)

FAMILIES = {f.name: f for f in (DYNAMIXEL_X, FEETECH_STS)}

# Feetech STS3215 registers outside the per-family fields above.
STS_LOCK = Field(55, 1)
STS_RESPONSE_LEVEL = Field(8, 1)
# Dynamixel X-series registers outside the per-family fields above.
DXL_STATUS_RETURN_LEVEL = Field(68, 1)
DXL_OPERATING_MODE = Field(11, 1)
DXL_LED = Field(65, 1)
DXL_EEPROM_END = 64
"""Writes below this address are refused while the torque is on (Access error)."""
