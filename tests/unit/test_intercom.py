"""Intercom: generated speech (espeak-ng, sox) through the robot's hub, real CURVE and Opus.

The surgeon and the observer ``alice`` may talk (``intercom_rights``); ``bob`` may
not. Speech is fed in real time, 20 ms frames, push-to-talk.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from helpers import wait_until

from operator_console.intercom import FRAME, FRAME_NS, IntercomClient
from operator_console.speech import envelope, speech_pcm, tools_missing
from robot_side.intercom import (
    AUDIT_BURST,
    RIGHTS_FILE,
    TOKEN_HEX,
    IntercomConfig,
    IntercomRelay,
)
from robot_side.netio import Mailbox
from robot_side.workers import AuditThread
from safety.audit import AuditLog, read_records
from safety.config import AuditConfig
from transport.auth import start_authenticator
from transport.keys import ClientKeys, ServerKeys, add_surgeon, init_keys
from transport.schema import MAX_MESSAGE_BYTES, AudioPacket, encode
from transport.sockets import client_socket

pytestmark = pytest.mark.skipif(bool(tools_missing()),
                                reason=f"needs {tools_missing()} (apt-get install espeak-ng sox)")


class Ear:
    def __init__(self) -> None:
        self.heard: list[tuple[str, int, np.ndarray[Any, Any]]] = []

    def __call__(self, speaker: str, pkt: AudioPacket, pcm: np.ndarray[Any, Any],
                 _play_at: int) -> None:
        self.heard.append((speaker, pkt.seq, pcm))


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


@pytest.fixture
def hub(tmp_path: Path, ctx: zmq.Context[Any],
        mailbox: Mailbox) -> Iterator[tuple[IntercomRelay, Path]]:
    init_keys(tmp_path, ["alice", "bob"])
    (tmp_path / RIGHTS_FILE).write_text("surgeon\nobserver:alice\n")
    auth = start_authenticator(ctx, ServerKeys.load(tmp_path))
    relay = IntercomRelay(ctx, IntercomConfig(talk_port=0, listen_port=0), host="127.0.0.1",
                          keys=ServerKeys.load(tmp_path), auth=auth, keys_dir=tmp_path,
                          runtime=tmp_path, alerts=mailbox.alerts)
    relay.start()
    yield relay, tmp_path
    relay.stop()
    relay.join(2.0)
    auth.stop()


def client(ctx: zmq.Context[Any], relay: IntercomRelay, keys: ClientKeys, me: str,
           ear: Ear) -> IntercomClient:
    return IntercomClient(ctx, f"tcp://127.0.0.1:{relay.talk_port}",
                          f"tcp://127.0.0.1:{relay.listen_port}", keys=keys, me=me, sink=ear)


def speak(c: IntercomClient, pcm: np.ndarray[Any, Any]) -> None:
    """Real time: each frame is handed over when its 20 ms have been 'spoken'."""
    t = time.monotonic_ns()
    for i in range(len(pcm) // FRAME):
        t += FRAME_NS
        time.sleep(max(0.0, (t - time.monotonic_ns()) / 1e9))
        c.feed(pcm[i * FRAME:(i + 1) * FRAME], t)


def test_push_to_talk_speech_reaches_the_surgeon_never_the_talker_and_not_without_the_right(
        hub: tuple[IntercomRelay, Path], ctx: zmq.Context[Any]) -> None:
    relay, keydir = hub
    surgeon_ear, alice_ear, bob_ear = Ear(), Ear(), Ear()
    surgeon = client(ctx, relay, ClientKeys.load_surgeon(keydir), "surgeon", surgeon_ear)
    alice = client(ctx, relay, ClientKeys.load_observer(keydir, "alice"), "observer:alice",
                   alice_ear)
    bob = client(ctx, relay, ClientKeys.load_observer(keydir, "bob"), "observer:bob", bob_ear)
    try:
        silence = np.zeros(FRAME, np.int16)
        alice.feed(silence)  # push-to-talk released: nothing leaves
        time.sleep(0.1)
        assert alice.sent == 0
        alice.talk(True)
        wait_until(lambda: (alice.feed(silence), time.sleep(0.02),
                            bool(surgeon_ear.heard))[-1], 10.0, "the link up")
        speech = speech_pcm("Clamp the artery now.")
        surgeon_ear.heard.clear()
        speak(alice, speech)
        alice.talk(False)
        n = len(speech) // FRAME
        wait_until(lambda: len(surgeon_ear.heard) >= n, 5.0, "every frame heard")
        heard = np.concatenate([pcm for _, _, pcm in surgeon_ear.heard[:n]])
        assert {s.split("#")[0] for s, _, _ in surgeon_ear.heard} == {"observer:alice"}
        # The same words: the loudness per 20 ms frame follows the original's.
        a, b = envelope(speech), envelope(heard)
        assert float(np.corrcoef(a, b)[0, 1]) > 0.9
        assert alice_ear.heard == []  # never one's own voice back
        # bob may listen but not talk: his packets are refused and counted.
        bob.talk(True)
        wait_until(lambda: (bob.feed(silence), time.sleep(0.02),
                            relay.refused["no right"] > 0)[-1], 10.0, "bob refused")
        assert all(s != "observer:bob" for s, _, _ in surgeon_ear.heard)
        assert bob_ear.heard  # he hears alice's speech
        assert surgeon.mouth_to_ear_ns and min(surgeon.mouth_to_ear_ns) > 0
    finally:
        for c in (surgeon, alice, bob):
            c.close()


def _refused_in_audit(path: Path) -> tuple[int, int]:
    """(refusals recorded one by one, refusals in aggregates) in the audit log."""
    single = aggregated = 0
    for rec in read_records(path):
        code, detail = rec.fields.get("code"), str(rec.fields.get("detail"))
        if code == "intercom_refused":
            single += 1
        elif code == "intercom_refused_flood":
            aggregated += int(detail.split(maxsplit=1)[0])
    return single, aggregated


def test_a_refused_flood_trips_nothing_and_is_audited_in_aggregate(
        hub: tuple[IntercomRelay, Path], ctx: zmq.Context[Any], mailbox: Mailbox,
        tmp_path: Path) -> None:
    relay, keydir = hub
    audit = AuditLog(AuditConfig(path=tmp_path / "audit" / "robot.audit"))
    auditor = AuditThread(audit, mailbox)
    auditor.start()
    ep = f"tcp://127.0.0.1:{relay.talk_port}"
    bob = client_socket(ctx, zmq.PUSH, ep, ClientKeys.load_observer(keydir, "bob"),
                        MAX_MESSAGE_BYTES, hwm=10_000)
    alice = client_socket(ctx, zmq.PUSH, ep, ClientKeys.load_observer(keydir, "alice"),
                          MAX_MESSAGE_BYTES, hwm=10_000)
    n = 1500
    try:
        pkt = encode(AudioPacket(seq=1, t_ns=1, payload=b"\xf8\xff\xfe"))
        for i in range(n):
            bob.send(pkt)  # no right to talk
            alice.send(b"\x00" * (i % 40 + 1))  # may talk, but garbage
        wait_until(lambda: relay.refused["no right"] + relay.refused["invalid"] >= 2 * n,
                   20.0, "every packet judged")
        # Every refusal is in the audit: a few one by one, the rest in per-second sums.
        wait_until(lambda: not relay.audit_limit.active and not mailbox.alerts, 5.0,
                   "the windows closed and the alerts written")
    finally:
        bob.close(0)
        alice.close(0)
        auditor.stop()
        auditor.join(5.0)
        audit.close()
    assert auditor.healthy and audit.healthy  # nothing tripped
    single, aggregated = _refused_in_audit(tmp_path / "audit" / "robot.audit")
    assert single + aggregated == 2 * n
    windows = 2 * 20  # two speakers, at most the seconds the flood lasted
    assert single <= AUDIT_BURST * windows and relay.audited <= (AUDIT_BURST + 1) * windows
    print(f"intercom flood: {2 * n} refused packets, {relay.audited} audit records "
          f"({single} one by one, {aggregated} in aggregates)")


def test_two_surgeon_keys_each_hear_the_other_never_themselves(
        hub: tuple[IntercomRelay, Path], ctx: zmq.Context[Any]) -> None:
    """Every surgeon key shares the ZAP user ``surgeon``: the robot names each talker by
    its key and connection (``<name>#<token>``), so a mentor's and a surgeon's console
    each skip only their own voice, and both may talk at once (a rate bucket each)."""
    relay, keydir = hub
    add_surgeon(keydir, "mentor", mentor=True)
    relay._auth.reload()  # the running authenticator learns the new key
    surgeon_ear, mentor_ear = Ear(), Ear()
    surgeon = client(ctx, relay, ClientKeys.load_surgeon(keydir), "surgeon", surgeon_ear)
    mentor = client(ctx, relay, ClientKeys.load_surgeon(keydir, "mentor"), "mentor", mentor_ear)
    try:
        tone = (np.sin(np.arange(50 * FRAME) * 2 * np.pi * 440 / 48_000) * 8000).astype(np.int16)
        surgeon.talk(True)
        mentor.talk(True)
        wait_until(lambda: (surgeon.feed(tone[:FRAME]), mentor.feed(tone[:FRAME]),
                            time.sleep(0.02), bool(surgeon_ear.heard and mentor_ear.heard))[-1],
                   10.0, "both links up")
        surgeon_ear.heard.clear()
        mentor_ear.heard.clear()
        t = time.monotonic_ns()
        for i in range(50):  # both talk at once, in real time
            t += FRAME_NS
            time.sleep(max(0.0, (t - time.monotonic_ns()) / 1e9))
            surgeon.feed(tone[i * FRAME:(i + 1) * FRAME], t)
            mentor.feed(tone[i * FRAME:(i + 1) * FRAME], t)
        wait_until(lambda: len(surgeon_ear.heard) >= 45 and len(mentor_ear.heard) >= 45, 5.0,
                   "each console hearing the other")
        assert {s for s, _, _ in surgeon_ear.heard} == {f"mentor#{mentor.token}"}
        assert {s for s, _, _ in mentor_ear.heard} == {f"surgeon#{surgeon.token}"}
        assert relay.refused["rate"] == 0
        assert len(surgeon.token) <= TOKEN_HEX
    finally:
        surgeon.close()
        mentor.close()


def test_the_speaker_name_is_the_robots_a_claimed_one_is_replaced(
        hub: tuple[IntercomRelay, Path], ctx: zmq.Context[Any]) -> None:
    """A talker's ``speaker`` claim keeps only a bounded hex token; the name is the key's."""
    relay, keydir = hub
    ear = Ear()
    listener = client(ctx, relay, ClientKeys.load_observer(keydir, "bob"), "observer:bob", ear)
    raw = client_socket(ctx, zmq.PUSH, f"tcp://127.0.0.1:{relay.talk_port}",
                        ClientKeys.load_surgeon(keydir), MAX_MESSAGE_BYTES, hwm=100)
    silence = encode(AudioPacket(seq=1, t_ns=1, payload=b"\xf8\xff\xfe"))
    forged = encode(AudioPacket(seq=2, t_ns=1, payload=b"\xf8\xff\xfe",
                                speaker="mentor#abc123"))
    try:
        wait_until(lambda: (raw.send(silence), time.sleep(0.02), bool(ear.heard))[-1], 10.0,
                   "the link up")
        raw.send(forged)
        wait_until(lambda: any(seq == 2 for _, seq, _ in ear.heard), 5.0, "the forged packet")
        assert {s for s, seq, _ in ear.heard if seq == 2} == {"surgeon"}
    finally:
        raw.close(0)
        listener.close()
