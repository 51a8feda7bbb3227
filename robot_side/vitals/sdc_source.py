"""SDC backend: an IEEE 11073 SDC consumer (``sdc11073``) of the patient monitor.

A thread discovers the provider (WS-Discovery on ``[vitals] sdc_interface``; the first
medical device, or the one whose endpoint reference is ``sdc_epr``), subscribes to its
reports and mirrors its MDIB. Numeric metrics are mapped to vital signs by their MDC
type code and units by their MDC unit code; alert conditions pass through with their
BICEPS priority (Hi/Me/Lo) while present. Every report and a GetMdState probe each
second are the monitor's sign of life: a provider that stops answering is gone, and
the thread looks for it again. sdc11073 calls back from its own threads; everything
is handed to the vitals process's event loop, which owns the ``VitalsBook``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from robot_side.vitals.model import VitalsBook, VitalsError
from telesurgery.ratelog import RateLimitedLog

log = logging.getLogger(__name__)
ratelog = RateLimitedLog(log)

METRIC_CODES: dict[str, str] = {
    "147842": "hr", "149530": "hr", "150456": "spo2",
    "150021": "nibp_sys", "150022": "nibp_dia", "150023": "nibp_mean",
    "150037": "abp_sys", "150038": "abp_dia", "150039": "abp_mean",
    "151562": "rr", "151708": "etco2", "150364": "temp", "150344": "temp",
}
"""MDC_ECG_HEART_RATE, MDC_PULS_OXIM_PULS_RATE, MDC_PULS_OXIM_SAT_O2, NIBP/ABP sys-dia-mean,
MDC_RESP_RATE, MDC_AWAY_CO2_ET, MDC_TEMP_BODY, MDC_TEMP (IEEE 11073-10101)."""
UNIT_CODES: dict[str, str] = {"264864": "/min", "264928": "/min", "262688": "%",
                              "266016": "mmHg", "268192": "Cel", "266048": "kPa"}
PRIORITIES = {"Hi": "high", "Me": "medium", "Lo": "low", "None": "low"}
VALID = frozenset({"Vld", "Vldated"})
"""BICEPS MeasurementValidity values a value may be shown with (valid, validated)."""
PROBE_PERIOD_S = 1.0
SEARCH_TIMEOUT_S = 2.0


class SdcVitalsConsumer:
    def __init__(self, book: VitalsBook, interface: str, epr: str,
                 loop: asyncio.AbstractEventLoop,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.book = book
        self.interface = interface
        self.epr = epr
        self.loop = loop
        self.on_change = on_change
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vitals-sdc", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._halt.set()
        self._thread.join(10.0)

    # ------------------------------------------------------------ the SDC thread
    def _run(self) -> None:
        from sdc11073.wsdiscovery import WSDiscovery

        discovery: Any = WSDiscovery(self.interface)  # sdc11073 is only partly typed
        discovery.start()
        try:
            while not self._halt.is_set():
                service = self._find(discovery)
                if service is None:
                    continue
                try:
                    self._follow(service)
                except Exception as err:  # any library failure: say why, look again
                    ratelog(logging.WARNING, "sdc-conn", "SDC provider %s: %s: %s",
                            service.epr, type(err).__name__, err)
                self._hand(self._lost, "the SDC provider stopped answering")
                self._halt.wait(1.0)
        finally:
            discovery.stop()

    def _find(self, discovery: Any) -> Any:
        from sdc11073.definitions_sdc import SdcV1Definitions

        services = discovery.search_services(types=SdcV1Definitions.MedicalDeviceTypesFilter,
                                             timeout=SEARCH_TIMEOUT_S)
        for s in services:
            if not self.epr or s.epr == self.epr:
                return s
        return None

    def _follow(self, service: Any) -> None:
        from sdc11073 import observableproperties
        from sdc11073.consumer.consumerimpl import SdcConsumer
        from sdc11073.mdib import ConsumerMdib

        consumer: Any = SdcConsumer.from_wsd_service(service, ssl_context_container=None)
        consumer.start_all()
        try:
            mdib: Any = ConsumerMdib(consumer)
            mdib.init_mdib()
            log.info("SDC provider %s subscribed", service.epr)
            self._hand(self._connected)
            self._metrics(mdib, list(mdib.states.objects))
            self._alerts(mdib, list(mdib.states.objects))

            def on_metrics(by_handle: dict[str, Any]) -> None:
                self._metrics(mdib, list(by_handle.values()))

            def on_alerts(by_handle: dict[str, Any]) -> None:
                self._alerts(mdib, list(by_handle.values()))

            bind: Any = observableproperties.bind
            bind(mdib, metrics_by_handle=on_metrics,
                 alert_by_handle=on_alerts)
            while not self._halt.wait(PROBE_PERIOD_S):
                if not consumer.is_connected:
                    return
                consumer.get_service_client.get_md_state()  # raises when it is gone
                self._hand(self._heard)
        finally:
            consumer.stop_all(unsubscribe=False)

    def _metrics(self, mdib: Any, states: list[Any]) -> None:
        items = []
        for st in states:
            value = getattr(st, "MetricValue", None)
            descr = mdib.descriptions.handle.get_one(st.DescriptorHandle, allow_none=True)
            if descr is None or value is None or getattr(descr, "Type", None) is None:
                continue
            name = METRIC_CODES.get(str(descr.Type.Code))
            if name is None:
                continue
            unit = UNIT_CODES.get(str(getattr(descr.Unit, "Code", "")), "?")
            validity = str(getattr(getattr(value, "MetricQuality", None), "Validity", "Vld"))
            raw = value.Value
            items.append((name, None if raw is None else float(raw), unit, validity))
        if items:
            self._hand(self._values, items)

    def _alerts(self, mdib: Any, states: list[Any]) -> None:
        items = []
        for st in states:
            if not hasattr(st, "Presence"):
                continue
            descr = mdib.descriptions.handle.get_one(st.DescriptorHandle, allow_none=True)
            if descr is None or not hasattr(descr, "Priority"):
                continue
            concept = getattr(getattr(descr, "Type", None), "ConceptDescription", None) or []
            text = str(concept[0].text) if concept else descr.Handle
            code = str(descr.Handle).removeprefix("ac.").upper()
            priority = PRIORITIES.get(str(getattr(descr.Priority, "value", descr.Priority)),
                                      "low")
            items.append((code, priority, text, bool(st.Presence)))
        if items:
            self._hand(self._alarm_states, items)

    def _hand(self, fn: Callable[..., None], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, time.monotonic_ns(), *args)

    # ------------------------------------------------------------ on the event loop
    def _connected(self, now_ns: int) -> None:
        self.book.connected = True
        self.book.heard(now_ns)
        self.on_change()

    def _heard(self, now_ns: int) -> None:
        self.book.heard(now_ns)

    def _lost(self, now_ns: int, why: str) -> None:
        if self.book.connected:
            self.book.connected = False
            self.book.last_error = why
            self.book.counters["disconnects"] += 1
            log.warning("SDC: %s", why)
            self.on_change()

    def _values(self, now_ns: int, items: list[tuple[str, float | None, str, str]]) -> None:
        self.book.heard(now_ns)
        for name, value, unit, validity in items:
            if value is None or validity not in VALID:
                why = f"{name}: the monitor marks it {validity} (value {value})"
                self.book.refuse(name, why, now_ns)
                ratelog(logging.WARNING, f"sdc-{name}", "SDC value refused: %s", why)
                continue
            try:
                self.book.offer_value(name, value, unit, now_ns)
            except VitalsError as err:  # counted and marked stale by the book
                ratelog(logging.WARNING, f"sdc-{name}", "SDC value refused: %s", err)
        self.on_change()

    def _alarm_states(self, now_ns: int, items: list[tuple[str, str, str, bool]]) -> None:
        self.book.heard(now_ns)
        for code, priority, text, present in items:
            try:
                self.book.offer_alarm(code, priority, text, present, now_ns)
            except VitalsError as err:
                ratelog(logging.WARNING, "sdc-alarm", "SDC alarm refused: %s", err)
        self.on_change()
