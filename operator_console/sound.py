"""The console's sound card for the intercom: PortAudio through ``sounddevice``.

Capture: 20 ms int16 blocks at 48 kHz straight into ``IntercomClient.feed`` (the
client's own bounded queue; the PortAudio callback never blocks). Playback: a
bounded buffer of decoded frames the output callback drains, silence when empty,
the oldest frames dropped when a talker outpaces the card (latency stays bounded).

A console without a sound device (or without PortAudio, as on a headless server)
starts as usual: one notice in the log, and the intercom stays off.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from operator_console.intercom import FRAME, RATE, IntercomClient
from transport.keys import ClientKeys
from transport.schema import AudioPacket

log = logging.getLogger(__name__)
PLAY_FRAMES = 10
"""Decoded 20 ms frames waiting for the card at most (200 ms); older ones dropped."""


@dataclass(frozen=True)
class ConsoleIntercom:
    """``[intercom]`` of the console config: the robot's intercom ports (None: off)."""

    talk_port: int | None = None
    listen_port: int | None = None
    open_mic: bool = False
    """Talk whenever the microphone hears something; False: push-to-talk (``talk()``)."""


def sound_device_problem() -> str | None:
    """Why this machine cannot capture and play (None: it can)."""
    try:
        import sounddevice as sd
    except OSError as err:  # the module is there, the PortAudio library is not
        return f"no PortAudio ({err})"
    except ImportError:
        return "the sounddevice package is not installed"
    try:
        sd.check_input_settings(channels=1, dtype="int16", samplerate=RATE)
        sd.check_output_settings(channels=1, dtype="int16", samplerate=RATE)
    except Exception as err:  # sounddevice.PortAudioError, ValueError: no such device
        return f"no usable sound device ({str(err).splitlines()[0][:120]})"
    return None


class Playback:
    """Decoded speech in, the sound card's blocks out; bounded, never blocking."""

    def __init__(self) -> None:
        self._frames: collections.deque[np.ndarray[Any, Any]] = collections.deque(
            maxlen=PLAY_FRAMES)
        self.played = 0

    def __call__(self, _speaker: str, _pkt: AudioPacket, pcm: np.ndarray[Any, Any],
                 _play_at: int) -> None:
        self._frames.append(pcm)

    def fill(self, out: np.ndarray[Any, Any]) -> None:
        """Fill one block of the card (``out``: int16, FRAME x 1)."""
        try:
            pcm = self._frames.popleft()
        except IndexError:
            out.fill(0)
            return
        n = min(len(pcm), len(out))
        out[:n, 0] = pcm[:n]
        out[n:] = 0
        self.played += 1


class SoundIntercom:
    """The intercom client with the default microphone and speaker."""

    def __init__(self, client: IntercomClient, playback: Playback) -> None:
        import sounddevice as sd

        self.client = client
        self.playback = playback
        self._lock = threading.Lock()

        def capture(indata: np.ndarray[Any, Any], _frames: int, _time: Any,
                    _status: Any) -> None:
            client.feed(indata[:, 0].copy())

        def play(outdata: np.ndarray[Any, Any], _frames: int, _time: Any,
                 _status: Any) -> None:
            playback.fill(outdata)

        self._streams = [
            sd.InputStream(samplerate=RATE, blocksize=FRAME, channels=1, dtype="int16",
                           latency="low", callback=capture),
            sd.OutputStream(samplerate=RATE, blocksize=FRAME, channels=1, dtype="int16",
                            latency="low", callback=play)]
        for stream in self._streams:
            stream.start()

    def talk(self, on: bool) -> None:
        self.client.talk(on)

    def close(self) -> None:
        for stream in self._streams:
            stream.stop()
            stream.close()
        self.client.close()


def start_intercom(cfg: ConsoleIntercom, host: str, keys: ClientKeys,
                   me: str) -> SoundIntercom | None:
    """The console's intercom on its sound card, or None (off, said once in the log)."""
    if cfg.talk_port is None or cfg.listen_port is None:
        return None
    problem = sound_device_problem()
    if problem is not None:
        log.warning("intercom off: %s", problem)
        return None
    playback = Playback()
    client = IntercomClient(zmq.Context.instance(), f"tcp://{host}:{cfg.talk_port}",
                            f"tcp://{host}:{cfg.listen_port}", keys=keys, me=me,
                            sink=playback)
    try:
        sound = SoundIntercom(client, playback)
    except Exception as err:  # PortAudio refused the stream after all: off, not a crash
        client.close()
        log.warning("intercom off: the sound device did not open (%s)", err)
        return None
    sound.talk(cfg.open_mic)
    log.info("intercom on: %s, talking to the robot's port %d",
             "open microphone" if cfg.open_mic else "push-to-talk", cfg.talk_port)
    return sound
