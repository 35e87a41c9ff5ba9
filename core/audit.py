"""The append-only audit log (SQLite by default, or PostgreSQL shared by replicas).

Every action lands here as events. A run — a backup, a restore test, a prune — is one
``with audit.run(action, actor) as run:`` block: a ``started`` event, then ``succeeded``,
``failed`` (error code and a masked, truncated cause) or an outcome the use case chose
(``planned`` for a dry run), all with the same ``run_id``. For its whole life a run holds a lock
named after its run id (core/liveness.py), so a run whose process was killed outright is known
dead the moment anyone can take that lock: the next run of its kind closes it with
``abandoned`` at once. The program never updates or deletes a row, and triggers refuse UPDATE
and DELETE so a bug cannot either.

Subscribers (``subscribe``) see every event after it is stored: that is where alerts hook in.

Events are written and read with the database's own DB-API driver (core/auditdb.py); the
service's other tables in the same database (approvals, outbox, seen requests) use SQLModel on
``engine``, built when first asked.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.actor import TRIGGERS, Actor
from core.auditdb import AuditDatabase, AuditUrl
from core.errors import REFUSALS, ConfigError, NotPermitted, describe_failure
from core.liveness import RunLocks, run_locks_for
from core.redact import first_line, truncate_cause

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger("blnk_backup.audit")

__all__ = ["TRIGGERS", "Actor", "AuditEvent", "AuditLog", "AuditRun"]

# Every action the audit log records (one place: the CLI's --action, the tests).
ACTIONS = (
    "backup",
    "restore_test",
    "restore",
    "prune",
    "delete",
    "bucket_apply",
    "approval_requested",
    "approval_decided",
    "approval_refused",
    "approval_expired",
    "scheduled_run",
    "schedule_missed",
    "freshness_check",
    "replication_failed",
    "orphan_aborted",
    "orphan_cleanup",
    "orphaned_upload",
    "outbox_gave_up",
    "unauthorized",
    "late_end",
    "base_backup",
    "pitr_restore",
    "wal_slot",
    "wal_problem",
)

ENDED = ("succeeded", "failed", "abandoned", "planned")
# Runs refused before they did anything: a key that is not a complete backup, a run of the same
# kind already going, a decision the approval book refused, an approved plan that no longer
# holds. They say nothing about the backups, so they are neither a restore-test result nor a
# failed backup.


@dataclass
class AuditEvent:
    """One row of the audit log."""

    at: datetime
    run_id: str
    action: str  # backup, restore_test, prune, orphan_aborted, ...
    outcome: str  # started, succeeded, failed, planned, abandoned, recorded
    actor: str
    trigger: str
    id: int | None = None
    reason: str | None = None
    key: str | None = None
    size: int | None = None
    sha256: str | None = None
    duration_seconds: float | None = None
    error_code: str | None = None
    error_cause: str | None = None
    details: str | None = None  # JSON

    def details_dict(self) -> dict[str, Any]:
        """Return the details as a dict ({} when absent or not an object)."""
        try:
            body = json.loads(self.details) if self.details else {}
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}


# The columns, in the order every query selects them ("trigger" and "key" are SQL words).
_COLUMNS = [f.name for f in dataclass_fields(AuditEvent)]
_SELECT = "SELECT " + ", ".join(f'"{c}"' for c in _COLUMNS) + " FROM audit_events"

_TABLE_SQLITE = [
    """CREATE TABLE IF NOT EXISTS audit_events (
        id INTEGER NOT NULL PRIMARY KEY, at DATETIME NOT NULL, run_id VARCHAR NOT NULL,
        action VARCHAR NOT NULL, outcome VARCHAR NOT NULL, actor VARCHAR NOT NULL,
        "trigger" VARCHAR NOT NULL, reason VARCHAR, "key" VARCHAR, size INTEGER,
        sha256 VARCHAR, duration_seconds FLOAT, error_code VARCHAR, error_cause VARCHAR,
        details VARCHAR)""",
    "CREATE INDEX IF NOT EXISTS ix_audit_events_at ON audit_events (at)",
    "CREATE INDEX IF NOT EXISTS ix_audit_events_run_id ON audit_events (run_id)",
    "CREATE INDEX IF NOT EXISTS ix_audit_events_action ON audit_events (action)",
]
_TABLE_POSTGRESQL = [
    """CREATE TABLE IF NOT EXISTS audit_events (
        id SERIAL PRIMARY KEY, at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
        run_id VARCHAR NOT NULL, action VARCHAR NOT NULL, outcome VARCHAR NOT NULL,
        actor VARCHAR NOT NULL, "trigger" VARCHAR NOT NULL, reason VARCHAR, "key" VARCHAR,
        size BIGINT, sha256 VARCHAR, duration_seconds FLOAT, error_code VARCHAR,
        error_cause VARCHAR, details VARCHAR)""",
    "CREATE INDEX IF NOT EXISTS ix_audit_events_at ON audit_events (at)",
    "CREATE INDEX IF NOT EXISTS ix_audit_events_run_id ON audit_events (run_id)",
    "CREATE INDEX IF NOT EXISTS ix_audit_events_action ON audit_events (action)",
    # Earlier versions made size a 32-bit INTEGER: a dump past 2 GiB could not be recorded.
    """DO $$ BEGIN
         IF (SELECT data_type FROM information_schema.columns WHERE table_name = 'audit_events'
             AND column_name = 'size' AND table_schema = current_schema()) = 'integer' THEN
           ALTER TABLE audit_events ALTER COLUMN size TYPE BIGINT;
         END IF;
       END $$""",
]


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


MAX_DETAILS = 64 * 1024  # bytes of JSON details one event keeps (the log is append-only)


def _details_json(details: Any) -> str | None:
    """Details as JSON, at most MAX_DETAILS long: a bigger object (text read from a bucket
    anyone with write access fills) is kept as a cut preview, marked so."""
    if details is None:
        return None
    text = json.dumps(details, default=str)
    if len(text) <= MAX_DETAILS:
        return text
    return json.dumps({"truncated": True, "bytes": len(text), "preview": text[:4096]})


Subscriber = Callable[[AuditEvent], None]
_SETUP_LOCK_ID = 0x626C6E6B_73657475  # "blnksetu": table set-up, one process at a time


class AuditLog:
    """The audit log of one database. Safe to share between threads."""

    def __init__(self, url: str, *, secrets: list[str | None] | None = None) -> None:
        self.url = AuditUrl.parse(url)
        self.db = AuditDatabase(self.url)
        self.run_locks: RunLocks = run_locks_for(url)
        self._secrets = [s for s in (secrets or []) if s]
        self._subscribers: list[Subscriber] = []
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        try:
            self._set_up()
        except Exception as exc:
            self.db.close()
            reason = truncate_cause(first_line(exc), self._secrets)[:300]
            raise ConfigError(
                [f"AUDIT_DATABASE_URL: the audit table cannot be set up ({reason})"]
            ) from None

    def _set_up(self) -> None:
        """Create the table, its indexes and the append-only guards, once, even when several
        processes start at the same moment (PostgreSQL: under a transaction-level advisory
        lock, so replicas take turns instead of failing on each other's CREATEs)."""
        sqlite = self.db.kind == "sqlite"
        statements = (
            _TABLE_SQLITE + _APPEND_ONLY_SQLITE
            if sqlite
            else _TABLE_POSTGRESQL + _APPEND_ONLY_POSTGRESQL
        )
        with self.db.transaction() as conn:
            if not sqlite:
                self.db.run_in(conn, "SELECT pg_advisory_xact_lock(?)", [_SETUP_LOCK_ID])
            for statement in statements:
                self.db.run_in(conn, statement)

    @property
    def engine(self) -> Engine:
        """A SQLAlchemy engine on the same database, for the service's SQLModel tables
        (approvals, outbox, seen requests): built on first use, so that a command that only
        audits never imports SQLAlchemy."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = _engine_for(self.url)
            return self._engine

    def create_tables(self, models: list[Any], statements: Sequence[str] = ()) -> None:
        """Create SQLModel tables (and run set-up statements) in the audit database, once,
        even when several processes start at the same moment: on PostgreSQL under a
        transaction-level advisory lock, so replicas take turns."""
        from sqlalchemy import text

        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _SETUP_LOCK_ID})
            for model in models:
                model.__table__.create(conn, checkfirst=True)
            for statement in statements:
                conn.execute(text(statement))

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call subscriber with every event recorded from now on (after it is stored).
        A subscriber that raises is logged and never breaks the action being audited."""
        self._subscribers.append(subscriber)

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
        if fields.get("error_cause") is not None:
            fields["error_cause"] = truncate_cause(str(fields["error_cause"]), self._secrets)
        entry = AuditEvent(
            at=datetime.now(UTC),
            run_id=run_id or uuid.uuid4().hex,
            action=action,
            outcome=outcome,
            actor=actor.name,
            trigger=actor.trigger,
            details=_details_json(details),
            **fields,
        )
        values = {c: getattr(entry, c) for c in _COLUMNS if c != "id"}
        values["at"] = self.db.time_param(entry.at)
        names = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join("?" for _ in values)
        entry.id = self.db.insert(
            f"INSERT INTO audit_events ({names}) VALUES ({marks})", list(values.values())
        )
        for subscriber in list(self._subscribers):
            try:
                subscriber(entry)
            except Exception:
                log.exception("an audit subscriber failed on %s %s", action, outcome)
        return entry

    @contextmanager
    def run(
        self,
        action: str,
        actor: Actor,
        *,
        reason: str | None = None,
        key: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> Iterator[AuditRun]:
        """Audit one run: record ``started`` now, then on leaving the block ``succeeded`` (or
        the outcome the block chose with ``run.end``), or ``failed`` with the exception's code
        and masked, truncated cause — and re-raise. The run's lock is held from before its
        ``started`` event until after its last one (see ``close_abandoned``)."""
        run_id = uuid.uuid4().hex
        with self.run_locks.hold(run_id):
            started = self.record(
                action=action,
                outcome="started",
                actor=actor,
                run_id=run_id,
                reason=reason,
                key=key,
                details=details,
            )
            run = AuditRun(started.run_id, started.at, key=key)
            began = time.monotonic()
            try:
                yield run
            except BaseException as exc:
                code, cause = describe_failure(exc)
                self._end(
                    action,
                    "failed",
                    actor,
                    run.run_id,
                    reason=reason,
                    error_code=code,
                    error_cause=cause,
                    **run.closing_fields(time.monotonic() - began),
                )
                raise
            self._end(
                action,
                run.outcome,
                actor,
                run.run_id,
                reason=reason,
                error_code=run.error_code,
                error_cause=run.error_cause,
                **run.closing_fields(time.monotonic() - began),
            )

    def _end(self, action: str, outcome: str, actor: Actor, run_id: str, **fields: Any) -> None:
        """Record a run's end, once. A run declared dead while it lived (its lock lost with a
        connection, and taken by someone in that gap) already has an ``abandoned`` end: its
        real end is then recorded apart, as ``late_end`` (alerted), never as a second end."""
        if not self.has_ended(run_id):
            self.record(action=action, outcome=outcome, actor=actor, run_id=run_id, **fields)
            return
        log.error(
            "run %s (%s) ended %s after it had been declared abandoned", run_id, action, outcome
        )
        details = fields.pop("details", None)
        self.record(
            action="late_end",
            outcome="recorded",
            actor=actor,
            run_id=run_id,
            details={"action": action, "outcome": outcome, "details": details},
            **fields,
        )

    def close_abandoned(
        self,
        action: str,
        actor: Actor,
        *,
        scope: dict[str, Any],
        run_ids: Collection[str] | None = None,
    ) -> list[AuditEvent]:
        """Close every dead run of ``action`` — ``started``, never ended, and its lock free —
        whose details match ``scope`` (and whose id is in ``run_ids``, if given) with an
        ``abandoned`` event; return the runs closed. A live run holds its lock, so it is
        never closed; a dead run is closed once, by whoever takes its lock first."""
        closed = []
        for run in self.open_runs(action):
            details = run.details_dict()
            if any(details.get(k) != v for k, v in scope.items()):
                continue
            if run_ids is not None and run.run_id not in run_ids:
                continue
            with self.run_locks.claim(run.run_id) as dead:
                # Its lock is let go only after its end is recorded: still open now means dead.
                if not dead or self.has_ended(run.run_id):
                    continue
                self.record(
                    action=action,
                    outcome="abandoned",
                    actor=actor,
                    run_id=run.run_id,
                    key=run.key,
                    reason=run.reason,
                    details=details or None,
                    error_code="abandoned",
                    error_cause=(
                        f"the run started at {run.at:%Y-%m-%d %H:%M:%S} UTC by {run.trigger}:"
                        f"{run.actor} never ended: its process was killed (SIGKILL, OOM, restart)"
                    ),
                )
            closed.append(run)
        return closed

    def unauthorized(self, actor: Actor, attempted: str, why: str) -> None:
        """Record that ``actor`` was refused ``attempted`` (a command, a decision, App Home)
        because they may not: ``why`` says which list they are missing from."""
        self.record(
            action="unauthorized",
            outcome="recorded",
            actor=actor,
            error_code=NotPermitted.code,
            error_cause=why,
            details={"attempted": attempted},
        )

    def open_runs(self, action: str, before: datetime | None = None) -> list[AuditEvent]:
        """The ``started`` runs of ``action`` with no end (that started before ``before``, if
        given), oldest first. Some may be dead: ``close_abandoned`` tells."""
        ended = ", ".join("?" for _ in ENDED)
        statement = (
            f"{_SELECT} WHERE action = ? AND outcome = 'started' AND run_id NOT IN "
            f"(SELECT run_id FROM audit_events WHERE action = ? AND outcome IN ({ended}))"
        )
        params: list[Any] = [action, action, *ENDED]
        if before is not None:
            statement += " AND at < ?"
            params.append(self.db.time_param(before))
        return self._events(statement + " ORDER BY id", params)

    def is_dead(self, run_id: str) -> bool:
        """True if the run never ended and its lock is free: its process was killed."""
        with self.run_locks.claim(run_id) as free:
            return free and not self.has_ended(run_id)

    def has_ended(self, run_id: str) -> bool:
        """True if the run has an end event (succeeded, failed, abandoned, planned) of its own
        action: events a run records on the side share its run id (``orphan_cleanup``
        ``failed``) without ending it."""
        ended = ", ".join("?" for _ in ENDED)
        rows = self.db.query(
            f"SELECT 1 FROM audit_events WHERE run_id = ? AND outcome IN ({ended}) AND action IN "
            "(SELECT action FROM audit_events WHERE run_id = ? AND outcome = 'started') LIMIT 1",
            [run_id, *ENDED, run_id],
        )
        return bool(rows)

    def events(
        self, *, limit: int = 50, action: str | None = None, run_id: str | None = None
    ) -> list[AuditEvent]:
        """Return the newest events first."""
        where, params = [], []
        if action:
            where.append("action = ?")
            params.append(action)
        if run_id:
            where.append("run_id = ?")
            params.append(run_id)
        statement = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        return self._events(f"{statement} ORDER BY id DESC LIMIT ?", [*params, limit])

    def last(self, action: str, outcomes: tuple[str, ...]) -> AuditEvent | None:
        """Return the newest event of ``action`` with one of ``outcomes``, or None."""
        marks = ", ".join("?" for _ in outcomes)
        found = self._events(
            f"{_SELECT} WHERE action = ? AND outcome IN ({marks}) ORDER BY id DESC LIMIT 1",
            [action, *outcomes],
        )
        return found[0] if found else None

    def last_restore_test(self) -> AuditEvent | None:
        """The newest restore test that ran (passed or failed), skipping refusals: a mistyped
        key or a second test while one runs must not turn a passed test into "failed"."""
        marks = ", ".join("?" for _ in REFUSALS)
        found = self._events(
            f"{_SELECT} WHERE action = 'restore_test' AND outcome IN ('succeeded', 'failed') "
            f"AND (error_code IS NULL OR error_code NOT IN ({marks})) ORDER BY id DESC LIMIT 1",
            list(REFUSALS),
        )
        return found[0] if found else None

    def last_scheduled(self, job: str) -> datetime | None:
        """When a scheduled run of ``job`` was last due (from any replica), or None. Searched
        over the whole log: a monthly job's last run is far behind the frequent ones'."""
        tag = json.dumps({"job": job})[1:-1]  # '"job": "backup"', as details are written
        found = self._events(
            f"{_SELECT} WHERE action = 'scheduled_run' AND outcome = 'started' "
            "AND details LIKE ? ESCAPE '!' ORDER BY id DESC LIMIT 20",
            ["%" + tag.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"],
        )
        for event in found:
            details = event.details_dict()
            if details.get("job") == job and details.get("scheduled_for"):
                try:
                    return datetime.fromisoformat(str(details["scheduled_for"]))
                except ValueError:
                    continue
        return None

    def failure_counts(self, action: str) -> dict[str, int]:
        """Return how many runs of ``action`` failed, by error code, over the whole log."""
        rows = self.db.query(
            "SELECT error_code, count(*) FROM audit_events WHERE action = ? AND outcome = "
            "'failed' GROUP BY error_code",
            [action],
        )
        return {str(code or "unknown"): int(n) for code, n in rows}

    def ping(self) -> None:
        """Raise if the audit database cannot be reached (a readiness check)."""
        self.db.query("SELECT 1")

    def close(self) -> None:
        self.db.close()
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def _events(self, statement: str, params: list[Any]) -> list[AuditEvent]:
        events = []
        for row in self.db.query(statement, params):
            values = dict(zip(_COLUMNS, row, strict=True))
            values["at"] = self.db.time_value(values["at"])
            events.append(AuditEvent(**values))
        return events


def _engine_for(url: AuditUrl) -> Engine:
    """A SQLAlchemy engine on the audit database (SQLite: WAL, busy timeout, shared by
    threads; PostgreSQL: psycopg, UTC sessions)."""
    from sqlalchemy import create_engine, event

    if url.kind == "sqlite":
        engine = create_engine(
            url.sqlalchemy, pool_pre_ping=True, connect_args={"check_same_thread": False}
        )

        def pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

        event.listen(engine, "connect", pragmas)
        return engine
    return create_engine(
        url.sqlalchemy, pool_pre_ping=True, connect_args={"options": "-c timezone=UTC"}
    )


@dataclass
class AuditRun:
    """A run being audited: what the block learns (key, size, ...) goes into its closing event."""

    run_id: str
    started_at: datetime
    key: str | None = None
    outcome: str = "succeeded"
    error_code: str | None = None
    error_cause: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def note(self, **fields: Any) -> None:
        """Remember fields (key, size, sha256, duration_seconds, details) for the closing event.
        Details given as a dict are merged into those noted before."""
        if "key" in fields:
            self.key = fields.pop("key")
        details, noted = fields.get("details"), self.fields.get("details")
        if isinstance(details, dict) and isinstance(noted, dict):
            fields["details"] = noted | details
        self.fields.update(fields)

    def end(
        self, outcome: str, *, error_code: str | None = None, error_cause: str | None = None
    ) -> None:
        """Close the run with this outcome instead of ``succeeded`` (e.g. ``planned`` for a dry
        run, ``failed`` for a restore test whose checks failed without an exception)."""
        self.outcome, self.error_code, self.error_cause = outcome, error_code, error_cause

    def closing_fields(self, seconds: float) -> dict[str, Any]:
        fields = dict(self.fields)
        fields.setdefault("duration_seconds", round(seconds, 3))
        fields["key"] = self.key
        return fields
