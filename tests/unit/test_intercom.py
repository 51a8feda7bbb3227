"""Intercom: generated speech (espeak-ng, sox) through the robot's hub, real CURVE and Opus.

The surgeon and the observer ``alice`` may talk (``intercom_rights``); ``bob`` may
not. Speech is fed in real time, 20 ms frames, push-to-talk.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from helpers import wait_until

from operator_console.intercom import FRAME, FRAME_NS, IntercomClient
from operator_console.speech import envelope, speech_pcm, tools_missing
from robot_side.intercom import RIGHTS_FILE, IntercomConfig, IntercomRelay
from transport.auth import start_authenticator
from transport.keys import ClientKeys, ServerKeys, init_keys
from transport.schema import AudioPacket

pytestmark = pytest.mark.skipif(bool(tools_missing()),
                                reason=f"needs {tools_missing()} (apt-get install espeak-ng sox)")


class Ear:
    def __init__(self) -> None:
        self.heard: list[tuple[str, int, np.ndarray[Any, Any]]] = []

    def __call__(self, speaker: str, pkt: AudioPacket, pcm: np.ndarray[Any, Any],
                 _play_at: int) -> None:
        self.heard.append((speaker, pkt.seq, pcm))


@pytest.fixture
def hub(tmp_path: Path, ctx: zmq.Context[Any]) -> Iterator[tuple[IntercomRelay, Path]]:
    init_keys(tmp_path, ["alice", "bob"])
    (tmp_path / RIGHTS_FILE).write_text("surgeon\nobserver:alice\n")
    auth = start_authenticator(ctx, ServerKeys.load(tmp_path))
    relay = IntercomRelay(ctx, IntercomConfig(talk_port=0, listen_port=0), host="127.0.0.1",
                          keys=ServerKeys.load(tmp_path), auth=auth, keys_dir=tmp_path)
    relay.start()
    yield relay, tmp_path
    relay.stop()
    relay.join(2.0)
    auth.stop()


def client(ctx: zmq.Context[Any], relay: IntercomRelay, keys: ClientKeys, me: str,
           ear: Ear) -> IntercomClient:
    return IntercomClient(ctx, f"tcp://127.0.0.1:{relay.talk_port}",
                          f"tcp://127.0.0.1:{relay.listen_port}", keys=keys, me=me, sink=ear)


def speak(c: IntercomClient, pcm: np.ndarray[Any, Any]) -> None:
    """Real time: each frame is handed over when its 20 ms have been 'spoken'."""
    t = time.monotonic_ns()
    for i in range(len(pcm) // FRAME):
        t += FRAME_NS
        time.sleep(max(0.0, (t - time.monotonic_ns()) / 1e9))
        c.feed(pcm[i * FRAME:(i + 1) * FRAME], t)


def test_push_to_talk_speech_reaches_the_surgeon_never_the_talker_and_not_without_the_right(
        hub: tuple[IntercomRelay, Path], ctx: zmq.Context[Any]) -> None:
    relay, keydir = hub
    surgeon_ear, alice_ear, bob_ear = Ear(), Ear(), Ear()
    surgeon = client(ctx, relay, ClientKeys.load_surgeon(keydir), "surgeon", surgeon_ear)
    alice = client(ctx, relay, ClientKeys.load_observer(keydir, "alice"), "observer:alice",
                   alice_ear)
    bob = client(ctx, relay, ClientKeys.load_observer(keydir, "bob"), "observer:bob", bob_ear)
    try:
        silence = np.zeros(FRAME, np.int16)
        alice.feed(silence)  # push-to-talk released: nothing leaves
        time.sleep(0.1)
        assert alice.sent == 0
        alice.talk(True)
        wait_until(lambda: (alice.feed(silence), time.sleep(0.02),
                            bool(surgeon_ear.heard))[-1], 10.0, "the link up")
        speech = speech_pcm("Clamp the artery now.")
        surgeon_ear.heard.clear()
        speak(alice, speech)
        alice.talk(False)
        n = len(speech) // FRAME
        wait_until(lambda: len(surgeon_ear.heard) >= n, 5.0, "every frame heard")
        heard = np.concatenate([pcm for _, _, pcm in surgeon_ear.heard[:n]])
        assert {s for s, _, _ in surgeon_ear.heard} == {"observer:alice"}
        # The same words: the loudness per 20 ms frame follows the original's.
        a, b = envelope(speech), envelope(heard)
        assert float(np.corrcoef(a, b)[0, 1]) > 0.9
        assert alice_ear.heard == []  # never one's own voice back
        # bob may listen but not talk: his packets are refused and counted.
        bob.talk(True)
        wait_until(lambda: (bob.feed(silence), time.sleep(0.02),
                            relay.refused["no right"] > 0)[-1], 10.0, "bob refused")
        assert all(s != "observer:bob" for s, _, _ in surgeon_ear.heard)
        assert bob_ear.heard  # he hears alice's speech
        assert surgeon.mouth_to_ear_ns and min(surgeon.mouth_to_ear_ns) > 0
    finally:
        for c in (surgeon, alice, bob):
            c.close()
