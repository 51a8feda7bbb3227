"""The console's engage hint names what the surgeon must do with the master in hand."""

from __future__ import annotations

from operator_console.command_loop import CommandThread
from operator_console.devices.base import DeviceConfig, InputDevice, MasterSample
from operator_console.session import ConsoleShared
from operator_console.teleop import TeleopConfig, TeleopMapper


class HeldMaster(InputDevice):
    """A master held still, with or without joints. Stands in for a leader arm or a
    stylus: a unit test has no servo bus or USB device, and only the sample's shape
    matters to the wording."""

    def __init__(self, joints: tuple[float, ...] | None) -> None:
        super().__init__(DeviceConfig(kind="so101_leader" if joints else "spacemouse"))
        self.joints = joints

    def _open(self) -> None:
        pass

    def _read(self, now_ns: int) -> MasterSample:
        return MasterSample(t_ns=now_ns, position=(0.0, 0.0, 0.0), quat=(1.0, 0.0, 0.0, 0.0),
                            grip=0.0, clutch=False, operator_present=True, joints=self.joints)

    def _close(self) -> None:
        pass


def hint_after_refused_alignment(joints: tuple[float, ...] | None) -> str:
    device = HeldMaster(joints)
    device.open()
    shared = ConsoleShared()
    thread = CommandThread(None, device, TeleopMapper(TeleopConfig(rate_hz=500.0)),  # type: ignore[arg-type]  # the link is not used to build a command
                           shared, period_ns=2_000_000, realtime=False)
    thread._next_command()  # one sample: the console knows what kind of master it holds
    shared.align_to = (1.0, 0.0, 0.0, 0.0)
    thread._next_command()
    return shared.message


def test_a_leader_arm_is_told_to_match_the_robot_arm_not_to_turn_a_hand() -> None:
    assert "leader arm" in hint_after_refused_alignment((0.1,) * 6)


def test_a_cartesian_master_is_told_to_turn_the_hand() -> None:
    assert "turn your hand" in hint_after_refused_alignment(None)
