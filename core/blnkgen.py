"""A realistic Blnk-shaped database for demos, tests and benchmarks, generated server-side.

Schema ``blnk`` with Blnk's main tables, realistic column types, keys, CHECK constraints, GIN and
partial indexes, a plpgsql trigger and a materialized view. Money only moves between balances
of one currency, so per currency the balances add up to zero.
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


def _script(name: str) -> str:
    return resources.files("core").joinpath("sql", name).read_text()


def create_fresh_database(server: PgTarget, name: str, *, replace: bool = False) -> None:
    """Create an empty database; with replace, drop an existing one of that name first."""
    if replace:
        drop_database(server, name)
    elif database_exists(server, name):
        raise UsageError(f"database {name!r} already exists (use --replace to recreate it)")
    create_database(server, name)


def populate(target: PgTarget, transactions: int, *, edge_objects: bool = False) -> None:
    """Create the blnk schema in the (empty) target database and fill it. With edge_objects,
    also create schemas ``edge`` and ``"Ledger Ops"`` holding what backups and restore tests
    must also get right (partitioned, unlogged and no-key tables, enum and domain types,
    materialized views, large objects, quoted names, TOAST-sized values, contrib extensions
    where available: see sql/blnk_edge_objects.sql)."""
    if transactions < 1:
        raise UsageError("the number of transactions must be at least 1")
    with target.connect(autocommit=False) as conn:
        present = conn.execute("SELECT to_regnamespace('blnk') IS NOT NULL").fetchone()
        if present and present[0]:
            raise UsageError(f"database {target.dbname!r} already has a blnk schema")
        _execute(conn, _script("blnk_schema.sql"))
        _execute(conn, _script("blnk_data.sql").replace("{n}", str(int(transactions))))
        _execute(conn, _script("blnk_post_load.sql"))
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
) -> GeneratedDatabase:
    """Create database ``name`` on the server of ``server`` holding ``transactions`` rows of
    Blnk transactions (plus balances, journal and the rest), and return what was made. With
    edge_objects, add the edge-case objects of ``populate``."""
    began = time.monotonic()
    create_fresh_database(server, name, replace=replace)
    target = server.with_dbname(name)
    try:
        populate(target, transactions, edge_objects=edge_objects)
    except BaseException:
        drop_database(server, name)
        raise
    with target.connect(autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return GeneratedDatabase(
        name, transactions, int(row[0]) if row else 0, time.monotonic() - began
    )
