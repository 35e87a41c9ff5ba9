"""The Blnk-shaped database generator makes a realistic, balanced ledger."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core.blnkgen import generate
from core.database import PgTarget
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
