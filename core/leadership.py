"""Exactly one replica runs the scheduler.

With the audit log on PostgreSQL, every replica competes for a session advisory lock on a
long-lived connection to that database; the holder is the leader. Others retry every
``interval`` seconds, so when the leader dies (its connection closes, PostgreSQL releases the
lock) another one takes over within a minute. A leader host that vanishes without closing its
connection is noticed by the server through TCP keepalives asked for on that connection (about
25 s), not after the kernel default of two hours. The leader checks its connection on the same
beat and steps down if it is gone. With SQLite there is one process by construction: it leads.

Each scheduled run also holds a lock of its job (``JobLock``) on a connection of its own for
as long as it runs. Leadership can move while a run goes on (a leader whose connection was cut
steps down, yet its run continues), so the job lock, not leadership, is what keeps two runs of
one job apart across replicas. Whether a run that never ended is dead is its own run lock's
business (core/liveness.py).
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable
from typing import Any

from core.auditdb import AuditUrl
from core.liveness import lock_connection

log = logging.getLogger("blnk_backup.leader")

LEADER_LOCK_ID = 0x626C6E6B_6C656164  # "blnklead"
JOB_LOCK_CLASS = 0x626C6A62  # "bljb": the first key of every job lock


def shared_audit(audit_url: str) -> bool:
    """True when replicas can share this audit database (PostgreSQL) and must coordinate."""
    return AuditUrl.parse(audit_url).kind == "postgresql"


class JobLock:
    """A lock per scheduled job that every replica sees, held for the whole of a run: no two
    runs of one job at once, even when leadership moves mid-run. With SQLite there is one
    process, and the scheduler's in-process guard is the lock."""

    def __init__(self, audit_url: str, job: str) -> None:
        self.audit_url = audit_url
        self.key = zlib.crc32(job.encode()) - 2**31  # a signed int4 for pg_try_advisory_lock
        self._conn: Any = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False when a run of this job holds it elsewhere."""
        if not shared_audit(self.audit_url):
            return True
        conn = lock_connection(self.audit_url, "blnk-backup-job")
        try:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (JOB_LOCK_CLASS, self.key)
            ).fetchone()
        except BaseException:
            conn.close()
            raise
        if not (row and row[0]):
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            # Unlocked before the close returns: a closed session's locks go only when its
            # server process has noticed, a moment later, and the next run may be quicker.
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", (JOB_LOCK_CLASS, self.key))
        except Exception:
            log.debug("unlocking a job lock failed (closing its session frees it)", exc_info=True)
        finally:
            conn.close()


class Leadership:
    def __init__(
        self,
        audit_url: str,
        on_gain: Callable[[], None],
        on_loss: Callable[[], None],
        interval: float = 15.0,
    ) -> None:
        self.audit_url = audit_url
        self.on_gain = on_gain
        self.on_loss = on_loss
        self.interval = interval
        self.leading = False
        self._stop = threading.Event()
        self._conn: Any = None
        self._thread: threading.Thread | None = None

    @property
    def shared(self) -> bool:
        """True when replicas share the audit database (PostgreSQL) and must elect."""
        return shared_audit(self.audit_url)

    def start(self) -> None:
        if not self.shared:
            self._gain()
            return
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Shutting down: stop competing, and stop the scheduler if this replica runs it (not
        a loss of leadership: another replica simply takes over)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        if self.leading:
            self.leading = False
            log.info("shutting down: the scheduler stops")
            self.on_loss()
        self._close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.leading:
                    self._conn.execute("SELECT 1")
                elif self._try_lock():
                    self._gain()
            except Exception as exc:
                log.warning("leader election: %s", type(exc).__name__)
                if self.leading:
                    self._lose()
                self._close()
            self._stop.wait(self.interval)

    def _try_lock(self) -> bool:
        if self._conn is None:
            self._conn = lock_connection(self.audit_url, "blnk-backup-leader")
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_ID,)).fetchone()
        return bool(row and row[0])

    def _gain(self) -> None:
        self.leading = True
        log.info("this replica leads: it runs the scheduler")
        self.on_gain()

    def _lose(self) -> None:
        self.leading = False
        log.warning("this replica no longer leads: its scheduler stops")
        self.on_loss()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.debug("closing the leader connection failed", exc_info=True)
            self._conn = None
