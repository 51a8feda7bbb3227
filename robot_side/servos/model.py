"""One emulated smart servo: its control table, a first-order joint and its own safety.

Pure and clock-injected (every entry point takes ``now_ns``), so the emulator
and unit tests share it. The joint follows its goal position as a first-order
lag (time constant ``TAU_S``) capped at the family's no-load speed, inside the
position limits in the table. What the real servos do on their own is kept:

* torque off: the joint does not follow (a real arm may sag; this one stays);
* a hardware error (voltage, overheating, encoder, shock, overload) latches
  in the hardware-error register and switches the torque off (the Dynamixel
  "Shutdown" default; the STS unloads on overload); Dynamixel clears it only on
  REBOOT, the emulated STS when the torque is enabled again after the cause is gone;
* Dynamixel's Bus Watchdog: with a non-zero value and the torque on, no
  instruction addressed to the servo for value x 20 ms stops it where it is,
  the register reads -1, and a goal-position write is refused with a Data Range
  error until 0 is written to it.
"""

from __future__ import annotations

import math

from robot_side.servos.tables import DXL_EEPROM_END, DYNAMIXEL_X, Field, ServoFamily

TAU_S = 0.02
SUBSTEP_NS = 1_000_000
MAX_STEP_NS = 200_000_000
"""A starved emulator thread integrates at most this much at once (the joint cannot jump)."""
WATCHDOG_UNIT_NS = 20_000_000
TEMPERATURE_C = 35
OVERHEAT_C = 80

WRITE_OK = 0
WRITE_RANGE = 1
WRITE_ACCESS = 2


class ServoModel:
    def __init__(self, family: ServoFamily, servo_id: int, now_ns: int,
                 position_rad: float = 0.0) -> None:
        self.family = family
        self.servo_id = servo_id
        self.table = bytearray(family.table_size)
        self._set(family.model_number_field, family.model_number)
        self._set(family.min_position_limit, 0)
        self._set(family.max_position_limit, family.ticks_per_rev - 1)
        self._set(family.return_delay, 0)
        self.position = family.centre_tick + position_rad / family.rad_per_tick
        self.position = min(max(self.position, 0.0), family.ticks_per_rev - 1.0)
        self.velocity = 0.0
        self._set(family.goal_position, round(self.position))
        self.injected_error = 0
        """Hardware-error bits a test forces on (the cause still present)."""
        self.overload = False
        self.last_addressed_ns = now_ns
        self._last_step_ns = now_ns
        self.watchdog_trips = 0
        self.watchdog_trip_ns: int | None = None
        self.refresh()

    # ------------------------------------------------------------ registers
    def _set(self, f: Field, value: int) -> None:
        self.table[f.addr:f.addr + f.size] = f.encode(value)

    def get(self, f: Field) -> int:
        return f.decode(self.table[f.addr:f.addr + f.size])

    @property
    def torque_on(self) -> bool:
        return bool(self.table[self.family.torque_enable.addr])

    @property
    def hardware_error(self) -> int:
        return self.table[self.family.hardware_error.addr]

    @property
    def watchdog_tripped(self) -> bool:
        wd = self.family.bus_watchdog
        return wd is not None and self.table[wd.addr] == 0xFF

    def read(self, addr: int, length: int, now_ns: int) -> bytes | None:
        """Bytes of the table, or None when the range is outside it."""
        self.step(now_ns)
        if addr < 0 or length < 0 or addr + length > len(self.table):
            return None
        return bytes(self.table[addr:addr + length])

    def write(self, addr: int, data: bytes, now_ns: int) -> int:
        """Apply a write as the servo would; WRITE_OK, WRITE_RANGE or WRITE_ACCESS."""
        self.step(now_ns)
        fam = self.family
        if addr < 0 or addr + len(data) > len(self.table):
            return WRITE_ACCESS
        if fam is DYNAMIXEL_X and addr < DXL_EEPROM_END and self.torque_on:
            return WRITE_ACCESS
        touches = range(addr, addr + len(data))
        if fam.hardware_error.addr in touches:
            return WRITE_ACCESS
        goal = fam.goal_position
        wd = fam.bus_watchdog
        if wd is not None and goal.addr in touches and self.watchdog_tripped:
            return WRITE_RANGE
        if wd is not None and wd.addr in touches:
            value = data[wd.addr - addr]
            if self.watchdog_tripped and value not in (0, 0xFF):
                return WRITE_RANGE  # cleared with 0 first
            if value > 127 and value != 0xFF:
                return WRITE_RANGE
        was_on = self.torque_on
        self.table[addr:addr + len(data)] = data
        if fam.torque_enable.addr in touches and self.torque_on and not was_on:
            self._torque_enabled()
        if self.hardware_error and self.torque_on:
            self.table[fam.torque_enable.addr] = 0  # a latched error keeps the torque off
        return WRITE_OK

    def _torque_enabled(self) -> None:
        # Enabling torque holds where the joint is, as the real servos do when the
        # goal was never written; a latched STS error clears once its cause has gone.
        if self.family is not DYNAMIXEL_X and not self.injected_error and not self.overload:
            self.table[self.family.hardware_error.addr] = 0
        if self.family.bus_watchdog is not None:
            self.last_addressed_ns = self._last_step_ns

    def reboot(self, now_ns: int) -> None:
        """Dynamixel REBOOT: volatile registers reset, errors cleared unless still present."""
        self.step(now_ns)
        fam = self.family
        self._set(fam.torque_enable, 0)
        if fam.bus_watchdog is not None:
            self._set(fam.bus_watchdog, 0)
        self.table[fam.hardware_error.addr] = self.injected_error
        self._set(fam.goal_position, round(self.position))
        self.velocity = 0.0
        self.refresh()

    def addressed(self, now_ns: int) -> None:
        """An instruction for this servo arrived (the Bus Watchdog's notion of traffic)."""
        self.step(now_ns)
        self.last_addressed_ns = now_ns

    # ------------------------------------------------------------ faults
    def inject_error(self, bits: int, now_ns: int) -> None:
        self.step(now_ns)
        self.injected_error = bits
        if bits:
            self._latch(bits)

    def inject_overload(self, on: bool, now_ns: int) -> None:
        self.step(now_ns)
        self.overload = on
        if on:
            self._latch(1 << 5)

    def _latch(self, bits: int) -> None:
        self.table[self.family.hardware_error.addr] |= bits
        self.table[self.family.torque_enable.addr] = 0
        self.velocity = 0.0
        self.refresh()

    # ------------------------------------------------------------ dynamics
    def step(self, now_ns: int) -> None:
        elapsed = now_ns - self._last_step_ns
        if elapsed <= 0:
            return
        self._last_step_ns = now_ns
        wd = self.family.bus_watchdog
        if wd is not None and self.torque_on and not self.watchdog_tripped:
            limit = self.table[wd.addr] * WATCHDOG_UNIT_NS
            if limit and now_ns - self.last_addressed_ns > limit:
                self._watchdog_trip(now_ns - elapsed)
        elapsed = min(elapsed, MAX_STEP_NS)
        if not self.torque_on or self.watchdog_tripped:
            self.velocity = 0.0
            self.refresh()
            return
        fam = self.family
        lo = self.get(fam.min_position_limit)
        hi = self.get(fam.max_position_limit)
        goal = min(max(float(self.get(fam.goal_position)), lo), hi)
        vmax = fam.max_speed_rad_s / fam.rad_per_tick
        while elapsed > 0:
            dt_ns = min(elapsed, SUBSTEP_NS)
            elapsed -= dt_ns
            dt = dt_ns / 1e9
            v = max(-vmax, min(vmax, (goal - self.position) / TAU_S))
            if abs(v * dt) > abs(goal - self.position):
                v = (goal - self.position) / dt
            self.position += v * dt
            self.velocity = v
        self.refresh()

    def _watchdog_trip(self, at_ns: int) -> None:
        wd = self.family.bus_watchdog
        if wd is None:
            return
        self.table[wd.addr] = 0xFF
        self._set(self.family.goal_position, round(self.position))
        self.velocity = 0.0
        self.watchdog_trips += 1
        self.watchdog_trip_ns = at_ns

    def refresh(self) -> None:
        """Write the present-value registers from the joint state."""
        fam = self.family
        self._set(fam.present_position, round(self.position))
        self._set(fam.present_velocity, round(self.velocity * fam.rad_per_tick
                                              / fam.velocity_unit_rad_s))
        if self.overload:
            load = 1000
        elif self.torque_on:
            err = self.get(fam.goal_position) - self.position
            load = max(-1000, min(1000, round(err * 4)))
        else:
            load = 0
        self._set(fam.present_load, load)
        volts = fam.nominal_voltage_v
        if self.injected_error & 1:
            volts *= 1.6
        self._set(fam.present_voltage, round(volts / fam.voltage_unit_v))
        hot = self.injected_error & (1 << 2)
        self._set(fam.present_temperature, OVERHEAT_C if hot else TEMPERATURE_C)

    @property
    def position_rad(self) -> float:
        return (self.position - self.family.centre_tick) * self.family.rad_per_tick

    def goal_rad(self) -> float:
        fam = self.family
        return (self.get(fam.goal_position) - fam.centre_tick) * fam.rad_per_tick


def ticks_of(family: ServoFamily, rad: float) -> int:
    return round(family.centre_tick + rad / family.rad_per_tick)


def rad_of(family: ServoFamily, ticks: float) -> float:
    if not math.isfinite(ticks):
        raise ValueError(f"ticks {ticks} is not finite")
    return (ticks - family.centre_tick) * family.rad_per_tick
