"""The patient's vitals strip on the surgeon's HUD: top right, beside the link panel.

One line of vital signs (white when current, grey with a "?" when stale), then the
monitor's active alarms, each in its priority's colour (high: red box, medium: amber,
low: yellow), or a red "NO MONITOR" when the source is gone. What it says is decided
in ``operator_console.vitals_view``; this only draws.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import numpy.typing as npt

from operator_console.vitals_view import VitalsStrip

Image = npt.NDArray[np.uint8]
Colour = tuple[int, int, int]

WHITE: Colour = (255, 255, 255)
GREY: Colour = (140, 140, 140)
RED: Colour = (40, 40, 230)
AMBER: Colour = (0, 180, 255)
YELLOW: Colour = (0, 230, 230)
ALARM_COLOURS: dict[str, Colour] = {"high": RED, "medium": AMBER, "low": YELLOW}
MAX_ALARM_LINES = 3
FONT = cv2.FONT_HERSHEY_SIMPLEX

Rect = tuple[int, int, int, int]


@functools.lru_cache(maxsize=8)
def strip_rect(width: int, height: int, left: int) -> tuple[Rect, float, int]:
    """The strip's box right of ``left`` (the link panel's right edge), its font scale and
    line height."""
    s = max(0.4, height / 720)
    pad, line_h = round(10 * s), round(26 * s)
    border = max(3, round(6 * s))
    x0 = left + pad
    x1 = width - border - pad
    y0 = border + pad
    return (x0, y0, x1, y0 + pad + (1 + MAX_ALARM_LINES) * line_h), 0.55 * s, line_h


def draw_vitals(image: Image, strip: VitalsStrip, left: int) -> None:
    height, width = image.shape[:2]
    (x0, y0, x1, _), font, line_h = strip_rect(width, height, left)
    if x1 - x0 < 80:
        return  # no room beside the panel on a tiny picture: the panel wins
    thick = max(1, round(font * 2.4))
    lines = 1 + min(MAX_ALARM_LINES, len(strip.alarms))
    area = image[y0:y0 + round(line_h * 0.4) + lines * line_h, x0:x1]
    np.right_shift(area, 2, out=area)
    x, y = x0 + 6, y0 + line_h
    if not strip.monitor_ok:
        x = _text(image, "NO MONITOR", x, y, style=(font, RED, thick)) + 12
    for cell in strip.cells:
        colour = GREY if cell.stale else WHITE
        x = _text(image, str(cell), x, y, style=(font, colour, thick)) + 14
        if x >= x1:
            break
    for i, alarm in enumerate(strip.alarms[:MAX_ALARM_LINES]):
        y = y0 + (i + 2) * line_h
        colour = ALARM_COLOURS.get(alarm.priority, AMBER)
        text = f"{'!!' if alarm.priority == 'high' else '!'} {alarm.text}"
        if alarm.priority == "high":
            (tw, th), _ = cv2.getTextSize(text, FONT, font, thick)
            cv2.rectangle(image, (x0 + 2, y - th - 4), (min(x1, x0 + tw + 12), y + 5), RED, -1)
            _text(image, text, x0 + 6, y, style=(font, WHITE, thick))
        else:
            _text(image, text, x0 + 6, y, style=(font, colour, thick))


def _text(image: Image, text: str, x: int, y: int, *, style: tuple[float, Colour, int]) -> int:
    font, colour, thick = style
    cv2.putText(image, text, (x, y), FONT, font, colour, thick, cv2.LINE_8)
    (tw, _), _ = cv2.getTextSize(text, FONT, font, thick)
    return x + tw
