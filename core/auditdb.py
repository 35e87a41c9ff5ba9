"""The audit database through its own DB-API driver: ``sqlite3`` for SQLite, psycopg for
PostgreSQL — the two kinds ``AUDIT_DATABASE_URL`` may name.

The audit log writes a few rows per run; it does not need an ORM, and the CLI's backup should
not pay for importing one (SQLAlchemy and SQLModel are a third of a backup's start-up CPU). The
tables of the long-running service (approvals, outbox, seen requests) still use SQLModel, on an
engine ``AuditLog.engine`` builds when first asked.

Connections are per thread (the Slack listeners, the scheduler and the HTTP server write from
threads of their own); SQLite runs in WAL mode with a busy timeout so writers take turns.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from core.errors import ConfigError
from core.redact import first_line, truncate_cause

# SQLAlchemy's SQLite format for DATETIME columns, which earlier versions wrote: kept, so one
# audit file is read the same by every version.
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"
_PG_SCHEME = re.compile(r"^(postgres|postgresql)(\+[a-z0-9_]+)?://", re.I)
_SQLITE_SCHEME = re.compile(r"^sqlite(\+pysqlite)?://", re.I)


@dataclass(frozen=True)
class AuditUrl:
    """Where the audit database is: ``kind`` sqlite (``path``, None in memory) or postgresql
    (``conninfo``, a libpq URI), and the URL SQLAlchemy reads for the service's own tables."""

    kind: str
    path: Path | None
    conninfo: str
    sqlalchemy: str

    @classmethod
    def parse(cls, url: str, variable: str = "AUDIT_DATABASE_URL") -> AuditUrl:
        """Raise ConfigError naming ``variable`` (never the URL) if it is not one of ours."""
        if _SQLITE_SCHEME.match(url):
            rest = _SQLITE_SCHEME.sub("", url, count=1).split("?", 1)[0]
            if rest in ("", "/", "/:memory:"):
                return cls("sqlite", None, "", "sqlite://")
            if not rest.startswith("/"):
                raise ConfigError([f"{variable}: not a usable database URL (sqlite:///PATH)"])
            path = Path(unquote(rest[1:])).expanduser()  # sqlite:///rel, sqlite:////abs
            return cls("sqlite", path, "", f"sqlite:///{path}")
        if _PG_SCHEME.match(url):
            conninfo = _PG_SCHEME.sub("postgresql://", url, count=1)
            try:
                urlsplit(conninfo).port  # noqa: B018 - raises on a bad port
            except ValueError:
                raise ConfigError([f"{variable}: not a usable database URL (bad port)"]) from None
            return cls("postgresql", None, conninfo, _PG_SCHEME.sub("postgresql+psycopg://", url))
        raise ConfigError(
            [f"{variable}: not a usable database URL (sqlite:///PATH or postgresql://…)"]
        )

    @property
    def password(self) -> str | None:
        if self.kind != "postgresql":
            return None
        password = urlsplit(self.conninfo).password
        return unquote(password) if password else None


class AuditDatabase:
    """Run SQL on the audit database; placeholders are written ``?`` for both drivers."""

    def __init__(self, url: AuditUrl, variable: str = "AUDIT_DATABASE_URL") -> None:
        self.url = url
        self.kind = url.kind
        self._local = threading.local()
        # Every connection opened, each with the lock its thread holds while using it: close()
        # takes that lock first, never closing a connection under a query of another thread
        # (sqlite3 may crash the process when it is).
        self._open: list[tuple[Any, threading.Lock]] = []
        self._opening = threading.Lock()
        self._closed = False
        self._memory = f"file:blnk-audit-{uuid.uuid4().hex}?mode=memory&cache=shared"
        self._keeper: Any = None  # an in-memory database lives while a connection is open
        if url.kind == "sqlite" and url.path is not None:
            try:
                url.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    [f"{variable}: the database cannot be opened ({exc.strerror})"]
                ) from None
        try:
            probe = self._connect()
        except Exception as exc:
            reason = truncate_cause(first_line(exc), [url.password])[:300]
            raise ConfigError([f"{variable}: the database cannot be opened ({reason})"]) from None
        if url.kind == "sqlite" and url.path is None:
            self._keeper = probe
        else:
            probe.close()

    # --- connections ----------------------------------------------------------------------
    def _connect(self) -> Any:
        if self.kind == "sqlite":
            if self.url.path is None:
                conn = sqlite3.connect(
                    self._memory,
                    uri=True,
                    timeout=10,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                conn = sqlite3.connect(
                    self.url.path, timeout=10, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=10000")
            return conn
        import psycopg

        # Every time here is UTC; columns are "timestamp without time zone", so the session
        # must not convert them to some other local time.
        return psycopg.connect(
            self.url.conninfo, autocommit=True, connect_timeout=10, options="-c timezone=UTC"
        )

    def _connection(self) -> tuple[Any, threading.Lock]:
        held = getattr(self._local, "held", None)
        if held is None:
            with self._opening:
                if self._closed:
                    raise ConfigError(["AUDIT_DATABASE_URL: the audit log is closed"])
                held = (self._connect(), threading.Lock())
                self._open.append(held)
            self._local.held = held
        return held

    def _forget(self) -> None:
        held = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None:
            with self._opening:
                if held in self._open:
                    self._open.remove(held)
            with held[1], contextlib.suppress(Exception):  # already broken
                held[0].close()

    def _sql(self, statement: str) -> str:
        return statement if self.kind == "sqlite" else statement.replace("?", "%s")

    # --- statements -------------------------------------------------------------------------
    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows (a lost PostgreSQL connection is opened
        again once)."""
        for attempt in (1, 2):
            conn, in_use = self._connection()
            try:
                with in_use:
                    cursor = conn.execute(self._sql(statement), tuple(params))
                    return list(cursor.fetchall()) if cursor.description else []
            except Exception as exc:
                if attempt == 2 or not self._lost(exc):
                    raise
                self._forget()
        raise AssertionError("unreachable")

    def insert(self, statement: str, params: Sequence[Any]) -> int:
        """Run an INSERT and return the new row's id."""
        if self.kind == "sqlite":
            conn, in_use = self._connection()
            with in_use:
                return int(conn.execute(statement, tuple(params)).lastrowid)
        [(new_id,)] = self.query(statement + " RETURNING id", params)
        return int(new_id)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A transaction on a connection of its own (yield it; ``execute`` on it takes
        ``?`` placeholders too via ``self.run_in``)."""
        conn = self._connect()
        try:
            if self.kind == "sqlite":
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            else:
                with conn.transaction():
                    yield conn
        except BaseException:
            if self.kind == "sqlite" and conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def run_in(self, conn: Any, statement: str, params: Sequence[Any] = ()) -> None:
        conn.execute(self._sql(statement), tuple(params))

    def _lost(self, exc: Exception) -> bool:
        if self.kind == "sqlite":
            return False
        import psycopg

        held = getattr(self._local, "held", None)
        return isinstance(exc, psycopg.OperationalError) or bool(held and held[0].closed)

    # --- values -------------------------------------------------------------------------------
    def time_param(self, when: datetime) -> Any:
        """A UTC time as the column stores it (naive UTC; SQLite as text)."""
        naive = when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when
        return naive.strftime(_SQLITE_TIME) if self.kind == "sqlite" else naive

    @staticmethod
    def time_value(raw: Any) -> datetime:
        """A stored time back, aware (UTC)."""
        when = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))
        return when if when.tzinfo else when.replace(tzinfo=UTC)

    def close(self, wait: float = 10.0) -> None:
        """Close every connection, each once no thread is using it (waiting up to ``wait``
        seconds for each; one still busy then is left to its thread and the process's end).
        Using the log after this raises ConfigError."""
        with self._opening:
            self._closed = True
            opened, self._open = self._open, []
        for conn, in_use in opened:
            if not in_use.acquire(timeout=wait):
                continue
            try:
                with contextlib.suppress(Exception):  # closed already
                    conn.close()
            finally:
                in_use.release()
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None
