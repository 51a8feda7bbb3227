"""Several surgeon keys with names, a mentor flag; the one-surgeon layout unchanged."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from telesurgery.errors import AuthError
from transport.keys import ClientKeys, Identity, ServerKeys, add_surgeon, init_keys, main


def test_add_surgeon_names_each_key_and_marks_mentors(tmp_path: Path) -> None:
    init_keys(tmp_path)
    add_surgeon(tmp_path, "bob")
    assert main(["add-surgeon", "--dir", str(tmp_path), "--mentor", "carol"]) == 0
    server = ServerKeys.load(tmp_path)
    names = {ClientKeys.load_surgeon(tmp_path, n).public: n for n in (None, "bob", "carol")}
    ids = server.identities()
    assert {ids[k] for k in names} == {Identity("surgeon"), Identity("bob"),
                                        Identity("carol", mentor=True)}
    assert set(server.authorized().values()) == {"surgeon"}, "all three may command"
    secret = tmp_path / "surgeons" / "bob" / "bob.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    # Withdrawing the mentor flag is deleting its marker; read fresh.
    (server.surgeon_dir / "carol.mentor").unlink()
    assert Identity("carol") in server.identities().values()


def test_names_cannot_pose_as_a_role_or_repeat(tmp_path: Path) -> None:
    init_keys(tmp_path)
    with pytest.raises(AuthError):
        add_surgeon(tmp_path, "surgeon")
    with pytest.raises(AuthError):
        add_surgeon(tmp_path, "../x")
    add_surgeon(tmp_path, "bob")
    with pytest.raises(AuthError, match="already exists"):
        add_surgeon(tmp_path, "bob")
