"""Whether a run recorded in the audit log is still alive, decided exactly.

Every audited run holds a lock named after its run id for its whole life, taken before its
``started`` event is written and let go after its last event. A process that is killed outright
(SIGKILL, OOM, a host restart) loses its locks with it, so a run whose lock can be taken is dead:
no grace period, no guess from timestamps.

Where the lock lives follows the audit database, since that is what every process that reads
those runs shares:

- PostgreSQL (any number of replicas, on any hosts): a session advisory lock on a connection of
  its own to the audit database, with TCP keepalives so the server notices a vanished host;
- SQLite (processes on one host): an ``flock`` on a file named after the run, in a directory
  next to the database file.

Taking a dead run's lock is also how one process, and only one, closes it (``claim``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from core.auditdb import AuditUrl

log = logging.getLogger("blnk_backup.liveness")

RUN_LOCK_CLASS = 0x626C7275  # "blru": the first key of every run lock (two-int advisory locks)


class RunLocks(Protocol):
    """Locks named after run ids."""

    def hold(self, run_id: str) -> contextlib.AbstractContextManager[None]:
        """Hold the lock of a new run for the block's duration. Raise RuntimeError if it
        cannot be taken (its run id is in use)."""
        ...

    def claim(self, run_id: str) -> contextlib.AbstractContextManager[bool]:
        """Try to take the lock of a run; yield True (holding it) if its run is dead, False if
        it is alive or being closed by someone else."""
        ...


def run_locks_for(audit_url: str) -> RunLocks:
    """The run locks that go with an audit database URL."""
    parsed = AuditUrl.parse(audit_url)
    if parsed.kind == "postgresql":
        return PgRunLocks(audit_url)
    if parsed.path is not None:
        # The real path: two processes naming one file through different paths (a symlink,
        # a relative path) must find the same locks.
        path = parsed.path.resolve()
        return FileRunLocks(path.with_name(path.name + ".runs"))
    # An in-memory or unknown database: one process sees it, so a private directory serves.
    return FileRunLocks(Path(tempfile.mkdtemp(prefix="blnk-backup-runs-")))


def lock_connection(audit_url: str, application_name: str) -> Any:
    """A connection to the audit database (PostgreSQL) for holding session advisory locks:
    the lock lives exactly as long as the connection, and the server notices a dead holder
    within about 25 s (TCP keepalives), not after the kernel default of two hours."""
    import psycopg

    conn = psycopg.connect(
        AuditUrl.parse(audit_url).conninfo,
        autocommit=True,
        application_name=application_name,
        connect_timeout=10,
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
        options="-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3",
    )
    # The lock must not end because the session sat idle (PostgreSQL 14's idle_session_timeout,
    # set by some operators): this session's whole job is to sit idle holding it.
    with contextlib.suppress(psycopg.Error):
        conn.execute("SET idle_session_timeout = 0")
    return conn


def _run_key(run_id: str) -> int:
    """The second key of a run's advisory lock: a signed int4 from the run id."""
    return zlib.crc32(run_id.encode()) - 2**31


WATCH_EVERY = 5.0  # seconds between looks at a held run lock's connection


class PgRunLocks:
    """Run locks as session advisory locks in the (shared) PostgreSQL audit database.

    A held lock's connection is looked at every WATCH_EVERY seconds; if it was lost (the network,
    a server restart, a DBA ending idle sessions) the lock is taken again on a new connection at
    once. In the gap a run can be declared dead while it lives; the audit log then records its
    real end apart (``AuditLog.run``), never a second end."""

    def __init__(self, audit_url: str) -> None:
        self.audit_url = audit_url

    def _try(self, run_id: str) -> Any | None:
        """A connection holding the run's lock, or None if another session holds it."""
        conn = lock_connection(self.audit_url, "blnk-backup-run")
        try:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (RUN_LOCK_CLASS, _run_key(run_id))
            ).fetchone()
        except BaseException:
            conn.close()
            raise
        if row and row[0]:
            return conn
        conn.close()
        return None

    @contextmanager
    def hold(self, run_id: str) -> Iterator[None]:
        conn = self._try(run_id)
        if conn is None:
            raise RuntimeError(f"the lock of run {run_id} is held already")
        held = [conn]
        done = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(run_id, held, done), name="run-lock", daemon=True
        )
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join(WATCH_EVERY + 15)
            _close_quietly(held[0])  # the session ends, and its advisory lock with it

    def _watch(self, run_id: str, held: list[Any], done: threading.Event) -> None:
        """Keep the run's lock held for as long as the run lives."""
        while not done.wait(WATCH_EVERY):
            try:
                held[0].execute("SELECT 1")
                continue
            except Exception:
                log.warning(
                    "the lock of run %s was lost with its connection; taking it again", run_id
                )
            _close_quietly(held[0])
            try:
                again = self._try(run_id)
            except Exception as exc:
                log.warning("could not take the lock of run %s again: %s", run_id, exc)
                continue
            if again is None:
                log.error("the lock of run %s is held by someone else now", run_id)
                continue
            held[0] = again

    @contextmanager
    def claim(self, run_id: str) -> Iterator[bool]:
        conn = self._try(run_id)
        try:
            yield conn is not None
        finally:
            if conn is not None:
                _close_quietly(conn)


class FileRunLocks:
    """Run locks as ``flock``s on files in one directory (processes sharing a SQLite file
    share a host). ``flock`` locks belong to an open file, so they also tell threads of one
    process apart; the kernel drops them when their process dies."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._made = False
        self._lock = threading.Lock()

    def _path(self, run_id: str) -> Path:
        if not run_id.isalnum():
            raise ValueError(f"not a run id: {run_id!r}")
        with self._lock:
            if not self._made:
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._made = True
        return self.directory / f"{run_id}.lock"

    def _try(self, path: Path) -> int | None:
        """A descriptor of ``path`` holding its lock, or None if someone else holds it."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        return fd

    @contextmanager
    def hold(self, run_id: str) -> Iterator[None]:
        path = self._path(run_id)
        fd = self._try(path)
        if fd is None:
            raise RuntimeError(f"the lock of run {run_id} is held already")
        try:
            yield
        finally:
            self._let_go(path, fd)

    @contextmanager
    def claim(self, run_id: str) -> Iterator[bool]:
        path = self._path(run_id)
        fd = self._try(path)
        try:
            yield fd is not None
        finally:
            if fd is not None:
                self._let_go(path, fd)

    @staticmethod
    def _let_go(path: Path, fd: int) -> None:
        # Unlinked while still locked: whoever opens the name next makes a new file, and
        # someone who opened the old one before takes a lock on an orphan, harmlessly (the
        # run is over and its end is recorded before this).
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        log.debug("closing a run lock connection failed", exc_info=True)
