"""The SDC backend against the simulated monitor's SDC provider, each a real process.

One system test (sdc11073 needs a few seconds to start a provider and discover it); the
HL7 backend carries the other vitals tests (tests/unit/test_vitals_*.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import zmq

from robot_side.vitals.config import VitalsConfig
from robot_side.vitals.process import VitalsPaths, VitalsProcess
from transport.schema import Vitals, decode_as

WAIT_S = 40.0


def wait_for(sock: zmq.Socket[Any], what: str, pred: Any) -> Vitals:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if sock.poll(200):
            msg: Vitals = decode_as(sock.recv(), Vitals)
            if pred(msg):
                return msg
    raise AssertionError(f"timed out waiting for {what}")


def test_sdc_metrics_and_alerts_reach_the_vitals_feed_and_a_vanished_provider_is_gone(
        tmp_path: Path) -> None:
    epr = uuid.uuid4().urn  # ours alone among providers other tests might run
    log = (tmp_path / "monitor.log").open("wb")
    provider = subprocess.Popen(
        [sys.executable, "-m", "telesurgery.cli", "monitor-sim", "--sdc", "--epr", epr,
         "--seconds", "120", "--stable", "0.5", "--desat", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ctx: zmq.Context[Any] = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(f"ipc://{tmp_path}/vitals.sock")
    proc = VitalsProcess(VitalsConfig(enabled=True, backend="sdc", sdc_epr=epr,
                                      monitor_timeout_ms=3000),
                         VitalsPaths(tmp_path / "vitals.sock", tmp_path / "vitals.json"))
    proc.start()
    try:
        v = wait_for(pull, "the tachycardia alarm over SDC",
                     lambda m: m.monitor == "ok" and "HR_HIGH" in {a.code for a in m.alarms})
        assert v.source == "sdc"
        got = {x.name: (x.value, x.unit, x.status) for x in v.values}
        assert got["hr"] == (138.0, "/min", "ok")
        assert got["nibp_sys"][1] == "mmHg" and got["temp"] == (36.8, "Cel", "ok")
        assert {a.code: a.priority for a in v.alarms} == {"HR_HIGH": "high",
                                                          "SPO2_LOW": "medium"}
        provider.send_signal(signal.SIGKILL)  # vanishes without a word
        gone = wait_for(pull, "NO MONITOR after the provider vanished",
                        lambda m: m.monitor == "gone")
        assert all(x.status == "stale" for x in gone.values)
    finally:
        proc.stop()
        if provider.poll() is None:
            provider.kill()
        provider.wait(10)
        pull.close(0)
        ctx.term()
