"""The servo-bus emulator's control socket, for the HIL rig (``servo-sim --control``).

A ZeroMQ REP socket speaking one JSON object per request, like the firmware
emulator's (``robot_side.firmware_sim``), so ``hil_tests.rig.SimRig.firmware`` drives
either: ``{"state": true}`` -> every servo's position, goal, torque and watchdog;
``{"inject": {...}}`` -> ``ServoBusEmulator.inject`` (``{}`` clears); ``{"vanish": true}``
/ ``{"reappear": true}`` -> the adapter unplugged / plugged in again; ``{"move_by_hand":
[id, rad]}`` -> a hand turns a torque-off joint (a leader arm). A test fixture,
not a product interface: it binds only where the rig says (an ipc path in its run folder).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

from robot_side.servos.emulator import ServoBusEmulator

log = logging.getLogger(__name__)

INJECT_KEYS = frozenset({"silent", "noise", "truncate", "wrong_id", "corrupt"})


def servo_state(emu: ServoBusEmulator) -> dict[str, Any]:
    snaps = [emu.snapshot(i) for i in sorted(emu.servos)]
    return {"ids": [s.servo_id for s in snaps],
            "positions": [s.position_rad for s in snaps],
            "goals": [s.goal_rad for s in snaps],
            "torque_on": [s.torque_on for s in snaps],
            "watchdog_tripped": [s.watchdog_tripped for s in snaps],
            "watchdog_trip_ns": [s.watchdog_trip_ns for s in snaps]}


def answer(emu: ServoBusEmulator, req: Any) -> dict[str, Any]:
    if not isinstance(req, dict):
        return {"ok": False, "error": "expected a JSON object"}
    try:
        if req.get("state"):
            return {"ok": True, "state": servo_state(emu)}
        if "inject" in req:
            spec = req["inject"]
            if not isinstance(spec, dict) or not set(spec) <= INJECT_KEYS:
                return {"ok": False, "error": f"inject keys must be among {sorted(INJECT_KEYS)}"}
            emu.inject(**spec)
            return {"ok": True}
        if req.get("vanish"):
            emu.vanish()
            return {"ok": True}
        if req.get("reappear"):
            emu.reappear()
            return {"ok": True}
        if "move_by_hand" in req:  # {"move_by_hand": [servo_id, rad]}: a torque-off joint
            sid, rad = req["move_by_hand"]
            if int(sid) not in emu.servos:
                return {"ok": False, "error": f"no servo {sid}"}
            return {"ok": emu.move_by_hand(int(sid), float(rad))}
    except (TypeError, ValueError) as err:
        return {"ok": False, "error": str(err)}
    return {"ok": False, "error": "unknown request"}


class ControlServer(threading.Thread):
    def __init__(self, emu: ServoBusEmulator, endpoint: str) -> None:
        super().__init__(name="servo-sim-control", daemon=True)
        self.emu = emu
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(endpoint)
        self._halt = threading.Event()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._halt.is_set():
            if not poller.poll(100):
                continue
            try:
                req = self._sock.recv_json()
            except ValueError:
                self._sock.send_json({"ok": False, "error": "not JSON"})
                continue
            self._sock.send_json(answer(self.emu, req))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2.0)
        self._sock.close(0)
        self._ctx.term()
