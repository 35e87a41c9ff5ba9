"""The outbox: messages a front end could not deliver (a chat service down, rate-limited past
its retries) are kept here and retried later, so a result or an alert is never lost silently.

Rows live in the audit database, so every replica sees them; a delivery attempt first claims
its row with a conditional UPDATE, so two replicas never deliver the same message twice at
once. The engine knows nothing of the chat service: a message is a destination, a fallback
text and an opaque JSON payload.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import or_, update
from sqlalchemy.engine import CursorResult
from sqlmodel import Field, Session, SQLModel, col, select

from core.actor import Actor
from core.audit import AuditLog

log = logging.getLogger("blnk_backup.outbox")

MAX_ATTEMPTS = 20
CLAIM_FOR = timedelta(minutes=2)


class OutboxRow(SQLModel, table=True):
    __tablename__ = "outbox"

    id: str = Field(primary_key=True)
    destination: str  # e.g. a channel id
    text: str
    payload: str  # JSON (blocks, the message to update, ...)
    created_at: datetime
    attempts: int = 0
    next_attempt_at: datetime = Field(index=True)
    claimed_until: datetime | None = None
    last_error: str | None = None
    delivered_at: datetime | None = Field(default=None, index=True)
    given_up_at: datetime | None = None


@dataclass(frozen=True)
class PendingMessage:
    id: str
    destination: str
    text: str
    payload: dict[str, Any]
    attempts: int


class Outbox:
    """Messages waiting to be delivered, with exponential back-off between attempts."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self.engine = audit.engine
        audit.create_tables([OutboxRow])

    def add(
        self, destination: str, text: str, payload: dict[str, Any], error: str | None = None
    ) -> str:
        """Keep a message that could not be delivered; return its id."""
        now = datetime.now(UTC)
        row = OutboxRow(
            id=uuid.uuid4().hex,
            destination=destination,
            text=text,
            payload=json.dumps(payload),
            created_at=now,
            attempts=1,
            next_attempt_at=now + _backoff(1),
            last_error=(error or "")[:500] or None,
        )
        row_id = row.id  # read before the commit: the row is detached after the session
        with Session(self.engine) as session:
            session.add(row)
            session.commit()
        return row_id

    def claim_due(self, limit: int = 20) -> list[PendingMessage]:
        """Claim up to ``limit`` messages whose next attempt is due (and that no other worker
        holds); return them."""
        now = datetime.now(UTC)
        free = or_(col(OutboxRow.claimed_until).is_(None), col(OutboxRow.claimed_until) < now)
        with Session(self.engine) as session:
            due = session.exec(
                select(OutboxRow.id)
                .where(
                    col(OutboxRow.delivered_at).is_(None),
                    col(OutboxRow.given_up_at).is_(None),
                    col(OutboxRow.next_attempt_at) <= now,
                    free,
                )
                .order_by(col(OutboxRow.created_at))
                .limit(limit)
            ).all()
        claimed = []
        for row_id in due:
            with Session(self.engine) as session:
                result = session.execute(
                    update(OutboxRow)
                    .where(col(OutboxRow.id) == row_id, free)
                    .values(claimed_until=now + CLAIM_FOR)
                )
                session.commit()
                row = session.get(OutboxRow, row_id)
                if cast(CursorResult[Any], result).rowcount == 1 and row is not None:
                    claimed.append(
                        PendingMessage(
                            row.id, row.destination, row.text, json.loads(row.payload), row.attempts
                        )
                    )
        return claimed

    def delivered(self, message_id: str) -> None:
        self._set(message_id, delivered_at=datetime.now(UTC), claimed_until=None)

    def failed(self, message_id: str, attempts: int, error: str) -> None:
        """Record a failed attempt: try again later, or give up after MAX_ATTEMPTS."""
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "attempts": attempts + 1,
            "last_error": error[:500],
            "claimed_until": None,
            "next_attempt_at": now + _backoff(attempts + 1),
        }
        if attempts + 1 >= MAX_ATTEMPTS:
            values["given_up_at"] = now
        self._set(message_id, **values)
        if attempts + 1 >= MAX_ATTEMPTS:  # never silently: logged and audited
            log.warning(
                "gave up delivering message %s to %s after %d attempts (the cause is in the "
                "audit log, masked)",
                message_id,
                self._destination(message_id),
                attempts + 1,
            )
            self.audit.record(
                action="outbox_gave_up",
                outcome="failed",
                actor=Actor("outbox", "schedule"),
                run_id=message_id,
                error_code="undeliverable",
                error_cause=f"after {attempts + 1} attempts: {error}",
                details={"destination": self._destination(message_id)},
            )

    def _destination(self, message_id: str) -> str | None:
        with Session(self.engine) as session:
            row = session.get(OutboxRow, message_id)
            return row.destination if row is not None else None

    def waiting(self) -> int:
        """How many messages are still waiting to be delivered."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(OutboxRow.id).where(
                    col(OutboxRow.delivered_at).is_(None), col(OutboxRow.given_up_at).is_(None)
                )
            ).all()
        return len(rows)

    def _set(self, message_id: str, **values: Any) -> None:
        with Session(self.engine) as session:
            session.execute(
                update(OutboxRow).where(col(OutboxRow.id) == message_id).values(**values)
            )
            session.commit()


def _backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min, ... capped at 30 min."""
    return timedelta(seconds=min(30 * 2 ** (attempts - 1), 1800))
