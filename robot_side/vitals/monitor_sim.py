"""``telesurgery monitor-sim``: a simulated patient monitor playing a scripted patient.

``--hl7 HOST:PORT`` (or ``--hl7-status vitals.json``, the robot's vitals status file)
connects to the robot's MLLP listener as an OR gateway would and sends an ORU^R01
every second, and at once whenever an alarm starts or ends; ``--sdc`` runs an
SDC provider (robot_side.vitals.sdc_sim). The patient is stable, then desaturates
(SpO2 alarm), then becomes tachycardic (high-priority alarm): robot_side.vitals.patient.

``--events FILE`` writes one JSON line per alarm onset with the monotonic time it
was sent: the demo's "monitor alarm -> shown on the HUD" latency starts there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from robot_side.vitals.hl7_source import frame, read_frame
from robot_side.vitals.patient import Reading, Script, patient_at
from telesurgery.helptext import plain_help

log = logging.getLogger(__name__)

SEND_PERIOD_S = 1.0
TICK_S = 0.05
ACK_TIMEOUT_S = 2.0

HL7_IDS: dict[str, str] = {
    "hr": "147842^MDC_ECG_HEART_RATE^MDC", "spo2": "150456^MDC_PULS_OXIM_SAT_O2^MDC",
    "nibp_sys": "150021^MDC_PRESS_BLD_NONINV_SYS^MDC",
    "nibp_dia": "150022^MDC_PRESS_BLD_NONINV_DIA^MDC",
    "nibp_mean": "150023^MDC_PRESS_BLD_NONINV_MEAN^MDC",
    "abp_sys": "150037^MDC_PRESS_BLD_ART_ABP_SYS^MDC",
    "abp_dia": "150038^MDC_PRESS_BLD_ART_ABP_DIA^MDC",
    "abp_mean": "150039^MDC_PRESS_BLD_ART_ABP_MEAN^MDC",
    "rr": "151562^MDC_RESP_RATE^MDC", "etco2": "151708^MDC_AWAY_CO2_ET^MDC",
    "temp": "150364^MDC_TEMP_BODY^MDC",
}
PRIORITY_FLAGS = {"high": "PH", "medium": "PM", "low": "PL"}


def oru_r01(reading: Reading, control_id: int, ended: Sequence[str] = ()) -> str:
    """One ORU^R01 with every vital sign and the alarms (active, and ``ended`` as X)."""
    ts = time.strftime("%Y%m%d%H%M%S", time.gmtime())  # wall-clock ok: HL7 message time
    segs = [f"MSH|^~\\&|MONITOR_SIM|OR1|TELESURGERY|ROBOT|{ts}||ORU^R01^ORU_R01|"
            f"{control_id}|P|2.6",
            "PID|||SIM0001^^^OR1||Patient^Simulated",
            f"OBR|1|||182777000^monitoring of patient^SCT|||{ts}"]
    n = 0
    for name, (value, unit) in reading.values.items():
        n += 1
        segs.append(f"OBX|{n}|NM|{HL7_IDS[name]}||{value:g}|{unit}|||||F|||{ts}")
    for code, (priority, text) in reading.alarms.items():
        n += 1
        segs.append(f"OBX|{n}|ST|MDC_EVT_{code}^MDC_EVT_{code}^MDC||{text}||"
                    f"|{PRIORITY_FLAGS[priority]}|||F|||{ts}")
    for code in ended:
        n += 1
        segs.append(f"OBX|{n}|ST|MDC_EVT_{code}^MDC_EVT_{code}^MDC||ended|||PL|||X|||{ts}")
    return "\r".join(segs) + "\r"


@dataclass
class SenderStats:
    sent: int = 0
    acked: int = 0
    naks: int = 0


def _log_onsets(events: IO[str] | None, before: Reading | None, now: Reading,
                sent_ns: int) -> None:
    if events is None:
        return
    for code, (priority, text) in now.alarms.items():
        if before is None or code not in before.alarms:
            events.write(json.dumps({"alarm": code, "priority": priority, "text": text,
                                     "sent_ns": sent_ns}) + "\n")
            events.flush()


async def send_hl7(host: str, port: int, seconds: float, *, script: Script | None = None,
                   events: IO[str] | None = None, stop: asyncio.Event | None = None
                   ) -> SenderStats:
    """Play ``script`` to an MLLP listener for ``seconds``; ACKs awaited one at a time."""
    script = script or Script()
    stats = SenderStats()
    reader, writer = await asyncio.open_connection(host, port)
    start = time.monotonic()
    last: Reading | None = None
    next_send = start
    try:
        while time.monotonic() - start < seconds and not (stop and stop.is_set()):
            now = time.monotonic()
            reading = patient_at(now - start, script)
            changed = last is None or set(reading.alarms) != set(last.alarms)
            if now >= next_send or changed:
                ended = [c for c in (last.alarms if last else {}) if c not in reading.alarms]
                stats.sent += 1
                writer.write(frame(oru_r01(reading, stats.sent, ended)))
                await writer.drain()
                _log_onsets(events, last, reading, time.monotonic_ns())
                ack = await asyncio.wait_for(read_frame(reader), ACK_TIMEOUT_S)
                if ack is not None and b"MSA|AA" in ack:
                    stats.acked += 1
                else:
                    stats.naks += 1
                    log.warning("monitor-sim: NAK %r", (ack or b"")[:200])
                last, next_send = reading, now + SEND_PERIOD_S
            await asyncio.sleep(TICK_S)
    finally:
        writer.close()
    return stats


def _target(args: argparse.Namespace) -> tuple[str, int]:
    if args.hl7:
        host, _, port = args.hl7.rpartition(":")
        return host or "127.0.0.1", int(port)
    deadline = time.monotonic() + 30.0
    while True:  # the robot's vitals process writes it when its listener is up
        try:
            body = json.loads(Path(args.hl7_status).read_text())
            return str(body.get("host", "127.0.0.1")), int(body["port"])
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _stop(*_: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="telesurgery monitor-sim", description=plain_help(__doc__))
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--hl7", metavar="HOST:PORT", help="send HL7 v2 ORU^R01 over MLLP here")
    mode.add_argument("--hl7-status", type=Path, metavar="FILE",
                      help="the robot's vitals.json: send HL7 to the port written there")
    mode.add_argument("--sdc", action="store_true", help="run an SDC provider")
    p.add_argument("--interface", default="127.0.0.1", help="SDC: address to bind")
    p.add_argument("--epr", help="SDC: the provider's endpoint reference (a UUID)")
    p.add_argument("--seconds", type=float, default=3600.0)
    p.add_argument("--stable", type=float, default=Script.stable_s, help="seconds stable")
    p.add_argument("--desat", type=float, default=Script.desat_s,
                   help="seconds of desaturation")
    p.add_argument("--repeat", type=float, help="replay the script with this period (s)")
    p.add_argument("--events", type=Path, help="JSON lines: each alarm onset and its time")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    script = Script(stable_s=args.stable, desat_s=args.desat, repeat_s=args.repeat)
    events = args.events.open("a") if args.events else None
    try:
        if args.sdc:
            from robot_side.vitals.sdc_sim import run_provider

            signal.signal(signal.SIGTERM, _stop)  # the provider ends its subscriptions

            import uuid

            epr = uuid.UUID(args.epr.removeprefix("urn:uuid:")) if args.epr else None
            run_provider(args.interface, args.seconds, script, events, epr)
            return 0
        host, port = _target(args)
        log.info("monitor-sim: HL7 to %s:%d for %g s", host, port, args.seconds)

        async def run() -> SenderStats:
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            return await send_hl7(host, port, args.seconds, script=script, events=events,
                                  stop=stop)

        stats = asyncio.run(run())
        log.info("monitor-sim: sent %d, acked %d, NAK %d", stats.sent, stats.acked, stats.naks)
    except (OSError, ValueError, KeyError, TimeoutError) as err:
        sys.stderr.write(f"telesurgery monitor-sim: {err}\n")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if events is not None:
            events.close()
    return 0
