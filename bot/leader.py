"""Exactly one replica runs the scheduler.

With the audit log on PostgreSQL, every replica competes for a session advisory lock on a
long-lived connection to that database; the holder is the leader. Others retry every
``interval`` seconds, so when the leader dies (its connection closes, PostgreSQL releases the
lock) another one takes over within a minute. A leader host that vanishes without closing its
connection is noticed by the server through TCP keepalives asked for on that connection (about
25 s), not after the kernel default of two hours. The leader checks its connection on the same
beat and steps down if it is gone. With SQLite there is one process by construction: it leads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger("blnk_backup.leader")

LEADER_LOCK_ID = 0x626C6E6B_6C656164  # "blnklead"


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
        return make_url(self.audit_url).get_backend_name() == "postgresql"

    def start(self) -> None:
        if not self.shared:
            self._gain()
            return
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        if self.leading:
            self._lose()
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
        import psycopg

        if self._conn is None:
            url = make_url(self.audit_url).set(drivername="postgresql")
            self._conn = psycopg.connect(
                url.render_as_string(hide_password=False),
                autocommit=True,
                application_name="blnk-backup-leader",
                connect_timeout=10,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                # The server must notice a dead leader too: a host that vanishes sends no FIN,
                # and with the kernel default (2 h of silence) nobody could take the lock over.
                options="-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 "
                "-c tcp_keepalives_count=3",
            )
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
