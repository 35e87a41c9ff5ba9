"""PostgreSQL access with psycopg: connection targets, the backup lock and the dump's snapshot.

The snapshot session exports a snapshot for ``pg_dump --snapshot`` and takes the row counts,
ledger aggregates and object counts in that same snapshot, so the manifest describes exactly
what the dump holds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from core.config import unencoded_userinfo
from core.dbstats import ledger_anchor, ledger_totals, object_counts, row_counts, table_digests
from core.errors import AlreadyRunningError, DumpError, PreflightError, UsageError
from core.manifest import SnapshotStats
from core.redact import has_control_characters

# Any constants work; they only have to be the same in every process of this program.
BACKUP_LOCK_ID = 0x626C6E6B_6261636B  # "blnkback"
RESTORE_LOCK_ID = 0x626C6E6B_72657374  # "blnkrest"
RESTORE_INTO_LOCK_ID = 0x626C6E6B_696E746F  # "blnkinto", held in the database being restored


@dataclass(frozen=True)
class PgTarget:
    """Where a database is, without ever exposing its password in text."""

    params: dict[str, str]
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> PgTarget:
        """Given a postgres URL or conninfo, return a PgTarget. Raise PreflightError if bad."""
        if "://" in url and unencoded_userinfo(url):  # never parse a password into a host name
            raise PreflightError(
                "the database URL has a '/' or '@' in its user or password that is not "
                "percent-encoded: write / as %2F and @ as %40"
            )
        try:
            params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
        except psycopg.ProgrammingError:
            raise PreflightError("the database URL cannot be parsed") from None
        password = params.pop("password", None)
        params.setdefault("connect_timeout", "10")
        return cls(params, password)

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or self.params.get("user") or "postgres"

    @property
    def display(self) -> str:
        """A password-free URL, safe for logs and messages and to paste: user, host and
        database name are percent-encoded."""
        raw_host = self.params.get("host", "localhost")
        host = f"[{raw_host}]" if ":" in raw_host else quote(raw_host, safe="")
        port = quote(self.params.get("port", "5432"), safe="")
        user = quote(self.params.get("user", ""), safe="")
        return (
            f"postgresql://{user + '@' if user else ''}{host}:{port}/{quote(self.dbname, safe='')}"
        )

    def with_params(self, **params: str) -> PgTarget:
        return PgTarget({**self.params, **params}, self.password)

    def with_dbname(self, dbname: str) -> PgTarget:
        return PgTarget({**self.params, "dbname": dbname}, self.password)

    @property
    def conninfo(self) -> str:
        """libpq conninfo without the password (safe for a command line)."""
        return make_conninfo(**self.params)

    def secret_conninfo(self) -> str:
        """libpq conninfo *with* the password, to hand to Settings; never for display."""
        if not self.password:
            return self.conninfo
        return make_conninfo(self.conninfo, password=self.password)

    def libpq_env(self, base: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if not k.startswith("PG")}
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """Open a connection. Raise PreflightError with the server's reason if it fails."""
        try:
            return psycopg.connect(self.conninfo, password=self.password, **kwargs)
        except psycopg.OperationalError as exc:
            reason = _first_line(str(exc), self.password)
            raise PreflightError(
                f"cannot connect to {self.display}: {reason}", cause=reason
            ) from None


def _first_line(text: str, secret: str | None) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "unknown error")
    return line.replace(secret, "***") if secret else line


def server_version(conn: psycopg.Connection[Any]) -> tuple[int, str]:
    """Return the server's (major, version text)."""
    num = conn.info.server_version
    row = conn.execute("SHOW server_version").fetchone()
    text = str(row[0]).split()[0] if row else str(num)  # "15.20 (Debian ...)" -> "15.20"
    return num // 10000, text


class AdvisoryLock:
    """A session advisory lock held on its own connection: one backup per database, one restore
    test per server, across processes. Released when the connection closes, so a crashed
    process never leaves it behind."""

    def __init__(self, target: PgTarget, lock_id: int, busy_message: str) -> None:
        self._target = target
        self._lock_id = lock_id
        self._busy_message = busy_message
        self._conn: psycopg.Connection[Any] | None = None

    def __enter__(self) -> AdvisoryLock:
        conn = self._target.connect(autocommit=True, application_name="blnk-backup-lock")
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._lock_id,)).fetchone()
        if not row or not row[0]:
            conn.close()
            raise AlreadyRunningError(self._busy_message)
        self._conn = conn
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def backup_lock(target: PgTarget) -> AdvisoryLock:
    return AdvisoryLock(
        target,
        BACKUP_LOCK_ID,
        f"a backup of {target.dbname} is already running; try again when it ends",
    )


def database_exists(server: PgTarget, name: str) -> bool:
    with server.connect(autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def check_database_name(name: str) -> str:
    """Return name if it can be a new database's name; raise UsageError saying why not.
    Any printable text is fine: names are always quoted as identifiers, never pasted raw."""
    if not name or len(name.encode()) > 63:
        raise UsageError("database names must be 1-63 bytes long")
    if has_control_characters(name):
        raise UsageError(
            "database names must not contain control characters, bidirectional marks or "
            "zero-width characters"
        )
    return name


def create_database(server: PgTarget, name: str) -> None:
    """Create an empty database on the server of ``server``. Raise UsageError if it exists."""
    check_database_name(name)
    with server.connect(autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            raise UsageError(f"database {name!r} already exists")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(server: PgTarget, name: str) -> None:
    """Drop a database (disconnecting its sessions) if it exists."""
    with server.connect(autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def comment_on_database(server: PgTarget, name: str, text: str) -> None:
    """Set the comment of database ``name`` (shown by ``\\l+`` in psql)."""
    with server.connect(autocommit=True) as conn:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(text))
        )


def databases_commented(server: PgTarget, prefix: str) -> list[tuple[str, str]]:
    """(name, comment) of the databases on the server whose comment starts with ``prefix``."""
    with server.connect(autocommit=True) as conn:
        rows = conn.execute(
            """SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database
               WHERE starts_with(coalesce(shobj_description(oid, 'pg_database'), ''), %s)
               ORDER BY datname""",
            (prefix,),
        ).fetchall()
    return [(str(name), str(comment)) for name, comment in rows]


def databases_like(server: PgTarget, prefix: str) -> list[str]:
    """Return the names of databases on the server that start with prefix."""
    with server.connect(autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1", (prefix,)
        ).fetchall()
    return [str(r[0]) for r in rows]


class SnapshotSession:
    """A REPEATABLE READ transaction that exports its snapshot and stays open while pg_dump
    reads from it."""

    def __init__(self, target: PgTarget) -> None:
        self._conn = target.connect(application_name="blnk-backup-snapshot")
        self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._conn.read_only = True
        row = self._conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        self.snapshot_id: str = row[0]

    def stats(self, content_digests: bool = False) -> SnapshotStats:
        """Return row counts, ledger aggregates, object counts and the ledger's chain anchor
        as of the snapshot; with ``content_digests``, also a SHA-256 of every table's content
        (BACKUP_CONTENT_DIGEST: it reads every row once more, alongside pg_dump).

        Runs inside a savepoint: if a count fails (say, permission denied), the exporting
        transaction stays alive, so pg_dump is not left with a vanished snapshot. Raise
        DumpError with the server's reason if a count fails."""
        try:
            with self._conn.transaction():
                return SnapshotStats(
                    row_counts=row_counts(self._conn),
                    ledger=ledger_totals(self._conn),
                    objects=object_counts(self._conn),
                    ledger_anchor=ledger_anchor(self._conn),
                    content_digests=table_digests(self._conn) if content_digests else None,
                )
        except psycopg.Error as exc:
            reason = _first_line(str(exc), None)
            raise DumpError(
                f"counting rows in the dump's snapshot failed: {reason}", cause=reason
            ) from None

    def cancel(self) -> None:
        """Cancel a running statement (thread-safe); used when the backup already failed."""
        with contextlib.suppress(psycopg.Error):
            self._conn.cancel_safe()

    def close(self) -> None:
        """End the snapshot transaction (it only ever read) and close the connection."""
        try:
            with contextlib.suppress(psycopg.Error):
                self._conn.rollback()
        finally:
            self._conn.close()
