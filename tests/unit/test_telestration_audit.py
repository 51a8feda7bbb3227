"""Refused strokes are audited, a flood of them in aggregate, through the real audit thread.

A real CURVE relay, real keys, and the node's own audit path (``Mailbox.alerts`` ->
``AuditThread`` -> ``AuditLog`` on disk): an observer without the draw right floods
strokes; the audit gets a few records one by one and the rest as one aggregate per
second, the audit thread stays healthy (a full queue would trip the arm), and a
drawer with the right is still relayed.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import zmq
from helpers import wait_until

from operator_console.telestration import make_stroke, scripted_circle
from robot_side.netio import Mailbox
from robot_side.telestration import AUDIT_BURST, RIGHTS_FILE, StrokeRelay, TelestrationConfig
from robot_side.workers import AuditThread
from safety.audit import AuditLog, read_records
from safety.config import AuditConfig
from transport.auth import start_authenticator
from transport.keys import ClientKeys, ServerKeys, init_keys
from transport.schema import MAX_MESSAGE_BYTES, encode
from transport.sockets import client_socket

FLOOD = 3000


def test_a_flood_of_refused_strokes_is_audited_in_aggregate_and_trips_nothing(
        tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    keydir = tmp_path / "keys"
    init_keys(keydir, ["alice", "bob"])
    (keydir / RIGHTS_FILE).write_text("observer:alice\n")
    auth = start_authenticator(ctx, ServerKeys.load(keydir))
    mailbox = Mailbox()
    audit_path = tmp_path / "audit" / "robot.audit"
    with AuditLog(AuditConfig(path=audit_path)) as audit:
        auditor = AuditThread(audit, mailbox)
        auditor.start()
        relay = StrokeRelay(ctx, TelestrationConfig(draw_port=0, strokes_port=0),
                            host="127.0.0.1", keys=ServerKeys.load(keydir), auth=auth,
                            keys_dir=keydir, alerts=mailbox.alerts)
        relay.start()
        draw = f"tcp://127.0.0.1:{relay.draw_port}"
        bob = client_socket(ctx, zmq.PUSH, draw, ClientKeys.load_observer(keydir, "bob"),
                            MAX_MESSAGE_BYTES, hwm=FLOOD * 2)
        alice = client_socket(ctx, zmq.PUSH, draw, ClientKeys.load_observer(keydir, "alice"),
                              MAX_MESSAGE_BYTES)
        try:
            body = encode(make_stroke(1, 5, scripted_circle(), 0, 1000))
            for _ in range(FLOOD):
                bob.send(body)
            wait_until(lambda: relay.refused["no right"] >= FLOOD, 20.0, "the flood refused")

            def records() -> list[tuple[str, str]]:
                return [(str(r.fields.get("code")), str(r.fields.get("detail")))
                        for r in read_records(audit_path) if r.kind == "alert"]

            def aggregated() -> int:
                return sum(int(m.group(1)) for code, detail in records()
                           if code == "stroke_refused_flood"
                           and (m := re.match(r"(\d+) more strokes from observer:bob", detail)))

            def one_by_one() -> list[str]:
                return [d for c, d in records() if c == "stroke_refused"]

            # Every refusal is in the audit: one by one or counted in an aggregate.
            wait_until(lambda: len(one_by_one()) + aggregated() >= FLOOD, 10.0,
                       "every refusal in the audit")
            assert len(one_by_one()) + aggregated() == FLOOD
            elapsed_windows = 1 + len([c for c, _ in records() if c == "stroke_refused_flood"])
            assert len(one_by_one()) <= AUDIT_BURST * elapsed_windows, one_by_one()[:3]
            assert all("observer:bob refused (no right)" in d for d in one_by_one())
            assert auditor.healthy, "the audit queue overflowed: the arm would hold"
            # The relay keeps relaying a drawer with the right.
            before = relay.relayed
            def alice_relayed() -> bool:
                alice.send(body)
                time.sleep(0.02)
                return relay.relayed > before

            wait_until(alice_relayed, 10.0, "alice relayed")
        finally:
            bob.close(0)
            alice.close(0)
            relay.stop()
            relay.join(2.0)
            auditor.stop()
            auditor.join(2.0)
            auth.stop()
