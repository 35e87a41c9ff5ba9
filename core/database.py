"""PostgreSQL access with psycopg: connection targets, the backup lock and the dump's snapshot.

The snapshot session exports a snapshot for ``pg_dump --snapshot`` and takes the row counts,
ledger aggregates and object counts in that same snapshot, so the manifest describes exactly
what the dump holds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from core.errors import AlreadyRunningError, PreflightError, UsageError
from core.manifest import LedgerTotals, SnapshotStats

# Any constants work; they only have to be the same in every process of this program.
BACKUP_LOCK_ID = 0x626C6E6B_6261636B  # "blnkback"
RESTORE_LOCK_ID = 0x626C6E6B_72657374  # "blnkrest"

_USER_SCHEMAS = """
    n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
"""
_NOT_FROM_EXTENSION = """
    NOT EXISTS (SELECT 1 FROM pg_depend d
                WHERE d.classid = {catalog}::regclass AND d.objid = {oid} AND d.deptype = 'e')
"""


@dataclass(frozen=True)
class PgTarget:
    """Where a database is, without ever exposing its password in text."""

    params: dict[str, str]
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> PgTarget:
        """Given a postgres URL or conninfo, return a PgTarget. Raise PreflightError if bad."""
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
        """A password-free description, safe for logs and messages."""
        host = self.params.get("host", "localhost")
        port = self.params.get("port", "5432")
        user = self.params.get("user", "")
        return f"postgresql://{user + '@' if user else ''}{host}:{port}/{self.dbname}"

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


def create_database(server: PgTarget, name: str) -> None:
    """Create an empty database on the server of ``server``. Raise UsageError if it exists."""
    if not name or len(name.encode()) > 63:
        raise UsageError("database names must be 1-63 bytes long")
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

    def stats(self) -> SnapshotStats:
        """Return row counts, ledger aggregates and object counts as of the snapshot.

        Runs inside a savepoint: if a count fails (say, permission denied), the exporting
        transaction stays alive, so pg_dump is not left with a vanished snapshot."""
        with self._conn.transaction():
            return SnapshotStats(
                row_counts=self._row_counts(), ledger=self._ledger(), objects=self._objects()
            )

    def _row_counts(self) -> dict[str, int]:
        return row_counts(self._conn)

    def _ledger(self) -> dict[str, LedgerTotals]:
        return ledger_totals(self._conn)

    def _objects(self) -> dict[str, int]:
        return object_counts(self._conn)

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


def row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Exact row counts of every user table (extension-owned tables excluded)."""
    tables = conn.execute(
        f"""SELECT n.nspname, c.relname FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND {_USER_SCHEMAS}
            AND {_NOT_FROM_EXTENSION.format(catalog="'pg_class'", oid="c.oid")}
            ORDER BY 1, 2"""
    ).fetchall()
    counts: dict[str, int] = {}
    for schema, table in tables:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        row = conn.execute(query).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def ledger_totals(conn: psycopg.Connection[Any]) -> dict[str, LedgerTotals]:
    """Per currency: sum and count of balances, count and sum of transaction amounts.

    Return {} for a database without Blnk's balances and transactions tables.
    """
    present = conn.execute(
        "SELECT to_regclass('blnk.balances') IS NOT NULL AND "
        "to_regclass('blnk.transactions') IS NOT NULL"
    ).fetchone()
    if not present or not present[0]:
        return {}
    balances = {
        cur: (Decimal(total), int(count))
        for cur, total, count in conn.execute(
            "SELECT currency, coalesce(sum(balance), 0), count(*) "
            "FROM blnk.balances GROUP BY currency"
        ).fetchall()
    }
    transactions = {
        cur: (int(count), Decimal(total))
        for cur, count, total in conn.execute(
            "SELECT currency, count(*), coalesce(sum(amount), 0) "
            "FROM blnk.transactions GROUP BY currency"
        ).fetchall()
    }
    return {
        cur: LedgerTotals(
            balance_sum=str(balances.get(cur, (Decimal(0), 0))[0]),
            balance_count=balances.get(cur, (Decimal(0), 0))[1],
            transaction_count=transactions.get(cur, (0, Decimal(0)))[0],
            transaction_amount_sum=str(transactions.get(cur, (0, Decimal(0)))[1]),
        )
        for cur in sorted(set(balances) | set(transactions))
    }


def object_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Count user tables, indexes, constraints, functions and triggers (extensions excluded)."""
    queries = {
        "tables": f"""SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND {_USER_SCHEMAS}
            AND {_NOT_FROM_EXTENSION.format(catalog="'pg_class'", oid="c.oid")}""",
        "indexes": f"""SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('i', 'I') AND {_USER_SCHEMAS}
            AND {_NOT_FROM_EXTENSION.format(catalog="'pg_class'", oid="c.oid")}""",
        "constraints": f"""SELECT count(*) FROM pg_constraint o
            JOIN pg_namespace n ON n.oid = o.connamespace WHERE {_USER_SCHEMAS}""",
        "functions": f"""SELECT count(*) FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_USER_SCHEMAS}
            AND {_NOT_FROM_EXTENSION.format(catalog="'pg_proc'", oid="p.oid")}""",
        "triggers": f"""SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE NOT t.tgisinternal AND {_USER_SCHEMAS}""",
    }
    counts: dict[str, int] = {}
    for name, query in queries.items():
        row = conn.execute(query).fetchone()
        counts[name] = int(row[0]) if row else 0
    return counts
