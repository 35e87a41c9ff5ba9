"""What a database holds, as the manifest records it and restore tests compare it: exact row
counts, Blnk ledger aggregates, schema object counts and content digests. Each function takes
an open connection, so it reads whatever snapshot that connection's transaction sees.

What counts as a *user table* everywhere here: an ordinary table (``relkind 'r'``: a plain,
unlogged or legacy-inheritance table, or a leaf partition) outside the system and temporary
schemas and not owned by an extension. Partitioned parents hold no rows of their own, so rows
are counted (and digested) once, in the leaf partition that stores them; an inheritance parent
is read with ``ONLY``, so its children's rows are not counted twice. Materialized views are not
user tables: their rows are not in a dump (it holds the definition and a ``REFRESH``), so their
population is compared as an object count instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from core.manifest import LedgerAnchor, LedgerTotals


def user_schema_condition(alias: str) -> str:
    """SQL: the namespace ``alias`` is a user schema (not a system, TOAST or temp schema)."""
    return f"""{alias}.nspname NOT IN ('pg_catalog', 'information_schema')
        AND {alias}.nspname NOT LIKE 'pg\\_toast%' AND {alias}.nspname NOT LIKE 'pg\\_temp%'"""


_USER_SCHEMAS = user_schema_condition("n")


def _not_member(catalog: str, oid: str) -> str:
    """SQL: the object ``oid`` of ``catalog`` does not belong to an extension."""
    return f"""NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass
        AND d.objid = {oid} AND d.deptype = 'e')"""


def user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str, bool]]:
    """Return (schema, table, unlogged) of every user table, sorted by schema and name."""
    rows = conn.execute(
        f"""SELECT n.nspname, c.relname, c.relpersistence = 'u' FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND {_USER_SCHEMAS} AND {_not_member("pg_class", "c.oid")}
            ORDER BY 1, 2"""
    ).fetchall()
    return [(str(schema), str(table), bool(unlogged)) for schema, table, unlogged in rows]


def _in_recovery(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def _table_ref(schema: str, table: str) -> sql.Composable:
    return sql.SQL("ONLY {}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Exact row counts of every user table, keyed "schema.table" (names unquoted).

    Leaf partitions are counted, partitioned parents are not, so each row counts once. On a
    hot standby unlogged tables count as empty: their rows cannot be read there, and pg_dump
    does not dump them from a standby either.
    """
    standby = _in_recovery(conn)
    counts: dict[str, int] = {}
    for schema, table, unlogged in user_tables(conn):
        if standby and unlogged:
            counts[f"{schema}.{table}"] = 0
            continue
        query = sql.SQL("SELECT count(*) FROM {}").format(_table_ref(schema, table))
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


def ledger_anchor(conn: psycopg.Connection[Any]) -> LedgerAnchor | None:
    """Where Blnk's transaction hash chain stands (``blnk.chain_state``, chain ``global``): its
    last sequence number and head hash. None for a database without the chain (Blnk before
    0.15, or not Blnk). Blnk's chainer advances ``chain_state`` in the same transaction as it
    seals rows, so in one snapshot the anchor and the chained rows agree."""
    present = conn.execute("SELECT to_regclass('blnk.chain_state') IS NOT NULL").fetchone()
    if not present or not present[0]:
        return None
    row = conn.execute(
        "SELECT last_seq, rtrim(head_hash) FROM blnk.chain_state WHERE chain_key = 'global'"
    ).fetchone()
    if row is None or row[0] is None or row[1] is None:
        return None
    return LedgerAnchor(last_seq=int(row[0]), head_hash=str(row[1]))


# --- object counts ------------------------------------------------------------------------------

# The kinds the first manifests recorded, with the definitions they were recorded with.
LEGACY_OBJECT_KINDS = ("tables", "indexes", "constraints", "functions", "triggers")


def _relations(where: str) -> str:
    return f"""SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_USER_SCHEMAS} AND {_not_member("pg_class", "c.oid")} AND {where}"""


# Each kind counts what a restore with pg_restore --no-owner --no-privileges recreates the same
# on any server version from 13 on: ownership and privileges are not counted; extension members
# (and indexes, constraints, triggers of extension-owned tables or types) are left out, since
# the restore creates the extension's default version, whose objects may differ; NOT NULL
# constraints are left out (PostgreSQL 18 catalogs them, earlier versions do not); the public
# schema and plpgsql are in every new database, dumped or not; amcheck is left out because
# restore checks install it.
_OBJECT_QUERIES = {
    "schemas": f"""SELECT count(*) FROM pg_namespace n WHERE {_USER_SCHEMAS}
        AND n.nspname <> 'public' AND {_not_member("pg_namespace", "n.oid")}""",
    "tables": _relations("c.relkind IN ('r', 'p')"),
    "partitioned tables": _relations("c.relkind = 'p'"),
    "unlogged tables": _relations("c.relkind = 'r' AND c.relpersistence = 'u'"),
    "indexes": _relations(
        "c.relkind IN ('i', 'I') AND "
        + _not_member("pg_class", "(SELECT x.indrelid FROM pg_index x WHERE x.indexrelid = c.oid)")
    ),
    "sequences": _relations("c.relkind = 'S'"),
    "views": _relations("c.relkind = 'v'"),
    "materialized views": _relations("c.relkind = 'm'"),
    "populated materialized views": _relations("c.relkind = 'm' AND c.relispopulated"),
    "constraints": f"""SELECT count(*) FROM pg_constraint o
        JOIN pg_namespace n ON n.oid = o.connamespace
        WHERE {_USER_SCHEMAS} AND o.contype <> 'n'
        AND {_not_member("pg_class", "o.conrelid")} AND {_not_member("pg_type", "o.contypid")}""",
    "functions": f"""SELECT count(*) FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {_USER_SCHEMAS} AND {_not_member("pg_proc", "p.oid")}""",
    "triggers": f"""SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND {_USER_SCHEMAS} AND {_not_member("pg_class", "c.oid")}""",
    # Enum, domain, composite, range and base types; not array types, not the row types of
    # tables and views, not the multiranges PostgreSQL 14+ makes for every range.
    "types": f"""SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE {_USER_SCHEMAS} AND {_not_member("pg_type", "t.oid")}
        AND (t.typtype IN ('b', 'd', 'e', 'r')
             OR (t.typtype = 'c'
                 AND (SELECT r.relkind FROM pg_class r WHERE r.oid = t.typrelid) = 'c'))
        AND NOT EXISTS (SELECT 1 FROM pg_type a WHERE a.typarray = t.oid)""",
    "extensions": """SELECT count(*) FROM pg_extension
        WHERE extname NOT IN ('plpgsql', 'amcheck')""",
    "large objects": "SELECT count(*) FROM pg_largeobject_metadata",
}

_LEGACY_QUERIES = {
    "tables": f"""SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND {_USER_SCHEMAS}
        AND {_not_member("pg_class", "c.oid")}""",
    "indexes": f"""SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('i', 'I') AND {_USER_SCHEMAS}
        AND {_not_member("pg_class", "c.oid")}""",
    "constraints": f"""SELECT count(*) FROM pg_constraint o
        JOIN pg_namespace n ON n.oid = o.connamespace WHERE {_USER_SCHEMAS}""",
    "functions": f"""SELECT count(*) FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_USER_SCHEMAS}
        AND {_not_member("pg_proc", "p.oid")}""",
    "triggers": f"""SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND {_USER_SCHEMAS}""",
}


def _counts(conn: psycopg.Connection[Any], queries: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, query in queries.items():
        row = conn.execute(query).fetchone()
        counts[name] = int(row[0]) if row else 0
    return counts


def object_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Count the user schema objects by kind: schemas, tables (and of them partitioned and
    unlogged ones), indexes (partitioned ones included), sequences, views, materialized views
    (and of them the populated ones), constraints, functions, triggers, types, extensions and
    large objects. Definitions are chosen so that a correct restore finds the same numbers."""
    return _counts(conn, _OBJECT_QUERIES)


def legacy_object_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """The five counts with the definitions manifests recorded before ``object_counts`` grew
    (only right between servers of one major version); to check those manifests."""
    return _counts(conn, _LEGACY_QUERIES)


# --- content digests ----------------------------------------------------------------------------

LARGE_OBJECTS_KEY = "large objects"  # never a "schema.table" key: it has no dot
_LO_CHUNK = 1 << 20

# Output settings that make every type's text form the same on any server and session: dates,
# times, intervals, floats, bytea, money, reg* names and the encoding of the stream. With
# row_security off, a row-level security policy that would hide rows makes the digest fail
# instead of silently covering fewer rows (as pg_dump does).
_CANONICAL_OUTPUT = {
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "search_path": "pg_catalog",
    "client_encoding": "UTF8",
    "row_security": "off",
}


@contextmanager
def _canonical_output(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Inside a transaction (or savepoint), set the canonical output settings for this
    transaction only, and put back what was there before (settings made in a savepoint
    outlive its release)."""
    with conn.transaction():
        names = list(_CANONICAL_OUTPUT)
        row = conn.execute(
            sql.SQL("SELECT {}").format(
                sql.SQL(", ").join(sql.SQL("current_setting({})").format(n) for n in names)
            )
        ).fetchone()
        assert row is not None
        previous = dict(zip(names, row, strict=True))
        for name, value in _CANONICAL_OUTPUT.items():
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        yield
        for name, value in previous.items():
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))


def table_digest_query(schema: str, table: str) -> sql.Composed:
    """The COPY whose output ``table_digests`` hashes: every row's text form, one a line,
    sorted byte-wise. With the canonical settings it reproduces outside this program:
    ``psql -c "COPY (…) TO STDOUT" | sha256sum``."""
    return sql.SQL(
        "COPY (SELECT r FROM (SELECT ROW(x.*)::text AS r FROM {} AS x) AS rows_as_text "
        'ORDER BY r COLLATE "C") TO STDOUT'
    ).format(_table_ref(schema, table))


def table_digests(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Return a SHA-256 (hex) of the content of every user table, keyed "schema.table", and of
    the large objects under LARGE_OBJECTS_KEY.

    A table's digest is the SHA-256 of its rows' text forms (``ROW(t.*)::text``, which has
    every column that is not dropped, generated ones included), one a line as COPY writes them,
    sorted byte-wise: so it needs no key, counts duplicate rows, and does not depend on the
    physical order, the collation, the server version (15 to 18) or a dump and restore. Output
    settings are fixed for the duration (see _CANONICAL_OUTPUT) and rows stream through COPY,
    so nothing is held whole in memory; the sort runs on the server. Unlogged tables on a hot
    standby digest as empty (as pg_dump dumps them there). For a consistent picture of a live
    database, call it inside a REPEATABLE READ transaction.
    """
    standby = _in_recovery(conn)
    digests: dict[str, str] = {}
    with _canonical_output(conn):
        for schema, table, unlogged in user_tables(conn):
            digest = hashlib.sha256()
            if not (standby and unlogged):
                with (
                    conn.cursor() as cursor,
                    cursor.copy(table_digest_query(schema, table)) as copy,
                ):
                    for chunk in copy:
                        digest.update(chunk)
            digests[f"{schema}.{table}"] = digest.hexdigest()
        digests[LARGE_OBJECTS_KEY] = _large_objects_digest(conn)
    return digests


def _large_objects_digest(conn: psycopg.Connection[Any]) -> str:
    """SHA-256 over one line per large object in OID order: "oid<TAB>size<TAB>sha256 of its
    bytes" (holes read as zeros, as lo_read and so pg_dump see them). pg_dump keeps large
    objects' OIDs, and tables refer to them by OID, so the OID is part of the content.

    The server hashes each object's first MiB; objects of a MiB or more are read again in
    MiB chunks and hashed here. Rows come through a server-side cursor, 1,000 at a time.
    """
    total = hashlib.sha256()
    query = f"""SELECT m.oid, length(c.first), encode(sha256(c.first), 'hex')
        FROM (SELECT oid FROM pg_largeobject_metadata ORDER BY oid) AS m
        CROSS JOIN LATERAL (SELECT lo_get(m.oid, 0, {_LO_CHUNK}) AS first OFFSET 0) AS c"""
    with conn.cursor(name="blnk_large_object_digest") as cursor:
        cursor.itersize = 1000
        cursor.execute(query)
        while batch := cursor.fetchmany(1000):
            for oid, first_length, first_sha in batch:
                if first_length < _LO_CHUNK:
                    size, sha = int(first_length), str(first_sha)
                else:
                    size, sha = _large_object_sha256(conn, int(oid))
                total.update(f"{oid}\t{size}\t{sha}\n".encode())
    return total.hexdigest()


def _large_object_sha256(conn: psycopg.Connection[Any], oid: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while True:
        row = conn.execute("SELECT lo_get(%s, %s, %s)", (oid, size, _LO_CHUNK)).fetchone()
        data = bytes(row[0]) if row and row[0] is not None else b""
        digest.update(data)
        size += len(data)
        if len(data) < _LO_CHUNK:
            return size, digest.hexdigest()
