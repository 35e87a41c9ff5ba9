"""The append-only audit log (SQLModel; SQLite by default, any SQLAlchemy URL works).

Every action lands here as events; a run is a ``started`` event followed by a ``succeeded`` or
``failed`` event with the same ``run_id``. The program never updates or deletes a row, and on
SQLite triggers refuse UPDATE and DELETE so a bug cannot either.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Field, Session, SQLModel, create_engine, select

TRIGGERS = ("cli", "slack", "schedule", "api")


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(index=True)
    run_id: str = Field(index=True)
    action: str = Field(index=True)  # backup, orphaned_upload, orphan_aborted, ...
    outcome: str  # started, succeeded, failed, recorded
    actor: str
    trigger: str
    reason: str | None = None
    key: str | None = None
    size: int | None = None
    sha256: str | None = None
    duration_seconds: float | None = None
    error_code: str | None = None
    error_cause: str | None = None
    details: str | None = None  # JSON


@dataclass(frozen=True)
class Actor:
    """Who or what asked for an action, and through which front end."""

    name: str
    trigger: str

    def __post_init__(self) -> None:
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}")


_APPEND_ONLY_SQLITE = [
    """CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
]


_APPEND_ONLY_POSTGRESQL = [
    """CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger
       LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$""",
    """CREATE OR REPLACE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE
       ON audit_events FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()""",
]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class AuditLog:
    """One engine per process; a short session per write."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self._sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {}
        if self._sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False}
        elif parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.engine: Engine = create_engine(parsed, **kwargs)
        if self._sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        SQLModel.metadata.create_all(self.engine, tables=[AuditEvent.__table__])  # type: ignore[attr-defined]
        guards = {"sqlite": _APPEND_ONLY_SQLITE, "postgresql": _APPEND_ONLY_POSTGRESQL}
        with self.engine.begin() as conn:
            for statement in guards.get(parsed.get_backend_name(), []):
                conn.execute(text(statement))
        self._lock = threading.Lock()

    def record(
        self,
        *,
        action: str,
        outcome: str,
        actor: Actor,
        run_id: str | None = None,
        **fields: Any,
    ) -> AuditEvent:
        """Append one event and return it."""
        details = fields.pop("details", None)
        entry = AuditEvent(
            at=datetime.now(UTC),
            run_id=run_id or uuid.uuid4().hex,
            action=action,
            outcome=outcome,
            actor=actor.name,
            trigger=actor.trigger,
            details=json.dumps(details, default=str) if details is not None else None,
            **fields,
        )
        with self._lock, Session(self.engine) as session:
            session.add(entry)
            session.commit()
            session.refresh(entry)
        return entry

    def events(
        self, *, limit: int = 50, action: str | None = None, run_id: str | None = None
    ) -> list[AuditEvent]:
        """Return the newest events first."""
        query = select(AuditEvent)
        if action:
            query = query.where(AuditEvent.action == action)
        if run_id:
            query = query.where(AuditEvent.run_id == run_id)
        query = query.order_by(AuditEvent.id.desc()).limit(limit)  # type: ignore[union-attr]
        with Session(self.engine) as session:
            return list(session.exec(query).all())

    def open_orphans(self) -> list[AuditEvent]:
        """Return recorded orphaned multipart uploads not yet aborted."""
        with Session(self.engine) as session:
            orphans = session.exec(
                select(AuditEvent).where(AuditEvent.action == "orphaned_upload")
            ).all()
            cleared = set(
                session.exec(
                    select(AuditEvent.run_id).where(AuditEvent.action == "orphan_aborted")
                ).all()
            )
        return [o for o in orphans if o.run_id not in cleared]

    def close(self) -> None:
        self.engine.dispose()
