"""A realistic Blnk-shaped database for demos, tests and benchmarks, generated server-side.

Schema ``blnk`` with Blnk's main tables, realistic column types, keys, CHECK constraints, GIN and
partial indexes, plpgsql triggers and a materialized view, in the shape of a given Blnk version:
0.15 (the default: the transaction hash chain, ``chain_state``, ``gorp_migrations`` up to 0.15)
or 0.12 (no chain). Transactions mix the statuses Blnk writes: QUEUED with their ``_q`` copies
(APPLIED or REJECTED), INFLIGHT then committed or voided (or still open), and direct APPLIED
ones; balances follow from them exactly, so Blnk's invariants hold (balance = credit - debit,
per currency the balances add up to zero, credits and debits are the APPLIED amounts in and
out). On 0.15 the chainer's work is done as Blnk does it — every transaction but the newest
few is sealed into the chain, computed server-side — and ``chain_state`` points at the head.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from core.database import PgTarget, create_database, database_exists, drop_database
from core.errors import UsageError


@dataclass(frozen=True)
class GeneratedDatabase:
    name: str
    transactions: int
    size_bytes: int
    seconds: float
    server: PgTarget | None = None  # where it was made

    def drop(self) -> None:
        """Drop it (a demo database, at the end of the demo)."""
        if self.server is not None:
            drop_database(self.server, self.name)


def _script(name: str) -> str:
    return resources.files("core").joinpath("sql", name).read_text()


def create_fresh_database(server: PgTarget, name: str, *, replace: bool = False) -> None:
    """Create an empty database; with replace, drop an existing one of that name first."""
    if replace:
        drop_database(server, name)
    elif database_exists(server, name):
        raise UsageError(f"database {name!r} already exists (use --replace to recreate it)")
    create_database(server, name)


BLNK_VERSIONS = ("0.15", "0.12")
# The newest of Blnk's migrations (sql/*.sql) each version applies.
_LAST_MIGRATION = {"0.15": "1781162329.sql", "0.12": "1765154909.sql"}


def unchained_tail(transactions: int) -> int:
    """How many of the newest transactions the generated chain leaves unsealed (Blnk's chainer
    runs about 30 s behind; generated transactions are 13 s apart)."""
    return min(2, transactions // 10)


def _data_script(transactions: int, blnk_version: str) -> str:
    n = int(transactions)
    chained = n - unchained_tail(n)
    script = _script("blnk_data.sql")
    if blnk_version == "0.15":
        canonical = (
            "concat_ws('|', t.transaction_id, t.source, t.destination, t.amount::text, "
            "t.precise_amount::text, t.currency, t.status, t.reference, "
            "pg_temp.blnk_rfc3339(t.created_at))"
        )
        chain_hash = f"pg_temp.blnk_chain(repeat('0', 64), {canonical}) OVER (ORDER BY t.i)"
        chain_columns = ", chain_seq, chain_prev_hash, chain_hash"
        chain_values = (
            f", CASE WHEN x.i <= {chained} THEN x.i END"
            f", CASE WHEN x.i <= {chained} THEN "
            "coalesce(lag(x.running_hash) OVER (ORDER BY x.i), repeat('0', 64)) END"
            f", CASE WHEN x.i <= {chained} THEN x.running_hash END"
        )
    else:
        chain_hash, chain_columns, chain_values = "NULL::text", "", ""
    return (
        script.replace("{n}", str(n))
        .replace("{chained}", str(chained))
        .replace("{last_migration}", _LAST_MIGRATION[blnk_version])
        .replace("{chain_hash}", chain_hash)
        .replace("{chain_columns}", chain_columns)
        .replace("{chain_values}", chain_values)
    )


def populate(
    target: PgTarget,
    transactions: int,
    *,
    edge_objects: bool = False,
    blnk_version: str = "0.15",
) -> None:
    """Create the blnk schema of ``blnk_version`` (see BLNK_VERSIONS) in the (empty) target
    database and fill it. With edge_objects, also create schemas ``edge`` and ``"Ledger Ops"``
    holding what backups and restore tests must also get right (partitioned, unlogged and
    no-key tables, enum and domain types, materialized views, large objects, quoted names,
    TOAST-sized values, contrib extensions where available: see sql/blnk_edge_objects.sql)."""
    if transactions < 1:
        raise UsageError("the number of transactions must be at least 1")
    if blnk_version not in BLNK_VERSIONS:
        raise UsageError(
            f"Blnk version {blnk_version!r} is not one the generator makes "
            f"(choose {' or '.join(BLNK_VERSIONS)})"
        )
    with target.connect(autocommit=False) as conn:
        present = conn.execute("SELECT to_regnamespace('blnk') IS NOT NULL").fetchone()
        if present and present[0]:
            raise UsageError(f"database {target.dbname!r} already has a blnk schema")
        _execute(conn, _script("blnk_schema.sql"))
        if blnk_version == "0.15":
            _execute(conn, _script("blnk_chain.sql"))
            _execute(conn, _script("blnk_chain_functions.sql"))
        _execute(conn, _data_script(transactions, blnk_version))
        _execute(conn, _script("blnk_post_load.sql"))
        if blnk_version == "0.15":
            _execute(conn, _script("blnk_chain_post.sql"))
        if edge_objects:
            _execute(conn, _script("blnk_edge_objects.sql").replace("{n}", str(int(transactions))))
        conn.commit()
    with target.connect(autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def _execute(conn: psycopg.Connection[Any], script: str) -> None:
    # No parameters: the script is sent as one simple query, so '%' needs no escaping.
    conn.execute(script.encode())


def generate(
    server: PgTarget,
    name: str,
    transactions: int,
    *,
    replace: bool = False,
    edge_objects: bool = False,
    blnk_version: str = "0.15",
) -> GeneratedDatabase:
    """Create database ``name`` on the server of ``server`` holding ``transactions`` rows of
    Blnk transactions (plus balances, journal and the rest) in the shape of ``blnk_version``,
    and return what was made. With edge_objects, add the edge-case objects of ``populate``."""
    if blnk_version not in BLNK_VERSIONS:  # before anything is created
        raise UsageError(
            f"Blnk version {blnk_version!r} is not one the generator makes "
            f"(choose {' or '.join(BLNK_VERSIONS)})"
        )
    began = time.monotonic()
    create_fresh_database(server, name, replace=replace)
    target = server.with_dbname(name)
    try:
        populate(target, transactions, edge_objects=edge_objects, blnk_version=blnk_version)
    except BaseException:
        drop_database(server, name)
        raise
    with target.connect(autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return GeneratedDatabase(
        name, transactions, int(row[0]) if row else 0, time.monotonic() - began, server
    )
