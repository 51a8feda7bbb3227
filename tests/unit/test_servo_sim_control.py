"""servo-sim's control socket (the HIL rig's handle on the servo bus), on a real REP socket."""

from __future__ import annotations

from pathlib import Path

import zmq

from robot_side.servos.emulator import ServoBusEmulator
from robot_side.servos.sim_control import ControlServer


def test_state_injection_and_bad_requests(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/fw.ipc"
    with ServoBusEmulator("feetech", (1, 2), link=tmp_path / "tty", initial=(0.1, -0.2)) as emu:
        server = ControlServer(emu, endpoint)
        server.start()
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            with ctx.socket(zmq.REQ) as s:
                s.setsockopt(zmq.RCVTIMEO, 5000)
                s.connect(endpoint)

                def ask(body: object) -> dict[str, object]:
                    s.send_json(body)
                    reply: dict[str, object] = s.recv_json()  # type: ignore[assignment]
                    return reply

                state = ask({"state": True})["state"]
                assert isinstance(state, dict) and state["ids"] == [1, 2]
                assert abs(state["positions"][0] - 0.1) < 2e-3
                assert ask({"inject": {"silent": [2]}}) == {"ok": True}
                assert emu._faults.silent == frozenset({2})
                assert ask({"inject": {}}) == {"ok": True}
                assert not ask({"inject": {"explode": 1}})["ok"]
                assert not ask({"inject": {"noise": 2.0}})["ok"]
                assert not ask([1, 2])["ok"]
                assert not ask({"what": 1})["ok"]
                assert ask({"move_by_hand": [2, 0.4]}) == {"ok": True}
                assert abs(emu.snapshot(2).position_rad - 0.4) < 2e-3
                assert not ask({"move_by_hand": [9, 0.4]})["ok"]
        finally:
            server.stop()
            ctx.term()
