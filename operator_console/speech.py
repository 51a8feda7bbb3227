"""Generated speech for intercom tests and the bench: espeak-ng, resampled by sox.

Both are Debian packages (``apt-get install espeak-ng sox``); ``speech_pcm`` says
plainly which one is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from operator_console.intercom import FRAME, RATE
from telesurgery.errors import TelesurgeryError


def tools_missing() -> list[str]:
    return [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]


def speech_pcm(text: str) -> np.ndarray[Any, Any]:
    """``text`` spoken by espeak-ng as 48 kHz mono int16, padded to whole 20 ms frames."""
    missing = tools_missing()
    if missing:
        raise TelesurgeryError(f"{' and '.join(missing)} not installed "
                               "(apt-get install espeak-ng sox)")
    with tempfile.TemporaryDirectory(prefix="ts-speech-") as tmp:
        wav, raw = Path(tmp) / "s.wav", Path(tmp) / "s.raw"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
        subprocess.run(["sox", str(wav), "-r", str(RATE), "-c", "1", "-b", "16", "-e",
                        "signed-integer", "-t", "raw", str(raw)], check=True,
                       capture_output=True)
        pcm = np.frombuffer(raw.read_bytes(), dtype=np.int16)
    pad = (-len(pcm)) % FRAME
    return np.concatenate([pcm, np.zeros(pad, np.int16)])


def envelope(pcm: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """RMS per 20 ms frame: what a listener would call 'the same words at the same time'."""
    n = len(pcm) // FRAME
    frames = pcm[:n * FRAME].astype(np.float64).reshape(n, FRAME)
    rms: np.ndarray[Any, Any] = np.sqrt((frames ** 2).mean(axis=1))
    return rms
