"""The simulated patient monitor as an IEEE 11073 SDC provider (``monitor-sim --sdc``).

An ``sdc11073`` provider whose MDIB has one numeric metric per vital sign (typed by its
MDC code) and two alert conditions (SpO2 low: medium; tachycardia: high). It plays
``robot_side.vitals.patient`` into metric and alert state transactions once a second
and at once when an alarm starts or ends; consumers get them as episodic reports.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from decimal import Decimal
from typing import IO, Any

from robot_side.vitals.patient import Reading, Script, patient_at

log = logging.getLogger(__name__)

MDC: dict[str, tuple[str, str, str]] = {
    # name: (metric type code, unit code, unit text); codes from IEEE 11073-10101
    "hr": ("147842", "264864", "/min"), "spo2": ("150456", "262688", "%"),
    "nibp_sys": ("150021", "266016", "mmHg"), "nibp_dia": ("150022", "266016", "mmHg"),
    "nibp_mean": ("150023", "266016", "mmHg"), "abp_sys": ("150037", "266016", "mmHg"),
    "abp_dia": ("150038", "266016", "mmHg"), "abp_mean": ("150039", "266016", "mmHg"),
    "rr": ("151562", "264928", "/min"), "etco2": ("151708", "266016", "mmHg"),
    "temp": ("150364", "268192", "Cel"),
}
ALERTS: dict[str, tuple[str, str, str]] = {
    # code: (condition handle, BICEPS priority, type code)
    "SPO2_LOW": ("ac.spo2_low", "Me", "196648"),
    "HR_HIGH": ("ac.hr_high", "Hi", "196650"),
}
ALERT_TEXT = {"SPO2_LOW": "SpO2 low", "HR_HIGH": "Tachycardia"}
EPR_BASE = uuid.UUID("{6d1f7f5e-0c1a-4f3e-9c63-7e1e5a0d5a17}")


def _metric(name: str) -> str:
    code, unit, unit_text = MDC[name]
    return (f'<pm:Metric Handle="m.{name}" SafetyClassification="MedA" '
            'xsi:type="pm:NumericMetricDescriptor" MetricCategory="Msrmt" '
            f'MetricAvailability="Cont" Resolution="0.1"><pm:Type Code="{code}">'
            f'<pm:ConceptDescription Lang="en-US">{name}</pm:ConceptDescription></pm:Type>'
            f'<pm:Unit Code="{unit}"><pm:ConceptDescription Lang="en-US">{unit_text}'
            '</pm:ConceptDescription></pm:Unit></pm:Metric>')


def _alert(code: str) -> str:
    handle, priority, type_code = ALERTS[code]
    return (f'<pm:AlertCondition Handle="{handle}" xsi:type="pm:AlertConditionDescriptor" '
            f'SafetyClassification="MedA" Kind="Phy" Priority="{priority}">'
            f'<pm:Type Code="{type_code}"><pm:ConceptDescription Lang="en-US">'
            f'{ALERT_TEXT[code]}</pm:ConceptDescription></pm:Type><pm:Source>m.hr</pm:Source>'
            f'</pm:AlertCondition>')


def mdib_xml() -> bytes:
    pm = "http://standards.ieee.org/downloads/11073/11073-10207-2017/participant"
    msg = "http://standards.ieee.org/downloads/11073/11073-10207-2017/message"
    metrics = "".join(_metric(n) for n in MDC)
    alerts = "".join(_alert(c) for c in ALERTS)
    return (f'<?xml version="1.0" encoding="UTF-8"?><msg:GetMdibResponse xmlns:msg="{msg}" '
            f'xmlns:pm="{pm}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'SequenceId="urn:oid:1"><msg:Mdib SequenceId="urn:oid:1"><pm:MdDescription>'
            '<pm:Mds Handle="mds0" SafetyClassification="MedA"><pm:Type Code="69650">'
            '<pm:ConceptDescription Lang="en-US">patient monitor</pm:ConceptDescription>'
            '</pm:Type><pm:AlertSystem SafetyClassification="MedA" Handle="asy.mds0" '
            f'SelfCheckPeriod="PT5S">{alerts}</pm:AlertSystem>'
            '<pm:Vmd Handle="vmd0" SafetyClassification="MedA"><pm:Channel Handle="ch0" '
            f'SafetyClassification="MedA">{metrics}</pm:Channel></pm:Vmd></pm:Mds>'
            '</pm:MdDescription></msg:Mdib></msg:GetMdibResponse>').encode()


class SdcMonitor:
    """The provider and its MDIB; ``play(reading)`` writes a reading into the MDIB."""

    def __init__(self, interface: str, epr: uuid.UUID | None = None) -> None:
        from sdc11073.mdib import ProviderMdib
        from sdc11073.provider import SdcProvider
        from sdc11073.wsdiscovery import WSDiscovery
        from sdc11073.xml_types.dpws_types import ThisDeviceType, ThisModelType

        # sdc11073 is only partly typed: its objects are Any here.
        self.discovery: Any = WSDiscovery(interface)
        self.mdib: Any = ProviderMdib.from_string(mdib_xml())
        self.epr = epr or uuid.uuid5(EPR_BASE, interface)
        model = ThisModelType(manufacturer="telesurgery", manufacturer_url="",
                              model_name="monitor-sim", model_number="1",
                              model_url="", presentation_url="")
        device = ThisDeviceType(friendly_name="simulated patient monitor",
                                firmware_version="1", serial_number="SIM0001")
        self.provider: Any = SdcProvider(self.discovery, model, device, self.mdib, epr=self.epr)
        self._shown: dict[str, bool] = {}

    def start(self) -> None:
        self.discovery.start()
        self.provider.start_all(start_rtsample_loop=False)
        self.provider.publish()
        log.info("monitor-sim: SDC provider %s at %s", self.epr.urn,
                 self.provider.get_xaddrs())

    @property
    def xaddr(self) -> str:
        addrs: list[str] = self.provider.get_xaddrs()
        return addrs[0]

    def play(self, reading: Reading) -> None:
        with self.mdib.metric_state_transaction() as tr:
            for name, (value, _unit) in reading.values.items():
                st: Any = tr.get_state(f"m.{name}")
                if st.MetricValue is None:
                    st.mk_metric_value()
                st.MetricValue.Value = Decimal(str(value))
        changed = {c: c in reading.alarms for c in ALERTS
                   if self._shown.get(c) != (c in reading.alarms)}
        if changed:
            from sdc11073.xml_types.pm_types import AlertActivation

            with self.mdib.alert_state_transaction() as tr:
                for code, present in changed.items():
                    st = tr.get_state(ALERTS[code][0])
                    st.ActivationState = AlertActivation.ON
                    st.Presence = present
            self._shown.update(changed)

    def stop(self) -> None:
        self.provider.stop_all()
        self.discovery.stop()


def run_provider(interface: str, seconds: float, script: Script,
                 events: IO[str] | None, epr: uuid.UUID | None = None) -> None:
    """Play ``script`` for ``seconds`` as the provider ``epr`` (default: one per interface)."""
    monitor = SdcMonitor(interface, epr)
    monitor.start()
    log.info("monitor-sim: SDC provider up")
    start = time.monotonic()
    last: Reading | None = None
    next_play = start
    try:
        while time.monotonic() - start < seconds:
            now = time.monotonic()
            reading = patient_at(now - start, script)
            if now >= next_play or last is None or set(reading.alarms) != set(last.alarms):
                monitor.play(reading)
                if events is not None:
                    for code, (priority, text) in reading.alarms.items():
                        if last is None or code not in last.alarms:
                            events.write(json.dumps({"alarm": code, "priority": priority,
                                                     "text": text,
                                                     "sent_ns": time.monotonic_ns()}) + "\n")
                            events.flush()
                last, next_play = reading, now + 1.0
            time.sleep(0.05)
    finally:
        monitor.stop()
