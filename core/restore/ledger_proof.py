"""Ledger proof: the checks that show the Blnk ledger inside a restored copy adds up and that no
sealed transaction was altered, each reported as expected vs found like the restore checks.

What Blnk guarantees in a consistent database (read from Blnk's source, v0.15):

- I1, per balance: ``balance = credit_balance - debit_balance`` and ``inflight_balance =
  inflight_credit_balance - inflight_debit_balance``;
- I2, across all balances: ``Σ balance = 0`` and ``Σ credit_balance = Σ debit_balance`` — per
  currency too, unless some transaction moves money between balances of different currencies;
- I3, per balance: ``debit_balance`` is the sum of the APPLIED amounts
  (``coalesce(precise_amount, amount)``) it is the source of, ``credit_balance`` of those it is
  the destination of. Exact from Blnk 0.13 (the balance update and the insert became one
  database transaction); on older databases differences are reported as warnings;
- from 0.15, the transaction hash chain: ``chain_hash`` = hex SHA-256 of ``chain_prev_hash``,
  transaction_id, source, destination, amount, precise_amount, currency, status, reference and
  created_at (RFC 3339 in UTC with nanoseconds, trailing zeros dropped), ``|``-joined, NULLs
  as empty strings; seq 1 links to ``chain_state.genesis_hash``; ``chain_state.head_hash`` is
  the hash at ``last_seq``. Verified here link by link, the genesis link, ``count =
  max(chain_seq) = last_seq`` and the head — also when the tail is truncated, where Blnk's own
  verifier skips the head. Rows not sealed yet (the chainer runs behind) are information.
  The per-row ``transactions.hash`` is not used: it is computed from request-time values.

Chain anchors carry the proof across backups: a manifest records ``(last_seq, head_hash)``
taken in the dump's snapshot; a restore test proves the restored head equals it, and that
every older backup's anchor lies on the restored chain, which a history rewritten between two
backups (the chain recomputed after a fabricated row) cannot satisfy.

Checks are chosen by what the database has (the columns of ``blnk.balances`` and
``blnk.transactions``, ``blnk.chain_state``, and ``blnk.gorp_migrations`` for the version):
those whose columns are missing are skipped with the reason. A database without a ``blnk``
schema is not a Blnk ledger: the proof is skipped whole. Every check is one set-based SQL
statement (the chain: one scan with a window function for the previous hash), so the cost
grows with one pass over the transactions, not with a round trip per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from core.manifest import LedgerAnchor
from core.restore.check import Check

GENESIS_HASH = "0" * 64  # Blnk's model.ChainGenesisHash
MAX_NAMED = 3  # offending balances or transactions named in a check's "found"

# Blnk's migrations (sql/<id>.sql, recorded in blnk.gorp_migrations) that mark a version: the
# newest one applied tells the version. 0.13 made balance updates exact (I3).
_VERSION_MARKS = (
    (1781162328, "0.15"),
    (1770461873, "0.13.5"),
    (1768746546, "0.13"),
    (1766887982, "0.12.2"),
    (1765154909, "0.12"),
    (1742400213, "0.11"),
    (1708676327, "0.10 or older"),
)
EXACT_FLOWS_FROM = 1768746546  # sql/1768746546.sql, first migration of Blnk 0.13

_BALANCE_COLUMNS = {"balance_id", "balance", "credit_balance", "debit_balance"}
_INFLIGHT_COLUMNS = {"inflight_balance", "inflight_credit_balance", "inflight_debit_balance"}
_FLOW_COLUMNS = {"source", "destination", "status", "amount"}
_CHAIN_COLUMNS = {"chain_seq", "chain_prev_hash", "chain_hash"}
_SEALED_FIELDS = (
    "transaction_id",
    "source",
    "destination",
    "amount",
    "precise_amount",
    "currency",
    "status",
    "reference",
)
_CHAIN_STATE_COLUMNS = {"chain_key", "last_seq", "head_hash", "genesis_hash"}


@dataclass(frozen=True)
class BlnkShape:
    """What a database has of Blnk: columns (name -> type) of the tables the proof reads, and
    the applied migrations (None without ``blnk.gorp_migrations``)."""

    balances: dict[str, str]
    transactions: dict[str, str]
    chain_state: dict[str, str]
    migrations: list[str] | None

    @property
    def newest_migration(self) -> int | None:
        numbers = [int(m.split(".")[0]) for m in self.migrations or [] if m.split(".")[0].isdigit()]
        return max(numbers) if numbers else None

    @property
    def version(self) -> str | None:
        """Blnk's version as its migrations tell it ("0.15", "0.13", ...), None if unknown."""
        newest = self.newest_migration
        if newest is None:
            return None
        return next((label for mark, label in _VERSION_MARKS if newest >= mark), None)

    @property
    def exact_flows(self) -> bool:
        """Whether I3 holds exactly (Blnk 0.13 and later); False when the version is unknown."""
        newest = self.newest_migration
        return newest is not None and newest >= EXACT_FLOWS_FROM


@dataclass(frozen=True)
class LedgerProof:
    """The outcome of the ledger checks on one database."""

    ran: bool
    checks: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "what: why", checks that could not run
    warnings: list[str] = field(default_factory=list)  # reported, not failing (I3 before 0.13)
    info: list[str] = field(default_factory=list)  # e.g. transactions not chained yet
    balances: int = 0
    transactions: int = 0
    chain_seq: int | None = None  # the proven chain's last seq; None without a chain
    blnk_version: str | None = None

    @property
    def passed(self) -> bool:
        return self.ran and all(c.passed for c in self.checks)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def headline(self) -> str:
        """One line for people: "ledger proven: N balances, M transactions, chain to seq S"
        or what failed, or why the proof did not run."""
        if not self.ran:
            return "ledger not proven: " + (self.skipped[0] if self.skipped else "not run")
        if not self.passed:
            return "ledger proof FAILED: " + ", ".join(c.name for c in self.failed_checks)
        chain = (
            f", chain to seq {self.chain_seq:,}"
            if self.chain_seq is not None
            else " (no hash chain)"
        )
        warned = f"; {len(self.warnings)} warning(s)" if self.warnings else ""
        return (
            f"ledger proven: {_count(self.balances, 'balance')}, "
            f"{_count(self.transactions, 'transaction')}{chain}{warned}"
        )

    def summary(self) -> dict[str, Any]:
        """What the restore-test record keeps (``ledger_proof``): without ``passed`` when the
        proof did not run (the database is not a Blnk ledger)."""
        if not self.ran:
            return {"ran": False, "headline": self.headline(), "skipped": self.skipped}
        return {
            "ran": True,
            "passed": self.passed,
            "headline": self.headline(),
            "balances": self.balances,
            "transactions": self.transactions,
            "chain_seq": self.chain_seq,
            "blnk_version": self.blnk_version,
            "failed": [c.name for c in self.failed_checks],
            "skipped": self.skipped,
            "warnings": self.warnings,
            "info": self.info,
        }


def _count(number: int, thing: str) -> str:
    return f"{number:,} {thing}{'' if number == 1 else 's'}"


# --- reading the shape ----------------------------------------------------------------------------
def read_shape(conn: psycopg.Connection[Any]) -> BlnkShape | None:
    """Return what the database has of Blnk, or None if it has no ``blnk`` schema."""
    present = conn.execute("SELECT to_regnamespace('blnk') IS NOT NULL").fetchone()
    if not present or not present[0]:
        return None
    columns: dict[str, dict[str, str]] = {
        "balances": {},
        "transactions": {},
        "chain_state": {},
        "gorp_migrations": {},
    }
    for table, column, kind in conn.execute(
        """SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
           WHERE c.relnamespace = 'blnk'::regnamespace AND c.relkind IN ('r', 'p')
             AND c.relname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped""",
        (list(columns),),
    ).fetchall():
        columns[str(table)][str(column)] = str(kind)
    migrations: list[str] | None = None
    if "id" in columns["gorp_migrations"]:
        migrations = [
            str(r[0]) for r in conn.execute("SELECT id FROM blnk.gorp_migrations").fetchall()
        ]
    return BlnkShape(
        balances=columns["balances"],
        transactions=columns["transactions"],
        chain_state=columns["chain_state"],
        migrations=migrations,
    )


# --- the proof ------------------------------------------------------------------------------------
def prove_ledger(
    conn: psycopg.Connection[Any],
    anchor: LedgerAnchor | None = None,
    older_anchors: Sequence[tuple[str, LedgerAnchor]] = (),
    *,
    notes: Sequence[str] = (),
) -> LedgerProof:
    """Run every ledger check the database's shape allows and return the proof.

    ``anchor`` is the chain anchor the backup's manifest recorded (None if it recorded none);
    ``older_anchors`` are (key, anchor) of the older backups of this ledger still kept, each
    of which must lie on the restored chain. ``notes`` are extra skipped items (e.g. the older
    backups could not be listed). The connection should see a database nobody writes to (a restored
    copy) or a snapshot."""
    shape = read_shape(conn)
    if shape is None:
        return LedgerProof(
            ran=False,
            skipped=["ledger proof: the database has no blnk schema, so it is not a Blnk ledger"],
        )
    with conn.transaction():  # the settings below last until it ends
        for name, value in _SETTINGS.items():
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        return _prove(conn, shape, anchor, older_anchors, notes)


# The text forms the chain hashes (timestamps, floats of old amounts) and memory for the sort
# of the chain links.
_SETTINGS = {"DateStyle": "ISO, YMD", "extra_float_digits": "1", "work_mem": "64MB"}


def _prove(
    conn: psycopg.Connection[Any],
    shape: BlnkShape,
    anchor: LedgerAnchor | None,
    older_anchors: Sequence[tuple[str, LedgerAnchor]],
    notes: Sequence[str],
) -> LedgerProof:
    checks: list[Check] = []
    skipped: list[str] = list(notes)
    warnings: list[str] = []
    info: list[str] = []
    version = shape.version
    if version is None:
        info.append(
            "Blnk version unknown (no blnk.gorp_migrations): checks chosen by the columns present"
        )

    balances = 0
    missing = sorted(_BALANCE_COLUMNS - set(shape.balances))
    if missing:
        skipped.append(
            "I1, I2, I3 (balances): blnk.balances "
            + ("does not exist" if not shape.balances else f"has no {', '.join(missing)}")
        )
    else:
        balances, balance_checks = _check_balances(conn, shape)
        checks += balance_checks
        if not set(shape.balances) >= _INFLIGHT_COLUMNS:
            skipped.append("I1 inflight: blnk.balances has no inflight columns (Blnk before 0.10)")
        missing_flow = sorted(_FLOW_COLUMNS - set(shape.transactions))
        if missing_flow:
            skipped.append(
                "I3 (balances against transactions): blnk.transactions "
                + (
                    "does not exist"
                    if not shape.transactions
                    else f"has no {', '.join(missing_flow)}"
                )
            )
        else:
            flow_checks, flow_warnings = _check_flows(conn, shape)
            checks += flow_checks
            warnings += flow_warnings

    transactions, chain_seq = 0, None
    if shape.transactions:
        chain_missing = sorted(_CHAIN_COLUMNS - set(shape.transactions))
        state_missing = sorted(_CHAIN_STATE_COLUMNS - set(shape.chain_state))
        if chain_missing or state_missing:
            row = conn.execute("SELECT count(*) FROM blnk.transactions").fetchone()
            transactions = int(row[0]) if row else 0
            skipped.append(
                "hash chain: "
                + (
                    f"Blnk {version} has no transaction hash chain (it came with 0.15)"
                    if version is not None and version != "0.15"
                    else "blnk.transactions has no chain columns or blnk.chain_state is missing"
                )
            )
            # Anchors recorded by backups with a chain cannot be met by a database without one.
            anchored = ([("this backup", anchor)] if anchor is not None else []) + list(
                older_anchors
            )
            checks += [
                Check(
                    f"chain anchor of {key}",
                    False,
                    f"seq {recorded.last_seq:,} hash {recorded.head_hash}",
                    "the restored database has no hash chain",
                )
                for key, recorded in anchored
            ]
        else:
            chain = _verify_chain(conn, shape)
            checks += chain.checks
            info += chain.info
            transactions, chain_seq = chain.transactions, chain.last_seq
            checks += _check_anchors(conn, chain, anchor, older_anchors, skipped)
    else:
        skipped.append("hash chain: blnk.transactions does not exist")

    if not checks:  # a blnk schema without Blnk's tables: nothing was proven
        return LedgerProof(ran=False, skipped=skipped, info=info, blnk_version=version)
    return LedgerProof(
        ran=True,
        checks=checks,
        skipped=skipped,
        warnings=warnings,
        info=info,
        balances=balances,
        transactions=transactions,
        chain_seq=chain_seq,
        blnk_version=version,
    )


# --- I1, I2 ---------------------------------------------------------------------------------------
def _named(items: Sequence[Any] | None, count: int) -> str:
    shown = list(items or [])[:MAX_NAMED]
    more = f", and {count - len(shown)} more" if count > len(shown) else ""
    return ", ".join(str(s) for s in shown) + more


def _check_balances(conn: psycopg.Connection[Any], shape: BlnkShape) -> tuple[int, list[Check]]:
    inflight = set(shape.balances) >= _INFLIGHT_COLUMNS
    inflight_sql = (
        """count(*) FILTER (WHERE inflight_balance IS DISTINCT FROM
                                  inflight_credit_balance - inflight_debit_balance),
           (array_agg(format('%s (inflight_balance %s, inflight credit - debit %s)',
                             balance_id, trim_scale(inflight_balance::numeric),
                             trim_scale((inflight_credit_balance
                                         - inflight_debit_balance)::numeric))
                      ORDER BY balance_id)
                FILTER (WHERE inflight_balance IS DISTINCT FROM
                              inflight_credit_balance - inflight_debit_balance))[1:3]"""
        if inflight
        else "0, NULL::text[]"
    )
    row = conn.execute(
        f"""SELECT count(*),
                count(*) FILTER (WHERE balance IS DISTINCT FROM credit_balance - debit_balance),
                (array_agg(format('%s (balance %s, credit - debit %s)', balance_id,
                                  trim_scale(balance::numeric),
                                  trim_scale((credit_balance - debit_balance)::numeric))
                           ORDER BY balance_id)
                    FILTER (WHERE balance IS DISTINCT FROM
                                  credit_balance - debit_balance))[1:3],
                {inflight_sql},
                trim_scale(coalesce(sum(balance), 0)::numeric),
                trim_scale(coalesce(sum(credit_balance), 0)::numeric),
                trim_scale(coalesce(sum(debit_balance), 0)::numeric),
                count(*) FILTER (WHERE balance IS NULL OR credit_balance IS NULL
                                 OR debit_balance IS NULL)
            FROM blnk.balances"""
    ).fetchone()
    assert row is not None
    count, bad, bad_named, bad_inflight, bad_inflight_named = row[:5]
    total, credit, debit, nulls = Decimal(row[5]), Decimal(row[6]), Decimal(row[7]), int(row[8])
    checks = [
        Check(
            "ledger I1 balance = credit - debit",
            bad == 0,
            f"all {count:,} balances",
            f"all {count:,} balances" if bad == 0 else f"{bad:,} differ: {_named(bad_named, bad)}",
        )
    ]
    if inflight:
        checks.append(
            Check(
                "ledger I1 inflight = inflight credit - inflight debit",
                bad_inflight == 0,
                f"all {count:,} balances",
                f"all {count:,} balances"
                if bad_inflight == 0
                else f"{bad_inflight:,} differ: {_named(bad_inflight_named, bad_inflight)}",
            )
        )
    problems = []
    if total != 0:
        problems.append(f"Σ balance {total}")
    if credit != debit:
        problems.append(f"Σ credit {credit} ≠ Σ debit {debit}")
    if nulls:
        problems.append(f"{nulls:,} balances with NULL amounts")
    found = "; ".join(problems) or f"Σ balance 0, Σ credit = Σ debit = {credit}"
    if "currency" in shape.balances:
        per_currency = conn.execute(
            """SELECT currency, trim_scale(coalesce(sum(balance), 0)::numeric),
                      trim_scale(coalesce(sum(credit_balance), 0)::numeric),
                      trim_scale(coalesce(sum(debit_balance), 0)::numeric)
               FROM blnk.balances GROUP BY currency
               HAVING coalesce(sum(balance), 0) <> 0
                   OR coalesce(sum(credit_balance), 0) <> coalesce(sum(debit_balance), 0)
               ORDER BY currency"""
        ).fetchall()
        if per_currency:
            named = "; ".join(
                f"{cur}: Σ balance {b}, Σ credit {c}, Σ debit {d}"
                for cur, b, c, d in per_currency[:MAX_NAMED]
            )
            if _crosses_currencies(conn, shape):
                found += f" (per currency not required: transactions cross currencies; {named})"
            else:
                problems.append(f"per currency {named}")
                found = "; ".join(problems)
        else:
            found += ", per currency too"
    checks.append(
        Check(
            "ledger I2 balances sum to zero",
            not problems,
            "Σ balance 0 and Σ credit = Σ debit, per currency too",
            found,
        )
    )
    return int(count), checks


def _crosses_currencies(conn: psycopg.Connection[Any], shape: BlnkShape) -> bool:
    """True if an applied transaction moved money between balances of different currencies
    (a rejected or queued one moved nothing, so it exempts nothing)."""
    if not {"source", "destination"} <= set(shape.transactions):
        return False
    applied = "AND t.status = 'APPLIED'" if "status" in shape.transactions else ""
    row = conn.execute(
        f"""SELECT EXISTS (SELECT 1 FROM blnk.transactions t
                           JOIN blnk.balances s ON s.balance_id = t.source
                           JOIN blnk.balances d ON d.balance_id = t.destination
                           WHERE s.currency IS DISTINCT FROM d.currency {applied})"""
    ).fetchone()
    return bool(row and row[0])


# --- I3 -------------------------------------------------------------------------------------------
def _check_flows(conn: psycopg.Connection[Any], shape: BlnkShape) -> tuple[list[Check], list[str]]:
    amount = (
        "coalesce(t.precise_amount::numeric, t.amount::numeric)"
        if "precise_amount" in shape.transactions
        else "t.amount::numeric"
    )
    row = conn.execute(
        f"""WITH flows AS (
                SELECT v.balance_id, sum(v.debit) AS debit, sum(v.credit) AS credit
                FROM blnk.transactions t
                CROSS JOIN LATERAL (VALUES (t.source, {amount}, 0::numeric),
                                           (t.destination, 0::numeric, {amount}))
                    AS v(balance_id, debit, credit)
                WHERE t.status = 'APPLIED'
                GROUP BY v.balance_id),
            compared AS (
                SELECT coalesce(b.balance_id, f.balance_id, '(none)') AS balance_id,
                       b.balance_id IS NULL AS unknown,
                       b.debit_balance::numeric AS debit_balance,
                       b.credit_balance::numeric AS credit_balance,
                       coalesce(f.debit, 0) AS applied_out, coalesce(f.credit, 0) AS applied_in
                FROM blnk.balances b FULL JOIN flows f ON f.balance_id = b.balance_id)
            SELECT
                count(*) FILTER (WHERE coalesce(debit_balance, 0) <> applied_out),
                (array_agg(CASE WHEN unknown
                                THEN format('%s (not in blnk.balances, applied out %s)',
                                            balance_id, trim_scale(applied_out))
                                ELSE format('%s (debit_balance %s, applied out %s)',
                                            balance_id, trim_scale(debit_balance),
                                            trim_scale(applied_out)) END
                           ORDER BY balance_id)
                    FILTER (WHERE coalesce(debit_balance, 0) <> applied_out))[1:3],
                count(*) FILTER (WHERE coalesce(credit_balance, 0) <> applied_in),
                (array_agg(CASE WHEN unknown
                                THEN format('%s (not in blnk.balances, applied in %s)',
                                            balance_id, trim_scale(applied_in))
                                ELSE format('%s (credit_balance %s, applied in %s)',
                                            balance_id, trim_scale(credit_balance),
                                            trim_scale(applied_in)) END
                           ORDER BY balance_id)
                    FILTER (WHERE coalesce(credit_balance, 0) <> applied_in))[1:3],
                count(*) FILTER (WHERE NOT unknown)
            FROM compared"""
    ).fetchone()
    assert row is not None
    bad_out, named_out, bad_in, named_in, known = row
    exact = shape.exact_flows
    checks: list[Check] = []
    warnings: list[str] = []
    for name, bad, named, side in (
        ("ledger I3 debits = applied outflows", bad_out, named_out, "debit_balance"),
        ("ledger I3 credits = applied inflows", bad_in, named_in, "credit_balance"),
    ):
        expected = f"each {side} = Σ APPLIED amounts " + (
            "it is the source of" if side == "debit_balance" else "it is the destination of"
        )
        if bad == 0:
            checks.append(Check(name, True, expected, f"all {known:,} balances"))
            continue
        found = f"{bad:,} differ: {_named(named, bad)}"
        if exact:
            checks.append(Check(name, False, expected, found))
        else:
            why = (
                f"Blnk {shape.version} updated balances outside the insert's transaction "
                "(exact from 0.13)"
                if shape.version is not None
                else "the Blnk version is unknown (exact from 0.13)"
            )
            warnings.append(f"{name}: {found} — a warning only: {why}")
            checks.append(Check(name, True, expected, f"{found} (warning only: {why})"))
    return checks, warnings


# --- the hash chain -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Chain:
    checks: list[Check]
    info: list[str]
    transactions: int
    last_seq: int | None
    head_hash: str | None
    genesis_hash: str | None


def _text(column: str) -> sql.Composable:
    """SQL: a sealed column as Blnk's chainer reads it (``COALESCE(col::text, '')``)."""
    return sql.SQL("coalesce(t.{}::text, '')").format(sql.Identifier(column))


def _rfc3339(kind: str) -> sql.Composable:
    """SQL: created_at as Go's ``t.UTC().Format(time.RFC3339Nano)``. A timestamp without time
    zone (Blnk's type) is read by lib/pq as UTC wall-clock time. PostgreSQL's ISO output of a
    timestamp already drops the fraction's trailing zeros (and the point when it is zero), as
    Go does, and is five times cheaper than to_char: it needs DateStyle ISO (set by
    prove_ledger)."""
    ts = (
        sql.SQL("(t.created_at AT TIME ZONE 'UTC')")
        if kind.startswith("timestamp with time zone")
        else sql.SQL("t.created_at")
    )
    return sql.SQL("coalesce(replace({ts}::text, ' ', 'T') || 'Z', '')").format(ts=ts)


def chain_hash_sql(shape: BlnkShape) -> sql.Composable:
    """SQL over ``blnk.transactions t``: the chain hash of each row recomputed from its stored
    ``chain_prev_hash`` and sealed fields (a missing column counts as NULL, i.e. '')."""
    parts: list[sql.Composable] = [sql.SQL("coalesce(t.chain_prev_hash::text, '')")]
    for column in _SEALED_FIELDS:
        parts.append(_text(column) if column in shape.transactions else sql.SQL("''"))
    created = shape.transactions.get("created_at")
    parts.append(_rfc3339(created) if created is not None else sql.SQL("''"))
    return sql.SQL("encode(sha256(convert_to(concat_ws('|', {}), 'UTF8')), 'hex')").format(
        sql.SQL(", ").join(parts)
    )


def _seq(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


@dataclass(frozen=True)
class _ChainScan:
    """What one pass over the transactions found: how many, how many chained, the range of
    chain_seq, the rows whose hash does not recompute (counted, the first few named), the
    broken links (likewise) and what seq 1 links to."""

    total: int
    chained: int
    first_seq: int | None
    max_seq: int | None
    bad_hashes: int
    named_hashes: list[str]
    bad_links: int
    named_links: list[str]
    first_prev: str | None


def _verify_chain(conn: psycopg.Connection[Any], shape: BlnkShape) -> _Chain:
    """Blnk's hash chain, link by link: its genesis link, its links, every hash recomputed,
    its length and its head against ``blnk.chain_state``."""
    state = conn.execute(
        """SELECT last_seq, rtrim(head_hash), rtrim(genesis_hash) FROM blnk.chain_state
           WHERE chain_key = 'global'"""
    ).fetchone()
    scan = _scan_chain(conn, shape)
    if state is None:
        missing = Check(
            "chain head",
            False,
            "blnk.chain_state row 'global'",
            "blnk.chain_state has no 'global' row",
        )
        return _Chain([missing], [], scan.total, None, None, None)
    last_seq, head_hash, genesis_hash = int(state[0]), str(state[1]), str(state[2])
    checks = [
        _genesis_check(scan, genesis_hash),
        *_link_and_hash_checks(scan),
        _length_check(scan, last_seq),
        _head_check(conn, scan, last_seq, head_hash, genesis_hash),
    ]
    return _Chain(
        checks, _chain_notes(scan, last_seq), scan.total, last_seq, head_hash, genesis_hash
    )


def _scan_chain(conn: psycopg.Connection[Any], shape: BlnkShape) -> _ChainScan:
    # One scan recomputes every hash: no ordering needed (each row is hashed from its own
    # stored chain_prev_hash), so PostgreSQL can spread it over parallel workers.
    recomputed = chain_hash_sql(shape)
    row = conn.execute(
        sql.SQL(
            """SELECT count(*), count(t.chain_seq), min(t.chain_seq), max(t.chain_seq),
                   count(*) FILTER (WHERE t.chain_seq IS NOT NULL
                                    AND {recomputed} IS DISTINCT FROM t.chain_hash::text)
               FROM blnk.transactions t"""
        ).format(recomputed=recomputed)
    ).fetchone()
    assert row is not None
    total, chained, first_seq, max_seq, bad_hashes = row
    named_hashes: list[str] = []
    if bad_hashes:
        named_hashes = [
            str(r[0])
            for r in conn.execute(
                sql.SQL(
                    """SELECT format('seq %s (%s)', t.chain_seq, t.transaction_id)
                       FROM blnk.transactions t
                       WHERE t.chain_seq IS NOT NULL
                         AND {recomputed} IS DISTINCT FROM t.chain_hash::text
                       ORDER BY t.chain_seq LIMIT {limit}"""
                ).format(recomputed=recomputed, limit=MAX_NAMED)
            ).fetchall()
        ]
    # The links, in chain order (the chain_seq index gives it without a sort).
    links_row = conn.execute(
        """SELECT count(*) FILTER (WHERE before_seq IS NOT NULL
                                   AND prev IS DISTINCT FROM before_hash),
                  (array_agg(format('seq %s (%s)', chain_seq, txn) ORDER BY chain_seq)
                      FILTER (WHERE before_seq IS NOT NULL
                              AND prev IS DISTINCT FROM before_hash))[1:3],
                  min(prev) FILTER (WHERE before_seq IS NULL)
           FROM (SELECT t.chain_seq, t.transaction_id AS txn, t.chain_prev_hash::text AS prev,
                        lag(t.chain_seq) OVER w AS before_seq,
                        lag(t.chain_hash::text) OVER w AS before_hash
                 FROM blnk.transactions t WHERE t.chain_seq IS NOT NULL
                 WINDOW w AS (ORDER BY t.chain_seq)) AS links"""
    ).fetchone()
    assert links_row is not None
    bad_links, named_links, first_prev = links_row
    return _ChainScan(
        int(total),
        int(chained),
        first_seq,
        max_seq,
        int(bad_hashes),
        named_hashes,
        int(bad_links),
        list(named_links or []),
        first_prev,
    )


def _chain_notes(scan: _ChainScan, last_seq: int) -> list[str]:
    """What the proof does not cover, said as information, not failures."""
    info = []
    unchained = scan.total - scan.chained
    if unchained:
        info.append(
            f"{unchained:,} transaction(s) not chained yet (Blnk's chainer seals them about "
            "30 s after they are written): not covered by the chain"
        )
    if scan.chained == 0 and last_seq == 0:
        info.append(
            "the hash chain is empty: BLNK_TRANSACTION_HASHCHAIN_ENABLED is off or the chainer "
            "has not run yet"
        )
    return info


def _genesis_check(scan: _ChainScan, genesis_hash: str) -> Check:
    """The genesis link: seq 1 links to Blnk's genesis hash."""
    if scan.chained == 0:
        genesis_ok = genesis_hash == GENESIS_HASH
        genesis_found = f"no transaction chained; genesis {genesis_hash}"
    else:
        genesis_ok = scan.first_seq == 1 and scan.first_prev == genesis_hash == GENESIS_HASH
        genesis_found = (
            f"the chain starts at seq {scan.first_seq}"
            if scan.first_seq != 1
            else f"seq 1 links to {scan.first_prev}; genesis_hash {genesis_hash}"
        )
    return Check(
        "chain genesis link", genesis_ok, f"seq 1 links to genesis {GENESIS_HASH}", genesis_found
    )


def _link_and_hash_checks(scan: _ChainScan) -> list[Check]:
    links = max(scan.chained - 1, 0)
    return [
        Check(
            "chain links",
            scan.bad_links == 0,
            "each chain_prev_hash = the chain_hash one seq before",
            f"all {links:,} links hold"
            if scan.bad_links == 0
            else f"{scan.bad_links:,} broken: {_named(scan.named_links, scan.bad_links)}",
        ),
        Check(
            "chain hashes",
            scan.bad_hashes == 0,
            "each chain_hash = SHA-256 of its previous hash and sealed fields",
            f"all {scan.chained:,} recompute"
            if scan.bad_hashes == 0
            else f"{scan.bad_hashes:,} do not recompute: "
            f"{_named(scan.named_hashes, scan.bad_hashes)}",
        ),
    ]


def _length_check(scan: _ChainScan, last_seq: int) -> Check:
    length_ok = scan.chained == (scan.max_seq or 0) == last_seq and (
        scan.chained == 0 or scan.first_seq == 1
    )
    return Check(
        "chain length",
        length_ok,
        f"count = max(chain_seq) = last_seq = {last_seq:,}",
        f"count {scan.chained:,}, min {_seq(scan.first_seq)}, max {_seq(scan.max_seq)}, "
        f"last_seq {last_seq:,}",
    )


def _head_check(
    conn: psycopg.Connection[Any],
    scan: _ChainScan,
    last_seq: int,
    head_hash: str,
    genesis_hash: str,
) -> Check:
    """The head: the hash at last_seq is head_hash, also when the tail is missing."""
    if last_seq == 0:
        head_ok = head_hash == genesis_hash
        head_found = f"last_seq 0, head_hash {head_hash}"
    else:
        at_head = [
            str(r[0])
            for r in conn.execute(
                "SELECT chain_hash::text FROM blnk.transactions WHERE chain_seq = %s",
                (last_seq,),
            ).fetchall()
        ]
        head_ok = at_head == [head_hash]
        head_found = (
            f"no transaction at seq {last_seq:,} (the chain ends at seq {_seq(scan.max_seq)})"
            if not at_head
            else f"seq {last_seq:,} hash {', '.join(at_head)}"
        )
    return Check(
        "chain head", head_ok, f"seq {last_seq:,} hash = head_hash {head_hash}", head_found
    )


def _check_anchors(
    conn: psycopg.Connection[Any],
    chain: _Chain,
    anchor: LedgerAnchor | None,
    older: Sequence[tuple[str, LedgerAnchor]],
    skipped: list[str],
) -> list[Check]:
    checks: list[Check] = []
    if chain.last_seq is None or chain.head_hash is None:
        return checks
    if anchor is None:  # the dump has the chain, so its snapshot had it: an older manifest
        skipped.append(
            "chain anchor of this backup: its manifest records none (written before anchors "
            "were recorded)"
        )
    else:
        checks.append(
            Check(
                "chain anchor of this backup",
                (anchor.last_seq, anchor.head_hash) == (chain.last_seq, chain.head_hash),
                f"seq {anchor.last_seq:,} hash {anchor.head_hash}",
                f"seq {chain.last_seq:,} hash {chain.head_hash}",
            )
        )
    if not older:
        return checks
    rows = conn.execute(
        """SELECT a.ord, array_remove(array_agg(t.chain_hash::text), NULL)
           FROM unnest(%s::bigint[]) WITH ORDINALITY AS a(seq, ord)
           LEFT JOIN blnk.transactions t ON t.chain_seq = a.seq AND a.seq > 0
           GROUP BY a.ord""",
        ([a.last_seq for _k, a in older],),
    ).fetchall()
    found_at = {int(ord_) - 1: [str(h) for h in hashes or []] for ord_, hashes in rows}
    for index, (key, old) in enumerate(older):
        expected = f"seq {old.last_seq:,} hash {old.head_hash}"
        if old.last_seq == 0:
            ok = old.head_hash == chain.genesis_hash
            found = f"genesis {chain.genesis_hash}"
        elif old.last_seq > chain.last_seq:
            ok = False
            found = f"the restored chain ends at seq {chain.last_seq:,}"
        else:
            hashes = found_at.get(index, [])
            ok = hashes == [old.head_hash]
            found = (
                f"seq {old.last_seq:,} hash {', '.join(hashes)}"
                if hashes
                else f"no transaction at seq {old.last_seq:,}"
            )
        checks.append(Check(f"chain anchor of {key}", ok, expected, found))
    return checks
