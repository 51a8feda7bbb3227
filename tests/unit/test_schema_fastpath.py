"""The Command fast path of ``transport.schema.decode`` accepts exactly what the generic
validators accept, and builds the same message (issue 11: it exists for speed only)."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telesurgery.errors import SchemaError
from transport.schema import (
    I64_MAX,
    U64,
    Command,
    _build,
    _fast_command,
    decode,
    encode,
)

VALID: dict[str, Any] = {
    "seq": 5, "t_send_ns": 123_456_789, "position": [0.1, -0.2, 0.3],
    "orientation": [1.0, 0.0, 0.0, 0.0], "grip": 0.5, "clutch": False,
    "operator_present": True, "video_age_us": 20_000, "t_sample_ns": 123, "session": 7,
}


def _generic(body: dict[str, Any]) -> Command | None:
    try:
        msg = _build(Command, dict(body), prefix="cmd.")
    except SchemaError:
        return None
    assert isinstance(msg, Command)
    return msg


def _same(body: dict[str, Any]) -> None:
    fast = _fast_command(dict(body))
    generic = _generic(body)
    if fast is not None:  # what the fast path accepts, the generic one accepts the same
        assert generic == fast
        assert [type(v) for v in fast.position + fast.orientation] == [float] * 7
    # Whatever the fast path leaves to the generic path, decode still answers the same.
    try:
        raw = msgpack.packb({"v": 1, "t": "cmd", **body}, use_bin_type=True)
    except OverflowError:  # beyond what msgpack can carry: never on the wire
        return
    try:
        decoded: Command | None = decode(raw)  # type: ignore[assignment]
    except SchemaError:
        decoded = None
    assert decoded == generic


def test_a_valid_command_takes_the_fast_path_and_round_trips() -> None:
    assert _fast_command(dict(VALID)) == _generic(VALID)
    cmd = _generic(VALID)
    assert cmd is not None and decode(encode(cmd)) == cmd


@pytest.mark.parametrize("change", [
    {"seq": -1}, {"seq": U64 + 1}, {"seq": True}, {"seq": 1.0}, {"t_send_ns": I64_MAX + 1},
    {"position": [0.1, 0.2]}, {"position": [0.1, 0.2, math.nan]},
    {"position": [0.1, 0.2, math.inf]}, {"position": [0.1, 0.2, 10.5]},
    {"position": [0.1, 0.2, True]}, {"position": [0, 1, -10]}, {"position": "abc"},
    {"orientation": [1.0, 0.0, 0.0]}, {"orientation": [0.9, 0.0, 0.0, 0.0]},
    {"orientation": [1.0005, 0.0, 0.0, 0.0]}, {"orientation": [1, 0, 0, 0]},
    {"orientation": [math.nan, 0.0, 0.0, 0.0]}, {"grip": 1.5}, {"grip": -0.0},
    {"grip": math.nan}, {"grip": 1}, {"grip": False}, {"clutch": 0}, {"clutch": None},
    {"operator_present": 1}, {"video_age_us": -1}, {"video_age_us": None},
    {"video_age_us": 1.0}, {"t_sample_ns": None}, {"t_sample_ns": "x"}, {"session": 0},
    {"session": None}, {"session": True}, {"joints": [0.1, 0.2]}, {"joints": None},
    {"extra": 1},
])
def test_each_field_is_judged_as_the_generic_validators_judge_it(change: dict[str, Any]
                                                                  ) -> None:
    _same({**VALID, **change})


@pytest.mark.parametrize("missing", sorted(VALID))
def test_a_missing_field_is_judged_the_same(missing: str) -> None:
    _same({k: v for k, v in VALID.items() if k != missing})


_number = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                    st.integers(min_value=-20, max_value=20), st.booleans(), st.none())


@settings(max_examples=300, deadline=None)
@given(pos=st.lists(_number, min_size=2, max_size=4),
       quat=st.lists(st.one_of(_number, st.floats(min_value=-1.01, max_value=1.01)),
                     min_size=3, max_size=5),
       grip=_number, seq=st.one_of(st.integers(min_value=-2, max_value=U64 + 2), _number))
def test_random_values_are_judged_the_same(pos: list[Any], quat: list[Any], grip: Any,
                                          seq: Any) -> None:
    _same({**VALID, "position": pos, "orientation": quat, "grip": grip, "seq": seq})


@settings(max_examples=200, deadline=None)
@given(w=st.floats(min_value=-1.0, max_value=1.0), x=st.floats(min_value=-1.0, max_value=1.0))
def test_near_unit_quaternions_are_judged_the_same(w: float, x: float) -> None:
    rest = max(0.0, 1.0 - w * w - x * x)
    _same({**VALID, "orientation": [w, x, math.sqrt(rest), 0.0]})
