"""A run's liveness is decided exactly by its run lock (core/liveness.py): a run alive in any
process is never closed as abandoned, a run whose process was killed is closed at once, and
closed once — on SQLite (file locks) and on a shared PostgreSQL audit database (advisory
locks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.audit import Actor, AuditLog
from core.database import PgTarget
from tests.support.databases import audit_database

ACTOR = Actor("ops", "cli")

# A child process that opens the audit log, starts a run, says so, and waits to be killed.
_CHILD = textwrap.dedent(
    """
    import sys, time
    from core.audit import Actor, AuditLog
    audit = AuditLog(sys.argv[1])
    with audit.run("backup", Actor("child", "cli"), details={"database": "db"}) as run:
        print(run.run_id, flush=True)
        time.sleep(600)
    """
)


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path, pg_server: PgTarget) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.sqlite3'}"
        return
    with audit_database(pg_server) as url:
        yield url


def _child_run(audit_url: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, audit_url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    assert run_id, "the child did not start its run"
    return proc, run_id


def test_a_run_alive_in_another_process_stays_open_and_is_closed_at_once_when_killed(
    audit_url: str,
) -> None:
    audit = AuditLog(audit_url)
    proc, run_id = _child_run(audit_url)
    try:
        assert [r.run_id for r in audit.open_runs("backup")] == [run_id]
        assert not audit.is_dead(run_id)
        assert audit.close_abandoned("backup", ACTOR, scope={}) == []
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert audit.is_dead(run_id)
        [closed] = audit.close_abandoned("backup", ACTOR, scope={"database": "db"})
        assert closed.run_id == run_id
        assert [e.outcome for e in audit.events(run_id=run_id)] == ["abandoned", "started"]
        assert audit.close_abandoned("backup", ACTOR, scope={}) == []  # once
        assert not audit.is_dead(run_id)  # ended now
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        audit.close()


def test_a_run_in_this_process_is_alive_until_its_block_ends(audit_url: str) -> None:
    audit = AuditLog(audit_url)
    try:
        with audit.run("restore", ACTOR) as run:
            # Another thread of this very process sees it alive, as any process would.
            seen: list[bool] = []
            checker = threading.Thread(target=lambda: seen.append(audit.is_dead(run.run_id)))
            checker.start()
            checker.join()
            assert seen == [False]
            assert audit.close_abandoned("restore", ACTOR, scope={}) == []
        assert audit.has_ended(run.run_id) and not audit.is_dead(run.run_id)
        assert [e.outcome for e in audit.events(run_id=run.run_id)] == ["succeeded", "started"]
    finally:
        audit.close()


def test_a_dead_run_is_closed_once_when_two_processes_close_at_the_same_time(
    audit_url: str,
) -> None:
    audit = AuditLog(audit_url)
    others = [AuditLog(audit_url) for _ in range(4)]
    try:
        # A run with no lock held: what an older version, or a killed process, leaves.
        dead = audit.record(action="backup", outcome="started", actor=ACTOR, details={})
        barrier = threading.Barrier(len(others))
        closed: list[int] = []

        def close(log: AuditLog) -> None:
            barrier.wait()
            closed.append(len(log.close_abandoned("backup", ACTOR, scope={})))

        threads = [threading.Thread(target=close, args=(log,)) for log in others]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(closed) == 1
        outcomes = [e.outcome for e in audit.events(run_id=dead.run_id)]
        assert outcomes == ["abandoned", "started"]
    finally:
        for log in [audit, *others]:
            log.close()


def test_one_sqlite_file_named_through_a_symlink_shares_its_run_locks(tmp_path: Path) -> None:
    real = tmp_path / "real" / "audit.sqlite3"
    real.parent.mkdir()
    (tmp_path / "link").symlink_to(real.parent, target_is_directory=True)
    audit = AuditLog(f"sqlite:///{real}")
    other = AuditLog(f"sqlite:///{tmp_path / 'link' / 'audit.sqlite3'}")
    try:
        with audit.run("backup", ACTOR) as run:
            assert not other.is_dead(run.run_id)
            assert other.close_abandoned("backup", ACTOR, scope={}) == []
    finally:
        audit.close()
        other.close()


def test_a_run_lock_lost_with_its_connection_is_taken_again(
    pg_server: PgTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.liveness

    monkeypatch.setattr(core.liveness, "WATCH_EVERY", 0.2)
    with audit_database(pg_server) as url:
        _lose_the_lock_connection_mid_run(pg_server, url)


def _lose_the_lock_connection_mid_run(pg_server: PgTarget, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    audit = AuditLog(url)
    try:
        with audit.run("restore", ACTOR) as run:
            with pg_server.with_dbname(name).connect(autocommit=True) as admin:
                admin.execute(  # a DBA ending idle sessions, a proxy restart
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND application_name = 'blnk-backup-run'",
                    (name,),
                )
            deadline = time.monotonic() + 10
            while audit.is_dead(run.run_id) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not audit.is_dead(run.run_id)  # taken again by the run itself
            assert audit.close_abandoned("restore", ACTOR, scope={}) == []
        outcomes = [e.outcome for e in audit.events(run_id=run.run_id)]
        assert outcomes == ["succeeded", "started"]
    finally:
        audit.close()


def test_a_run_declared_dead_while_it_lived_records_its_real_end_apart(tmp_path: Path) -> None:
    audit = AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    try:
        with audit.run("backup", ACTOR) as run:
            # What a closer writes when it took the lock in a gap (simulated: the lock is ours).
            audit.record(action="backup", outcome="abandoned", actor=ACTOR, run_id=run.run_id)
        events = audit.events(run_id=run.run_id)
        assert [(e.action, e.outcome) for e in events] == [
            ("late_end", "recorded"),
            ("backup", "abandoned"),
            ("backup", "started"),
        ]
        assert events[0].details_dict()["outcome"] == "succeeded"
    finally:
        audit.close()


def test_an_event_recorded_beside_a_run_under_its_id_does_not_end_it(tmp_path: Path) -> None:
    audit = AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    try:
        with audit.run("backup", ACTOR) as run:
            # What a backup records on the side, under its own run id.
            audit.record(action="orphan_cleanup", outcome="failed", actor=ACTOR, run_id=run.run_id)
            assert not audit.has_ended(run.run_id)
        outcomes = [(e.action, e.outcome) for e in audit.events(run_id=run.run_id)]
        assert outcomes == [
            ("backup", "succeeded"),
            ("orphan_cleanup", "failed"),
            ("backup", "started"),
        ]
    finally:
        audit.close()
