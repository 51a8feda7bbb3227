"""What the surgeon is shown, built once and drawn twice (HUD over video, terminal status).

No display shows a stale state as current (invariant 8). Every figure has an
age: link figures are as old as the telemetry they came in, the picture's age
is its own. When no telemetry arrived for ``telemetry_stale_ms`` (default
300 ms: 15 periods of the robot's 50 Hz telemetry, a margin over scheduling
hiccups on a loaded console yet well under a second), the robot's state is
unknown and both displays say so loudly, never the last state: a frozen or
killed robot process, or a link that died, looks the same from here, and the
video comes from another process, so pictures may keep arriving meanwhile.

Reason codes are shown in plain words with the next step (``wording``);
console messages expire after ``WARNING_TTL_S``; the cause of the last stop
stays until the surgeon engages again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from operator_console.vitals_view import VitalsStrip
from operator_console.wording import describe, plain
from safety.states import SURGEON_HOLDS
from transport.schema import Telemetry

TELEMETRY_STALE_MS = 300.0
WARNING_TTL_S = 8.0
UNKNOWN_TITLE = "NO TELEMETRY - ROBOT STATE UNKNOWN"
"""ASCII only: the HUD's Hershey fonts have no em dash."""

Severity = Literal["red", "amber", "grey"]


@dataclass(frozen=True)
class HudState:
    state: str
    reason: str
    rtt_ms: float | None
    latency_ms: float | None
    g2g_ms: float | None
    video_age_ms: float | None
    loss: float
    jitter_ms: float | None
    scale: float
    clutch: bool
    operator_present: bool
    warnings: tuple[str, ...]
    encoder: str = ""
    fps: float | None = None
    stale_ms: float = 250.0
    """The console's stale-picture limit, so the HUD can say when it is exceeded."""
    telemetry_age_ms: float | None = 0.0
    """Age of the telemetry the state and link figures come from; None: none ever."""
    telemetry_stale_ms: float = TELEMETRY_STALE_MS
    last_stop: str = ""
    """Reason code of the last stop the surgeon did not ask for, until the next engage."""
    last_stop_age_s: float | None = None
    connection: str = ""
    """What is wrong with the connection to the robot ("" when it is up)."""
    vitals: VitalsStrip | None = None
    """The patient monitor's strip (operator_console.vitals_view); None: no monitor."""
    commander: str = ""
    """The surgeon in command as the robot says (its key's name); "" nobody or unknown."""
    handoff_from: str = ""
    """A surgeon asking the commander for command ("" none): the HUD says press G."""

    @property
    def handoff_line(self) -> str:
        """Who is in command, or the pending request (the commander may grant it)."""
        if self.robot_unknown:
            return ""
        if self.handoff_from:
            return f"Request from {self.handoff_from} - press G to grant"
        return f"In command: {self.commander}" if self.commander else ""
    paths: str = ""
    """Dual path: each path's health as the robot measured it, "A ok 1.2 ms / B down"."""

    @property
    def video_stale(self) -> bool:
        return self.video_age_ms is None or self.video_age_ms > self.stale_ms

    @property
    def robot_unknown(self) -> bool:
        return self.telemetry_age_ms is None or self.telemetry_age_ms > self.telemetry_stale_ms

    @property
    def shown_state(self) -> str:
        """The state to display: "unknown" once telemetry is stale, never the last one."""
        return "unknown" if self.robot_unknown else self.state


def age_text(ms: float | None) -> str:
    if ms is None:
        return "never"
    return f"{ms:.0f} ms ago" if ms < 1000 else f"{ms / 1000:.1f} s ago"


@dataclass(frozen=True)
class Banner:
    title: str
    detail: str
    severity: Severity


def banner(hud: HudState) -> Banner | None:
    """The one big message of the moment, most serious first; None while all is well."""
    if hud.robot_unknown:
        seen = ("no telemetry ever received" if hud.telemetry_age_ms is None
                else f"last telemetry {age_text(hud.telemetry_age_ms)}")
        conn = hud.connection
        detail = (conn[:1].upper() + conn[1:]) if conn else (
            "The robot holds by itself when the link fails.")
        return Banner(UNKNOWN_TITLE, f"{seen}. {detail}", "red")
    if hud.video_stale:
        why = ("no picture" if hud.video_age_ms is None
               else f"picture {hud.video_age_ms:.0f} ms old")
        return Banner(f"PICTURE FROZEN ({why})", "Arm held. Re-engage when the picture is live.",
                      "red")
    if hud.state in ("fault", "estop", "hold"):
        p = describe(hud.reason)
        cause = ""
        if hud.last_stop and hud.last_stop != hud.reason:
            cause = f" (after: {describe(hud.last_stop).what.rstrip('.')})"
        return Banner(f"{hud.state.upper()}: {p.what}{cause}", p.next_step,
                      "amber" if hud.state == "hold" else "red")
    if hud.last_stop and hud.state != "following":
        p = describe(hud.last_stop)
        when = "" if hud.last_stop_age_s is None else f" {age_text(hud.last_stop_age_s * 1000)}"
        return Banner(f"LAST STOP{when}: {p.what}", p.next_step, "amber")
    return None


def recording_alarm(recording: str | None) -> str | None:
    """The HUD line for the robot's session recorder, None while it records (or is off).

    Shown first among the warnings, only with fresh telemetry (a stale one says nothing
    current), until the recorder records again: the session is not being kept."""
    if recording is None or recording in ("ok", "starting"):
        return None
    why = recording.removeprefix("stopped:").strip() or recording
    # ASCII only: the HUD's Hershey fonts draw nothing else.
    return "NOT RECORDING: " + why.encode("ascii", "replace").decode("ascii")


class StopMemory:
    """The cause of the last stop the surgeon did not ask for, kept until the next engage.

    A trip that escalates (hold -> fault ``hold_escalated``) keeps its first cause.
    """

    def __init__(self) -> None:
        self.cause = ""
        self.at_ns: int | None = None
        self._following = False

    def update(self, tlm: Telemetry, now_ns: int) -> None:
        if tlm.state == "following":
            self.cause, self.at_ns, self._following = "", None, True
            return
        stopped = self._following or tlm.state in ("fault", "estop")
        if stopped and not self.cause and tlm.reason not in SURGEON_HOLDS:
            self.cause, self.at_ns = tlm.reason, now_ns
        self._following = False


class SurgeonView:
    """Builds the ``HudState`` of the moment from what the console's threads share."""

    def __init__(self, stale_ms: float, telemetry_stale_ms: float = TELEMETRY_STALE_MS,
                 warning_ttl_s: float = WARNING_TTL_S) -> None:
        self.stale_ms = stale_ms
        self.telemetry_stale_ms = telemetry_stale_ms
        self.warning_ttl_ns = int(warning_ttl_s * 1e9)
        self.stops = StopMemory()
        self._seen_seq: int | None = None

    def observe(self, tlm: Telemetry | None, now_ns: int) -> None:
        """Feed the newest telemetry (call often: each new one is looked at once)."""
        if tlm is not None and tlm.seq != self._seen_seq:
            self._seen_seq = tlm.seq
            self.stops.update(tlm, now_ns)

    def build(self, *, tlm: Telemetry | None, tlm_recv_ns: int | None, now_ns: int,
              message: str, message_ns: int, teleop_why: str, clutch: bool,
              operator_present: bool, scale: float, video_age_ms: float | None,
              g2g_ms: float | None = None, fps: float | None = None,
              connection: str = "") -> HudState:
        self.observe(tlm, now_ns)
        warnings = []
        said = plain(message)
        # The banner already says what the robot's current reason means.
        if (message and now_ns - message_ns < self.warning_ttl_ns
                and not (tlm is not None and said == str(describe(tlm.reason)))):
            warnings.append(said)
        if teleop_why:
            warnings.append(teleop_why)
        age = None if tlm_recv_ns is None or tlm is None else max(0, now_ns - tlm_recv_ns) / 1e6
        stop_age = None if self.stops.at_ns is None else (now_ns - self.stops.at_ns) / 1e9
        unknown = HudState(
            state="unknown", reason="no telemetry", rtt_ms=None, latency_ms=None, loss=0.0,
            jitter_ms=None, g2g_ms=g2g_ms, video_age_ms=video_age_ms, scale=scale,
            clutch=clutch, operator_present=operator_present, warnings=tuple(warnings),
            fps=fps, stale_ms=self.stale_ms, telemetry_age_ms=age,
            telemetry_stale_ms=self.telemetry_stale_ms, last_stop=self.stops.cause,
            last_stop_age_s=stop_age, connection=connection)
        if tlm is None or unknown.robot_unknown:
            # Never the last state: no state, no link figures, only their age.
            return unknown
        link = tlm.link
        alarm = recording_alarm(tlm.recording)
        return replace(
            unknown, state=tlm.state, reason=tlm.reason,
            warnings=unknown.warnings if alarm is None else (alarm, *unknown.warnings),
            rtt_ms=None if link.rtt_us is None else link.rtt_us / 1000,
            latency_ms=None if link.latency_us is None else link.latency_us / 1000,
            loss=link.loss, jitter_ms=None if link.jitter_us is None else link.jitter_us / 1000,
            commander=tlm.commander or "", handoff_from=tlm.handoff_from or "")

