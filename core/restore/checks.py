"""The checks a restored database must pass, each reported with expected vs found: row counts
and ledger aggregates against the manifest (taken in the dump's snapshot), object counts against
the source at backup time, the content digests when the manifest has them, the ledger proof
(core/restore/ledger_proof.py: Blnk's invariants, the hash chain and the chain anchors), and
amcheck on every B-tree index that has storage, where the extension is available.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from core.database import PgTarget
from core.dbstats import (
    LEGACY_OBJECT_KINDS,
    ledger_totals,
    legacy_object_counts,
    object_counts,
    row_counts,
    table_digests,
    user_schema_condition,
)
from core.manifest import LedgerAnchor, Manifest
from core.restore.check import Check
from core.restore.ledger_proof import LedgerProof, prove_ledger


@dataclass(frozen=True)
class RestoredChecks:
    checks: list[Check]  # comparisons, content digests, ledger proof, amcheck
    amcheck: str  # "ran on N B-tree indexes" or why not
    ledger_proof: LedgerProof


def run_restore_checks(
    target: PgTarget,
    manifest: Manifest,
    older_anchors: Sequence[tuple[str, LedgerAnchor]] = (),
    proof_notes: Sequence[str] = (),
) -> RestoredChecks:
    """Check the restored database: compare it with the manifest, prove the ledger inside it
    (against the manifest's chain anchor and ``older_anchors``, the (key, anchor) of older
    backups of the same ledger), and run amcheck. amcheck and the ledger proof run on their
    own connections alongside the comparisons."""
    with ThreadPoolExecutor(2, thread_name_prefix="restore-check") as pool:
        amcheck_run = pool.submit(_amcheck_on, target)
        proof_run = pool.submit(
            _prove_on, target, manifest.stats.ledger_anchor, older_anchors, proof_notes
        )
        checks = _compare(target, manifest)
        proof = proof_run.result()
        amcheck_checks, amcheck = amcheck_run.result()
    return RestoredChecks(checks + proof.checks + amcheck_checks, amcheck, proof)


def run_checks(target: PgTarget, manifest: Manifest) -> tuple[list[Check], str]:
    """``run_restore_checks`` without older anchors; return the checks and the amcheck status
    ("ran on N indexes" or why it could not run)."""
    done = run_restore_checks(target, manifest)
    return done.checks, done.amcheck


def _prove_on(
    target: PgTarget,
    anchor: LedgerAnchor | None,
    older_anchors: Sequence[tuple[str, LedgerAnchor]],
    notes: Sequence[str],
) -> LedgerProof:
    with target.connect(autocommit=True) as conn:
        return prove_ledger(conn, anchor, older_anchors, notes=notes)


def _compare(target: PgTarget, manifest: Manifest) -> list[Check]:
    checks: list[Check] = []
    with target.connect(autocommit=True) as conn:
        found_rows = row_counts(conn)
        for table, expected in sorted(manifest.stats.row_counts.items()):
            found = found_rows.get(table)
            checks.append(Check(f"rows {table}", found == expected, str(expected), str(found)))
        for table in sorted(set(found_rows) - set(manifest.stats.row_counts)):
            checks.append(Check(f"rows {table}", False, "(not in backup)", str(found_rows[table])))
        found_ledger = ledger_totals(conn)
        for currency, expected_totals in sorted(manifest.stats.ledger.items()):
            got = found_ledger.get(currency)
            for field_name in (
                "balance_sum",
                "balance_count",
                "transaction_count",
                "transaction_amount_sum",
            ):
                want = getattr(expected_totals, field_name)
                have = getattr(got, field_name) if got else None
                same = have is not None and Decimal(str(have)) == Decimal(str(want))
                checks.append(Check(f"ledger {currency} {field_name}", same, str(want), str(have)))
        # A manifest with only the first five kinds was counted with their first definitions.
        legacy = set(manifest.stats.objects) <= set(LEGACY_OBJECT_KINDS)
        found_objects = legacy_object_counts(conn) if legacy else object_counts(conn)
        for kind, expected in sorted(manifest.stats.objects.items()):
            found = found_objects.get(kind)
            checks.append(Check(f"objects {kind}", found == expected, str(expected), str(found)))
        if manifest.stats.content_digests is not None:
            checks += _compare_digests(manifest.stats.content_digests, table_digests(conn))
    return checks


def _compare_digests(expected: dict[str, str], found: dict[str, str]) -> list[Check]:
    """One check per table (and the large objects): the SHA-256 of its content as restored
    equals the one taken in the dump's snapshot."""
    checks = []
    for table in sorted(set(expected) | set(found)):
        want, have = expected.get(table), found.get(table)
        checks.append(
            Check(
                f"content {table}",
                want is not None and want == have,
                want or "(not in backup)",
                have or "(not restored)",
            )
        )
    return checks


def _amcheck_on(target: PgTarget) -> tuple[list[Check], str]:
    with target.connect(autocommit=True) as conn:
        return amcheck(conn)


def btree_indexes_to_check(conn: Any) -> list[tuple[int, str]]:
    """Return (oid, name) of the B-tree indexes amcheck can verify: valid, ready indexes with
    storage (relkind 'i': a partitioned table's index, 'I', has none) of user tables, of any
    persistence but temporary (other sessions' temp indexes cannot be read), and the TOAST
    indexes of those tables."""
    rows = conn.execute(
        f"""SELECT c.oid, format('%I.%I', n.nspname, c.relname) FROM pg_index i
            JOIN pg_class c ON c.oid = i.indexrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_am a ON a.oid = c.relam
            WHERE a.amname = 'btree' AND c.relkind = 'i' AND c.relpersistence <> 't'
            AND i.indisready AND i.indisvalid
            AND ({user_schema_condition("n")}
                 OR EXISTS (SELECT 1 FROM pg_class o JOIN pg_namespace o_n
                            ON o_n.oid = o.relnamespace
                            WHERE o.reltoastrelid = i.indrelid AND {user_schema_condition("o_n")}))
            ORDER BY 2"""
    ).fetchall()
    return [(int(oid), str(name)) for oid, name in rows]


def amcheck(conn: Any) -> tuple[list[Check], str]:
    """Run bt_index_check on every index of btree_indexes_to_check; return one passed Check or
    one failed Check per corrupt index, and the status ("ran on N B-tree indexes" or why not).
    amcheck is created for the run and dropped again if the database did not have it, so a
    database kept by ``restore --into`` holds exactly what the dump held."""
    had_amcheck = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'").fetchone()
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    except Exception as exc:  # the extension is optional: say why it did not run
        return [], f"not run: amcheck unavailable ({type(exc).__name__})"
    try:
        indexes = btree_indexes_to_check(conn)
        failures = []
        for oid, name in indexes:
            try:
                conn.execute("SELECT bt_index_check(%s::regclass)", (oid,))
            except Exception as exc:
                failures.append(
                    Check(f"amcheck {name}", False, "no corruption", str(exc).splitlines()[0])
                )
    finally:
        if not had_amcheck:
            conn.execute("DROP EXTENSION IF EXISTS amcheck")
    checks = failures or [
        Check("amcheck btree indexes", True, f"{len(indexes)} valid", f"{len(indexes)} valid")
    ]
    return checks, f"ran on {len(indexes)} B-tree indexes"
