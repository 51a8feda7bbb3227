"""The surgeon's window, or its headless stand-in for tests and screenless rigs.

With a screen: ``cv2.imshow`` plus ``waitKey(1)`` (which also pumps the GUI
events). Headless: the same HUD-rendered image is kept as ``last_image`` and,
every ``every_n`` frames, written to ``out_dir`` as PNG, with the HUD's text
in ``hud.jsonl`` (what the surgeon was told, readable without OCR);
``every_n = 0`` keeps only the last image and writes it once on close. A missing screen when one
was asked for is an error at start-up, not a surgeon staring at nothing.

The HUD is drawn onto a copy, never onto the caller's picture, and only when
somebody sees it: on screen, on disk, or when ``last_image`` is asked for. A
headless console with nothing to write (the soak, the demo without ``--hud``)
draws none of the 30 pictures a second it is given (a copy and a HUD cost ~0.5 ms
of CPU per 720p picture, ~2 % of a core at 30 + 10 draws a second). Pictures
may come still in YUV (``decoder.Picture``): they are converted to BGR only
when drawn, which such a console never does (another ~0.5 ms per picture).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2

from operator_console.video.decoder import Picture, as_bgr
from operator_console.video.hud import HudState, Image, hud_lines, render_hud
from operator_console.view import banner
from telesurgery.errors import VideoError

log = logging.getLogger(__name__)

WINDOW = "telesurgery"
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def screen_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class Display:
    def __init__(self, headless: bool, out_dir: Path | None = None, every_n: int = 0, *,
                 draw_unseen: bool = False) -> None:
        """``draw_unseen``: draw every HUD even when nobody sees it (``bench video``
        measures what drawing costs)."""
        if every_n < 0:
            raise VideoError(f"display every_n = {every_n}: must be >= 0")
        self.headless = headless
        self.out_dir = out_dir
        self.every_n = every_n
        self.shown = 0
        self.written = 0
        self._last_picture: Image | Picture | None = None
        """The newest picture as given (no HUD); ``last_image`` draws its HUD on demand."""
        self._last_drawn: Image | None = None
        self.last_hud: HudState | None = None
        self.last_key = -1
        self.draw_unseen = draw_unseen
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

    @property
    def last_image(self) -> Image | None:
        """The newest picture with its HUD drawn (drawn now if nobody has seen it yet)."""
        if self._last_drawn is None and self._last_picture is not None:
            self._last_drawn = self._drawn(self._last_picture, self.last_hud)
        return self._last_drawn

    @staticmethod
    def _drawn(picture: Image | Picture, hud: HudState | None) -> Image:
        bgr = as_bgr(picture)
        return bgr if hud is None else render_hud(bgr.copy(), hud)

    def show(self, image: Image | Picture, hud: HudState | None = None) -> None:
        """Put ``image`` with ``hud`` drawn over it on screen or on disk (``image`` itself
        is left as it is: the caller may show it again with a newer HUD)."""
        self.shown += 1
        self._last_picture, self.last_hud, self._last_drawn = image, hud, None
        if not self.headless:
            self._last_drawn = self._drawn(image, hud)
            cv2.imshow(WINDOW, self._last_drawn)
            self.last_key = cv2.waitKey(1)
        elif self.out_dir is not None and self.every_n and self.shown % self.every_n == 0:
            self._write(self.last_image, f"frame_{self.shown:06d}.png", hud)
        elif self.draw_unseen:
            _ = self.last_image

    def _write(self, image: Image | None, name: str, hud: HudState | None) -> None:
        """Write the frame, and beside it in ``hud.jsonl`` the text its HUD carries."""
        if self.out_dir is None or image is None:
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
        elif self._last_picture is not None and self.every_n == 0 and self.out_dir is not None:
            self._write(self.last_image, "last.png", self.last_hud)

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
