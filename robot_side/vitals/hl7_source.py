"""HL7 v2 backend: ORU^R01 over MLLP from the OR's monitor gateway, ACK'd or NAK'd.

MLLP frames each message as ``0x0B <message> 0x1C 0x0D`` on a TCP connection the
gateway opens to us. Each ORU^R01 carries OBX segments: a numeric observation
(``NM``) per vital sign, identified by its MDC reference id or LOINC code, and
alarms as OBX whose identifier is an ``MDC_EVT_*`` code, with the priority in
OBX-8 (IHE PCD alarm flags ``PH``/``PM``/``PL``), the text in OBX-5 and the state
in OBX-11 (``X``/``D``: ended). An OBX we do not know is counted and ignored.

Every message is answered: ``AA`` when it was used, ``AE`` when part of it was
refused (a value out of range), ``AR`` when it is not an ORU^R01 we can parse.
Nothing here can block the robot: this runs in the vitals process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import hl7

from robot_side.vitals.model import VitalsBook, VitalsError
from telesurgery.ratelog import RateLimitedLog

log = logging.getLogger(__name__)
ratelog = RateLimitedLog(log)

START, END = b"\x0b", b"\x1c\x0d"
MAX_MESSAGE_BYTES = 64 * 1024
"""A monitor's ORU is a few hundred bytes; anything larger is refused and the
connection dropped (it cannot be resynchronised without reading it all)."""

OBSERVATIONS: dict[str, str] = {
    # MDC reference ids (IEEE 11073-10101), as IHE PCD gateways send them
    "MDC_ECG_HEART_RATE": "hr", "MDC_PULS_OXIM_PULS_RATE": "hr",
    "MDC_PULS_OXIM_SAT_O2": "spo2",
    "MDC_PRESS_BLD_NONINV_SYS": "nibp_sys", "MDC_PRESS_BLD_NONINV_DIA": "nibp_dia",
    "MDC_PRESS_BLD_NONINV_MEAN": "nibp_mean",
    "MDC_PRESS_BLD_ART_ABP_SYS": "abp_sys", "MDC_PRESS_BLD_ART_ABP_DIA": "abp_dia",
    "MDC_PRESS_BLD_ART_ABP_MEAN": "abp_mean",
    "MDC_RESP_RATE": "rr", "MDC_AWAY_CO2_ET": "etco2", "MDC_TEMP": "temp",
    "MDC_TEMP_BODY": "temp",
    # LOINC
    "8867-4": "hr", "59408-5": "spo2", "2708-6": "spo2", "8480-6": "nibp_sys",
    "8462-4": "nibp_dia", "8478-0": "nibp_mean", "76215-3": "abp_sys", "76213-8": "abp_dia",
    "76214-6": "abp_mean", "9279-1": "rr", "19889-5": "etco2", "8310-5": "temp",
}
PRIORITIES = {"PH": "high", "PM": "medium", "PL": "low", "HH": "high", "H": "medium",
              "LL": "high", "L": "medium", "A": "low"}
ENDED = frozenset({"X", "D", "W"})
MAX_CONNECTIONS = 8
"""A gateway keeps one connection; more than this at once are refused (a leak or a flood)."""


@dataclass(frozen=True)
class Outcome:
    ack_code: str
    """AA accepted, AE partly refused, AR rejected."""
    reason: str = ""
    raised: tuple[str, ...] = ()
    """Alarm codes this message raised."""


def _field(seg: hl7.Segment, n: int) -> str:
    return str(seg[n]) if len(seg) > n else ""


def apply_oru(text: str, book: VitalsBook, now_ns: int) -> Outcome:
    """Parse one HL7 message and apply it to ``book``; never raises on bad input."""
    try:
        msg = hl7.parse(text)
        msh = msg.segment("MSH")
        mtype = _field(msh, 9)
    except (hl7.HL7Exception, LookupError, ValueError, TypeError) as err:
        reason = f"not an HL7 v2 message ({type(err).__name__}: {str(err)[:80]})"
        book.refuse(None, reason, now_ns)
        return Outcome("AR", reason)
    comp = _field(msh, 2)[:1] or "^"
    if mtype.split(comp)[:2] != ["ORU", "R01"]:
        reason = f"message type {mtype[:20]!r}, expected ORU^R01"
        book.refuse(None, reason, now_ns)
        return Outcome("AR", reason)
    book.heard(now_ns)
    refused: list[str] = []
    raised: list[str] = []
    for seg in msg.segments("OBX") if _has_obx(msg) else ():
        ident = _field(seg, 3).split(comp)
        code, label = ident[0].strip(), ident[1].strip() if len(ident) > 1 else ""
        status = _field(seg, 11).strip().upper()
        try:
            if code.startswith("MDC_EVT_") or label.startswith("MDC_EVT_"):
                alarm = code if code.startswith("MDC_EVT_") else label
                flag = _field(seg, 8).split(comp)[0].strip().upper()
                if flag not in PRIORITIES:
                    raise VitalsError(f"alarm {alarm}: priority flag {flag!r} unknown")
                if book.offer_alarm(alarm.removeprefix("MDC_EVT_"), PRIORITIES[flag],
                                    _field(seg, 5).replace(comp, " "),
                                    status not in ENDED, now_ns):
                    raised.append(alarm)
                continue
            name = OBSERVATIONS.get(code) or OBSERVATIONS.get(label)
            if name is None:
                book.counters["unknown_observations"] += 1
                continue
            if status in ENDED:
                continue
            raw = _field(seg, 5).strip()
            try:
                value = float(raw)
            except ValueError as err:
                book.refuse(name, f"{name}: value {raw[:20]!r} is not a number", now_ns)
                raise VitalsError(f"{name}: value {raw[:20]!r} is not a number") from err
            book.offer_value(name, value, _field(seg, 6).split(comp)[0], now_ns)
        except VitalsError as err:
            refused.append(str(err))
    if refused:
        return Outcome("AE", "; ".join(refused)[:200], tuple(raised))
    return Outcome("AA", "", tuple(raised))


def _has_obx(msg: hl7.Message) -> bool:
    try:
        msg.segments("OBX")
    except KeyError:
        return False
    return True


def ack_for(text: str, outcome: Outcome) -> bytes:
    """The MLLP-framed ACK (or NAK) for one received message."""
    try:
        ack = str(hl7.parse(text).create_ack(ack_code=outcome.ack_code,
                                             application="TELESURGERY", facility="ROBOT"))
        if outcome.reason:
            ack += "\r" + f"ERR|||207|E||||{_escape(outcome.reason)}"
    except (hl7.HL7Exception, LookupError, ValueError, TypeError):
        # Unparseable: a minimal NAK without the control id it does not have.
        stamp = time.strftime("%Y%m%d%H%M%S")  # wall-clock ok: the HL7 message time
        ack = (f"MSH|^~\\&|TELESURGERY|ROBOT|||{stamp}||ACK|0|P|2.6"
               f"\rMSA|AR|\rERR|||207|E||||{_escape(outcome.reason)}")
    return START + ack.encode("utf-8", "replace") + END


def _escape(text: str) -> str:
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\").replace("\r", " ")[:200])


def frame(message: str) -> bytes:
    return START + message.encode("utf-8") + END


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next MLLP payload; None at a clean end. Raises ``VitalsError`` on bad framing."""
    try:
        data = await reader.readuntil(END)
    except asyncio.IncompleteReadError as err:
        if err.partial.strip():
            raise VitalsError("connection closed inside an MLLP frame") from err
        return None
    except asyncio.LimitOverrunError as err:
        raise VitalsError(f"MLLP frame longer than {MAX_MESSAGE_BYTES} bytes") from err
    start = data.find(START)
    if start < 0:
        raise VitalsError("MLLP frame without its start byte 0x0B")
    return data[start + 1:-len(END)]


class Hl7Listener:
    """The MLLP server: one task per gateway connection, all feeding one ``VitalsBook``."""

    def __init__(self, book: VitalsBook, host: str, port: int,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.book = book
        self.host, self.port = host, port
        self.on_change = on_change
        self._server: asyncio.Server | None = None
        self._connections = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=MAX_MESSAGE_BYTES)
        port: int = self._server.sockets[0].getsockname()[1]
        self.port = port
        log.info("HL7 MLLP listener on %s:%d", self.host, port)
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self._connections >= MAX_CONNECTIONS:
            self.book.counters["connections_refused"] += 1
            ratelog(logging.WARNING, "hl7-max", "HL7: connection from %s refused (%d open)",
                    peer, self._connections)
            writer.close()
            return
        self._connections += 1
        self.book.connected = True
        self.book.counters["connections"] += 1
        log.info("HL7 monitor connected from %s", peer)
        try:
            while True:
                try:
                    payload = await read_frame(reader)
                except VitalsError as err:
                    self.book.refuse(None, str(err), time.monotonic_ns())
                    ratelog(logging.WARNING, "hl7-frame", "HL7 from %s: %s; dropping the "
                            "connection", peer, err)
                    return
                if payload is None:
                    return
                now = time.monotonic_ns()
                text = payload.decode("utf-8", "replace").replace("\r\n", "\r").replace(
                    "\n", "\r")
                outcome = apply_oru(text, self.book, now)
                if outcome.ack_code != "AA":
                    ratelog(logging.WARNING, f"hl7-{outcome.ack_code}", "HL7 %s: %s",
                            outcome.ack_code, outcome.reason)
                    self.book.counters[f"nak_{outcome.ack_code}"] += 1
                self.on_change()
                writer.write(ack_for(text, outcome))
                await writer.drain()
        except (ConnectionError, OSError) as err:
            ratelog(logging.WARNING, "hl7-conn", "HL7 connection from %s lost: %s", peer, err)
        finally:
            self._connections -= 1
            self.book.connected = self._connections > 0
            if not self.book.connected:
                self.book.last_error = "the monitor closed its connection"
                self.book.counters["disconnects"] += 1
                log.warning("HL7 monitor disconnected (%s)", peer)
            self.on_change()
            writer.close()
