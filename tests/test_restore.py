"""Restore tests and restores against real PostgreSQL and the S3 server on loopback."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from core.audit import Actor
from core.database import (
    RESTORE_INTO_LOCK_ID,
    AdvisoryLock,
    PgTarget,
    comment_on_database,
    create_database,
    database_exists,
    databases_commented,
    databases_like,
    drop_database,
)
from core.dbstats import ledger_totals, object_counts, row_counts
from core.errors import ConfigError, RestoreCheckError, UsageError
from core.processes import find_tool
from core.restore.service import (
    INCOMPLETE_RESTORE,
    SCRATCH_PREFIX,
    RestoreService,
    _marked_while_restoring,
)
from core.services import Services
from tests.support.helpers import make_database, settings_env

pytestmark = pytest.mark.pg_versions

ACTOR = Actor("grace", "cli")
BLNK_BACKUP = str(Path(sys.executable).parent / "blnk-backup")


@pytest.fixture
def restore_services(make_settings: Any) -> Any:
    built = Services(make_settings(restore_tests=True))
    yield built
    built.close()


def _snapshot(target: PgTarget) -> tuple[Any, Any, Any]:
    with target.connect() as conn:
        return row_counts(conn), ledger_totals(conn), object_counts(conn)


def test_a_good_backup_passes_every_check_and_the_scratch_database_is_dropped(
    restore_services: Services, pg_server: PgTarget, blnk_db: PgTarget
) -> None:
    before = _snapshot(blnk_db)
    backup = restore_services.backups.run(ACTOR).manifest
    report = restore_services.restores.test(ACTOR, "latest")

    assert report.passed, report.failed_checks
    assert report.key == backup.key
    names = {c.name for c in report.checks}
    assert "rows blnk.transactions" in names and "rows blnk.transaction_journal" in names
    assert {"objects functions", "objects triggers", "objects indexes"} <= names
    assert "ledger USD balance_sum" in names
    assert report.amcheck.startswith("ran on ") and int(report.amcheck.split()[2]) > 10
    assert set(report.durations) == {"download", "restore", "checks", "total"}
    assert databases_like(pg_server, SCRATCH_PREFIX) == []
    assert _snapshot(blnk_db) == before  # the source was never modified

    status = restore_services.catalog.status()
    assert status.last_restore_test is not None
    assert status.last_restore_test["passed"] is True
    assert status.last_restore_test["key"] == backup.key
    events = restore_services.audit.events(action="restore_test")
    assert [e.outcome for e in events] == ["succeeded", "started"]


def _pg_restore_that_deadlocks_in_parallel(directory: Path, pg_bin_dir: str | None) -> Path:
    """A PG_BIN_DIR whose pg_restore, given --jobs above 1, runs the real one and then reports
    the deadlock a parallel restore of partitioned indexes can hit (as seen in CI); with
    --jobs=1, and for --version and --list, it is the real one. Every restore is logged to
    ``calls``."""
    directory.mkdir()
    (directory / "pg_dump").symlink_to(find_tool("pg_dump", pg_bin_dir))
    real = shlex.quote(find_tool("pg_restore", pg_bin_dir))
    calls = shlex.quote(str(directory / "calls"))
    script = directory / "pg_restore"
    script.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do case "$arg" in\n'
        f'  --jobs=1) echo "$arg" >> {calls}; exec {real} "$@" ;;\n'
        f'  --jobs=*) echo "$arg" >> {calls}; parallel=yes ;;\n'
        "esac; done\n"
        f'[ -z "$parallel" ] && exec {real} "$@"\n'
        f'{real} "$@"\n'
        "cat >&2 <<'END'\n"
        "pg_restore: error: could not execute query: ERROR:  deadlock detected\n"
        "DETAIL:  Process 20108 waits for AccessExclusiveLock on relation 250805 of database"
        " 250298; blocked by process 20109.\n"
        "HINT:  See server log for query details.\n"
        "Command was: ALTER INDEX edge.entries_2024_idx ATTACH PARTITION edge.entries_q1_idx;\n"
        "END\n"
        "exit 1\n"
    )
    script.chmod(0o755)
    return directory


def test_a_parallel_restore_that_deadlocks_is_restored_again_with_one_job(
    make_settings: Any, tmp_path: Path, pg_server: PgTarget, pg_bin_dir: str | None
) -> None:
    tools = _pg_restore_that_deadlocks_in_parallel(tmp_path / "bin", pg_bin_dir)
    services = Services(make_settings(restore_tests=True, pg_bin_dir=str(tools), restore_jobs=3))
    try:
        services.backups.run(ACTOR)
        report = services.restores.test(ACTOR, "latest")
    finally:
        services.close()

    assert report.passed, report.failed_checks
    assert (tools / "calls").read_text().split() == ["--jobs=3", "--jobs=1"]
    deadlock, *others = report.notes
    assert deadlock == (
        "pg_restore --jobs=3 deadlocked against itself (ALTER INDEX edge.entries_2024_idx "
        "ATTACH PARTITION edge.entries_q1_idx;); restored again with --jobs=1"
    )
    # With a PostgreSQL 18 pg_restore into an older server, the settings it did not know.
    assert all("the server does not know" in note for note in others), others
    assert databases_like(pg_server, SCRATCH_PREFIX) == []


def test_a_deadlock_with_one_job_is_a_failure_not_a_retry(
    make_settings: Any, tmp_path: Path, pg_server: PgTarget, pg_bin_dir: str | None
) -> None:
    tools = _pg_restore_that_deadlocks_in_parallel(tmp_path / "bin", pg_bin_dir)
    script = tools / "pg_restore"  # now it reports the deadlock whatever the number of jobs
    script.write_text(script.read_text().replace("--jobs=1)", "--jobs=never)"))
    services = Services(make_settings(restore_tests=True, pg_bin_dir=str(tools), restore_jobs=1))
    try:
        services.backups.run(ACTOR)
        with pytest.raises(RestoreCheckError, match="deadlock detected"):
            services.restores.test(ACTOR, "latest")
    finally:
        services.close()
    assert (tools / "calls").read_text().split() == ["--jobs=1"]
    assert databases_like(pg_server, SCRATCH_PREFIX) == []


def test_a_flipped_byte_fails_as_corrupt_before_any_restore(
    restore_services: Services, s3: Any, bucket: str, pg_server: PgTarget
) -> None:
    key = restore_services.backups.run(ACTOR).manifest.key
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))

    with pytest.raises(RestoreCheckError, match="backup is corrupt") as raised:
        restore_services.restores.test(ACTOR, key)
    assert key in str(raised.value)
    assert databases_like(pg_server, SCRATCH_PREFIX) == []
    failure = restore_services.audit.events(action="restore_test")[0]
    assert failure.outcome == "failed" and failure.error_code == "restore_failed"
    status = restore_services.catalog.status()
    assert any(b.startswith("last restore test failed") for b in status.breaches)


def test_a_manifest_that_disagrees_fails_the_matching_check_and_names_the_table(
    restore_services: Services, s3: Any, bucket: str, pg_server: PgTarget
) -> None:
    key = restore_services.backups.run(ACTOR).manifest.key
    manifest_key = key + ".manifest.json"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    manifest["stats"]["row_counts"]["blnk.transactions"] += 1
    manifest["stats"]["ledger"]["EUR"]["transaction_amount_sum"] = "1.00"
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode())

    report = restore_services.restores.test(ACTOR, key)
    assert not report.passed
    failed = {c.name: c for c in report.failed_checks}
    assert set(failed) == {"rows blnk.transactions", "ledger EUR transaction_amount_sum"}
    rows = failed["rows blnk.transactions"]
    assert (rows.expected, rows.found) == ("2001", "2000")
    assert databases_like(pg_server, SCRATCH_PREFIX) == []
    assert restore_services.audit.events(action="restore_test")[0].error_code == "check_failed"


def test_unknown_or_malformed_keys_are_usage_errors(restore_services: Services) -> None:
    with pytest.raises(UsageError, match="no complete backup"):
        restore_services.restores.test(ACTOR, "latest")
    with pytest.raises(UsageError, match="not a backup key"):
        restore_services.restores.test(ACTOR, "backup.dump")
    with pytest.raises(UsageError, match="does not exist"):
        restore_services.restores.test(ACTOR, "blnk_backup_20200101_000000.dump")


def test_restore_test_needs_its_server_configured(services: Services) -> None:
    with pytest.raises(ConfigError, match="RESTORE_TEST_DATABASE_URL"):
        services.restores.test(ACTOR, "latest")


def test_restore_into_a_new_database_keeps_it_and_refuses_existing_or_source_names(
    restore_services: Services, pg_server: PgTarget, blnk_db: PgTarget
) -> None:
    before = _snapshot(blnk_db)
    key = restore_services.backups.run(ACTOR).manifest.key
    with pytest.raises(UsageError, match="source database"):
        restore_services.restores.restore(ACTOR, key, blnk_db.dbname, pg_server)
    with pytest.raises(UsageError, match="already exists"):
        restore_services.restores.restore(ACTOR, key, "postgres", pg_server)
    with pytest.raises(UsageError, match="1-63 bytes"):
        restore_services.restores.restore(ACTOR, key, "x" * 64, pg_server)
    new = f"blnk_recovered_{os.getpid()}"
    try:
        report = restore_services.restores.restore(ACTOR, key, new, pg_server)
        assert report.passed and report.kept
        assert _snapshot(pg_server.with_dbname(new))[:2] == before[:2]
    finally:
        drop_database(pg_server, new)
    assert _snapshot(blnk_db) == before


def test_restore_cli_needs_yes_and_prints_how_to_switch_over(
    make_settings: Any,
    use_settings: Any,
    capsys: pytest.CaptureFixture[str],
    pg_server: PgTarget,
) -> None:
    use_settings(make_settings(restore_tests=True))
    assert main(["backup", "--json"]) == 0
    capsys.readouterr()
    new = f"blnk_cli_restored_{os.getpid()}"
    assert main(["restore", "latest", "--into", new]) == 2
    assert "--yes" in capsys.readouterr().err
    assert databases_like(pg_server, new) == []
    try:
        assert main(["restore", "latest", "--into", new, "--yes"]) == 0
        out = capsys.readouterr().out
        assert "all checks passed" in out and "To switch Blnk over" in out and new in out
    finally:
        drop_database(pg_server, new)
    assert main(["restore-test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
    assert main(["status"]) == 0
    assert "proven restorable" in capsys.readouterr().out


def test_a_killed_restore_test_leaves_a_scratch_database_that_the_next_run_drops(
    make_settings: Any, pg_server: PgTarget, s3_server: Any, bucket: str, tmp_path: Path
) -> None:
    name = make_database(pg_server, 20_000)
    try:
        settings = make_settings(
            database=name,
            restore_tests=True,
        )
        services = Services(settings)
        services.backups.run(ACTOR)
        env = settings_env(settings, PATH=os.environ["PATH"], HOME=str(tmp_path), RESTORE_JOBS="1")
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "blnk-backup"), "restore-test"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not databases_like(pg_server, SCRATCH_PREFIX) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the program and its pg_restore, no clean-up
        proc.wait(10)
        leftovers = databases_like(pg_server, SCRATCH_PREFIX)
        assert len(leftovers) == 1

        report = services.restores.test(ACTOR, "latest")
        assert report.passed
        assert databases_like(pg_server, SCRATCH_PREFIX) == []
        services.close()
    finally:
        for leftover in databases_like(pg_server, SCRATCH_PREFIX):
            drop_database(pg_server, leftover)
        drop_database(pg_server, name)


def test_a_killed_restore_leaves_a_database_marked_incomplete_that_the_next_restore_drops(
    make_settings: Any, pg_server: PgTarget, tmp_path: Path
) -> None:
    name = make_database(pg_server, 20_000)
    tag = os.getpid()
    killed, live, new = f"blnk_killed_{tag}", f"blnk_live_{tag}", f"blnk_next_{tag}"
    settings = make_settings(database=name)
    services = Services(settings)
    try:
        services.backups.run(ACTOR)
        env = settings_env(settings, PATH=os.environ["PATH"], HOME=str(tmp_path), RESTORE_JOBS="1")
        proc = subprocess.Popen(
            [BLNK_BACKUP, "restore", "latest", "--into", killed, "--yes"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while (
            not databases_commented(pg_server, INCOMPLETE_RESTORE) and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the program and its pg_restore, no clean-up
        proc.wait(10)
        [(left, comment)] = databases_commented(pg_server, INCOMPLETE_RESTORE)
        [started] = services.audit.events(action="restore")
        assert left == killed and started.outcome == "started" and started.run_id in comment
        workdirs = list(Path(tempfile.gettempdir(), "blnk-restore-into").glob(started.run_id))
        assert len(workdirs) == 1  # its downloaded dump, left behind

        # A restore that is alive (its database's lock held) is never touched by the sweep.
        create_database(pg_server, live)
        comment_on_database(pg_server, live, f"{INCOMPLETE_RESTORE}{'0' * 32} of some key")
        with AdvisoryLock(pg_server.with_dbname(live), RESTORE_INTO_LOCK_ID, "restoring"):
            report = services.restores.restore(ACTOR, "latest", new, pg_server)

        assert report.passed
        assert not database_exists(pg_server, killed) and not workdirs[0].exists()
        assert database_exists(pg_server, live)
        [(_name, done)] = databases_commented(pg_server, f"blnk-backup: restored from {report.key}")
        assert _name == new and done.endswith("checks, all passed")
        closed = [e for e in services.audit.events(action="restore") if e.run_id == started.run_id]
        assert [e.outcome for e in closed] == ["abandoned", "started"]
    finally:
        services.close()
        for database in (killed, live, new, name):
            drop_database(pg_server, database)


def test_the_sweep_drops_only_a_leftover_nobody_holds_that_is_still_marked_incomplete(
    pg_server: PgTarget,
) -> None:
    name = f"blnk_left_{os.getpid()}"
    marked = f"{INCOMPLETE_RESTORE}{'a' * 32} of some key"
    create_database(pg_server, name)
    try:
        comment_on_database(pg_server, name, marked)
        with AdvisoryLock(pg_server.with_dbname(name), RESTORE_INTO_LOCK_ID, "restoring"):
            assert not RestoreService._drop_if_abandoned(pg_server, name, marked)  # alive
        # Listed while pg_restore ran, finished before the sweep took the lock: not a leftover.
        comment_on_database(pg_server, name, "blnk-backup: restored; checks running")
        assert not RestoreService._drop_if_abandoned(pg_server, name, marked)
        assert database_exists(pg_server, name)
        comment_on_database(pg_server, name, marked)
        assert RestoreService._drop_if_abandoned(pg_server, name, marked)
        assert not database_exists(pg_server, name)
    finally:
        drop_database(pg_server, name)


def test_a_restore_that_fails_is_unmarked_before_it_lets_go_of_its_lock(
    pg_server: PgTarget,
) -> None:
    # Else a sweep in between would drop it and call the live run abandoned, and the run
    # would end twice (abandoned and failed).
    name = f"blnk_failing_{os.getpid()}"
    create_database(pg_server, name)
    try:
        marked = f"{INCOMPLETE_RESTORE}{'b' * 32} of some key"
        with pytest.raises(RestoreCheckError), _marked_while_restoring(pg_server, name, marked):
            assert [n for n, _c in databases_commented(pg_server, INCOMPLETE_RESTORE)] == [name]
            raise RestoreCheckError("pg_restore failed")
        assert databases_commented(pg_server, INCOMPLETE_RESTORE) == []
        assert databases_commented(pg_server, "blnk-backup: failed restore") != []
    finally:
        drop_database(pg_server, name)


def test_a_leftover_the_sweep_may_not_drop_is_logged_and_never_blocks_a_restore(
    make_settings: Any, pg_server: PgTarget, caplog: pytest.LogCaptureFixture
) -> None:
    tag = os.getpid()
    left, role = f"blnk_left_by_admin_{tag}", f"blnk_bot_role_{tag}"
    create_database(pg_server, left)  # left by a killed restore run as another role
    with pg_server.connect(autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN CREATEDB')
    services = Services(make_settings())
    try:
        as_bot = PgTarget({**pg_server.params, "user": role}, None)
        dead = _killed_restore_run(services, left, as_bot)
        comment_on_database(pg_server, left, f"{INCOMPLETE_RESTORE}{dead} of some key")
        services.restores._sweep_killed_restores(ACTOR, as_bot)  # no exception
        assert database_exists(pg_server, left)
        assert f"could not drop {left}" in caplog.text
    finally:
        services.close()
        drop_database(pg_server, left)
        with pg_server.connect(autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def _killed_restore_run(services: Services, into: str, server: PgTarget) -> str:
    """Record a restore into ``into`` on ``server`` that started and never ended, with no
    process holding its run lock (killed outright); return its run id."""
    started = services.audit.record(
        action="restore",
        outcome="started",
        actor=ACTOR,
        details={"into": into, "server": server.display},
    )
    return started.run_id


def test_the_sweep_drops_no_database_it_did_not_leave_whatever_its_comment_says(
    make_settings: Any, pg_server: PgTarget
) -> None:
    tag = uuid.uuid4().hex[:8]
    source = make_database(pg_server, 200)
    forged, elsewhere, ours = f"blnk_forged_{tag}", f"blnk_other_{tag}", f"blnk_ours_{tag}"
    services = Services(make_settings(database=source))
    try:
        for name in (forged, elsewhere, ours):
            create_database(pg_server, name)
        # A comment naming no run of this audit log (anyone who owns a database can write it).
        comment_on_database(pg_server, forged, f"{INCOMPLETE_RESTORE}{'d' * 32} of some key")
        # A dead run of ours, but one that restored into another database.
        other_run = _killed_restore_run(services, f"blnk_somewhere_{tag}", pg_server)
        comment_on_database(pg_server, elsewhere, f"{INCOMPLETE_RESTORE}{other_run} of x")
        # The source database, carrying the comment of a dead run of ours "into" it.
        source_run = _killed_restore_run(services, source, pg_server.with_dbname(source))
        comment_on_database(pg_server, source, f"{INCOMPLETE_RESTORE}{source_run} of x")
        # What a restore of ours killed outright leaves: the only one to go.
        our_run = _killed_restore_run(services, ours, pg_server)
        comment_on_database(pg_server, ours, f"{INCOMPLETE_RESTORE}{our_run} of x")

        services.restores._sweep_killed_restores(ACTOR, pg_server)
        services.restores._sweep_killed_restores(ACTOR, pg_server.with_dbname(source))

        assert database_exists(pg_server, forged) and database_exists(pg_server, elsewhere)
        assert database_exists(pg_server, source)
        assert not database_exists(pg_server, ours)
        with pytest.raises(UsageError, match="already exists"):
            services.restores.check_target_free(forged, pg_server)
    finally:
        services.close()
        for name in (forged, elsewhere, ours, source):
            drop_database(pg_server, name)


def test_a_restore_test_drops_no_scratch_lookalike_it_did_not_leave(
    restore_services: Services, pg_server: PgTarget
) -> None:
    lookalike = f"{SCRATCH_PREFIX}{uuid.uuid4().hex}"  # the shape of ours, not a run of ours
    create_database(pg_server, lookalike)
    try:
        restore_services.backups.run(ACTOR)
        assert restore_services.restores.test(ACTOR, "latest").passed
        assert database_exists(pg_server, lookalike)
    finally:
        drop_database(pg_server, lookalike)


def test_an_archive_pg_restore_cannot_read_fails_before_a_database_is_created(
    restore_services: Services, s3: Any, bucket: str, pg_server: PgTarget
) -> None:
    import hashlib

    key = restore_services.backups.run(ACTOR).manifest.key
    garbage = b"this is not a pg_dump archive" * 100
    s3.put_object(Bucket=bucket, Key=key, Body=garbage)
    manifest_key = key + ".manifest.json"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    manifest |= {"sha256": hashlib.sha256(garbage).hexdigest(), "size": len(garbage)}
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode())
    with pytest.raises(RestoreCheckError, match="not a readable pg_dump archive"):
        restore_services.restores.test(ACTOR, key)
    assert databases_like(pg_server, SCRATCH_PREFIX) == []


def test_a_restore_that_fails_midway_drops_the_half_restored_database(
    make_settings: Any, pg_server: PgTarget
) -> None:
    name = make_database(pg_server, 100)
    role = f"blnk_gone_{os.getpid()}"
    source = pg_server.with_dbname(name)
    with pg_server.connect(autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}"')
    with source.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE blnk.notes (id int)")
        conn.execute(f'ALTER TABLE blnk.notes OWNER TO "{role}"')
    new = f"blnk_half_{os.getpid()}"
    services = Services(make_settings(database=name))
    try:
        key = services.backups.run(ACTOR).manifest.key
        with source.connect(autocommit=True) as conn:  # the owner no longer exists anywhere
            conn.execute(f'DROP OWNED BY "{role}"')
        with pg_server.connect(autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{role}"')
        with pytest.raises(RestoreCheckError, match=f'role "{role}" does not exist'):
            services.restores.restore(ACTOR, key, new, pg_server)
        assert databases_like(pg_server, new) == []
        failure = services.audit.events(action="restore")[0]
        assert failure.outcome == "failed" and "pg_restore exit" in failure.error_cause
    finally:
        services.close()
        drop_database(pg_server, new)
        drop_database(pg_server, name)
        with pg_server.connect(autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')
