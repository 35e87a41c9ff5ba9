"""The Blnk-shaped database generator makes a realistic, balanced ledger."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from core.blnkgen import generate
from core.database import PgTarget, databases_like, drop_database
from core.dbstats import ledger_totals, object_counts
from core.errors import UsageError


def test_generated_ledger_balances_to_zero_per_currency(blnk_db: PgTarget) -> None:
    with blnk_db.connect() as conn:
        totals = ledger_totals(conn)
        assert set(totals) == {"USD", "EUR", "GBP", "NGN"}
        assert all(Decimal(t.balance_sum) == 0 for t in totals.values())
        assert sum(t.transaction_count for t in totals.values()) == 2_000
        journal = conn.execute("SELECT count(*) FROM blnk.transaction_journal").fetchone()[0]
        applied = conn.execute(
            "SELECT count(*) FROM blnk.transactions WHERE status = 'APPLIED'"
        ).fetchone()[0]
        assert journal == 2 * applied


def test_generated_schema_has_blnks_tables_and_realistic_objects(blnk_db: PgTarget) -> None:
    with blnk_db.connect() as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'blnk'"
            ).fetchall()
        }
        assert {
            "ledgers",
            "identity",
            "balances",
            "accounts",
            "balance_monitors",
            "transactions",
            "transaction_journal",
            "balance_snapshots",
            "api_keys",
            "reconciliations",
            "matches",
            "external_transactions",
            "matching_rules",
            "lineage_outbox",
        } <= tables
        indexes = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'blnk'"
            ).fetchall()
        )
        assert "USING gin" in indexes["idx_transactions_meta_data"]
        assert "WHERE" in indexes["idx_transactions_queued"]
        types = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'blnk' AND table_name IN ('api_keys', 'transactions')"
            ).fetchall()
        )
        assert types["scopes"] == "ARRAY" and types["last_used_ip"] == "inet"
        assert types["amount"] == "numeric" and types["meta_data"] == "jsonb"
        row = conn.execute("SELECT transaction_id, hash FROM blnk.transactions LIMIT 1").fetchone()
        assert row[0].startswith("txn_") and len(row[1]) == 64
        # The plpgsql trigger really fires.
        conn.execute("UPDATE blnk.balances SET meta_data = meta_data WHERE id = 1")
        version = conn.execute("SELECT version FROM blnk.balances WHERE id = 1").fetchone()[0]
        assert version >= 2
        conn.rollback()
        counts = object_counts(conn)
        assert counts["functions"] >= 2 and counts["triggers"] >= 1
        assert counts["constraints"] > 30


def test_generating_over_an_existing_database_is_refused(
    pg_server: PgTarget, blnk_db: PgTarget
) -> None:
    with pytest.raises(UsageError, match="already exists"):
        generate(pg_server, blnk_db.dbname, 10)


# --- Blnk 0.15: statuses, migrations and the hash chain -------------------------------------------
def rfc3339nano(ts: datetime) -> str:
    """Go's ``t.UTC().Format(time.RFC3339Nano)`` for a timestamp lib/pq reads as UTC: the
    fraction to the nanosecond with trailing zeros dropped, none when it is zero, then Z."""
    fraction = f"{ts.microsecond:06d}000".rstrip("0")
    return ts.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def chain_hash(previous: str, fields: list[str], created_at: datetime) -> str:
    """Blnk's model.ComputeChainHash, written from its Go source, independently of our SQL."""
    canonical = "|".join([previous, *fields, rfc3339nano(created_at)])
    return hashlib.sha256(canonical.encode()).hexdigest()


def test_rfc3339nano_writes_what_go_writes() -> None:
    assert rfc3339nano(datetime(2025, 1, 1, 0, 2, 10, tzinfo=UTC)) == "2025-01-01T00:02:10Z"
    assert (
        rfc3339nano(datetime(2025, 1, 1, 0, 0, 13, 200000, tzinfo=UTC)) == "2025-01-01T00:00:13.2Z"
    )
    assert (
        rfc3339nano(datetime(2025, 1, 1, 0, 0, 26, 15838, tzinfo=UTC))
        == "2025-01-01T00:00:26.015838Z"
    )


def test_the_generated_hash_chain_is_blnks_recomputed_independently_in_python(
    blnk_db: PgTarget,
) -> None:
    with blnk_db.connect() as conn:
        rows = conn.execute(
            """SELECT chain_seq, chain_prev_hash, chain_hash, transaction_id,
                      coalesce(source, ''), coalesce(destination, ''),
                      coalesce(amount::text, ''), coalesce(precise_amount::text, ''),
                      coalesce(currency, ''), coalesce(status, ''), coalesce(reference, ''),
                      created_at
               FROM blnk.transactions WHERE chain_seq IS NOT NULL ORDER BY chain_seq"""
        ).fetchall()
        last_seq, head, genesis = conn.execute(
            "SELECT last_seq, head_hash, genesis_hash FROM blnk.chain_state "
            "WHERE chain_key = 'global'"
        ).fetchone()
        unchained = conn.execute(
            "SELECT count(*) FROM blnk.transactions WHERE chain_seq IS NULL"
        ).fetchone()[0]
    assert genesis == "0" * 64 and unchained == 2 and last_seq == len(rows) == 1_998
    assert [r[0] for r in rows] == list(range(1, 1_999))
    running = genesis
    for _seq, prev, stored, *fields, created_at in rows:
        assert prev == running
        running = chain_hash(running, fields, created_at)
        assert stored == running
    assert head == running
    # The timestamps exercise every RFC 3339 form: no fraction, trailing zeros, microseconds.
    forms = {len(rfc3339nano(r[-1])) for r in rows}
    assert {20, 22, 27} <= forms


def test_generated_transactions_follow_blnks_flows(blnk_db: PgTarget) -> None:
    with blnk_db.connect() as conn:
        statuses = dict(
            conn.execute("SELECT status, count(*) FROM blnk.transactions GROUP BY 1").fetchall()
        )
        assert set(statuses) == {"QUEUED", "APPLIED", "INFLIGHT", "VOID", "REJECTED"}
        # Every child is its parent's copy or settlement: same balances, currency and amount.
        pairs = conn.execute(
            """SELECT c.status, p.status, c.reference = p.reference || '_q',
                      (c.source, c.destination, c.currency, c.precise_amount)
                        = (p.source, p.destination, p.currency, p.precise_amount)
               FROM blnk.transactions c
               JOIN blnk.transactions p ON p.transaction_id = c.parent_transaction"""
        ).fetchall()
        assert all(same for *_kind, same in pairs)
        kinds = {(child, parent, copy) for child, parent, copy, _same in pairs}
        assert kinds == {
            ("APPLIED", "QUEUED", True),
            ("REJECTED", "QUEUED", True),
            ("INFLIGHT", "QUEUED", True),
            ("APPLIED", "INFLIGHT", False),  # a commit
            ("VOID", "INFLIGHT", False),
        }
        # Open inflight transactions hold exactly what the balances hold in flight.
        held, inflight = conn.execute(
            """SELECT (SELECT sum(precise_amount) FROM blnk.transactions t
                       WHERE status = 'INFLIGHT' AND NOT EXISTS (
                           SELECT 1 FROM blnk.transactions s
                           WHERE s.parent_transaction = t.transaction_id)),
                      (SELECT sum(inflight_credit_balance) FROM blnk.balances)"""
        ).fetchone()
        assert held == inflight > 0
        migrations = [
            r[0] for r in conn.execute("SELECT id FROM blnk.gorp_migrations ORDER BY id").fetchall()
        ]
        assert len(migrations) == 37 and migrations[-1] == "1781162329.sql"


def test_an_older_blnk_version_has_no_chain_and_its_own_columns(pg_server: PgTarget) -> None:
    name = f"blnk_gen_old_{uuid.uuid4().hex[:10]}"
    generate(pg_server, name, 100, blnk_version="0.12")
    try:
        with pg_server.with_dbname(name).connect() as conn:
            columns = {
                (r[0], r[1])
                for r in conn.execute(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = 'blnk'"
                ).fetchall()
            }
            newest = conn.execute("SELECT max(id) FROM blnk.gorp_migrations").fetchone()[0]
            totals = ledger_totals(conn)
    finally:
        drop_database(pg_server, name)
    assert ("transactions", "rate") in columns and ("balances", "currency_multiplier") in columns
    assert not {c for c in columns if c[1].startswith("chain_") or c[0] == "chain_state"}
    assert newest == "1765154909.sql"
    assert all(Decimal(t.balance_sum) == 0 for t in totals.values())


def test_an_unknown_blnk_version_is_refused_before_anything_is_created(
    pg_server: PgTarget,
) -> None:
    name = f"blnk_gen_bad_{uuid.uuid4().hex[:10]}"
    with pytest.raises(UsageError, match=r"0\.15 or 0\.12"):
        generate(pg_server, name, 10, blnk_version="0.9")
    assert databases_like(pg_server, name) == []
