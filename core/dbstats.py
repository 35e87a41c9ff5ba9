"""What a database holds, as the manifest records it and restore tests compare it: exact row
counts, Blnk ledger aggregates and schema object counts. Each function takes an open connection,
so it reads whatever snapshot that connection's transaction sees."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from core.manifest import LedgerTotals

_USER_SCHEMAS = """
    n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
"""
_NOT_FROM_EXTENSION = """
    NOT EXISTS (SELECT 1 FROM pg_depend d
                WHERE d.classid = {catalog}::regclass AND d.objid = {oid} AND d.deptype = 'e')
"""


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
