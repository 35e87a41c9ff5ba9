"""Fault cases: each leaves no object and no incomplete upload, and the audit log says why."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from core.audit import Actor
from core.backup import BackupProgress
from core.database import PgTarget, drop_database
from core.errors import (
    AlreadyRunningError,
    ConfigError,
    DumpError,
    PreflightError,
    StorageError,
    VerificationError,
)
from core.services import Services
from tests.support.faultproxy import FaultProxy, Request
from tests.support.helpers import SECRET_KEY, bucket_keys, incomplete_uploads, make_database
from tests.support.pgcluster import PasswordCluster

ACTOR = Actor("bob", "cli")


@pytest.fixture(scope="module")
def big_db(pg_server: PgTarget) -> Any:
    """Big enough that an uncompressed dump spans several 5 MiB parts."""
    name = make_database(pg_server, 20_000)
    yield name
    drop_database(pg_server, name)


def _big_services(make_settings: Any, big_db: str, **overrides: Any) -> Services:
    return Services(
        make_settings(
            database_url=f"postgresql://postgres@127.0.0.1:5432/{big_db}",
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
    services = _big_services(make_settings, big_db)
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
    # The store was down, so the abort could not happen: recorded (an alert), and still there.
    [orphaned] = services.audit.events(action="orphaned_upload")
    [left] = incomplete_uploads(s3, bucket)
    assert orphaned.key == left["Key"]
    assert bucket_keys(s3, bucket) == []

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


def test_store_reporting_a_different_checksum_fails_verification_and_deletes_the_object(
    make_settings: Any, s3: Any, bucket: str, proxy: FaultProxy
) -> None:
    def tamper(request: Request, headers: dict[str, str]) -> dict[str, str]:
        if request.method == "HEAD" and request.path.endswith(".dump"):
            for name in list(headers):
                if name.lower() == "x-amz-checksum-sha256":
                    headers[name] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=-1"
        return headers

    proxy.faults.headers = tamper
    services = Services(make_settings(s3_endpoint_url=proxy.endpoint))
    with pytest.raises(VerificationError, match="checksum mismatch"):
        services.backups.run(ACTOR)
    assert bucket_keys(s3, bucket) == []
    assert incomplete_uploads(s3, bucket) == []
    assert _last_failure(services).error_code == "verification_failed"
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


def test_right_password_backs_up_through_the_environment_not_the_command_line(
    make_settings: Any, password_cluster: PasswordCluster, s3: Any, bucket: str
) -> None:
    seen_argv: list[str] = []

    def spy(event: BackupProgress) -> None:
        for child in psutil.Process().children(recursive=True):
            if child.name() == "pg_dump":
                seen_argv.extend(child.cmdline())

    services = Services(make_settings(database_url=password_cluster.url()))
    manifest = services.backups.run(ACTOR, on_progress=spy).manifest
    services.close()
    assert manifest.database == "postgres"
    assert password_cluster.password not in " ".join(seen_argv)


def test_pg_dump_older_than_the_server_is_refused_naming_both_versions(
    make_settings: Any, tmp_path: Path, s3: Any, bucket: str
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
    assert "cannot dump a PostgreSQL 15." in raised.value.message
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
        with pytest.raises(AlreadyRunningError, match="already running"):
            services.backups.run(ACTOR)
        with pytest.raises(AlreadyRunningError, match="already running"):
            other_process.backups.run(ACTOR)
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
        make_settings(database_url=f"postgresql://{role}@127.0.0.1:5432/{blnk_db.dbname}")
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
