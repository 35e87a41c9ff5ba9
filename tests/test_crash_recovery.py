"""A run killed outright (SIGKILL, OOM, a host restart) leaves nothing that lasts: the next run,
holding the lock the dead one held, aborts its incomplete uploads from the store's own listing
(even with the audit file lost), closes its audit record as abandoned, and a restore test
removes the dump and scratch database a killed restore test left."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from core.audit import Actor
from core.database import PgTarget, databases_like, drop_database
from core.errors import ConfigError, LocalCopyError
from core.restore.service import SCRATCH_PREFIX
from core.services import Services
from tests.support.faultproxy import FaultProxy
from tests.support.helpers import bucket_keys, incomplete_uploads, settings_env

pytestmark = pytest.mark.stores

ACTOR = Actor("ivan", "cli")


@pytest.fixture(scope="module")
def db_5k(pg_server: PgTarget) -> Iterator[str]:
    from tests.support.helpers import make_database

    name = make_database(pg_server, 5_000)
    yield name
    drop_database(pg_server, name)


def _child_backup(settings: Any, tmp_path: Path) -> subprocess.Popen[str]:
    env = settings_env(settings, PATH=os.environ["PATH"], HOME=str(tmp_path))
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "blnk-backup"), "backup"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_part_in_flight(proxy: FaultProxy, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("partNumber=" in r.path and r.method == "PUT" for r in proxy.faults.log):
            return
        time.sleep(0.02)
    raise AssertionError("no part upload was seen")


def _kill_process_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the CLI and its pg_dump, as the OOM killer or a host restart would."""
    import psutil

    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    for child in children:
        child.kill()
    proc.wait(10)


def _killed_backup(
    make_settings: Any, db_5k: str, proxy: FaultProxy, tmp_path: Path, **overrides: Any
) -> Any:
    """Start a backup in a child process, SIGKILL it with a part in flight; return settings."""
    proxy.faults.delay = lambda r: 1.0 if "partNumber=" in r.path else 0.0
    settings = make_settings(
        database=db_5k,
        s3_endpoint_url=proxy.endpoint,
        backup_compression_level=0,
        backup_part_size_mib=5,
        backup_upload_concurrency=1,
        **overrides,
    )
    proc = _child_backup(settings, tmp_path)
    _wait_for_part_in_flight(proxy)
    _kill_process_tree(proc)
    proxy.faults.delay = lambda _r: 0.0
    return settings


def test_the_next_backup_aborts_a_killed_runs_upload_even_with_the_audit_file_lost(
    make_settings: Any,
    db_5k: str,
    proxy: FaultProxy,
    s3: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    settings = _killed_backup(make_settings, db_5k, proxy, tmp_path)
    [left] = incomplete_uploads(s3, bucket)  # what a killed process leaves, billed
    # The host was lost with its disk: the next run has a fresh, empty audit log.
    fresh = settings.model_copy(
        update={"audit_database_url": f"sqlite:///{tmp_path / 'new-audit.sqlite3'}"}
    )
    services = Services(fresh)
    manifest = services.backups.run(ACTOR).manifest
    assert incomplete_uploads(s3, bucket) == []
    [aborted] = services.audit.events(action="orphan_aborted")
    assert aborted.key == left["Key"] and aborted.details_dict()["upload_id"] == left["UploadId"]
    assert sorted(bucket_keys(s3, bucket)) == [manifest.key, manifest.key + ".manifest.json"]
    services.close()


def test_the_next_backup_closes_the_killed_run_as_abandoned_at_once(
    make_settings: Any, db_5k: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    settings = _killed_backup(make_settings, db_5k, proxy, tmp_path)
    services = Services(settings)
    [dead] = [e for e in services.audit.events(action="backup") if e.outcome == "started"]
    services.backups.run(ACTOR)  # the kill was a moment ago: no grace period
    events = services.audit.events(action="backup", run_id=dead.run_id)
    assert [e.outcome for e in events] == ["abandoned", "started"]
    assert "never ended" in (events[0].error_cause or "")
    # Closed once: a second backup finds nothing left to close.
    services.backups.run(ACTOR)
    assert len(services.audit.events(action="backup", run_id=dead.run_id)) == 2
    services.close()


def test_a_backup_running_in_another_process_is_never_declared_dead(
    make_settings: Any, db_5k: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.faults.delay = lambda r: 1.0 if "partNumber=" in r.path else 0.0
    settings = make_settings(
        database=db_5k,
        s3_endpoint_url=proxy.endpoint,
        backup_compression_level=0,
        backup_part_size_mib=5,
        backup_upload_concurrency=1,
    )
    proc = _child_backup(settings, tmp_path)
    try:
        _wait_for_part_in_flight(proxy)
        services = Services(settings)
        [alive] = services.audit.open_runs("backup")
        # Its process holds its run lock: whoever looks, however long after, leaves it open.
        scope = {"database": alive.details_dict()["database"]}
        assert services.audit.close_abandoned("backup", ACTOR, scope=scope) == []
        _kill_process_tree(proc)
        # Killed: its lock went with it, so the same call closes it at once.
        [closed] = services.audit.close_abandoned("backup", ACTOR, scope=scope)
        assert closed.run_id == alive.run_id
        outcomes = [e.outcome for e in services.audit.events(run_id=alive.run_id)]
        assert outcomes == ["abandoned", "started"]
        services.close()
    finally:
        proxy.faults.delay = lambda _r: 0.0
        if proc.poll() is None:
            _kill_process_tree(proc)


def test_a_started_run_of_another_database_is_left_alone(
    make_settings: Any, db_5k: str, tmp_path: Path
) -> None:
    services = Services(make_settings(database=db_5k))
    other = services.audit.record(
        action="backup",
        outcome="started",
        actor=ACTOR,
        details={"database": "postgresql://postgres@elsewhere:5432/other"},
    )
    services.backups.run(ACTOR)
    assert [e.outcome for e in services.audit.events(run_id=other.run_id)] == ["started"]
    services.close()


def test_incomplete_uploads_on_the_replica_are_aborted_too(
    make_settings: Any, db_5k: str, s3: Any, bucket: str
) -> None:
    replica = f"{bucket}-replica"
    s3.create_bucket(Bucket=replica)
    stray = s3.create_multipart_upload(Bucket=replica, Key="blnk_backup_20200101_000000.dump")
    unrelated = s3.create_multipart_upload(Bucket=replica, Key="notes/blnk_backup_x.dump")
    services = Services(
        make_settings(
            database=db_5k,
            s3_replica_bucket=replica,
        )
    )
    services.backups.run(ACTOR)
    left = {u["UploadId"] for u in incomplete_uploads(s3, replica)}
    assert stray["UploadId"] not in left
    assert unrelated["UploadId"] in left  # not a backup key: never touched
    services.close()


def test_an_unwritable_local_copy_directory_is_a_configuration_error_before_anything_starts(
    make_settings: Any,
    db_5k: str,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    use_settings: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the directory should be")
    settings = make_settings(
        database=db_5k,
        backup_keep_local_copy=True,
        backup_local_dir=blocker / "backups",
    )
    services = Services(settings)
    with pytest.raises(ConfigError, match="BACKUP_LOCAL_DIR"):
        services.backups.run(ACTOR)
    services.close()
    use_settings(settings, BACKUP_KEEP_LOCAL_COPY="true", BACKUP_LOCAL_DIR=str(blocker / "b"))
    assert main(["backup"]) == 2
    assert "BACKUP_LOCAL_DIR" in capsys.readouterr().err
    assert bucket_keys(s3, bucket) == [] and incomplete_uploads(s3, bucket) == []


def test_a_local_copy_that_fails_mid_stream_aborts_the_upload(
    make_settings: Any, db_5k: str, s3: Any, bucket: str, tmp_path: Path
) -> None:
    settings = make_settings(
        database=db_5k,
        backup_keep_local_copy=True,
        backup_local_dir=tmp_path / "local",
        backup_compression_level=0,
    )
    env = settings_env(
        settings,
        PATH=os.environ["PATH"],
        HOME=str(tmp_path),
        BACKUP_KEEP_LOCAL_COPY="true",
        BACKUP_LOCAL_DIR=str(tmp_path / "local"),
    )

    def small_files() -> None:  # the disk "fills up" after 2 MiB of local copy
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    done = subprocess.run(
        [str(Path(sys.executable).parent / "blnk-backup"), "backup"],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=small_files,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert LocalCopyError.code in done.stderr and "internal error" not in done.stderr
    assert bucket_keys(s3, bucket) == [] and incomplete_uploads(s3, bucket) == []
    assert list((tmp_path / "local").iterdir()) == []  # no partial copy left


def test_a_sigkilled_restore_test_leaves_a_dump_and_database_the_next_one_removes(
    make_settings: Any, db_5k: str, pg_server: PgTarget, tmp_path: Path
) -> None:
    settings = make_settings(
        database=db_5k,
        restore_tests=True,
        backup_compression_level=0,
    )
    services = Services(settings)
    services.backups.run(ACTOR)
    env = settings_env(settings, PATH=os.environ["PATH"], HOME=str(tmp_path))
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "blnk-backup"), "restore-test", "latest"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not databases_like(pg_server, SCRATCH_PREFIX) and time.monotonic() < deadline:
        time.sleep(0.01)  # until pg_restore runs: the dump is on disk, the database exists
    _kill_process_tree(proc)
    workdirs = list(Path(tempfile.gettempdir()).glob("blnk-restore-test-*/*"))
    assert workdirs and any(p.glob("*.dump") for p in workdirs)
    assert databases_like(pg_server, SCRATCH_PREFIX)

    report = services.restores.test(ACTOR, "latest")
    assert report.passed
    assert not any(p.exists() for p in workdirs)
    assert databases_like(pg_server, SCRATCH_PREFIX) == []
    outcomes = [e.outcome for e in services.audit.events(action="restore_test")]
    assert outcomes[:4] == ["succeeded", "abandoned", "started", "started"]
    services.close()
