"""Running a PostgreSQL server of our own on this host (restore-to-time clusters, the console's
embedded server): which OS user it runs as — PostgreSQL refuses to run as root, so as root it is
the ``postgres`` user, or ``nobody`` — and where its files can live so that user reaches them
(a checkout or TMPDIR may be private to root)."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import PreflightError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServerUser:
    """The OS user a root process runs PostgreSQL as."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]

    @property
    def ids(self) -> tuple[int, int]:
        return self.uid, self.gid


def server_user() -> ServerUser | None:
    """None when this process is not root (the server runs as this user); else the postgres
    user, or nobody."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
        return ServerUser(name, entry.pw_uid, entry.pw_gid, frozenset(groups))
    raise PreflightError(
        "running as root, and there is no postgres or nobody user to run PostgreSQL as "
        "(it refuses to run as root)"
    )


def can_enter(path: Path, user: ServerUser) -> bool:
    """True if ``user`` may search every directory from / down to ``path`` (mode bits)."""
    resolved = path.resolve()
    for directory in (resolved, *resolved.parents):
        try:
            st = directory.stat()
        except OSError:
            return False
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in user.groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def run_base(user: ServerUser | None) -> Path:
    """A temporary directory where the server's own directory can be made: TMPDIR, or where
    TMPDIR is private to this user, the first of /tmp, /var/tmp, /dev/shm the server's user
    can enter."""
    first = Path(tempfile.gettempdir())
    for candidate in (first, Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")):  # noqa: S108
        if candidate.is_dir() and (user is None or can_enter(candidate, user)):
            return candidate
    assert user is not None
    raise PreflightError(
        f"no temporary directory the {user.name} user can enter ({first}, /tmp, /var/tmp)"
    )
