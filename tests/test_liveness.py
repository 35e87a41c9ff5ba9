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
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.audit import Actor, AuditLog
from core.database import PgTarget, create_database, drop_database

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
    name = f"blnk_audit_{uuid.uuid4().hex[:10]}"
    create_database(pg_server, name)
    params = pg_server.params
    yield (
        f"postgresql://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:"
        f"{params.get('port', '5432')}/{name}"
    )
    drop_database(pg_server, name)


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
