"""The audit log is append-only and readable newest first."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from core.audit import Actor, AuditLog
from core.database import PgTarget
from tests.support.databases import audit_database


def test_events_are_returned_newest_first_and_runs_share_an_id(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    actor = Actor("carol", "slack")
    started = log.record(action="backup", outcome="started", actor=actor, reason="why")
    log.record(
        action="backup",
        outcome="succeeded",
        actor=actor,
        run_id=started.run_id,
        key="blnk_backup_20260101_000000.dump",
        size=10,
    )
    events = log.events()
    assert [e.outcome for e in events] == ["succeeded", "started"]
    assert {e.run_id for e in events} == {started.run_id}
    assert events[0].trigger == "slack" and events[0].actor == "carol"
    log.close()


def test_the_log_refuses_updates_and_deletes(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    log.record(action="backup", outcome="started", actor=Actor("dave", "cli"))
    with log.engine.begin() as conn, pytest.raises(DatabaseError, match="append-only"):
        conn.execute(text("UPDATE audit_events SET outcome = 'succeeded'"))
    with log.engine.begin() as conn, pytest.raises(DatabaseError, match="append-only"):
        conn.execute(text("DELETE FROM audit_events"))
    assert [e.outcome for e in log.events()] == ["started"]
    log.close()


def test_an_unknown_trigger_is_refused() -> None:
    with pytest.raises(ValueError, match="trigger"):
        Actor("eve", "email")


def test_the_audit_log_can_live_in_postgresql_and_refuses_updates_and_deletes_there(
    pg_server: PgTarget,
) -> None:
    with audit_database(pg_server) as url:
        log = AuditLog(url)
        log.record(action="backup", outcome="started", actor=Actor("frank", "schedule"))
        assert log.events()[0].actor == "frank"
        with log.engine.begin() as conn, pytest.raises(DatabaseError, match="append-only"):
            conn.execute(text("UPDATE audit_events SET outcome = 'succeeded'"))
        with log.engine.begin() as conn, pytest.raises(DatabaseError, match="append-only"):
            conn.execute(text("DELETE FROM audit_events"))
        [event] = log.events()
        assert (event.outcome, event.actor) == ("started", "frank")
        log.close()
