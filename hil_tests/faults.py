"""Pure network fault models for the HIL fault proxy.

No sockets and no clock of their own: a ``FaultModel`` takes the arrival time
as an argument and draws from an injected ``random.Random``, so a scenario with
a fixed seed injects exactly the same faults on every run, and the unit tests
check the statistics without a network.

One decision per application message:

* loss: Bernoulli (``loss``) or Gilbert-Elliott two-state bursts (``ge_p`` good->bad,
  ``ge_r`` bad->good, loss probability ``ge_loss_bad`` / ``ge_loss_good`` in each
  state; mean burst length is ``1 / ge_r`` when ``ge_loss_bad`` is 1);
* delay + jitter: the release time is ``max(previous release, arrival + delay +
  jitter sample)`` so a TCP stream keeps its order unless a reorder is drawn;
* reorder, duplicate, corrupt: independent Bernoulli draws;
* ``blackout=True``: every application message in that direction is dropped.

``BlackoutWindow`` is the live, both-direction blackout the proxy starts and ends.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal

from telesurgery.config import build, check
from telesurgery.errors import ConfigError

JitterDist = Literal["uniform", "normal"]
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class FaultSpec:
    """The faults for one direction of one link; all zero means a clean link."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    """Uniform in +-jitter_ms (netem's default) or the standard deviation for "normal"."""
    loss: float = 0.0
    ge_p: float = 0.0
    """Gilbert-Elliott: probability per message of going from the good to the bad state."""
    ge_r: float = 1.0
    """Gilbert-Elliott: probability per message of going from the bad to the good state."""
    ge_loss_bad: float = 1.0
    ge_loss_good: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    blackout: bool = False
    jitter_dist: JitterDist = "uniform"

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            check(isinstance(value, int | float) and not isinstance(value, bool)
                  and math.isfinite(value) and value >= 0,
                  f"faults.{name}", value, "must be a finite number >= 0")
        for name in ("loss", "ge_p", "ge_r", "ge_loss_bad", "ge_loss_good", "reorder",
                     "duplicate", "corrupt"):
            value = getattr(self, name)
            check(isinstance(value, int | float) and not isinstance(value, bool)
                  and 0.0 <= value <= 1.0,
                  f"faults.{name}", value, "must be a probability in [0, 1]")
        check(self.jitter_dist in ("uniform", "normal"), "faults.jitter_dist",
              self.jitter_dist, "must be 'uniform' or 'normal'")
        check(isinstance(self.blackout, bool), "faults.blackout", self.blackout,
              "must be true or false")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "faults") -> FaultSpec:
        """Strictly build from JSON/TOML data; errors name the key under ``where``."""
        try:
            return build(cls, data, where)
        except ConfigError as err:
            message = str(err)
            if not message.startswith(where):  # range checks name the bare field
                raise ConfigError(where + message.removeprefix("faults")) from err
            raise

    @property
    def clean(self) -> bool:
        """True when this spec changes nothing, so the proxy can take its fast path."""
        return self == CLEAN


CLEAN = FaultSpec()


@dataclass(frozen=True)
class Decision:
    """What to do with one application message."""

    drop: bool = False
    duplicate: bool = False
    corrupt: bool = False
    delay_ns: int = 0
    """How long after arrival to release it; already clamped to keep order."""
    reorder: bool = False
    """Hold it back so that the next message overtakes it."""


PASS = Decision()


class FaultModel:
    """Draws a ``Decision`` per message from a ``FaultSpec`` and an injected RNG."""

    def __init__(self, spec: FaultSpec, rng: random.Random) -> None:
        self.spec = spec
        self._clean = spec.clean
        """Computed once: comparing the frozen spec field by field cost the proxy ~2 us a
        message (a model is rebuilt, never changed, when the faults change)."""
        self._rng = rng
        self._bad = False
        self._last_release_ns: int | None = None

    def decide(self, now_ns: int) -> Decision:
        spec = self.spec
        if spec.blackout:
            return Decision(drop=True)
        if self._clean:
            return PASS
        rng = self._rng
        # Draw every variate on every call so one seed gives one fault sequence
        # regardless of which faults happen to fire.
        lost_bernoulli = rng.random() < spec.loss
        lost_burst = self._gilbert_elliott()
        reorder = rng.random() < spec.reorder
        duplicate = rng.random() < spec.duplicate
        corrupt = rng.random() < spec.corrupt
        delay_ns = self._delay_ns(now_ns, reorder)
        if lost_bernoulli or lost_burst:
            return Decision(drop=True)
        return Decision(duplicate=duplicate, corrupt=corrupt, delay_ns=delay_ns, reorder=reorder)

    def _gilbert_elliott(self) -> bool:
        spec = self.spec
        switch = self._rng.random()
        if self._bad:
            self._bad = switch >= spec.ge_r
        else:
            self._bad = switch < spec.ge_p
        loss = spec.ge_loss_bad if self._bad else spec.ge_loss_good
        return self._rng.random() < loss

    def _delay_ns(self, now_ns: int, reorder: bool) -> int:
        spec = self.spec
        if spec.jitter_ms == 0:
            sample_ms = spec.delay_ms
        elif spec.jitter_dist == "normal":
            sample_ms = spec.delay_ms + self._rng.gauss(0.0, spec.jitter_ms)
        else:
            sample_ms = spec.delay_ms + self._rng.uniform(-spec.jitter_ms, spec.jitter_ms)
        release_ns = now_ns + max(0, round(sample_ms * NS_PER_MS))
        if reorder:
            # A reordered message may leave early or late; it does not hold back others.
            return release_ns - now_ns
        if self._last_release_ns is not None:
            release_ns = max(release_ns, self._last_release_ns)
        self._last_release_ns = release_ns
        return release_ns - now_ns


class BlackoutWindow:
    """A blackout that ends after a duration or on request; time is passed in."""

    def __init__(self) -> None:
        self._active = False
        self._until_ns: int | None = None

    def begin(self, now_ns: int, seconds: float | None) -> None:
        """Start (or extend) a blackout; ``None`` lasts until ``end()``."""
        if seconds is not None:
            check(math.isfinite(seconds) and seconds > 0, "blackout", seconds,
                  "must be a finite number of seconds > 0, or None for open-ended")
        self._active = True
        self._until_ns = None if seconds is None else now_ns + round(seconds * NS_PER_S)

    def end(self) -> None:
        self._active = False
        self._until_ns = None

    def active(self, now_ns: int) -> bool:
        if self._active and self._until_ns is not None and now_ns >= self._until_ns:
            self.end()
        return self._active

    def ends_at_ns(self) -> int | None:
        """When an active, timed blackout ends; ``None`` when open-ended or inactive."""
        return self._until_ns if self._active else None
