"""Key layout, permissions and the ``telesurgery keys`` command, on real files."""

from __future__ import annotations

import logging
import shutil
import stat
from pathlib import Path

import pytest
import zmq.auth

from telesurgery.errors import AuthError
from transport.keys import ClientKeys, ServerKeys, init_keys, main


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def public_of(path: Path) -> bytes:
    return zmq.auth.load_certificate(path)[0]


def test_init_creates_layout_with_private_secrets(tmp_path: Path) -> None:
    root = tmp_path / "keys"
    assert main(["init", "--dir", str(root), "--observer", "alice"]) == 0
    secrets = [root / "robot/robot.key_secret", root / "console/surgeon.key_secret",
               root / "observers/alice/alice.key_secret"]
    for secret in secrets:
        assert mode(secret) == 0o600, secret
        assert mode(secret.parent) == 0o700, secret.parent
    robot_public = public_of(root / "robot/robot.key")
    assert public_of(root / "console/robot.key") == robot_public
    assert public_of(root / "observers/alice/robot.key") == robot_public
    surgeon_dir = root / "robot/authorized/surgeon"
    assert [p.name for p in surgeon_dir.iterdir()] == ["surgeon.key"]
    assert public_of(surgeon_dir / "surgeon.key") == public_of(root / "console/surgeon.key")
    assert public_of(root / "robot/authorized/observers/alice.key") == public_of(
        root / "observers/alice/alice.key")


def test_loaded_keys_map_roles(tmp_path: Path) -> None:
    init_keys(tmp_path, ["alice"])
    server = ServerKeys.load(tmp_path)
    surgeon = ClientKeys.load_surgeon(tmp_path)
    alice = ClientKeys.load_observer(tmp_path, "alice")
    assert surgeon.server_public == alice.server_public == server.public
    assert server.authorized() == {surgeon.public: "surgeon", alice.public: "observer:alice"}


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    init_keys(tmp_path)
    before = public_of(tmp_path / "robot/robot.key")
    assert main(["init", "--dir", str(tmp_path)]) == 1
    assert public_of(tmp_path / "robot/robot.key") == before
    assert main(["init", "--dir", str(tmp_path), "--force"]) == 0
    assert public_of(tmp_path / "robot/robot.key") != before


def test_add_observer_and_install(tmp_path: Path) -> None:
    init_keys(tmp_path)
    assert main(["add-observer", "bob", "--dir", str(tmp_path)]) == 0
    assert mode(tmp_path / "observers/bob/bob.key_secret") == 0o600
    assert main(["add-observer", "bob", "--dir", str(tmp_path)]) == 1  # exists
    assert main(["add-observer", "../evil", "--dir", str(tmp_path)]) == 1
    public, _ = zmq.auth.create_certificates(tmp_path, "carol")
    assert main(["install", public, "--role", "observer", "--dir", str(tmp_path)]) == 0
    users = ServerKeys.load(tmp_path).authorized()
    assert sorted(users.values()) == ["observer:bob", "observer:carol", "surgeon"]
    for bad in ("../escape", "surgeon"):  # a path, and an observer posing as a role
        assert main(["install", public, "--role", "observer", "--name", bad,
                     "--dir", str(tmp_path)]) == 1
    assert not (tmp_path / "robot/authorized/escape.key").exists()


def test_install_refuses_a_secret_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_keys(tmp_path)
    _, secret = zmq.auth.create_certificates(tmp_path, "oops")
    assert main(["install", secret, "--role", "surgeon", "--dir", str(tmp_path)]) == 1
    assert "contains a secret key" in capsys.readouterr().err
    assert len(list((tmp_path / "robot/authorized/surgeon").iterdir())) == 1


def test_robot_refuses_without_authorized_folder(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    init_keys(tmp_path)
    shutil.rmtree(tmp_path / "robot/authorized")
    with caplog.at_level(logging.ERROR), pytest.raises(AuthError, match="authorised-keys"):
        ServerKeys.load(tmp_path)
    assert "refusing to start" in caplog.text


def test_robot_refuses_without_surgeon_key(tmp_path: Path) -> None:
    init_keys(tmp_path)
    (tmp_path / "robot/authorized/surgeon/surgeon.key").unlink()
    with pytest.raises(AuthError, match="no usable surgeon public key"):
        ServerKeys.load(tmp_path)


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    init_keys(tmp_path)
    (tmp_path / "robot/robot.key_secret").chmod(0o644)
    with pytest.raises(AuthError, match="readable by others"):
        ServerKeys.load(tmp_path)


def test_missing_client_keys(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="missing"):
        ClientKeys.load_surgeon(tmp_path)
    init_keys(tmp_path)
    with pytest.raises(AuthError, match="missing"):
        ClientKeys.load_observer(tmp_path, "nobody")


def test_show_lists_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_keys(tmp_path, ["alice"])
    assert main(["show", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "observer:alice" in out and "surgeon" in out and out.startswith("robot ")


def test_modes_are_explicit_whatever_the_umask(tmp_path: Path) -> None:
    """Issue 12.7: under umask 000 the folders were 0777 and public keys 0666."""
    import os

    root = tmp_path / "keys"
    old = os.umask(0)
    try:
        assert main(["init", "--dir", str(root), "--observer", "alice"]) == 0
        assert main(["add-observer", "--dir", str(root), "bob"]) == 0
    finally:
        os.umask(old)
    for path in [root, *(p for p in root.rglob("*"))]:
        if path.is_dir():
            assert mode(path) == 0o700, path
        elif path.name.endswith(".key_secret"):
            assert mode(path) == 0o600, path
        else:
            assert mode(path) == 0o644, path
    ServerKeys.load(root)


def test_robot_refuses_an_empty_surgeon_key_file(tmp_path: Path) -> None:
    init_keys(tmp_path)
    surgeon_dir = tmp_path / "robot/authorized/surgeon"
    (surgeon_dir / "surgeon.key").unlink()
    (surgeon_dir / "surgeon.key").write_text("")
    with pytest.raises(AuthError, match="no usable surgeon public key"):
        ServerKeys.load(tmp_path)


@pytest.mark.parametrize("folder", ["robot", "robot/authorized", "robot/authorized/surgeon",
                                    "robot/authorized/observers"])
def test_robot_refuses_keys_folders_others_can_write(tmp_path: Path, folder: str) -> None:
    """Anyone who can write there can authorise their own key."""
    init_keys(tmp_path)
    (tmp_path / folder).chmod(0o733)
    with pytest.raises(AuthError, match="writable by other accounts"):
        ServerKeys.load(tmp_path)
