"""The surgeon's heads-up display: link and safety state drawn over the video.

Colours carry the state at a glance: a green border while following, amber
for hold and warnings, red for fault, e-stop, a stale picture and an unknown
robot state (no telemetry), with a big banner saying, in plain words, why
motion stopped and what to do next (``operator_console.view`` decides what).
Layout depends only on the image size and is computed once per size;
drawing is a handful of ``putText`` calls over a darkened panel, well under a millisecond at 720p.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from operator_console.video.hud_vitals import draw_vitals
from operator_console.view import Banner, HudState, age_text, banner

__all__ = ["HudLayout", "HudState", "Image", "hud_layout", "hud_lines", "render_hud"]

Image = npt.NDArray[np.uint8]
Colour = tuple[int, int, int]

GREEN: Colour = (60, 200, 60)
AMBER: Colour = (0, 180, 255)
RED: Colour = (40, 40, 230)
GREY: Colour = (200, 200, 200)
WHITE: Colour = (255, 255, 255)
STATE_COLOURS: dict[str, Colour] = {
    "following": GREEN, "hold": AMBER, "fault": RED, "estop": RED,
    "ready": GREY, "disabled": GREY, "unknown": RED,
}
SEVERITY_COLOURS: dict[str, Colour] = {"red": RED, "amber": AMBER, "grey": GREY}
FONT = cv2.FONT_HERSHEY_SIMPLEX
PANEL_LINES = 6
MAX_WARNINGS = 4


Rect = tuple[int, int, int, int]
"""x0, y0, x1, y1 (exclusive)."""


@dataclass(frozen=True)
class HudLayout:
    scale: float
    border: int
    panel: Rect
    line_ys: tuple[int, ...]
    banner: Rect
    warnings: Rect


@functools.lru_cache(maxsize=8)
def hud_layout(width: int, height: int) -> HudLayout:
    s = max(0.4, height / 720)
    border = max(3, round(6 * s))
    pad, line_h = round(10 * s), round(28 * s)
    x0 = y0 = border + pad
    panel = (x0, y0, min(width - border, x0 + round(520 * s)), y0 + pad + PANEL_LINES * line_h)
    line_ys = tuple(y0 + round(22 * s) + i * line_h for i in range(PANEL_LINES))
    bw, bh = round(width * 0.7), round(88 * s)
    bx = (width - bw) // 2
    by = panel[3] + pad
    banner = (bx, by, bx + bw, by + bh)
    wy = height - border - pad - MAX_WARNINGS * line_h
    # Bottom right: the bottom left is where cameras (and the synthetic scene) stamp.
    warn = (max(x0, width - border - pad - round(width * 0.55)), wy, width - border - pad,
            height - border - pad)
    return HudLayout(s, border, panel, line_ys, banner, warn)


def _ms(value: float | None) -> str:
    return "--" if value is None else f"{value:.1f} ms"


def _fit(text: str, width: int, font_scale: float, thick: int) -> tuple[float, int, int]:
    """The largest font scale (from ``font_scale`` down) at which ``text`` fits ``width``."""
    (tw, th), _ = cv2.getTextSize(text, FONT, font_scale, thick)
    while tw > width and font_scale > 0.3:
        font_scale *= 0.85
        (tw, th), _ = cv2.getTextSize(text, FONT, font_scale, thick)
    return font_scale, tw, th


def _draw_banner(image: Image, lay: HudLayout, b: Banner) -> None:
    s = lay.scale
    colour = SEVERITY_COLOURS[b.severity]
    bx0, by0, bx1, by1 = lay.banner
    cv2.rectangle(image, (bx0, by0), (bx1 - 1, by1 - 1), colour, -1)
    inner = bx1 - bx0 - 16
    split = by0 + (by1 - by0) * 3 // 5
    font_scale, tw, th = _fit(b.title, inner, 1.1 * s, max(2, round(2.5 * s)))
    cv2.putText(image, b.title, (bx0 + (bx1 - bx0 - tw) // 2, (by0 + split + th) // 2), FONT,
                font_scale, WHITE, max(2, round(2.5 * s)), cv2.LINE_AA)
    if b.detail:
        font_scale, tw, th = _fit(b.detail, inner, 0.6 * s, max(1, round(1.5 * s)))
        cv2.putText(image, b.detail, (bx0 + (bx1 - bx0 - tw) // 2, (split + by1 + th) // 2),
                    FONT, font_scale, WHITE, max(1, round(1.5 * s)), cv2.LINE_AA)


def hud_lines(hud: HudState) -> list[tuple[str, Colour]]:
    """The panel's text lines with their colours (also what the frame log records)."""
    state = hud.shown_state
    state_colour = STATE_COLOURS.get(state, GREY)
    tlm_age = age_text(hud.telemetry_age_ms)
    if hud.robot_unknown:
        first = f"ROBOT STATE UNKNOWN  telemetry {tlm_age}"
    else:
        first = f"{state.upper()}  {hud.reason}  ({tlm_age})"
    link_colour = RED if hud.robot_unknown else WHITE
    return [
        (first[:52], state_colour),
        (f"RTT {_ms(hud.rtt_ms)}   one-way {_ms(hud.latency_ms)}", link_colour),
        (f"G2G {_ms(hud.g2g_ms)}   video age {_ms(hud.video_age_ms)}",
         RED if hud.video_stale else WHITE),
        ("loss --   jitter --" if hud.robot_unknown else
         f"loss {hud.loss * 100:.1f} %   jitter {_ms(hud.jitter_ms)}", link_colour),
        (f"scale {hud.scale:.2f}   clutch {'ON' if hud.clutch else 'off'}   operator "
         f"{'present' if hud.operator_present else 'ABSENT'}",
         WHITE if hud.operator_present else AMBER),
        _last_line(hud),
    ]


def _last_line(hud: HudState) -> tuple[str, Colour]:
    """The most urgent of: a command request waiting for this surgeon's grant, the network
    paths (dual path), who is in command, the encoder and frame rate."""
    if hud.handoff_from and hud.handoff_line:
        return hud.handoff_line[:52], AMBER
    if hud.paths:
        if hud.robot_unknown:
            return "paths --", RED
        return hud.paths[:52], AMBER if "down" in hud.paths else WHITE
    if hud.handoff_line:
        return hud.handoff_line[:52], WHITE
    return (f"{hud.encoder or 'video'}   {'--' if hud.fps is None else f'{hud.fps:.1f}'} fps",
            GREY)


def render_hud(image: Image, hud: HudState) -> Image:
    """Draw ``hud`` onto ``image`` in place and return it."""
    height, width = image.shape[:2]
    lay = hud_layout(width, height)
    s = lay.scale
    state_colour = STATE_COLOURS.get(hud.shown_state, GREY)
    b = lay.border
    cv2.rectangle(image, (0, 0), (width - 1, height - 1), state_colour, 2 * b)

    x0, y0, x1, y1 = lay.panel
    panel = image[y0:y1, x0:x1]
    np.right_shift(panel, 2, out=panel)  # darken so text reads over any scene
    lines = hud_lines(hud)
    for (text, colour), y in zip(lines, lay.line_ys, strict=True):
        cv2.putText(image, text, (x0 + round(8 * s), y), FONT, 0.62 * s, colour,
                    max(1, round(1.5 * s)), cv2.LINE_8)

    if hud.warnings:
        wx0, wy0, wx1, wy1 = lay.warnings
        shown = hud.warnings[:MAX_WARNINGS]
        line_h = (wy1 - wy0) // MAX_WARNINGS
        top = wy1 - len(shown) * line_h
        area = image[top:wy1, wx0:wx1]
        np.right_shift(area, 2, out=area)
        thick = max(1, round(1.5 * s))
        for i, text in enumerate(shown):
            font_scale, _, _ = _fit(f"! {text}", wx1 - wx0 - round(16 * s), 0.62 * s, thick)
            cv2.putText(image, f"! {text}", (wx0 + round(8 * s), top + (i + 1) * line_h
                        - round(8 * s)), FONT, font_scale, AMBER, thick, cv2.LINE_8)

    if hud.vitals is not None:
        draw_vitals(image, hud.vitals, x1)
    shown_banner = banner(hud)
    if shown_banner is not None:
        _draw_banner(image, lay, shown_banner)
    return image
