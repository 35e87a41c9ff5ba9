"""The ledger proof in restore tests: a clean Blnk ledger is proven, and each kind of tampering
with the source before a backup is caught by exactly the check that should catch it — an
altered transaction by the chain hashes, a truncated chain by its length and head, a balance
off by one minor unit by I2 and I3, a history rewritten between two backups by the older
backup's chain anchor. Older Blnk versions skip the chain with a reason; a database that is
not Blnk skips the proof. Content digests (BACKUP_CONTENT_DIGEST) are recomputed and compared.

Tampering is done on the source, as a DBA bypassing Blnk's triggers would, before the backup
that is then restore-tested: the restore test sees only what the backup holds."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import psycopg
import pytest

from bot.render import json as render_json
from bot.render import text as render_text
from core.audit import Actor
from core.database import PgTarget, create_database, drop_database
from core.dbstats import LARGE_OBJECTS_KEY, ledger_anchor
from core.manifest import LedgerAnchor
from core.restore.check import Check
from core.restore.ledger_proof import LedgerProof, prove_ledger
from core.restore.service import RestoreReport
from core.services import Services
from tests.support.databases import make_database

pytestmark = pytest.mark.pg_versions

ACTOR = Actor("auditor", "cli")
LEDGER_CHECKS = {
    "ledger I1 balance = credit - debit",
    "ledger I1 inflight = inflight credit - inflight debit",
    "ledger I2 balances sum to zero",
    "ledger I3 debits = applied outflows",
    "ledger I3 credits = applied inflows",
}
I2 = "ledger I2 balances sum to zero"
CHAIN_CHECKS = {"chain genesis link", "chain links", "chain hashes", "chain length", "chain head"}
# Blnk's chainer, as the generator computes it (session functions pg_temp.blnk_chain_step and
# the running aggregate pg_temp.blnk_chain), and a row's canonical fields in its order.
_CHAIN_FUNCTIONS = resources.files("core").joinpath("sql", "blnk_chain_functions.sql").read_text()
CANONICAL = (
    "concat_ws('|', t.transaction_id, t.source, t.destination, t.amount::text, "
    "t.precise_amount::text, t.currency, t.status, t.reference, "
    "pg_temp.blnk_rfc3339(t.created_at))"
)


@pytest.fixture
def ledger(pg_server: PgTarget) -> Iterator[PgTarget]:
    """A fresh Blnk 0.15 ledger of 2,000 transactions (1,998 chained) for one test to tamper
    with."""
    name = make_database(pg_server, 2_000)
    yield pg_server.with_dbname(name)
    drop_database(pg_server, name)


@contextmanager
def services_for(make_settings: Any, target: PgTarget, **overrides: Any) -> Iterator[Services]:
    built = Services(make_settings(database=target.dbname, restore_tests=True, **overrides))
    try:
        yield built
    finally:
        built.close()


@contextmanager
def as_dba(target: PgTarget) -> Iterator[psycopg.Connection[Any]]:
    """A connection that writes past Blnk's immutability trigger (and foreign keys)."""
    with target.connect(autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        yield conn


def check_of(proof: LedgerProof, name: str) -> Check:
    return next(c for c in proof.checks if c.name == name)


def failed(report: RestoreReport) -> set[str]:
    return {c.name for c in report.failed_checks}


def check(report: RestoreReport, name: str) -> Check:
    return next(c for c in report.checks if c.name == name)


# --- a clean ledger -------------------------------------------------------------------------------
def test_a_clean_generated_ledger_is_proven_and_the_proof_is_kept_with_the_restore_test(
    make_settings: Any, blnk_db: PgTarget
) -> None:
    with blnk_db.connect() as conn:
        anchor = ledger_anchor(conn)
    assert anchor is not None and anchor.last_seq == 1_998  # the newest two wait for the chainer

    with services_for(make_settings, blnk_db) as services:
        manifest = services.backups.run(ACTOR).manifest
        assert manifest.stats.ledger_anchor == anchor
        assert manifest.stats.content_digests is None  # opt-in
        report = services.restores.test(ACTOR, manifest.key)

        assert report.passed, report.failed_checks
        names = {c.name for c in report.checks}
        assert LEDGER_CHECKS | CHAIN_CHECKS | {"chain anchor of this backup"} <= names
        proof = report.ledger_proof
        assert proof is not None
        assert proof["headline"] == (
            "ledger proven: 40 balances, 2,000 transactions, chain to seq 1,998"
        )
        assert proof["passed"] is True and proof["failed"] == [] and proof["skipped"] == []
        assert (proof["balances"], proof["transactions"], proof["chain_seq"]) == (40, 2000, 1998)
        assert proof["blnk_version"] == "0.15"
        assert any("2 transaction(s) not chained yet" in line for line in proof["info"])
        assert check(report, "chain hashes").found == "all 1,998 recompute"

        # Kept next to the backup (status) and in the audit log (metrics read it there).
        last = services.catalog.status().last_restore_test
        assert last is not None and last["ledger_proof"]["passed"] is True
        event = services.audit.events(action="restore_test")[0]
        assert event.details_dict()["ledger_proof"]["chain_seq"] == 1998

    text = render_text.restore(report)
    assert (
        "  ledger    ✓ ledger proven: 40 balances, 2,000 transactions, chain to seq 1,998" in text
    )
    assert render_json.restore(report)["ledger_proof"]["passed"] is True


# --- tampering, each caught by the right check ----------------------------------------------------
def test_an_altered_precise_amount_on_a_chained_transaction_fails_the_chain_hashes_only(
    make_settings: Any, ledger: PgTarget
) -> None:
    with as_dba(ledger) as conn:  # seq 11 is a QUEUED transaction: it moves no balance
        txn, status = conn.execute(
            "UPDATE blnk.transactions SET precise_amount = precise_amount + 1 "
            "WHERE chain_seq = 11 RETURNING transaction_id, status"
        ).fetchone()
    assert status == "QUEUED"

    with services_for(make_settings, ledger) as services:
        key = services.backups.run(ACTOR).manifest.key
        report = services.restores.test(ACTOR, key)

    assert failed(report) == {"chain hashes"}
    assert check(report, "chain hashes").found == f"1 do not recompute: seq 11 ({txn})"
    assert report.ledger_proof is not None
    assert report.ledger_proof["headline"] == "ledger proof FAILED: chain hashes"


@pytest.mark.parametrize(
    ("altered", "broken"), [(1, 2), (1_997, 1_998)], ids=["link 1 to 2", "the last link"]
)
def test_a_row_altered_and_its_own_hash_recomputed_fails_the_chain_links_only(
    ledger: PgTarget, altered: int, broken: int
) -> None:
    """The altered row hashes to its new hash as Blnk's chainer would have computed it, so
    the chain hashes recompute; but the next row still links to the old hash. Only the links
    see it: not the genesis link (seq 1 still links to genesis), not the head (seq 1,998 is
    untouched), not the length."""
    with as_dba(ledger) as conn:
        conn.execute(_CHAIN_FUNCTIONS)
        (old_hash,) = conn.execute(
            "UPDATE blnk.transactions SET reference = reference || '-altered' "
            "WHERE chain_seq = %s RETURNING chain_hash",
            (altered,),
        ).fetchone()
        (new_hash,) = conn.execute(
            f"""UPDATE blnk.transactions t
                SET chain_hash = pg_temp.blnk_chain_step(t.chain_prev_hash, NULL, {CANONICAL})
                WHERE t.chain_seq = %s RETURNING chain_hash""",
            (altered,),
        ).fetchone()
        assert new_hash != old_hash
        (txn,) = conn.execute(
            "SELECT transaction_id FROM blnk.transactions WHERE chain_seq = %s", (broken,)
        ).fetchone()
        proof = prove_ledger(conn)

    assert [c.name for c in proof.failed_checks] == ["chain links"]
    assert check_of(proof, "chain links").found == f"1 broken: seq {broken} ({txn})"
    assert check_of(proof, "chain hashes").found == "all 1,998 recompute"


def test_a_deleted_last_chained_transaction_fails_the_chain_length_and_head(
    make_settings: Any, ledger: PgTarget
) -> None:
    """Blnk's own verifier passes this chain: it checks the head only when the replayed chain
    is as long as chain_state says, and a truncated tail is exactly when it is not."""
    with as_dba(ledger) as conn:  # seq 1,998 is a QUEUED inflight transaction
        status = conn.execute(
            "DELETE FROM blnk.transactions WHERE chain_seq = 1998 RETURNING status"
        ).fetchone()
    assert status == ("QUEUED",)

    with services_for(make_settings, ledger) as services:
        key = services.backups.run(ACTOR).manifest.key
        report = services.restores.test(ACTOR, key)

    assert failed(report) == {"chain length", "chain head"}
    assert check(report, "chain length").found == "count 1,997, min 1, max 1,997, last_seq 1,998"
    assert check(report, "chain head").found == (
        "no transaction at seq 1,998 (the chain ends at seq 1,997)"
    )
    assert check(report, "chain links").passed and check(report, "chain hashes").passed


def test_a_balance_credited_one_minor_unit_too_much_fails_i2_and_the_i3_credits(
    make_settings: Any, ledger: PgTarget
) -> None:
    with as_dba(ledger) as conn:  # a credit as Blnk writes one: credit and balance move
        balance_id, credit = conn.execute(
            "UPDATE blnk.balances SET credit_balance = credit_balance + 1, balance = balance + 1 "
            "WHERE id = 7 RETURNING balance_id, credit_balance"
        ).fetchone()

    with services_for(make_settings, ledger) as services:
        key = services.backups.run(ACTOR).manifest.key
        report = services.restores.test(ACTOR, key)

    assert failed(report) == {
        "ledger I2 balances sum to zero",
        "ledger I3 credits = applied inflows",
    }
    assert check(report, "ledger I3 credits = applied inflows").found == (
        f"1 differ: {balance_id} (credit_balance {credit}, applied in {credit - 1})"
    )
    assert check(report, "ledger I2 balances sum to zero").found.startswith("Σ balance 1;")


@pytest.mark.parametrize(
    ("version", "also_failing"),
    [
        ("0.15", {"ledger I3 credits = applied inflows", "ledger I3 debits = applied outflows"}),
        ("0.12", set()),  # I3 is a warning only before 0.13: I2 alone fails
    ],
    ids=["blnk 0.15", "blnk 0.12"],
)
def test_balances_that_add_up_overall_but_not_per_currency_fail_i2(
    pg_server: PgTarget, version: str, also_failing: set[str]
) -> None:
    name = make_database(pg_server, 300, blnk_version=version)
    try:
        with as_dba(pg_server.with_dbname(name)) as conn:
            _move_one_unit_from_eur_to_usd(conn)
            proof = prove_ledger(conn)
    finally:
        drop_database(pg_server, name)

    assert {c.name for c in proof.failed_checks} == {I2} | also_failing
    # Only per currency: overall Σ balance is 0 and Σ credit = Σ debit, so nothing else shows.
    sums = re.fullmatch(
        r"per currency EUR: Σ balance -1, Σ credit (\d+), Σ debit (\d+); "
        r"USD: Σ balance 1, Σ credit (\d+), Σ debit (\d+)",
        check_of(proof, I2).found,
    )
    assert sums is not None, check_of(proof, I2).found
    eur_credit, eur_debit, usd_credit, usd_debit = map(int, sums.groups())
    assert (eur_debit - eur_credit, usd_credit - usd_debit) == (1, 1)


def test_per_currency_sums_are_not_required_once_a_transaction_crosses_currencies(
    ledger: PgTarget,
) -> None:
    """Blnk lets a transaction move money between balances of different currencies; then
    only the overall sums must hold, and the per-currency ones are shown, not failed."""
    with as_dba(ledger) as conn:
        usd, eur = _move_one_unit_from_eur_to_usd(conn)
        conn.execute(  # the APPLIED transaction that moved it (not chained yet)
            """INSERT INTO blnk.transactions (transaction_id, source, destination, reference,
                   amount, precise_amount, precision, currency, status, hash, created_at)
               VALUES ('txn_fx', %s, %s, 'ref_fx', 0.01, 1, 100, 'EUR', 'APPLIED',
                       repeat('b', 64), now())""",
            (eur, usd),
        )
        proof = prove_ledger(conn)

    assert proof.passed, proof.failed_checks
    assert re.fullmatch(
        r"Σ balance 0, Σ credit = Σ debit = \d+ \(per currency not required: transactions "
        r"cross currencies; EUR: Σ balance -1, [^;]+; USD: Σ balance 1, [^;]+\)",
        check_of(proof, I2).found,
    ), check_of(proof, I2).found


@pytest.mark.parametrize("status", ["REJECTED", "QUEUED"])
def test_a_transaction_across_currencies_that_moved_nothing_exempts_nothing(
    pg_server: PgTarget, status: str
) -> None:
    # On Blnk 0.12 (where I3 only warns) I2 is what catches the imbalance: a rejected or
    # queued transfer between currencies must not switch the per-currency sums off.
    name = make_database(pg_server, 300, blnk_version="0.12")
    try:
        with as_dba(pg_server.with_dbname(name)) as conn:
            usd, eur = _move_one_unit_from_eur_to_usd(conn)
            conn.execute(
                """INSERT INTO blnk.transactions (transaction_id, source, destination, reference,
                       amount, precise_amount, precision, currency, status, hash, created_at)
                   VALUES ('txn_fx', %s, %s, 'ref_fx', 0.01, 1, 100, 'EUR', %s,
                           repeat('b', 64), now())""",
                (eur, usd, status),
            )
            proof = prove_ledger(conn)
    finally:
        drop_database(pg_server, name)
    assert [c.name for c in proof.failed_checks] == [I2]


def _move_one_unit_from_eur_to_usd(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    """Credit one minor unit to the first USD balance and debit it from the first EUR balance,
    as a DBA bypassing Blnk would: every balance still equals credit - debit, and overall
    Σ balance = 0 and Σ credit = Σ debit; only per currency do the sums no longer hold.
    Return the two balance ids (USD, EUR)."""
    (usd,) = conn.execute(
        "UPDATE blnk.balances SET credit_balance = credit_balance + 1, balance = balance + 1 "
        "WHERE id = (SELECT min(id) FROM blnk.balances WHERE currency = 'USD') "
        "RETURNING balance_id"
    ).fetchone()
    (eur,) = conn.execute(
        "UPDATE blnk.balances SET debit_balance = debit_balance + 1, balance = balance - 1 "
        "WHERE id = (SELECT min(id) FROM blnk.balances WHERE currency = 'EUR') "
        "RETURNING balance_id"
    ).fetchone()
    return str(usd), str(eur)


def test_a_history_rewritten_between_two_backups_is_caught_by_the_older_backups_anchor(
    make_settings: Any, ledger: PgTarget
) -> None:
    """A fabricated APPLIED transaction is slipped in at seq 500 with the balances it moves
    and the whole chain after it recomputed: the newer backup is internally consistent (Blnk's
    verifier and every other check pass) — only the older backup's anchor shows the rewrite."""
    with services_for(make_settings, ledger) as services:
        first = services.backups.run(ACTOR).manifest
        assert first.stats.ledger_anchor is not None

        with as_dba(ledger) as conn:
            _insert_mid_chain_and_rechain(conn, at_seq=500)
        second = services.backups.run(ACTOR).manifest
        assert second.stats.ledger_anchor is not None
        assert second.stats.ledger_anchor.last_seq == first.stats.ledger_anchor.last_seq + 1

        report = services.restores.test(ACTOR, second.key)
        assert failed(report) == {f"chain anchor of {first.key}"}
        anchor_check = check(report, f"chain anchor of {first.key}")
        assert anchor_check.expected == (f"seq 1,998 hash {first.stats.ledger_anchor.head_hash}")
        assert anchor_check.found != anchor_check.expected
        assert report.ledger_proof is not None and report.ledger_proof["passed"] is False

        # The older backup on its own is still proven: its history is the true one.
        assert services.restores.test(ACTOR, first.key).passed


def _insert_mid_chain_and_rechain(conn: psycopg.Connection[Any], at_seq: int) -> None:
    conn.execute(_CHAIN_FUNCTIONS)
    source, destination = conn.execute(
        "SELECT source, destination FROM blnk.transactions WHERE chain_seq = 1"
    ).fetchone()
    conn.execute(
        "UPDATE blnk.transactions SET chain_seq = -chain_seq WHERE chain_seq >= %s", (at_seq,)
    )
    conn.execute("UPDATE blnk.transactions SET chain_seq = 1 - chain_seq WHERE chain_seq < 0")
    conn.execute(
        """INSERT INTO blnk.transactions (transaction_id, source, destination, reference, amount,
               precise_amount, precision, currency, description, status, hash, created_at,
               effective_date, chain_seq)
           SELECT 'txn_fabricated', %s, %s, 'ref_fabricated', 5000, 500000, 100, currency,
                  'consulting', 'APPLIED', repeat('a', 64), created_at + interval '1 second',
                  created_at, %s
           FROM blnk.transactions WHERE chain_seq = %s""",
        (source, destination, at_seq, at_seq - 1),
    )
    conn.execute(
        """UPDATE blnk.balances SET debit_balance = debit_balance + 500000,
                  balance = balance - 500000 WHERE balance_id = %s""",
        (source,),
    )
    conn.execute(
        """UPDATE blnk.balances SET credit_balance = credit_balance + 500000,
                  balance = balance + 500000 WHERE balance_id = %s""",
        (destination,),
    )
    # Recompute every link from the fabricated one on, as Blnk's chainer would have.
    conn.execute(
        f"""UPDATE blnk.transactions t SET chain_hash = r.h, chain_prev_hash = r.prev
           FROM (SELECT c.id, c.h, coalesce(lag(c.h) OVER (ORDER BY c.chain_seq), c.start) AS prev
                 FROM (SELECT t.id, t.chain_seq, s.h AS start,
                              pg_temp.blnk_chain(s.h, {CANONICAL})
                                  OVER (ORDER BY t.chain_seq) AS h
                       FROM blnk.transactions t,
                            (SELECT chain_hash::text AS h FROM blnk.transactions
                             WHERE chain_seq = %(before)s) s
                       WHERE t.chain_seq >= %(at)s) c) r
           WHERE t.id = r.id""",
        {"before": at_seq - 1, "at": at_seq},
    )
    conn.execute(
        """UPDATE blnk.chain_state SET last_seq = h.chain_seq, head_hash = h.chain_hash
           FROM (SELECT chain_seq, chain_hash FROM blnk.transactions
                 WHERE chain_seq IS NOT NULL ORDER BY chain_seq DESC LIMIT 1) h
           WHERE chain_key = 'global'"""
    )
    with_proof = prove_ledger(conn)  # consistent in itself: nothing but an anchor can tell
    assert with_proof.passed, with_proof.failed_checks


# --- what the database has decides what runs ------------------------------------------------
def test_an_old_blnk_database_skips_the_chain_checks_with_a_reason_and_still_passes(
    make_settings: Any, pg_server: PgTarget
) -> None:
    name = make_database(pg_server, 500, blnk_version="0.12")
    try:
        with services_for(make_settings, pg_server.with_dbname(name)) as services:
            manifest = services.backups.run(ACTOR).manifest
            assert manifest.stats.ledger_anchor is None
            report = services.restores.test(ACTOR, manifest.key)
    finally:
        drop_database(pg_server, name)

    assert report.passed, report.failed_checks
    names = {c.name for c in report.checks}
    assert names >= LEDGER_CHECKS and not {n for n in names if n.startswith("chain ")}
    proof = report.ledger_proof
    assert proof is not None and proof["passed"] is True and proof["blnk_version"] == "0.12"
    assert proof["skipped"] == [
        "hash chain: Blnk 0.12 has no transaction hash chain (it came with 0.15)"
    ]
    assert proof["headline"] == "ledger proven: 40 balances, 500 transactions (no hash chain)"
    assert "  skipped   hash chain: Blnk 0.12 has no transaction hash chain" in (
        render_text.restore(report)
    )


def test_a_database_that_is_not_blnk_skips_the_ledger_proof_whole(
    make_settings: Any, pg_server: PgTarget
) -> None:
    name = f"not_blnk_{uuid.uuid4().hex[:10]}"
    create_database(pg_server, name)
    try:
        with pg_server.with_dbname(name).connect(autocommit=True) as conn:
            conn.execute("CREATE TABLE invoices (id int PRIMARY KEY, total numeric)")
            conn.execute("INSERT INTO invoices SELECT i, i * 1.5 FROM generate_series(1, 50) i")
        with services_for(make_settings, pg_server.with_dbname(name)) as services:
            report = services.restores.test(ACTOR, services.backups.run(ACTOR).manifest.key)
            details = services.audit.events(action="restore_test")[0].details_dict()
    finally:
        drop_database(pg_server, name)

    assert report.passed, report.failed_checks
    assert report.ledger_proof == {
        "ran": False,
        "headline": "ledger not proven: ledger proof: the database has no blnk schema, "
        "so it is not a Blnk ledger",
        "skipped": ["ledger proof: the database has no blnk schema, so it is not a Blnk ledger"],
    }
    assert "passed" not in details["ledger_proof"]  # no ledger gauge for metrics to show


def test_i3_is_exact_from_blnk_0_13_and_a_warning_before(pg_server: PgTarget) -> None:
    """One minor unit of credit moved from one balance to another: I1 and I2 still hold, only
    I3 sees that the credits no longer match the APPLIED transactions."""
    for version, exact in (("0.15", True), ("0.12", False)):
        name = make_database(pg_server, 300, blnk_version=version)
        target = pg_server.with_dbname(name)
        try:
            with as_dba(target) as conn:
                ids = conn.execute(
                    "SELECT id FROM blnk.balances WHERE currency = 'USD' AND credit_balance > 0 "
                    "ORDER BY id LIMIT 2"
                ).fetchall()
                for (balance,), delta in zip(ids, (1, -1), strict=True):
                    conn.execute(
                        "UPDATE blnk.balances SET credit_balance = credit_balance + %s, "
                        "balance = balance + %s WHERE id = %s",
                        (delta, delta, balance),
                    )
                proof = prove_ledger(conn)
        finally:
            drop_database(pg_server, name)
        i3 = next(c for c in proof.checks if c.name == "ledger I3 credits = applied inflows")
        assert i3.found.startswith("2 differ: ")
        if exact:
            assert [c.name for c in proof.failed_checks] == [i3.name] and proof.warnings == []
        else:
            assert proof.passed and i3.passed and "warning only" in i3.found
            assert len(proof.warnings) == 1 and "exact from 0.13" in proof.warnings[0]
            assert proof.headline().endswith("(no hash chain); 1 warning(s)")


# --- content digests ------------------------------------------------------------------------------
def test_content_digests_are_taken_in_the_snapshot_and_recomputed_when_opted_in(
    make_settings: Any, blnk_db: PgTarget, s3: Any, bucket: str
) -> None:
    with services_for(make_settings, blnk_db, backup_content_digest=True) as services:
        manifest = services.backups.run(ACTOR).manifest
        digests = manifest.stats.content_digests
        assert digests is not None
        assert set(digests) == set(manifest.stats.row_counts) | {LARGE_OBJECTS_KEY}

        report = services.restores.test(ACTOR, manifest.key)
        assert report.passed, report.failed_checks
        assert {f"content {table}" for table in digests} <= {c.name for c in report.checks}

        manifest_key = manifest.key + ".manifest.json"
        body = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
        body["stats"]["content_digests"]["blnk.balances"] = "0" * 64
        s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(body).encode())
        tampered = services.restores.test(ACTOR, manifest.key)
    assert failed(tampered) == {"content blnk.balances"}


def test_the_proof_does_not_depend_on_the_sessions_settings(blnk_db: PgTarget) -> None:
    with blnk_db.connect(autocommit=True) as conn:
        baseline = prove_ledger(conn)
        for setting in (
            "SET DateStyle = 'SQL, DMY'",
            "SET TimeZone = 'America/St_Johns'",
            "SET extra_float_digits = 0",
        ):
            conn.execute(setting)
        again = prove_ledger(conn)
        assert conn.execute("SHOW DateStyle").fetchone() == ("SQL, DMY",)  # put back
    assert baseline.passed and again.passed and again.checks == baseline.checks


def test_an_unenabled_chain_passes_as_empty_and_a_bare_blnk_schema_proves_nothing(
    pg_server: PgTarget,
) -> None:
    name = make_database(pg_server, 100)
    try:
        with as_dba(pg_server.with_dbname(name)) as conn:  # as if the chainer never ran
            conn.execute(
                "UPDATE blnk.transactions "
                "SET chain_seq = NULL, chain_prev_hash = NULL, chain_hash = NULL"
            )
            conn.execute("UPDATE blnk.chain_state SET last_seq = 0, head_hash = genesis_hash")
            empty = prove_ledger(conn, LedgerAnchor(0, "0" * 64))
            conn.execute("DROP TABLE blnk.balances, blnk.transactions CASCADE")
            bare = prove_ledger(conn)
    finally:
        drop_database(pg_server, name)
    assert empty.passed and empty.chain_seq == 0, empty.failed_checks
    assert any("the hash chain is empty" in line for line in empty.info)
    assert any(line.startswith("100 transaction(s) not chained yet") for line in empty.info)
    assert not bare.ran and "passed" not in bare.summary()
    assert bare.headline() == (
        "ledger not proven: I1, I2, I3 (balances): blnk.balances does not exist"
    )
