"""The intercom's hub on the robot: Opus packets from consoles allowed to talk, out to all.

A thread of the robot node with its own two CURVE sockets (``talk_port`` in,
``listen_port`` out), so audio shares nothing with commands: not a socket, not a
queue, not a thread. Who may talk is a list of ZAP user ids in
``<keys_dir>/intercom_rights`` (re-read on change); every packet is checked like
a stroke (``robot_side.telestration.KeyedRelay``) and carries the speaker's user
id as the robot saw it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from robot_side.telestration import KeyedRelay
from telesurgery.config import check
from transport.auth import Authenticator
from transport.keys import ServerKeys
from transport.schema import AudioPacket

RIGHTS_FILE = "intercom_rights"


@dataclass(frozen=True)
class IntercomConfig:
    enabled: bool = False
    talk_port: int = 47106
    listen_port: int = 47107
    max_per_s: float = 60.0
    """Packets per speaker per second (20 ms frames are 50)."""

    def __post_init__(self) -> None:
        for name in ("talk_port", "listen_port"):
            port = getattr(self, name)
            check(0 <= port <= 65535, f"intercom.{name}", port, "must be in 0..65535")
        check(50 <= self.max_per_s <= 500, "intercom.max_per_s", self.max_per_s,
              "must be in 50..500 (one 20 ms frame is 50 per second)")


class IntercomRelay(KeyedRelay):
    msg_type = AudioPacket
    author_field = "speaker"
    rights_file = RIGHTS_FILE
    what = "audio"

    def __init__(self, ctx: zmq.Context[Any], cfg: IntercomConfig, *, host: str,
                 keys: ServerKeys, auth: Authenticator, keys_dir: Path) -> None:
        super().__init__(ctx, (cfg.talk_port, cfg.listen_port), cfg.max_per_s, host=host,
                         keys=keys, auth=auth, keys_dir=keys_dir)
        self.talk_port, self.listen_port = self.in_port, self.out_port
