"""Sequence numbers that wrap at 2**32 (serial frames, acknowledgements).

One comparison for the whole project: ``a`` is at or after ``b`` when the forward
distance from ``b`` to ``a`` is less than half the number space (RFC 1982 style).
"""

from __future__ import annotations

U32 = 2**32
HALF_U32 = 2**31


def u32_forward(frm: int, to: int) -> int:
    """Steps from ``frm`` forward to ``to``, modulo 2**32 (0 .. 2**32 - 1)."""
    return (to - frm) % U32


def u32_reached(newest: int, seq: int) -> bool:
    """``newest`` is ``seq`` or later (e.g. the firmware has received frame ``seq``)."""
    return u32_forward(seq, newest) < HALF_U32
