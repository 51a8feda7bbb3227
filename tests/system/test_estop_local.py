"""The local e-stop endpoint against a real second local account (issue 12.1, 19.2).

The attacker is a real uid (``ts-attacker``, created with ``useradd`` when missing)
running real processes; these tests need root to create and become it and are
skipped otherwise. The control loop's side is a stand-in thread that answers each
request the way ``ControlLoop._estop_events`` does (the node-level tests in
test_robot_node.py drive the real loop).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from robot_side import estop
from robot_side.estop import EstopServer, EstopUnreachable, send
from robot_side.localsock import (
    LocalEndpointError,
    claim_socket,
    default_runtime_dir,
    secure_runtime_dir,
)
from safety.audit import AuditLog, Scalar, read_records
from safety.config import AuditConfig

ATTACKER = "ts-attacker"
STAFF = "ts-staff"


def _ensure_account(user: str, group: str | None = None) -> pwd.struct_passwd:
    if shutil.which("useradd") is None:
        pytest.skip("useradd is not available to create a second local account")
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            subprocess.run(["groupadd", "--system", group], check=True)
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", user], check=True)
    if group is not None:
        subprocess.run(["usermod", "-a", "-G", group, user], check=True)
    return pwd.getpwnam(user)


SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


@pytest.fixture(scope="module")
def attacker() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a second uid (useradd) and runs processes as it")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("no system python3 for the second account to run")
    return _ensure_account(ATTACKER)


def as_user(user: pwd.struct_passwd, code: str, *,
            groups: list[int] | None = None) -> subprocess.Popen[str]:
    """Run ``code`` (plain Python, no project imports) as ``user``.

    The system interpreter: the project's may sit under root's home, closed to others."""
    return subprocess.Popen([SYSTEM_PYTHON, "-c", textwrap.dedent(code)], user=user.pw_uid,
                            group=user.pw_gid, extra_groups=groups or [], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")


class LoopStandIn(threading.Thread):
    """Stand-in for the control thread: answers queued requests like the node does."""

    def __init__(self, server: EstopServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.seen: list[estop.EstopRequest] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                req = self.server.requests.get(timeout=0.05)
            except Exception:
                continue
            self.seen.append(req)
            req.answer = {"press": "ok e-stop pressed", "clear": "ok e-stop cleared",
                          "refused": "ok refusal recorded (estop)"}.get(req.action, "ok disabled")
            req.done.set()


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder the second account can enter (pytest's own tmp root is 0700 root's)."""
    path = Path(tempfile.mkdtemp(prefix="ts-estop-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def robot(shared_tmp: Path) -> Iterator[tuple[EstopServer, LoopStandIn, AuditLog]]:
    tmp_path = shared_tmp
    run = tmp_path / "run"
    audit = AuditLog(AuditConfig(path=tmp_path / "audit" / "robot.audit"))
    server = EstopServer(run / "estop.sock", lambda: {"state": "ready"}, audit=audit.append)
    server.start()
    loop = LoopStandIn(server)
    loop.start()
    try:
        yield server, loop, audit
    finally:
        loop.halt.set()
        server.stop()
        audit.close()


def kinds(audit: AuditLog) -> list[tuple[str, dict[str, Scalar]]]:
    path = audit.segment.with_name(audit.segment.name.rsplit(".", 1)[0])
    return [(r.kind, r.fields) for r in read_records(path)]


# ------------------------------------------------------------------ the folder and the socket
def test_default_runtime_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_runtime_dir() == Path("/run/telesurgery")
    monkeypatch.setattr(os, "geteuid", lambda: 1234)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    assert default_runtime_dir() == Path("/run/user/1234/telesurgery")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_runtime_dir() == Path("/tmp/telesurgery-1234")  # checked like any other


def test_new_runtime_folder_is_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        server = EstopServer(tmp_path / "fresh" / "estop.sock")
    finally:
        os.umask(old)
    try:
        assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o700
        assert (tmp_path / "fresh" / "estop.sock").stat().st_mode & 0o777 == 0o600
    finally:
        server.stop()


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o777, 0o701])
def test_folder_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(mode)
    with pytest.raises(LocalEndpointError, match="open to other accounts"):
        EstopServer(folder / "estop.sock")
    assert not (folder / "estop.sock").exists()


def test_symlinked_folder_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(LocalEndpointError, match="not a plain directory"):
        secure_runtime_dir(tmp_path / "link")


def test_folder_precreated_by_another_user_is_refused(tmp_path: Path,
                                                      attacker: pwd.struct_passwd) -> None:
    """The attack of issue 12.1: a local user creates the folder first, 0700, their own."""
    folder = tmp_path / "telesurgery"
    folder.mkdir(mode=0o700)
    os.chown(folder, attacker.pw_uid, attacker.pw_gid)
    with pytest.raises(LocalEndpointError, match=f"belongs to uid {attacker.pw_uid}"):
        EstopServer(folder / "estop.sock")


def test_a_file_in_place_of_the_socket_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "estop.sock").write_text("not a socket")
    with pytest.raises(LocalEndpointError, match="not a socket"):
        EstopServer(tmp_path / "estop.sock")
    assert (tmp_path / "estop.sock").read_text() == "not a socket"


def test_second_server_refuses_and_the_first_keeps_its_estop(robot: tuple[
        EstopServer, LoopStandIn, AuditLog]) -> None:
    server, _, _ = robot
    with pytest.raises(LocalEndpointError, match="another robot node already serves"):
        EstopServer(server.path)
    assert send(server.path, "press") == "ok e-stop pressed"


def test_live_socket_without_lock_is_not_taken_over(tmp_path: Path) -> None:
    """Even without the lock file (an older node, a deleted lock) a live socket stays."""
    path = tmp_path / "estop.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen(1)
        with pytest.raises(LocalEndpointError, match="refusing to take it over"):
            claim_socket(path)
        assert path.exists()


def test_dead_socket_of_an_earlier_run_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "estop.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
    server = EstopServer(path)
    server.start()
    try:
        threading.Thread(target=lambda: _answer_one(server), daemon=True).start()
        assert send(path, "status") == "ok disabled"
    finally:
        server.stop()


def _answer_one(server: EstopServer) -> None:
    req = server.requests.get(timeout=5)
    req.answer = "ok disabled"
    req.done.set()


# ------------------------------------------------------------------ peer credentials, both ways
def test_server_refuses_another_uid_even_through_an_open_socket(
        robot: tuple[EstopServer, LoopStandIn, AuditLog], attacker: pwd.struct_passwd) -> None:
    server, loop, audit = robot
    # Simulate an operator's mistake that opens the path: the peer check still holds.
    server.path.parent.chmod(0o711)
    server.path.chmod(0o666)
    proc = as_user(attacker, f"""
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect({str(server.path)!r})
        s.sendall(b"clear attacker\\n")
        print(s.recv(200).decode().strip())
    """)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == f"error: uid {attacker.pw_uid} may not use the e-stop socket"
    assert loop.seen == []  # the control loop never heard of it
    refused = [f for k, f in kinds(audit) if k == "estop_peer_refused"]
    assert refused and refused[0]["uid"] == attacker.pw_uid


def test_staff_group_member_may_press(shared_tmp: Path, attacker: pwd.struct_passwd) -> None:
    nurse = _ensure_account(ATTACKER + "-nurse", STAFF)
    gid = grp.getgrnam(STAFF).gr_gid
    tmp_path = shared_tmp
    server = EstopServer(tmp_path / "run" / "estop.sock", group=gid)
    server.start()
    loop = LoopStandIn(server)
    loop.start()
    try:
        assert (tmp_path / "run").stat().st_mode & 0o777 == 0o750
        code = f"""
            import socket
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect({str(server.path)!r})
            s.sendall(b"press panel\\n")
            print(s.recv(200).decode().strip())
        """
        proc = as_user(nurse, code, groups=[gid])
        out, err = proc.communicate(timeout=120)
        assert out.strip() == "ok e-stop pressed", err
        assert [r.source for r in loop.seen] == ["panel"]
        # The attacker, not in the group, cannot even connect (0660, group-owned).
        proc = as_user(attacker, code)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode != 0 and "Permission denied" in err
    finally:
        loop.halt.set()
        server.stop()


def test_client_refuses_a_fake_server_of_another_uid(shared_tmp: Path,
                                                    attacker: pwd.struct_passwd) -> None:
    """The swap of issue 12.1: a fake answers "ok e-stop pressed"; the client must not
    believe it, and the CLI must tell the staff to use the hardware stop."""
    folder = shared_tmp / "swapped"
    folder.mkdir()
    os.chown(folder, attacker.pw_uid, attacker.pw_gid)
    path = folder / "estop.sock"
    fake = as_user(attacker, f"""
        import os, socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind({str(path)!r}); os.chmod({str(path)!r}, 0o777); s.listen(4)
        print("up", flush=True)
        while True:
            c, _ = s.accept()
            try:
                c.recv(200); c.sendall(b"ok e-stop pressed\\n")
            except OSError:
                pass
            c.close()
    """)
    try:
        assert fake.stdout is not None and fake.stdout.readline().strip() == "up"
        with pytest.raises(LocalEndpointError, match=f"uid {attacker.pw_uid}"):
            send(path, "press")
        done = subprocess.run([sys.executable, "-m", "telesurgery.cli", "estop", "--socket",
                               str(path)], capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 1 and "ok e-stop pressed" not in done.stdout
        assert "not trusting it" in done.stderr
        assert "USE THE HARDWARE EMERGENCY STOP" in done.stderr
    finally:
        fake.kill()
        fake.wait(10)


def test_press_without_a_robot_says_use_the_hardware_stop(tmp_path: Path) -> None:
    with pytest.raises(EstopUnreachable):
        send(tmp_path / "none.sock", "press")
    done = subprocess.run([sys.executable, "-m", "telesurgery.cli", "estop", "--socket",
                           str(tmp_path / "none.sock")], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1
    assert "no robot node at" in done.stderr and "USE THE HARDWARE EMERGENCY STOP" in done.stderr


# ------------------------------------------------------------------ protocol and audit
def test_press_clear_and_a_tool_refused_clear_are_audited_with_who_asked(
        robot: tuple[EstopServer, LoopStandIn, AuditLog]) -> None:
    server, _, audit = robot
    assert send(server.path, "press", "panel") == "ok e-stop pressed"
    assert send(server.path, "clear", "cli") == "ok e-stop cleared"
    assert send(server.path, "refused", "page", detail="wrong PIN from 10.0.0.7").startswith(
        "ok refusal recorded")
    assert send(server.path, "status", "panel") == "ok disabled"  # not audited: read-only
    records = [f for k, f in kinds(audit) if k == "estop_request"]
    assert [(r["action"], r["source"]) for r in records] == [
        ("press", "panel"), ("clear", "cli"), ("refused", "page")]
    assert records[2]["detail"] == "wrong PIN from 10.0.0.7"
    assert all(r["uid"] == os.geteuid() and r["pid"] == os.getpid() for r in records)
    assert records[0]["answer"] == "ok e-stop pressed"


@pytest.mark.parametrize(("line", "why"), [
    (b"launch cli\n", "unknown action"),
    (b"press CLI!\n", "source must be"),
    (b"refused page \x07bell\n", "printable"),
    (b"press " + b"x" * 400 + b"\n", "longer than"),
    (b"\xff\xfe\n", "not ASCII"),
])
def test_bad_requests_get_one_line_and_the_server_keeps_serving(
        robot: tuple[EstopServer, LoopStandIn, AuditLog], line: bytes, why: str) -> None:
    server, loop, _ = robot
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(server.path))
        s.sendall(line)
        answer = s.recv(300).decode()
    assert answer.startswith("error: ") and why in answer
    assert loop.seen == [] and server.counters["bad_request"] == 1
    assert send(server.path, "press") == "ok e-stop pressed"


def test_a_silent_client_does_not_block_a_press(
        robot: tuple[EstopServer, LoopStandIn, AuditLog]) -> None:
    server, _, _ = robot
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    try:
        for s in idle:
            s.connect(str(server.path))
        # Served concurrently (up to MAX_CLIENTS): the press does not queue behind them.
        assert send(server.path, "press") == "ok e-stop pressed"
        assert server.counters["served"] == 1
    finally:
        for s in idle:
            s.close()
