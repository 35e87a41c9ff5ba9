"""Fault cases: each leaves no object and no incomplete upload, and the audit log says why."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from bot.slack.alerts import alert_for
from core.audit import Actor
from core.backup import BackupProgress
from core.database import PgTarget, server_version
from core.errors import (
    AlreadyRunningError,
    BackupInterrupted,
    ConfigError,
    DumpError,
    PreflightError,
    StorageError,
    VerificationError,
)
from core.processes import find_tool
from core.services import Services
from tests.support.faultproxy import FaultProxy, Request
from tests.support.helpers import SECRET_KEY, bucket_keys, incomplete_uploads
from tests.support.pgcluster import PasswordCluster
from tests.support.s3server_alt import SeaweedS3ServerProcess

pytestmark = [pytest.mark.stores, pytest.mark.pg_versions]

ACTOR = Actor("bob", "cli")


def _big_services(make_settings: Any, big_db: str, **overrides: Any) -> Services:
    return Services(
        make_settings(
            database=big_db,
            backup_compression_level=0,
            backup_part_size_mib=5,
            backup_upload_concurrency=1,
            **overrides,
        )
    )


def _last_failure(services: Services) -> Any:
    failures = services.audit.events(action="backup")
    assert failures[0].outcome == "failed"
    return failures[0]


def _kill_pg_dump() -> int:
    killed = 0
    for child in psutil.Process().children(recursive=True):
        if child.name() == "pg_dump":
            child.kill()
            killed += 1
    return killed


def test_pg_dump_killed_mid_stream_leaves_no_object_and_no_upload(
    make_settings: Any, big_db: str, s3: Any, bucket: str
) -> None:
    # A small read-ahead keeps pg_dump writing (blocked on its pipe) while parts upload.
    services = _big_services(make_settings, big_db, backup_read_ahead_mib=1)
    killed: list[int] = []

    def on_progress(event: BackupProgress) -> None:
        if event.stage == "dumping" and event.bytes_uploaded and not killed:
            killed.append(_kill_pg_dump())

    with pytest.raises(DumpError, match="killed by signal 9"):
        services.backups.run(ACTOR, on_progress=on_progress)
    assert killed == [1]
    assert bucket_keys(s3, bucket) == []
    assert incomplete_uploads(s3, bucket) == []
    failure = _last_failure(services)
    assert failure.error_code == "dump_failed"
    assert "signal 9" in failure.error_cause
    services.close()


def _pg_dump_that_fails_after_a_complete_dump(directory: Path, real: str, then: str) -> Path:
    """A pg_dump (in ``directory``, for PG_BIN_DIR) that runs the real one into a file, copies
    that complete dump to stdout, and only then runs the shell command ``then`` (which fails)."""
    directory.mkdir()
    script = directory / "pg_dump"
    copy = directory / "complete.dump"
    script.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --version) exec {shlex.quote(real)} --version ;; esac\n'
        f'{shlex.quote(real)} "$@" > {shlex.quote(str(copy))} || exit 99\n'
        f"cat {shlex.quote(str(copy))}\n"
        f"{then}\n"
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize(
    ("then", "how", "stderr_tail"),
    [
        pytest.param(
            'echo "pg_dump: error: could not close output file: No space left on device" >&2'
            "; exit 1",
            "exited with status 1",
            "pg_dump: error: could not close output file: No space left on device",
            id="exit-1-with-an-error",
        ),
        pytest.param("exit 3", "exited with status 3", "(no error output)", id="exit-3-silently"),
        pytest.param(
            'echo "pg_dump: terminating on a signal" >&2; kill -TERM $$',
            "was killed by signal 15",
            "pg_dump: terminating on a signal",
            id="killed-by-sigterm",
        ),
    ],
)
def test_pg_dump_failing_after_complete_output_is_never_a_backup(
    make_settings: Any,
    big_db: str,
    pg_bin_dir: str | None,
    tmp_path: Path,
    s3: Any,
    bucket: str,
    then: str,
    how: str,
    stderr_tail: str,
) -> None:
    fake = _pg_dump_that_fails_after_a_complete_dump(
        tmp_path / "bin", find_tool("pg_dump", pg_bin_dir), then
    )
    services = _big_services(make_settings, big_db, pg_bin_dir=str(fake.parent))
    uploaded: list[int] = []

    def on_progress(event: BackupProgress) -> None:
        uploaded.append(event.bytes_uploaded)

    try:
        with pytest.raises(DumpError) as raised:
            services.backups.run(ACTOR, on_progress=on_progress)
        failure = _last_failure(services)
    finally:
        services.close()
    assert raised.value.message == f"pg_dump {how}: {stderr_tail}"
    # What went into the upload was a whole, valid archive, and parts of it were already stored:
    # only the exit status tells this backup from a good one.
    listed = subprocess.run(
        [find_tool("pg_restore", pg_bin_dir), "--list", str(fake.parent / "complete.dump")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "TABLE DATA blnk transactions" in listed.stdout
    assert max(uploaded) > 0
    assert bucket_keys(s3, bucket) == []  # no dump and no manifest
    assert incomplete_uploads(s3, bucket) == []
    assert failure.error_code == "dump_failed"
    assert failure.error_cause == f"pg_dump {how}: {stderr_tail}"


def test_s3_503_slowdown_is_retried_and_the_backup_succeeds(
    make_settings: Any, big_db: str, s3: Any, bucket: str, proxy: FaultProxy
) -> None:
    injected: list[Request] = []

    def fail(request: Request) -> tuple[int, str] | None:
        if request.method == "PUT" and "partNumber" in request.path and len(injected) < 2:
            injected.append(request)
            return 503, "SlowDown"
        return None

    proxy.faults.fail = fail
    services = _big_services(
        make_settings, big_db, s3_endpoint_url=proxy.endpoint, s3_max_attempts=4
    )
    manifest = services.backups.run(ACTOR).manifest
    services.close()
    assert len(injected) == 2
    assert sorted(bucket_keys(s3, bucket)) == [manifest.key, manifest.key + ".manifest.json"]


def test_s3_down_mid_upload_fails_cleanly_and_the_next_run_aborts_the_orphan(
    make_settings: Any, big_db: str, s3: Any, bucket: str, proxy: FaultProxy
) -> None:
    def after(request: Request) -> None:
        if request.method == "PUT" and "partNumber=1" in request.path:
            proxy.stop()

    proxy.faults.after = after
    services = _big_services(make_settings, big_db, s3_endpoint_url=proxy.endpoint)
    with pytest.raises(StorageError) as raised:
        services.backups.run(ACTOR)
    assert "Could not connect" in str(raised.value) or "Connection" in str(raised.value)
    assert SECRET_KEY not in str(raised.value)
    failure = _last_failure(services)
    assert failure.error_code == "storage_error"
    # The store was down, so the abort could not happen: recorded, and still there.
    [orphaned] = services.audit.events(action="orphaned_upload")
    [left] = incomplete_uploads(s3, bucket)
    assert orphaned.key == left["Key"]
    assert bucket_keys(s3, bucket) == []
    # One failure, one alert, which says what was left behind.
    alerts = [found for e in services.audit.events() if (found := alert_for(e)) is not None]
    assert [title for title, _lines, _severity in alerts] == ["Backup failed"]
    assert any(left["Key"] in line for line in alerts[0][1] if line.startswith("*Left behind:*"))

    # The store comes back; the next backup finds the upload in the store's own listing,
    # aborts it first, then succeeds.
    proxy.faults.after = lambda _r: None
    proxy.start()
    manifest = services.backups.run(ACTOR).manifest
    assert incomplete_uploads(s3, bucket) == []
    [aborted] = services.audit.events(action="orphan_aborted")
    assert aborted.key == left["Key"]
    assert sorted(bucket_keys(s3, bucket)) == [manifest.key, manifest.key + ".manifest.json"]
    services.close()


def test_an_unreachable_store_is_one_failure_with_one_alert(
    make_settings: Any, s3: Any, bucket: str, proxy: FaultProxy
) -> None:
    s3.create_multipart_upload(Bucket=bucket, Key="blnk_backup_20200101_000000.dump")
    proxy.stop()  # the store is down from the start: the clean-up cannot even list
    services = Services(make_settings(s3_endpoint_url=proxy.endpoint))
    try:
        with pytest.raises(StorageError):
            services.backups.run(ACTOR)
        events = services.audit.events()
        assert services.audit.events(action="orphan_cleanup") == []
        alerts = [found for e in events if (found := alert_for(e)) is not None]
        assert [title for title, _lines, _severity in alerts] == ["Backup failed"]
        [failed] = [e for e in events if e.action == "backup" and e.outcome == "failed"]
        [problem] = failed.details_dict()["orphan_cleanup"]
        assert "listing incomplete uploads" in problem["cause"]
        assert any(line.startswith("*Also:* cleaning up") for line in alerts[0][1])
    finally:
        services.close()


def test_a_cleanup_failure_beside_a_good_backup_is_alerted_on_its_own(
    make_settings: Any, s3: Any, bucket: str, proxy: FaultProxy
) -> None:
    # The store takes backups but refuses to list incomplete uploads (a missing permission):
    # the backup stands, and the clean-up's failure is its own alert.
    s3.create_multipart_upload(Bucket=bucket, Key="blnk_backup_20200101_000000.dump")

    def no_listing(request: Request) -> tuple[int, str] | None:
        listing = request.method == "GET" and "uploads" in request.path
        return (403, "AccessDenied") if listing else None

    proxy.faults.fail = no_listing
    services = Services(make_settings(s3_endpoint_url=proxy.endpoint))
    try:
        services.backups.run(ACTOR)
        [cleanup] = services.audit.events(action="orphan_cleanup")
        assert cleanup.outcome == "failed" and alert_for(cleanup) is not None
    finally:
        services.close()


@pytest.mark.parametrize(
    ("mode", "header", "value"),
    [
        ("crc32", "x-amz-checksum-crc32", "AAAAAA=="),
        ("sha256", "x-amz-checksum-sha256", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=-1"),
    ],
)
def test_store_reporting_a_different_checksum_fails_verification_and_deletes_the_object(
    make_settings: Any, s3: Any, bucket: str, proxy: FaultProxy, mode: str, header: str, value: str
) -> None:
    def tamper(request: Request, headers: dict[str, str]) -> dict[str, str]:
        if request.method == "HEAD" and request.path.endswith(".dump"):
            for name in list(headers):
                if name.lower() == header:
                    headers[name] = value
        return headers

    proxy.faults.headers = tamper
    services = Services(make_settings(s3_endpoint_url=proxy.endpoint, s3_checksum=mode))
    with pytest.raises(VerificationError, match="checksum mismatch"):
        services.backups.run(ACTOR)
    assert bucket_keys(s3, bucket) == []
    assert incomplete_uploads(s3, bucket) == []
    assert _last_failure(services).error_code == "verification_failed"
    services.close()


@pytest.mark.parametrize("mode", ["crc32", "sha256"])
def test_a_part_corrupted_on_its_way_to_the_store_fails_the_backup_and_leaves_nothing(
    make_settings: Any,
    s3: Any,
    bucket: str,
    big_db: str,
    proxy: FaultProxy,
    s3_server: Any,
    mode: str,
) -> None:
    def corrupt(request: Request, body: bytes) -> bytes:
        if request.method == "PUT" and "partNumber=2" in request.path and len(body) > 1000:
            return body[:1000] + bytes([body[1000] ^ 0xFF]) + body[1001:]  # one bit flip
        return body

    proxy.faults.body = corrupt
    services = _big_services(
        make_settings, big_db, s3_endpoint_url=proxy.endpoint, s3_checksum=mode
    )
    with pytest.raises((StorageError, VerificationError)) as raised:
        services.backups.run(ACTOR)
    if isinstance(s3_server, SeaweedS3ServerProcess):
        # A store that checks each part's checksum refuses the part on receipt.
        assert isinstance(raised.value, StorageError) and raised.value.s3_code == "BadDigest"
    else:
        # moto keeps what it got; its checksum of the object then differs from ours.
        assert isinstance(raised.value, VerificationError), raised.value
        assert "checksum mismatch" in str(raised.value)
    assert bucket_keys(s3, bucket) == [] and incomplete_uploads(s3, bucket) == []
    assert _last_failure(services).error_code in {"storage_error", "verification_failed"}
    services.close()


def test_store_reporting_a_different_size_fails_verification(
    make_settings: Any, s3: Any, bucket: str, proxy: FaultProxy
) -> None:
    def tamper(request: Request, headers: dict[str, str]) -> dict[str, str]:
        if request.method == "HEAD" and request.path.endswith(".dump"):
            for name in list(headers):
                if name.lower() == "content-length":
                    headers[name] = str(int(headers[name]) - 1)
        return headers

    proxy.faults.headers = tamper
    services = Services(make_settings(s3_endpoint_url=proxy.endpoint))
    with pytest.raises(VerificationError, match="bytes but the store holds"):
        services.backups.run(ACTOR)
    assert bucket_keys(s3, bucket) == []
    services.close()


def test_missing_bucket_is_a_configuration_error_and_is_audited(
    make_settings: Any, s3: Any
) -> None:
    services = Services(make_settings(s3_bucket="no-such-bucket-here"))
    with pytest.raises(ConfigError, match="does not exist"):
        services.backups.run(ACTOR)
    failure = _last_failure(services)
    assert failure.error_code == "config_error"
    assert "404" in failure.error_cause or "NoSuchBucket" in failure.error_cause
    services.close()
    assert "no-such-bucket-here" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


@pytest.fixture(scope="module")
def password_cluster() -> Any:
    cluster = PasswordCluster()
    cluster.start()
    yield cluster
    cluster.stop()


def test_wrong_database_password_fails_before_anything_is_uploaded_and_is_never_shown(
    make_settings: Any, password_cluster: PasswordCluster, s3: Any, bucket: str
) -> None:
    wrong = "Wr0ng-Passw0rd-Value"
    services = Services(make_settings(database_url=password_cluster.url(wrong)))
    with pytest.raises(PreflightError) as raised:
        services.backups.run(ACTOR)
    assert "password authentication failed" in str(raised.value)
    assert wrong not in str(raised.value)
    failure = _last_failure(services)
    assert "password authentication failed" in failure.error_cause
    assert wrong not in (failure.error_cause or "") + (failure.details or "")
    assert bucket_keys(s3, bucket) == []
    assert incomplete_uploads(s3, bucket) == []
    services.close()


@dataclass(frozen=True)
class _Seen:
    exe: str
    argv: list[str]
    pgpassword: str | None


def _running_pg_dumps() -> list[_Seen]:
    """Every pg_dump this process runs right now: the binary, or a wrapper script named pg_dump
    (Debian's /usr/bin/pg_dump is a Perl script that execs the binary)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # it may exit while we look
            if child.name() == "pg_dump":
                environ = child.environ()
                found.append(_Seen(child.exe(), child.cmdline(), environ.get("PGPASSWORD")))
    return found


def test_right_password_backs_up_through_the_environment_not_the_command_line(
    make_settings: Any, password_cluster: PasswordCluster, s3: Any, bucket: str
) -> None:
    cluster = PgTarget.from_url(password_cluster.url())
    with cluster.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS held_while_watched (id int)")
    # pg_dump waits for this lock, so it stays alive until the watcher has seen it.
    holder = cluster.connect()
    holder.execute("LOCK TABLE held_while_watched IN ACCESS EXCLUSIVE MODE")
    seen: list[_Seen] = []
    done = threading.Event()

    def dumping() -> list[_Seen]:
        return [p for p in seen if Path(p.exe).name == "pg_dump"]

    def watch() -> None:
        deadline = time.monotonic() + 30  # then let pg_dump go, unseen: the test fails
        try:
            while not dumping() and not done.is_set() and time.monotonic() < deadline:
                seen.extend(_running_pg_dumps())
                time.sleep(0.005)
        finally:
            holder.rollback()

    watcher = threading.Thread(target=watch)

    def on_progress(event: BackupProgress) -> None:
        if event.stage == "dumping" and watcher.ident is None:
            watcher.start()  # pg_dump starts right after this event

    services = Services(make_settings(database_url=password_cluster.url()))
    try:
        manifest = services.backups.run(ACTOR, on_progress=on_progress).manifest
    finally:
        done.set()
        if watcher.ident is not None:
            watcher.join(30)
        holder.close()
        services.close()
    assert manifest.database == "postgres"
    assert manifest.stats.row_counts == {"public.held_while_watched": 0}
    assert dumping(), seen  # the pg_dump binary itself was seen running
    for process in seen:
        assert any(a.startswith("--dbname=") and "user=ledger" in a for a in process.argv)
        assert "--no-password" in process.argv
        assert password_cluster.password not in " ".join(process.argv)
        assert process.pgpassword == password_cluster.password


def test_pg_dump_older_than_the_server_is_refused_naming_both_versions(
    make_settings: Any, tmp_path: Path, s3: Any, bucket: str, pg_server: PgTarget
) -> None:
    old = tmp_path / "pg14" / "pg_dump"
    old.parent.mkdir()
    # Debian's wording, with the packaging version after the real one.
    old.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.11 (Debian 14.11-1.pgdg120+2)'\n")
    old.chmod(0o755)
    services = Services(make_settings(pg_bin_dir=str(old.parent)))
    with pytest.raises(PreflightError) as raised:
        services.backups.run(ACTOR)
    assert raised.value.message.startswith("pg_dump 14.11 (at ")
    with pg_server.connect() as conn:
        server = server_version(conn)[1]
    assert f"cannot dump a PostgreSQL {server} server" in raised.value.message
    assert bucket_keys(s3, bucket) == []
    services.close()


def test_a_second_concurrent_backup_is_refused_in_process_and_across_processes(
    make_settings: Any, big_db: str, s3: Any, bucket: str
) -> None:
    services = _big_services(make_settings, big_db)
    other_process = _big_services(make_settings, big_db)  # its own locks, same database
    dumping, release = threading.Event(), threading.Event()

    def hold(event: BackupProgress) -> None:
        if event.stage == "dumping":
            dumping.set()
            release.wait(30)

    results: list[Any] = []
    worker = threading.Thread(
        target=lambda: results.append(services.backups.run(ACTOR, on_progress=hold))
    )
    worker.start()
    try:
        assert dumping.wait(30)
        holder = f"started by {ACTOR.trigger}:{ACTOR.name}"
        with pytest.raises(AlreadyRunningError, match="already running") as here:
            services.backups.run(ACTOR)
        assert holder in str(here.value)
        # The other process knows who from the audit log they share (a replica, a CLI run).
        with pytest.raises(AlreadyRunningError, match="already running") as there:
            other_process.backups.run(Actor("U999", "slack"))
        assert holder in str(there.value) and there.value.holder == "cli:bob"
    finally:
        release.set()
        worker.join(60)
    assert len(results) == 1
    refused = [e for e in other_process.audit.events(action="backup") if e.outcome == "failed"]
    assert refused and refused[0].error_code == "already_running"
    # Once the first one ends, the next may run.
    other_process.backups.run(ACTOR)
    services.close()
    other_process.close()


def test_a_role_that_cannot_read_a_table_fails_cleanly(
    make_settings: Any, blnk_db: PgTarget, pg_server: PgTarget, s3: Any, bucket: str
) -> None:
    role = f"blnk_reader_{os.getpid()}"
    with pg_server.connect(autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    with blnk_db.connect(autocommit=True) as conn:
        conn.execute(f'GRANT USAGE ON SCHEMA blnk TO "{role}"')
        conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA blnk TO "{role}"')
        conn.execute(f'REVOKE SELECT ON blnk.api_keys FROM "{role}"')
    services = Services(
        make_settings(database_url=PgTarget({**blnk_db.params, "user": role}, None).conninfo)
    )
    try:
        with pytest.raises(DumpError, match="permission denied"):
            services.backups.run(ACTOR)
        assert bucket_keys(s3, bucket) == []
        assert incomplete_uploads(s3, bucket) == []
        assert _last_failure(services).error_code == "dump_failed"
    finally:
        services.close()
        with blnk_db.connect(autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
        with pg_server.connect(autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{role}"')


def test_once_the_service_stops_backups_a_new_one_is_refused_and_recorded(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    # A backup started by a scheduler or a Socket Mode command while the service shuts down
    # would die with the process, unaudited: it is refused instead.
    services = Services(make_settings())
    try:
        assert services.stop_backup("the service is shutting down (SIGTERM)", 0)
        with pytest.raises(BackupInterrupted, match="not started: the service is shutting down"):
            services.backups.run(ACTOR)
        [failed, _started] = services.audit.events(action="backup")
        assert (failed.outcome, failed.error_code) == ("failed", "interrupted")
        assert bucket_keys(s3, bucket) == [] and incomplete_uploads(s3, bucket) == []
    finally:
        services.close()
