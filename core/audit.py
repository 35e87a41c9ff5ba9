"""The append-only audit log (SQLModel; SQLite by default, any SQLAlchemy URL works).

Every action lands here as events. A run — a backup, a restore test, a prune — is one
``with audit.run(action, actor) as run:`` block: a ``started`` event, then ``succeeded``,
``failed`` (error code and a masked, truncated cause) or an outcome the use case chose
(``planned`` for a dry run), all with the same ``run_id``. For its whole life a run holds a lock
named after its run id (core/liveness.py), so a run whose process was killed outright is known
dead the moment anyone can take that lock: the next run of its kind closes it with
``abandoned`` at once. The program never updates or deletes a row, and triggers refuse UPDATE
and DELETE so a bug cannot either.

Subscribers (``subscribe``) see every event after it is stored: that is where alerts hook in.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, col, create_engine, or_, select

from core.actor import TRIGGERS, Actor
from core.errors import ConfigError, describe_failure
from core.liveness import RunLocks, run_locks_for
from core.redact import first_line, truncate_cause

log = logging.getLogger("blnk_backup.audit")

__all__ = ["TRIGGERS", "Actor", "AuditEvent", "AuditLog", "AuditRun"]

ENDED = ("succeeded", "failed", "abandoned", "planned")
# Runs refused before they did anything: a key that is not a complete backup, a run of the same
# kind already going, a decision the approval book refused, an approved plan that no longer
# holds. They say nothing about the backups, so they are neither a restore-test result nor a
# failed backup.
REFUSALS = ("usage_error", "already_running", "approval_refused", "plan_changed")


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(index=True)
    run_id: str = Field(index=True)
    action: str = Field(index=True)  # backup, restore_test, prune, orphan_aborted, ...
    outcome: str  # started, succeeded, failed, planned, abandoned, recorded
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

    def details_dict(self) -> dict[str, Any]:
        """Return the details as a dict ({} when absent or not an object)."""
        try:
            body = json.loads(self.details) if self.details else {}
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}


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


def open_engine(url: str, variable: str = "AUDIT_DATABASE_URL") -> Engine:
    """Given a SQLAlchemy URL, return an engine that is known to work (SQLite: WAL, busy
    timeout, shareable between threads). Raise ConfigError naming ``variable`` if the URL is
    malformed or the database cannot be opened; the URL itself is never echoed."""
    try:
        parsed = make_url(url)
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        sqlite = parsed.get_backend_name() == "sqlite"
        if sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False}
        elif parsed.get_backend_name() == "postgresql":
            if parsed.drivername == "postgresql":
                parsed = parsed.set(drivername="postgresql+psycopg")
            # Every time here is UTC; columns are "timestamp without time zone", so the
            # session must not convert them to some other local time.
            kwargs["connect_args"] = {"options": "-c timezone=UTC"}
        engine = create_engine(parsed, **kwargs)
        if sqlite:
            event.listen(engine, "connect", _sqlite_pragmas)
        with engine.connect():
            pass
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError([f"{variable}: not a usable database URL ({first_line(exc)})"]) from None
    except (SQLAlchemyError, OSError) as exc:
        password = _password_of(url)
        reason = truncate_cause(first_line(exc), [password])[:300]
        raise ConfigError([f"{variable}: the database cannot be opened ({reason})"]) from None
    return engine


def _password_of(url: str) -> str | None:
    try:
        return make_url(url).password
    except (ArgumentError, ValueError):
        return None


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
    """One engine per process; a short session per write. Safe to share between threads."""

    def __init__(self, url: str, *, secrets: list[str | None] | None = None) -> None:
        self.engine: Engine = open_engine(url)
        self.run_locks: RunLocks = run_locks_for(url)
        self._secrets = [s for s in (secrets or []) if s]
        self._subscribers: list[Subscriber] = []
        try:
            guards = {"sqlite": _APPEND_ONLY_SQLITE, "postgresql": _APPEND_ONLY_POSTGRESQL}
            self.create_tables([AuditEvent], guards.get(self.engine.dialect.name, []))
        except SQLAlchemyError as exc:
            self.engine.dispose()
            reason = truncate_cause(first_line(exc), self._secrets)[:300]
            raise ConfigError(
                [f"AUDIT_DATABASE_URL: the audit table cannot be set up ({reason})"]
            ) from None
        self._lock = threading.Lock()

    def create_tables(self, models: list[type[SQLModel]], statements: Sequence[str] = ()) -> None:
        """Create tables (and run set-up statements) in the audit database, once, even when
        several processes start at the same moment: on PostgreSQL under a transaction-level
        advisory lock, so replicas take turns instead of failing on each other's CREATEs."""
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _SETUP_LOCK_ID})
            SQLModel.metadata.create_all(conn, tables=[m.__table__ for m in models])  # type: ignore[attr-defined]
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
        with self._lock, Session(self.engine) as session:
            session.add(entry)
            session.commit()
            session.refresh(entry)
            session.expunge(entry)
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

    def open_runs(self, action: str, before: datetime | None = None) -> list[AuditEvent]:
        """The ``started`` runs of ``action`` with no end (that started before ``before``, if
        given), oldest first. Some may be dead: ``close_abandoned`` tells."""
        ended = select(AuditEvent.run_id).where(
            AuditEvent.action == action, col(AuditEvent.outcome).in_(ENDED)
        )
        query = (
            select(AuditEvent)
            .where(AuditEvent.action == action, AuditEvent.outcome == "started")
            .where(col(AuditEvent.run_id).not_in(ended))
            .order_by(col(AuditEvent.id))
        )
        if before is not None:
            query = query.where(AuditEvent.at < before)
        with Session(self.engine) as session:
            return list(session.exec(query).all())

    def is_dead(self, run_id: str) -> bool:
        """True if the run never ended and its lock is free: its process was killed."""
        with self.run_locks.claim(run_id) as free:
            return free and not self.has_ended(run_id)

    def has_ended(self, run_id: str) -> bool:
        """True if the run has an end event (succeeded, failed, abandoned, planned) of its own
        action: events a run records on the side share its run id (``orphan_cleanup``
        ``failed``) without ending it."""
        own_action = select(AuditEvent.action).where(
            AuditEvent.run_id == run_id, AuditEvent.outcome == "started"
        )
        query = (
            select(AuditEvent.id)
            .where(AuditEvent.run_id == run_id, col(AuditEvent.outcome).in_(ENDED))
            .where(col(AuditEvent.action).in_(own_action.scalar_subquery()))
            .limit(1)
        )
        with Session(self.engine) as session:
            return session.exec(query).first() is not None

    def events(
        self, *, limit: int = 50, action: str | None = None, run_id: str | None = None
    ) -> list[AuditEvent]:
        """Return the newest events first."""
        query = select(AuditEvent)
        if action:
            query = query.where(AuditEvent.action == action)
        if run_id:
            query = query.where(AuditEvent.run_id == run_id)
        query = query.order_by(col(AuditEvent.id).desc()).limit(limit)
        with Session(self.engine) as session:
            return list(session.exec(query).all())

    def last(self, action: str, outcomes: tuple[str, ...]) -> AuditEvent | None:
        """Return the newest event of ``action`` with one of ``outcomes``, or None."""
        query = (
            select(AuditEvent)
            .where(AuditEvent.action == action, col(AuditEvent.outcome).in_(outcomes))
            .order_by(col(AuditEvent.id).desc())
            .limit(1)
        )
        with Session(self.engine) as session:
            return session.exec(query).first()

    def last_restore_test(self) -> AuditEvent | None:
        """The newest restore test that ran (passed or failed), skipping refusals: a mistyped
        key or a second test while one runs must not turn a passed test into "failed"."""
        query = (
            select(AuditEvent)
            .where(AuditEvent.action == "restore_test")
            .where(col(AuditEvent.outcome).in_(("succeeded", "failed")))
            .where(
                or_(
                    col(AuditEvent.error_code).is_(None),
                    col(AuditEvent.error_code).not_in(REFUSALS),
                )
            )
            .order_by(col(AuditEvent.id).desc())
            .limit(1)
        )
        with Session(self.engine) as session:
            return session.exec(query).first()

    def failure_counts(self, action: str) -> dict[str, int]:
        """Return how many runs of ``action`` failed, by error code, over the whole log."""
        query = (
            select(AuditEvent.error_code, func.count())
            .where(AuditEvent.action == action, AuditEvent.outcome == "failed")
            .group_by(AuditEvent.error_code)
        )
        with Session(self.engine) as session:
            return {str(code or "unknown"): int(n) for code, n in session.exec(query).all()}

    def ping(self) -> None:
        """Raise if the audit database cannot be reached (a readiness check)."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()


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
