"""Strict loading of frozen-dataclass configs from TOML.

Every process has one top-level config dataclass whose fields are sections
(themselves frozen dataclasses). ``build()`` turns a parsed TOML mapping into
that tree, rejecting unknown keys and wrong types with a ``ConfigError`` that
names the dotted key and the bad value. Range checks live in each section's
``__post_init__`` and raise through ``check()`` so they name the key too.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from telesurgery.errors import ConfigError

T = TypeVar("T")


def check(ok: bool, key: str, value: object, why: str) -> None:
    """Raise ``ConfigError`` naming ``key`` and ``value`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} = {value!r}: {why}")


def finite_positive(key: str, value: float) -> None:
    check(math.isfinite(value) and value > 0, key, value, "must be a finite number > 0")


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """The range a safety setting must be in, and the narrower band it should be in.

    Outside ``lo..hi`` the config is refused: the error names the key, the range and
    ``why``. Inside the range but outside ``rec_lo..rec_hi`` it loads, with a
    warning at start-up (``warnings()``) that also goes into the audit's start record.
    """

    lo: float
    hi: float
    rec_lo: float
    rec_hi: float
    unit: str
    why: str
    lo_open: bool = False
    """``lo`` itself is outside the range (e.g. a fraction that must be > 0)."""

    def check(self, key: str, value: float) -> None:
        low_ok = value > self.lo if self.lo_open else value >= self.lo
        ok = math.isfinite(value) and low_ok and value <= self.hi
        check(ok, key, value, f"must be in {self._span(self.lo, self.hi, self.lo_open)}"
                              f": {self.why}")

    def warning(self, key: str, value: float) -> str | None:
        if self.rec_lo <= value <= self.rec_hi:
            return None
        return (f"{key} = {value:g} {self.unit} is outside the recommended "
                f"{self._span(self.rec_lo, self.rec_hi, False)}: {self.why}")

    def _span(self, lo: float, hi: float, lo_open: bool) -> str:
        return f"{'(' if lo_open else '['}{lo:g}, {hi:g}] {self.unit}".rstrip()


def check_limits(section: object, prefix: str, limits: dict[str, Limit]) -> None:
    """Refuse any field of ``section`` outside its ``Limit`` (in ``__post_init__``)."""
    for name, limit in limits.items():
        limit.check(f"{prefix}.{name}", float(getattr(section, name)))


def limit_warnings(section: object, prefix: str, limits: dict[str, Limit]) -> list[str]:
    """One line per field of ``section`` inside its range but outside the recommended band."""
    out = []
    for name, limit in limits.items():
        line = limit.warning(f"{prefix}.{name}", float(getattr(section, name)))
        if line is not None:
            out.append(line)
    return out


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key} = {value!r}: matches none of {args}")
    if origin is typing.Literal:
        choices = get_args(tp)
        check(value in choices, key, value, f"must be one of {list(choices)}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        check(isinstance(value, dict), key, value, "must be a table")
        return build(tp, value, key)
    if origin is tuple:
        args = get_args(tp)
        check(isinstance(value, list | tuple), key, value, "must be an array")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        check(len(value) == len(args), key, value, f"must have {len(args)} items")
        return tuple(_coerce(a, v, f"{key}[{i}]")
                     for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is bool:
        check(isinstance(value, bool), key, value, "must be true or false")
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), key, value,
              "must be an integer")
        return value
    if tp is float:
        check(isinstance(value, int | float) and not isinstance(value, bool), key, value,
              "must be a number")
        check(math.isfinite(float(value)), key, value, "must be finite")
        return float(value)
    if tp is str:
        check(isinstance(value, str), key, value, "must be a string")
        return value
    if tp is Path:
        check(isinstance(value, str), key, value, "must be a path string")
        return Path(value)
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are an error."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix or "top level"
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], value, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err


def load(cls: type[T], path: Path | str | None) -> T:
    """Load ``cls`` from a TOML file, or its defaults when ``path`` is None."""
    if path is None:
        return build(cls, {})
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {p}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML: {err}") from err
    return build(cls, data)


def to_dict(obj: Any) -> Any:
    """The inverse of ``build`` for reports and round-trip tests."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
