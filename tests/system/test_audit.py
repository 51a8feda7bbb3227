"""The audit log: round trip, rotation, a SIGKILL crash, tampering and a full disk."""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from safety import audit_cli
from safety.audit import (
    GENESIS,
    AuditLog,
    _frame,
    crc32c,
    read_records,
    segments,
)
from safety.audit_key import key_path, load_key
from safety.audit_verify import parse_witness, verify
from safety.config import AuditConfig
from telesurgery.errors import AuditError


def config(tmp_path: Path, max_bytes: int = 1 << 20, keep: int = 10) -> AuditConfig:
    return AuditConfig(path=tmp_path / "audit" / "robot.audit", max_bytes=max_bytes,
                       keep_segments=keep)


def write_log(cfg: AuditConfig, n: int) -> list[int]:
    with AuditLog(cfg) as audit:
        return [audit.append("trip", {"n": i, "reason": "latency"}) for i in range(n)]


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283


def test_round_trip(tmp_path):
    cfg = config(tmp_path)
    fields = {"reason": "rtt_halt", "rtt_ms": 212.5, "seq": 7, "manual": False, "note": None,
              "text": "ünïcode \x89TSA"}
    with AuditLog(cfg) as audit:
        assert audit.append("trip", fields) == 0
        assert audit.append("telemetry", {"n": 1}, sync=False) == 1
        assert audit.append("engage", {}) == 2
    records = list(read_records(cfg.path, load_key(key_path(cfg.path))))
    assert [(r.index, r.kind) for r in records] == [(0, "trip"), (1, "telemetry"), (2, "engage")]
    assert records[0].fields == fields
    assert records[0].prev == GENESIS
    assert [r.prev for r in records[1:]] == [r.digest for r in records[:-1]]
    assert records[0].mono_ns <= records[1].mono_ns <= records[2].mono_ns
    assert verify(cfg.path) == verify(cfg.path.with_name("robot.audit.000001"))
    report = verify(cfg.path)
    assert report.ok and report.records == 3 and not report.truncated_tail


def test_reopen_continues_index_and_chain(tmp_path):
    cfg = config(tmp_path)
    write_log(cfg, 3)
    with AuditLog(cfg) as audit:
        assert audit.append("engage", {}) == 3
    assert len(segments(cfg.path)) == 1
    assert verify(cfg.path).records == 4


def test_rotation_chains_across_segments_and_keeps_n(tmp_path):
    cfg = config(tmp_path, max_bytes=4096)
    with AuditLog(cfg) as audit:
        for i in range(120):
            audit.append("sample", {"n": i, "pad": "x" * 100}, sync=i % 10 == 0)
    files = segments(cfg.path)
    assert len(files) > 3
    assert all(f.stat().st_size <= cfg.max_bytes for f in files)
    records = list(read_records(cfg.path, load_key(key_path(cfg.path))))
    assert [r.index for r in records] == list(range(120))
    first_of_second = next(r for r in records if r.segment == files[1])
    last_of_first = [r for r in records if r.segment == files[0]][-1]
    assert first_of_second.prev == last_of_first.digest
    assert verify(cfg.path).ok and verify(cfg.path).records == 120

    kept = config(tmp_path, max_bytes=4096, keep=2)
    with AuditLog(kept) as audit:
        for i in range(60):
            audit.append("sample", {"n": i, "pad": "x" * 100}, sync=False)
    assert len(segments(cfg.path)) == 2
    report = verify(cfg.path)  # the oldest kept record anchors the chain
    assert report.ok and report.records < 180


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from safety.audit import AuditLog
    from safety.config import AuditConfig
    cfg = AuditConfig(path=Path(sys.argv[1]), max_bytes=64 * 1024, keep_segments=1000)
    with AuditLog(cfg) as audit:
        n = 0
        while True:
            index = audit.append("trip", {"n": n, "reason": "command_timeout"}, sync=True)
            audit.append("bulk", {"n": n, "blob": "y" * 1500}, sync=False)
            print(index, flush=True)  # only after the fsync returned
            n += 1
""")


@pytest.mark.slow
def test_sigkill_mid_stream_loses_at_most_the_unsynced_tail(tmp_path):
    cfg = config(tmp_path)
    cfg.path.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(cfg.path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    printed = []
    try:
        while len(printed) < 150 and (line := proc.stdout.readline()):
            printed.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    # The rest through the same buffered reader: it may already hold lines read ahead
    # (``communicate(timeout=...)`` reads the pipe's descriptor and would drop them, and
    # the log would then look longer than what was printed).
    printed += [int(x) for x in proc.stdout.read().split()]
    assert proc.returncode == -signal.SIGKILL
    assert len(printed) >= 150

    report = verify(cfg.path)
    assert report.ok, report.first_error
    indices = [r.index for r in read_records(cfg.path)]
    assert indices == list(range(len(indices)))  # nothing missing, nothing reordered
    assert set(printed) <= set(indices)  # every fsync'd safety event survived
    # Lost at most what was in flight: the next trip and its bulk record.
    assert len(indices) <= max(printed) + 3
    assert len(segments(cfg.path)) > 1  # the crash stream crossed rotations

    # The log is usable after the crash: a new writer continues the chain.
    with AuditLog(cfg) as audit:
        assert audit.append("restart", {}) == len(indices)
    assert verify(cfg.path).ok


def test_torn_tail_is_not_an_error_and_writing_resumes_in_a_new_segment(tmp_path):
    cfg = config(tmp_path)
    write_log(cfg, 5)
    seg = segments(cfg.path)[-1]
    last = list(read_records(cfg.path))[-1]
    with seg.open("r+b") as fh:  # a crash in the middle of writing record 4
        fh.truncate(last.offset + last.size // 2)
    report = verify(cfg.path)
    assert report.ok and report.truncated_tail and report.records == 4
    with AuditLog(cfg) as audit:
        assert audit.append("restart", {}) == 4  # the torn record never existed
    assert len(segments(cfg.path)) == 2
    report = verify(cfg.path)
    assert report.ok and report.truncated_tail and report.records == 5


# --- tampering ---------------------------------------------------------------------------


@pytest.fixture
def ten(tmp_path):
    cfg = config(tmp_path)
    write_log(cfg, 10)
    seg = segments(cfg.path)[0]
    return seg, list(read_records(seg))


@pytest.mark.parametrize("where", ["magic", "length", "payload", "crc"])
def test_flipped_byte_in_middle_record_is_reported_with_position(ten, where):
    seg, records = ten
    rec = records[5]
    at = rec.offset + {"magic": 1, "length": 5, "payload": 30, "crc": rec.size - 2}[where]
    data = bytearray(seg.read_bytes())
    data[at] ^= 0x01
    seg.write_bytes(bytes(data))
    report = verify(seg)
    assert not report.ok
    assert (report.error_index, report.error_offset) == (5, rec.offset)
    assert report.records == 5
    assert f"offset {rec.offset}" in (report.first_error or "")


def test_flipped_byte_in_last_complete_record_is_not_mistaken_for_a_torn_tail(ten):
    seg, records = ten
    data = bytearray(seg.read_bytes())
    data[records[9].offset + 30] ^= 0x01
    seg.write_bytes(bytes(data))
    report = verify(seg)
    assert not report.ok and report.error_index == 9


def test_deleted_middle_record_is_reported(ten):
    seg, records = ten
    rec = records[5]
    data = seg.read_bytes()
    seg.write_bytes(data[:rec.offset] + data[rec.offset + rec.size:])
    report = verify(seg)
    assert not report.ok
    assert (report.error_index, report.error_offset) == (5, rec.offset)
    assert "missing or out of order" in (report.first_error or "")


def test_swapped_records_are_reported(ten):
    seg, records = ten
    a, b = records[4], records[5]
    data = seg.read_bytes()
    body_a, body_b = data[a.offset:a.offset + a.size], data[b.offset:b.offset + b.size]
    seg.write_bytes(data[:a.offset] + body_b + body_a + data[b.offset + b.size:])
    report = verify(seg)
    assert not report.ok and (report.error_index, report.error_offset) == (4, a.offset)


def test_rewritten_record_with_valid_crc_breaks_the_hash_chain(ten):
    seg, records = ten
    rec = records[5]
    data = seg.read_bytes()
    forged = json.loads(data[rec.offset + 8:rec.offset + rec.size - 4])
    forged["fields"]["reason"] = "nothing happened"
    frame = _frame(json.dumps(forged, separators=(",", ":")).encode())
    seg.write_bytes(data[:rec.offset] + frame + data[rec.offset + rec.size:])
    report = verify(seg)
    assert not report.ok and report.error_index == 6
    assert "keyed chain broken" in (report.first_error or "")


def test_deleted_middle_segment_is_reported(tmp_path):
    cfg = config(tmp_path, max_bytes=4096)
    with AuditLog(cfg) as audit:
        for i in range(100):
            audit.append("sample", {"n": i, "pad": "x" * 100}, sync=False)
    files = segments(cfg.path)
    missing_first = next(read_records(files[1])).index
    files[1].unlink()
    report = verify(cfg.path)
    assert not report.ok and report.error_index == missing_first
    assert files[2].name in (report.first_error or "")


# --- failures ----------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                             check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 64 KiB tmpfs (needs root/CAP_SYS_ADMIN): "
                    f"{mounted.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_raises_alarms_and_keeps_every_acknowledged_record(tiny_disk):
    cfg = AuditConfig(path=tiny_disk / "robot.audit", max_bytes=1 << 20)
    alarms: list[str] = []
    audit = AuditLog(cfg, on_alarm=alarms.append)
    acknowledged = 0
    try:
        with pytest.raises(AuditError, match="No space left") as err:
            for i in range(1000):
                audit.append("trip", {"n": i, "pad": "z" * 1000})
                acknowledged += 1
        assert isinstance(err.value, OSError)
        assert not audit.healthy and audit.failures == 1
        assert len(alarms) == 1 and "No space left" in alarms[0]
        with pytest.raises(AuditError, match="unhealthy"):  # latched, nothing silently lost
            audit.append("trip", {"n": -1})
        assert len(alarms) == 1
    finally:
        audit.close()
    assert acknowledged > 10
    report = verify(cfg.path)
    assert report.ok and report.records == acknowledged


def test_deleted_segment_is_a_failure_not_a_silent_ghost_write(tmp_path):
    cfg = config(tmp_path)
    alarms: list[str] = []
    with AuditLog(cfg, on_alarm=alarms.append) as audit:
        audit.append("engage", {})
        audit.segment.unlink()
        with pytest.raises(AuditError, match="deleted"):
            audit.append("trip", {"reason": "latency"})
        assert not audit.healthy and len(alarms) == 1


def test_append_after_close_is_a_failure(tmp_path):
    alarms: list[str] = []
    audit = AuditLog(config(tmp_path), on_alarm=alarms.append)
    audit.close()
    with pytest.raises(AuditError, match="closed"):
        audit.append("trip", {})
    assert alarms and not audit.healthy


def test_failing_alarm_callback_does_not_hide_the_error(tmp_path):
    def broken(_: str) -> None:
        raise RuntimeError("callback bug")

    cfg = config(tmp_path)
    with AuditLog(cfg, on_alarm=broken) as audit:
        audit.segment.unlink()
        with pytest.raises(AuditError):
            audit.append("trip", {})


def test_bad_fields_are_rejected_but_the_log_stays_healthy(tmp_path):
    with AuditLog(config(tmp_path)) as audit:
        with pytest.raises(AuditError, match=r"'where'.*list"):
            audit.append("trip", {"where": [1, 2]})  # type: ignore[dict-item]
        with pytest.raises(AuditError, match="kind"):
            audit.append("", {})
        assert audit.rejected == 2 and audit.healthy
        assert audit.append("trip", {"ok": True}) == 0


def test_second_writer_is_refused(tmp_path):
    cfg = config(tmp_path)
    with AuditLog(cfg), pytest.raises(AuditError, match="another process"):
        AuditLog(cfg)


def test_unwritable_directory_raises_audit_error(tmp_path):
    if os.geteuid() == 0:  # root ignores permission bits: use a path under a regular file
        blocker = tmp_path / "blocker"
        blocker.write_text("")
        cfg = AuditConfig(path=blocker / "sub" / "robot.audit")
    else:
        cfg = AuditConfig(path=Path("/proc/robot.audit"))
    with pytest.raises(AuditError) as err:
        AuditLog(cfg)
    assert err.value.__cause__ is not None
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno in {
        errno.ENOTDIR, errno.EACCES, errno.ENOENT, errno.EEXIST}


# --- CLI ---------------------------------------------------------------------------------


def test_cli_verify_and_show(ten, capsys):
    seg, _ = ten
    base = seg.with_name("robot.audit")
    assert audit_cli.main(["verify", str(base)]) == 0
    assert capsys.readouterr().out.startswith("OK: 10 records in 1 segment(s)")
    assert audit_cli.main(["show", str(base), "--tail", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "8" and '"latency"' in lines[0]
    assert audit_cli.main(["show", str(base.with_name("nothing"))]) == 1


def test_cli_subprocess_reports_corruption(ten):
    seg, records = ten
    data = bytearray(seg.read_bytes())
    data[records[3].offset + 20] ^= 0x40
    seg.write_bytes(bytes(data))
    exe = shutil.which("telesurgery", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "telesurgery.cli"]
    out = subprocess.run([*cmd, "audit", "verify", str(seg)], check=False,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "CORRUPT" in out.stdout and f"offset {records[3].offset}" in out.stdout
    assert "record index 3" in out.stdout


# --- benchmark: python tests/system/test_audit.py [DIR] --------------------------------------


def _bench(directory: Path, n: int = 2000) -> None:
    import tempfile
    import time

    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        cfg = config(Path(tmp), max_bytes=64 << 20)
        fields = {"reason": "command_timeout", "age_ms": 51.2, "seq": 123456}
        with AuditLog(cfg) as audit:
            for sync in (True, False):
                t0 = time.perf_counter_ns()
                for i in range(n):
                    audit.append("trip", {**fields, "n": i}, sync=sync)
                us = (time.perf_counter_ns() - t0) / n / 1e3
                print(f"append(sync={sync!s:5})  {us:8.1f} us/record")
        size = sum(f.stat().st_size for f in segments(cfg.path))
        t0 = time.perf_counter_ns()
        report = verify(cfg.path)
        s = (time.perf_counter_ns() - t0) / 1e9
        print(f"verify {report.records} records, {size / 1e6:.2f} MB: {s:.2f} s "
              f"({size / 1e6 / s:.1f} MB/s)")


if __name__ == "__main__":
    _bench(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd())


# --- the keyed chain and the witness (issue 12.8) ---------------------------------------------


def _payload(data: bytes, rec) -> dict:
    return json.loads(data[rec.offset + 8:rec.offset + rec.size - 4])


def _reframe(obj: dict) -> bytes:
    return _frame(json.dumps(obj, separators=(",", ":")).encode())


def test_key_file_is_private_and_refused_when_not(tmp_path):
    cfg = config(tmp_path)
    old = os.umask(0)
    try:
        write_log(cfg, 1)
    finally:
        os.umask(old)
    key = key_path(cfg.path)
    assert key.stat().st_mode & 0o777 == 0o600 and len(load_key(key)) == 32
    before = key.read_bytes()
    write_log(cfg, 1)  # a restart keeps the key
    assert key.read_bytes() == before
    key.chmod(0o644)
    with pytest.raises(AuditError, match="readable by others"):
        AuditLog(cfg)


def test_forged_appended_record_is_detected_with_the_key(ten):
    """Without the key a forger can only guess the link: SHA-256 of the frame, as before."""
    seg, records = ten
    data = seg.read_bytes()
    last = records[-1]
    forged = _payload(data, last)
    forged.update(index=last.index + 1, kind="transition",
                  fields={"reason": "estop_cleared"},
                  prev=hashlib.sha256(data[last.offset:last.offset + last.size]).hexdigest())
    seg.write_bytes(data + _reframe(forged))
    report = verify(seg)
    assert not report.ok and report.error_index == last.index + 1
    assert "keyed chain broken" in (report.first_error or "")
    unkeyed = verify(seg, find_key=False)  # CRC and sequence alone cannot tell
    assert unkeyed.ok and "NOT proven" in unkeyed.proof()


def test_deleted_record_with_the_chain_rebuilt_is_detected(ten):
    seg, records = ten
    data = seg.read_bytes()
    # Drop record 4, renumber and re-link everything after it with a key of our own.
    wrong_key = b"\x01" * 32
    out = data[:records[4].offset]
    prev = hmac.new(wrong_key, data[records[3].offset:records[3].offset + records[3].size],
                    hashlib.sha256).hexdigest()
    for rec in records[5:]:
        obj = _payload(data, rec)
        obj.update(index=rec.index - 1, prev=prev)
        frame = _reframe(obj)
        out += frame
        prev = hmac.new(wrong_key, frame, hashlib.sha256).hexdigest()
    seg.write_bytes(out)
    report = verify(seg)
    assert not report.ok and report.error_index == 4
    assert "keyed chain broken" in (report.first_error or "")


def test_dropped_last_record_is_detected_by_the_witness(tmp_path):
    cfg = config(tmp_path)
    with AuditLog(cfg) as audit:
        for i in range(5):
            audit.append("trip", {"n": i})
        head = audit.head  # what telemetry carried after the fifth record
    assert head is not None and head.startswith("4:")
    seg = segments(cfg.path)[0]
    records = list(read_records(seg))
    seg.write_bytes(seg.read_bytes()[:records[-1].offset])  # drop the last record
    assert verify(cfg.path).ok  # the key alone cannot tell a shorter log from a dropped tail
    report = verify(cfg.path, witness=parse_witness(head))
    assert not report.ok and "records 4..4 were dropped" in (report.first_error or "")


def test_witness_says_which_records_are_proven_and_where_the_proof_ends(tmp_path, capsys):
    cfg = config(tmp_path)
    with AuditLog(cfg) as audit:
        for i in range(3):
            audit.append("trip", {"n": i})
        seen = audit.head
        for i in range(3):
            audit.append("trip", {"n": i})
    recording = tmp_path / "telemetry.txt"
    recording.write_text(f"... audit_head={seen} ...\n")
    assert audit_cli.main(["verify", str(cfg.path), "--witness", str(recording)]) == 0
    out = capsys.readouterr().out
    assert "records 0..5 proven by the key; up to record 2 also by the witness" in out
    assert "records 3..5 rest on the key alone" in out
    # A witness that does not match the record it names: the log was rewritten there.
    bad = f"2:{'0' * 16}"
    assert audit_cli.main(["verify", str(cfg.path), "--witness", bad]) == 1
    assert "the log was rewritten from here" in capsys.readouterr().out


def test_verify_on_a_missing_log_says_so(tmp_path, capsys):
    assert audit_cli.main(["verify", str(tmp_path / "nothing.audit")]) == 1
    assert "nothing to verify" in capsys.readouterr().out


# --- 12.10(a): a safety record is on disk before it is reported ------------------------------


def test_fsync_happens_before_a_safety_event_is_reported(tmp_path, monkeypatch):
    """Trace the syscall order: write, fsync of that segment, and only then the report.

    Fails when AuditThread appends with sync=False or AuditLog.append skips the fsync
    (the crash test cannot tell synced from unsynced writes)."""
    import collections

    from robot_side.netio import Mailbox
    from robot_side.workers import AuditThread
    from safety.states import Reason, State
    from safety.supervisor import Transition

    order: list[tuple[str, int]] = []
    real_fsync, real_write = os.fsync, os.write

    def traced_fsync(fd: int) -> None:
        real_fsync(fd)
        order.append(("fsync", os.fstat(fd).st_size))

    def traced_write(fd: int, data) -> int:
        n = real_write(fd, data)
        order.append(("write", os.fstat(fd).st_size))
        return n

    class Reported(collections.deque):
        def append(self, event) -> None:  # the moment the event becomes visible
            order.append(("report", event.seq))
            super().append(event)

    with AuditLog(config(tmp_path)) as audit:
        mailbox = Mailbox()
        mailbox.events = Reported(maxlen=16)
        monkeypatch.setattr("safety.audit.os.fsync", traced_fsync)
        monkeypatch.setattr("safety.audit.os.write", traced_write)
        auditor = AuditThread(audit, mailbox)
        auditor.start()
        auditor.submit(Transition(1, State.FOLLOWING, State.HOLD, Reason.RTT_HIGH, "rtt"))
        auditor.stop()
        auditor.join(10)
    report_at = order.index(("report", 0))
    before = order[:report_at]
    last_write = max(i for i, (what, _) in enumerate(before) if what == "write")
    size_written = before[last_write][1]
    assert ("fsync", size_written) in before[last_write:], order
