"""The console's sound card for the intercom: off with one notice when there is none.

This machine has no sound device (and no PortAudio library): the real case of a
headless console. The console's intercom is then off and everything else runs on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from operator_console.config import ConsoleConfig
from operator_console.intercom import FRAME
from operator_console.sound import (
    PLAY_FRAMES,
    ConsoleIntercom,
    Playback,
    sound_device_problem,
    start_intercom,
)
from telesurgery.config import load
from transport.keys import ClientKeys, init_keys
from transport.schema import AudioPacket


def test_without_a_sound_device_the_intercom_is_off_with_one_notice(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if sound_device_problem() is None:
        pytest.skip("this machine has a sound device")
    init_keys(tmp_path, [])
    keys = ClientKeys.load_surgeon(tmp_path)
    cfg_file = tmp_path / "console.toml"
    cfg_file.write_text("[intercom]\ntalk_port = 47106\nlisten_port = 47107\n")
    cfg = load(ConsoleConfig, cfg_file)
    assert cfg.intercom == ConsoleIntercom(talk_port=47106, listen_port=47107)
    with caplog.at_level(logging.INFO, logger="operator_console.sound"):
        assert start_intercom(cfg.intercom, "127.0.0.1", keys, "surgeon") is None
    notices = [r for r in caplog.records if r.name == "operator_console.sound"]
    assert len(notices) == 1 and notices[0].levelno == logging.WARNING
    assert notices[0].getMessage().startswith("intercom off: ")
    assert "\n" not in notices[0].getMessage()
    print(notices[0].getMessage())
    caplog.clear()
    assert start_intercom(ConsoleIntercom(), "127.0.0.1", keys, "surgeon") is None
    assert not caplog.records  # not configured: nothing to say


def test_playback_is_bounded_and_plays_silence_when_nobody_speaks() -> None:
    play = Playback()
    block = np.ones((FRAME, 1), np.int16)
    play.fill(block)
    assert not block.any()  # silence, not the last frame again
    pkt = AudioPacket(seq=1, t_ns=1, payload=b"x")
    for i in range(3 * PLAY_FRAMES):
        play("observer:alice", pkt, np.full(FRAME, i, np.int16), 0)
    play.fill(block)
    assert int(block[0, 0]) == 2 * PLAY_FRAMES  # the oldest were dropped: latency bounded
