"""Backups and restore tests of a Blnk database that also holds what real databases hold:
partitioned tables (two levels, default partitions, partitioned indexes), legacy inheritance,
enum/domain/composite/range types, materialized views, large objects, quoted mixed-case names,
an unlogged table, identity and stored generated columns, TOAST-sized values, a table without
a key holding duplicate rows, and the contrib extensions the server has."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from core.audit import Actor
from core.database import PgTarget, create_database, drop_database, server_version
from core.dbstats import (
    LARGE_OBJECTS_KEY,
    LEGACY_OBJECT_KINDS,
    legacy_object_counts,
    object_counts,
    row_counts,
    table_digests,
)
from core.processes import find_tool, tool_version
from core.restore.checks import amcheck, btree_indexes_to_check
from core.services import Services
from tests.support.databases import make_database

pytestmark = pytest.mark.pg_versions

ACTOR = Actor("edge", "cli")
LEAVES_OF_ENTRIES = [
    "edge.entries_2023",
    "edge.entries_2024_eur",
    "edge.entries_2024_other",
    "edge.entries_2024_usd",
    "edge.entries_2025",
    "edge.entries_default",
]
QUOTED_TABLE = 'Ledger Ops.MixedCase"Quote'


@pytest.fixture(scope="module")
def blnk_db(pg_server: PgTarget) -> Iterator[PgTarget]:
    """In this module the database every backup is taken of holds the edge objects."""
    name = make_database(pg_server, 2_000, edge_objects=True)
    yield pg_server.with_dbname(name)
    drop_database(pg_server, name)


@pytest.fixture
def edge_services(make_settings: Any) -> Iterator[Services]:
    built = Services(make_settings(restore_tests=True))
    yield built
    built.close()


@pytest.fixture
def new_database(pg_server: PgTarget) -> Iterator[str]:
    """A fresh database name, dropped after the test whatever happened."""
    name = f"blnk_edge_copy_{uuid.uuid4().hex[:10]}"
    yield name
    drop_database(pg_server, name)


def _digests(target: PgTarget) -> dict[str, str]:
    with target.connect() as conn:
        return table_digests(conn)


def _available(conn: psycopg.Connection[Any], extension: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = %s", (extension,)
    ).fetchone()
    return row is not None


def test_edge_objects_are_generated_with_data_and_only_when_asked_for(
    pg_server: PgTarget, blnk_db: PgTarget
) -> None:
    with blnk_db.connect() as conn:
        kinds = dict(
            conn.execute(
                "SELECT c.oid::regclass::text, c.relkind FROM pg_class c "
                "WHERE c.relnamespace IN ('edge'::regnamespace, '\"Ledger Ops\"'::regnamespace)"
            ).fetchall()
        )
        assert kinds["edge.entries"] == kinds["edge.entries_2024"] == "p"  # two levels
        assert kinds["edge.entries_pkey"] == "I" and kinds["edge.entries_2025_pkey"] == "i"
        assert kinds['"Ledger Ops"."MixedCase""Quote"'] == "r"
        assert kinds["edge.entry_totals"] == kinds["edge.entry_totals_pending"] == "m"
        defaults = conn.execute(
            "SELECT c.relname FROM pg_class c WHERE c.relispartition "
            "AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' ORDER BY 1"
        ).fetchall()
        assert [r[0] for r in defaults] == ["entries_2024_other", "entries_default"]
        total = conn.execute("SELECT count(*) FROM edge.entries").fetchone()[0]
        counts = row_counts(conn)
        assert total == sum(counts[leaf] for leaf in LEAVES_OF_ENTRIES) >= 200
        assert all(counts[leaf] > 0 for leaf in LEAVES_OF_ENTRIES)
        lines, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT r) FROM edge.raw_bank_lines r"
        ).fetchone()
        assert lines > distinct  # duplicate rows, no key
        persistence = conn.execute(
            "SELECT relpersistence FROM pg_class WHERE oid = 'edge.session_cache'::regclass"
        ).fetchone()[0]
        assert persistence == "u"
        sizes = conn.execute(
            "SELECT octet_length(body), octet_length(blob), octet_length(doc::text) "
            "FROM edge.documents WHERE id = 1"
        ).fetchone()
        assert min(sizes) >= 1 << 20
        assert conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0] == 4
        fee = conn.execute("SELECT id, fee, base * rate FROM edge.fees ORDER BY id").fetchone()
        assert fee[0] == 1000 and fee[1] == round(fee[2], 2)  # identity start, stored generated
        for extension, table in [
            ("citext", "edge.customer_emails"),
            ("hstore", "edge.entry_attributes"),
            ("pgcrypto", "edge.api_secrets"),
        ]:
            present = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
            assert present == _available(conn, extension), extension

    plain = make_database(pg_server, 100)
    try:
        with pg_server.with_dbname(plain).connect() as conn:
            schemas = conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname IN ('edge', 'Ledger Ops')"
            ).fetchone()[0]
            assert schemas == 0
            assert object_counts(conn)["large objects"] == 0
    finally:
        drop_database(pg_server, plain)


def test_row_counts_cover_partitioned_inherited_unlogged_and_quoted_tables_exactly_once(
    blnk_db: PgTarget,
) -> None:
    with blnk_db.connect() as conn:
        counts = row_counts(conn)
        parent_total = conn.execute("SELECT count(*) FROM edge.audit_log").fetchone()[0]
    assert "edge.entries" not in counts and "edge.entries_2024" not in counts  # no storage
    assert "edge.events" not in counts and "edge.entry_totals" not in counts
    assert counts["edge.audit_log"] + counts["edge.audit_log_2025"] == parent_total == 50
    assert counts["edge.audit_log"] == 1  # ONLY: the child's rows are counted once, there
    assert counts["edge.session_cache"] == 500
    assert counts[QUOTED_TABLE] == 120
    assert counts["edge.raw_bank_lines"] == 402


def test_a_backup_of_edge_objects_passes_every_restore_check(
    edge_services: Services, blnk_db: PgTarget
) -> None:
    manifest = edge_services.backups.run(ACTOR).manifest
    objects = manifest.stats.objects
    assert objects["partitioned tables"] == 3 and objects["large objects"] == 4
    assert objects["materialized views"] == 3 and objects["populated materialized views"] == 2
    assert objects["unlogged tables"] == 1 and objects["types"] >= 4

    report = edge_services.restores.test(ACTOR, manifest.key)

    assert report.passed, report.failed_checks
    names = {c.name for c in report.checks}
    assert {f"rows {leaf}" for leaf in LEAVES_OF_ENTRIES} <= names
    assert {f"rows {QUOTED_TABLE}", "rows edge.session_cache", "rows edge.raw_bank_lines"} <= names
    assert {f"objects {kind}" for kind in objects} <= names
    assert report.amcheck.startswith("ran on ")
    with blnk_db.connect() as conn:
        checked = len(btree_indexes_to_check(conn))
    assert report.amcheck == f"ran on {checked} B-tree indexes"


def test_restore_into_a_new_database_gives_every_table_and_large_object_the_sources_content(
    edge_services: Services, pg_server: PgTarget, blnk_db: PgTarget, new_database: str
) -> None:
    source = _digests(blnk_db)
    key = edge_services.backups.run(ACTOR).manifest.key

    report = edge_services.restores.restore(ACTOR, key, new_database, pg_server)

    assert report.passed, report.failed_checks
    restored = pg_server.with_dbname(new_database)
    assert _digests(restored) == source
    covered = {LARGE_OBJECTS_KEY, QUOTED_TABLE, "edge.session_cache", *LEAVES_OF_ENTRIES}
    assert covered <= set(source)
    with restored.connect() as conn, blnk_db.connect() as source_conn:
        assert object_counts(conn) == object_counts(source_conn)
        # The checks' amcheck leaves nothing behind in a database that is kept.
        amcheck_left = conn.execute("SELECT to_regproc('bt_index_check') IS NOT NULL").fetchone()
        assert amcheck_left == (False,)


def test_a_stock_pg_restore_with_two_jobs_of_the_downloaded_dump_gives_the_sources_content(
    edge_services: Services,
    s3: Any,
    bucket: str,
    pg_server: PgTarget,
    blnk_db: PgTarget,
    new_database: str,
    tmp_path: Path,
) -> None:
    manifest = edge_services.backups.run(ACTOR).manifest
    dump = tmp_path / "backup.dump"
    s3.download_file(bucket, manifest.key, str(dump))
    create_database(pg_server, new_database)
    target = pg_server.with_dbname(new_database)
    pg_restore = find_tool("pg_restore", edge_services.settings.pg_bin_dir)
    with pg_server.connect() as conn:
        server_major = server_version(conn)[0]
    newer_tool = tool_version(pg_restore)[0] > server_major

    def stock_restore(jobs: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [pg_restore, f"--jobs={jobs}", f"--dbname={target.conninfo}", str(dump)]
            + ([] if newer_tool else ["--exit-on-error"]),
            capture_output=True,
            text=True,
            env=target.libpq_env(dict(os.environ)),
            check=False,
        )

    done = stock_restore(2)
    if "deadlock detected" in done.stderr:  # the documented recipe (docs/operations.md)
        drop_database(pg_server, new_database)
        create_database(pg_server, new_database)
        done = stock_restore(1)
    if newer_tool:  # pg_restore 18 into 15: only the SETs 15 does not know may fail
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("pg_restore: error:")]
        assert all("unrecognized configuration parameter" in e for e in errors), done.stderr
    else:
        assert done.returncode == 0, done.stderr

    assert _digests(target) == _digests(blnk_db)
    with target.connect() as conn:
        assert row_counts(conn) == manifest.stats.row_counts
        assert object_counts(conn) == manifest.stats.objects


def test_amcheck_skips_partitioned_indexes_that_the_old_query_failed_on(
    blnk_db: PgTarget,
) -> None:
    with blnk_db.connect(autocommit=True) as conn:
        checks, status = amcheck(conn)
        assert [c.passed for c in checks] == [True], checks
        checked = {name for _oid, name in btree_indexes_to_check(conn)}
        assert status == f"ran on {len(checked)} B-tree indexes"
        assert "edge.session_cache_pkey" in checked  # unlogged tables' indexes are checked
        assert any(name.startswith("pg_toast.") for name in checked)  # TOAST-sized values
        assert "edge.entries_pkey" not in checked and "edge.entry_totals_key" in checked

        # The query restore tests used before: it takes in the partitioned indexes...
        old = {
            name
            for _oid, name in conn.execute(
                """SELECT c.oid, n.nspname || '.' || c.relname FROM pg_index i
                   JOIN pg_class c ON c.oid = i.indexrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_am a ON a.oid = c.relam
                   WHERE a.amname = 'btree' AND i.indisready AND i.indisvalid
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg\\_toast%'"""
            ).fetchall()
        }
        assert {"edge.entries_pkey", "edge.entries_state_posted_on"} <= old
        # ... on which bt_index_check fails: they have no storage.
        conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        try:
            with pytest.raises(psycopg.Error, match=r"(?i)b-?tree"):
                conn.execute("SELECT bt_index_check('edge.entries_pkey'::regclass)")
        finally:
            conn.execute("DROP EXTENSION amcheck")


def test_digests_ignore_session_settings_and_physical_order_but_see_one_lost_duplicate(
    pg_server: PgTarget, blnk_db: PgTarget, new_database: str
) -> None:
    source = _digests(blnk_db)
    with blnk_db.connect(autocommit=True) as conn:
        for setting in (
            "SET TimeZone = 'America/St_Johns'",
            "SET DateStyle = 'SQL, DMY'",
            "SET IntervalStyle = 'iso_8601'",
            "SET extra_float_digits = 0",
            "SET bytea_output = 'escape'",
            "SET search_path = edge, public",
        ):
            conn.execute(setting)
        assert table_digests(conn) == source
        assert conn.execute("SHOW TimeZone").fetchone()[0] == "America/St_Johns"  # put back

    with pg_server.connect(autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{new_database}" TEMPLATE "{blnk_db.dbname}"')
    copy = pg_server.with_dbname(new_database)
    with copy.connect(autocommit=True) as conn:  # same rows, other physical order
        conn.execute("UPDATE edge.raw_bank_lines SET amount = amount WHERE booked < '2025-01-20'")
        conn.execute("UPDATE edge.entries SET memo = memo WHERE id % 2 = 0")
    assert _digests(copy) == source

    with copy.connect(autocommit=True) as conn:  # one of ten identical rows goes
        conn.execute(
            "DELETE FROM edge.raw_bank_lines WHERE ctid = (SELECT min(ctid) "
            "FROM edge.raw_bank_lines WHERE line = 'line 1')"
        )
    changed = _digests(copy)
    assert {k for k in source if changed[k] != source[k]} == {"edge.raw_bank_lines"}


def test_a_manifest_from_before_the_new_object_kinds_still_passes_on_its_five_kinds(
    edge_services: Services, s3: Any, bucket: str, blnk_db: PgTarget
) -> None:
    key = edge_services.backups.run(ACTOR).manifest.key
    manifest_key = key + ".manifest.json"
    body = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    with blnk_db.connect() as conn:
        body["stats"]["objects"] = legacy_object_counts(conn)
    assert set(body["stats"]["objects"]) == set(LEGACY_OBJECT_KINDS)
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(body).encode())

    report = edge_services.restores.test(ACTOR, key)

    assert report.passed, report.failed_checks
    assert {c.name for c in report.checks if c.name.startswith("objects ")} == {
        f"objects {kind}" for kind in LEGACY_OBJECT_KINDS
    }
