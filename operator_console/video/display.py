"""The surgeon's window, or its headless stand-in for tests and screenless rigs.

With a screen: ``cv2.imshow`` plus ``waitKey(1)`` (which also pumps the GUI
events). Headless: the same HUD-rendered image is kept as ``last_image`` and,
every ``every_n`` frames, written to ``out_dir`` as PNG, with the HUD's text
in ``hud.jsonl`` (what the surgeon was told, readable without OCR);
``every_n = 0`` keeps only the last image and writes it once on close. A missing screen when one
was asked for is an error at start-up, not a surgeon staring at nothing.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2

from operator_console.video.hud import HudState, Image, hud_lines, render_hud
from operator_console.view import banner
from telesurgery.errors import VideoError

log = logging.getLogger(__name__)

WINDOW = "telesurgery"
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def screen_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class Display:
    def __init__(self, headless: bool, out_dir: Path | None = None, every_n: int = 0) -> None:
        if every_n < 0:
            raise VideoError(f"display every_n = {every_n}: must be >= 0")
        self.headless = headless
        self.out_dir = out_dir
        self.every_n = every_n
        self.shown = 0
        self.written = 0
        self.last_image: Image | None = None
        self.last_hud: HudState | None = None
        self.last_key = -1
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        if not headless:
            self._open_window()

    def _open_window(self) -> None:
        if not screen_available():
            raise VideoError("no screen (DISPLAY/WAYLAND_DISPLAY unset): run the display "
                             "headless")
        try:
            cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE)
        except cv2.error as err:
            raise VideoError(f"this OpenCV build cannot open a window ({err.msg.strip()}): "
                             "run the display headless") from err

    def show(self, image: Image, hud: HudState | None = None) -> None:
        """Render the HUD onto ``image`` (in place) and put it on screen or on disk."""
        if hud is not None:
            render_hud(image, hud)
        self.shown += 1
        self.last_image = image
        self.last_hud = hud
        if not self.headless:
            cv2.imshow(WINDOW, image)
            self.last_key = cv2.waitKey(1)
        elif self.out_dir is not None and self.every_n and self.shown % self.every_n == 0:
            self._write(image, f"frame_{self.shown:06d}.png", hud)

    def _write(self, image: Image, name: str, hud: HudState | None) -> None:
        """Write the frame, and beside it in ``hud.jsonl`` the text its HUD carries."""
        if self.out_dir is None:
            return
        path = self.out_dir / name
        if not cv2.imwrite(str(path), image, PNG_FAST):
            raise VideoError(f"could not write {path}")
        self.written += 1
        if hud is not None:
            b = banner(hud)
            record = {"file": name, "state": hud.shown_state,
                      "lines": [text for text, _ in hud_lines(hud)],
                      "banner": None if b is None else f"{b.title} | {b.detail}",
                      "warnings": list(hud.warnings),
                      "vitals": None if hud.vitals is None else hud.vitals.lines()}
            with (self.out_dir / "hud.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if not self.headless:
            cv2.destroyWindow(WINDOW)
        elif self.last_image is not None and self.every_n == 0:
            self._write(self.last_image, "last.png", self.last_hud)

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
