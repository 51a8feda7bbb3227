"""How old is the picture the surgeon is looking at? Pure logic, clock passed in.

The age counts from the *capture* of the frame on screen (mapped to this
clock), not from its arrival: a frame that arrived promptly but was captured
long ago is just as misleading. The console reports the age in every command
and disengages when it is stale; nothing shown yet counts as stale.
"""

from __future__ import annotations


class FreshnessMonitor:
    def __init__(self, stale_ms: float = 250.0) -> None:
        if not stale_ms > 0:
            raise ValueError(f"stale_ms = {stale_ms!r}: must be > 0")
        self.stale_ms = stale_ms
        self._stale_ns = int(stale_ms * 1e6)
        self._capture_ns: int | None = None
        self.displayed_ns: int | None = None
        """When the newest picture went on screen (this clock)."""

    def on_displayed(self, capture_ns: int, now_ns: int) -> None:
        """A frame captured at ``capture_ns`` (this clock) is on screen as of ``now_ns``.

        An older frame than the one already shown never makes the picture fresher.
        """
        if self._capture_ns is None or capture_ns > self._capture_ns:
            self._capture_ns = capture_ns
            self.displayed_ns = now_ns

    def age_us(self, now_ns: int) -> int | None:
        """Age of the displayed picture in microseconds; None when nothing was shown."""
        if self._capture_ns is None:
            return None
        return max(0, (now_ns - self._capture_ns) // 1000)

    def stale(self, now_ns: int) -> bool:
        age = self.age_us(now_ns)
        return age is None or age * 1000 > self._stale_ns

    def reason(self, now_ns: int) -> str:
        """Why the picture is stale, for the HUD and the disengage reason; "" when fresh."""
        age = self.age_us(now_ns)
        if age is None:
            return "no video"
        if age * 1000 > self._stale_ns:
            return f"video stale {age / 1000:.0f} ms"
        return ""
