"""The one u32 sequence comparison: wrap-around and the half-space rule."""

from __future__ import annotations

from telesurgery.seqnum import HALF_U32, U32, u32_forward, u32_reached


def test_reached_across_the_wrap() -> None:
    assert u32_reached(5, 5)
    assert u32_reached(6, 5) and not u32_reached(5, 6)
    assert u32_reached(2, U32 - 3), "2 comes 5 frames after 2**32 - 3"
    assert not u32_reached(U32 - 3, 2)
    assert u32_forward(U32 - 3, 2) == 5


def test_half_the_space_ahead_is_behind() -> None:
    assert u32_reached(HALF_U32 - 1, 0)
    assert not u32_reached(HALF_U32, 0)
