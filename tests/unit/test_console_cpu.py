"""What the console no longer spends: HUDs nobody sees, and where its CPU goes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import operator_console.video.display as display_module
from operator_console.video.display import Display
from tests.unit.test_hud import BASE, FOLLOWING, LAY, RED, dominant

FAULT = dataclasses.replace(FOLLOWING, state="fault", reason="t")


def _count_draws(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    draws: list[int] = []
    real = display_module.render_hud

    def counting(image: np.ndarray, hud: display_module.HudState) -> np.ndarray:
        draws.append(1)
        return real(image, hud)

    monkeypatch.setattr(display_module, "render_hud", counting)
    return draws


def test_a_headless_display_with_nothing_to_write_draws_no_hud(
        monkeypatch: pytest.MonkeyPatch) -> None:
    draws = _count_draws(monkeypatch)
    display = Display(headless=True)
    picture = BASE.copy()
    for _ in range(30):
        display.show(picture, FAULT)
    assert draws == [] and display.shown == 30
    assert np.array_equal(picture, BASE)  # the caller's picture is never drawn on
    # Asked for, the last image has its HUD (drawn once, then kept).
    assert dominant(display.last_image, LAY.banner) == RED
    assert display.last_image is display.last_image and draws == [1]


def test_a_display_that_writes_or_must_measure_draws_every_hud(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    draws = _count_draws(monkeypatch)
    with Display(headless=True, out_dir=tmp_path, every_n=1) as display:
        for _ in range(3):
            display.show(BASE.copy(), FAULT)
    assert len(draws) == 3 and len(list(tmp_path.glob("frame_*.png"))) == 3
    draws.clear()
    unseen = Display(headless=True, draw_unseen=True)
    for _ in range(4):
        unseen.show(BASE.copy(), FAULT)
    assert len(draws) == 4
