"""Requests seen before: a signed request replayed within its validity window is refused.

A Slack request's signature is valid for five minutes; someone who captured one could send it
again within that window and it would verify. Each request's signature digest is remembered in
the audit database (shared by replicas, so a replay sent to another replica is caught too) for
as long as it could verify, and a second sighting is refused. One INSERT per request: the
primary key decides, atomically, who saw it first.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col

from core.audit import AuditLog

log = logging.getLogger("blnk_backup.replay")

PURGE_EVERY = timedelta(minutes=1)


class SeenRequest(SQLModel, table=True):
    __tablename__ = "seen_requests"

    digest: str = Field(primary_key=True)  # SHA-256 of what identifies the request
    expires_at: datetime = Field(index=True)


class SeenRequests:
    """The requests seen within their validity window."""

    def __init__(
        self, audit: AuditLog, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.engine = audit.engine
        self.clock = clock
        self._purged = datetime.min.replace(tzinfo=UTC)
        self._lock = threading.Lock()
        audit.create_tables([SeenRequest])

    def first_time(self, identity: str, valid_for: timedelta) -> bool:
        """Remember a request by ``identity`` (e.g. its signature); True the first time it is
        seen within ``valid_for``, False for a replay."""
        now = self.clock()
        self._purge(now)
        digest = hashlib.sha256(identity.encode()).hexdigest()
        with Session(self.engine) as session:
            session.add(SeenRequest(digest=digest, expires_at=now + valid_for))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                return False
        return True

    def _purge(self, now: datetime) -> None:
        """Forget what can no longer verify anyway (at most once a minute)."""
        with self._lock:
            if now - self._purged < PURGE_EVERY:
                return
            self._purged = now
        try:
            with Session(self.engine) as session:
                session.execute(delete(SeenRequest).where(col(SeenRequest.expires_at) < now))
                session.commit()
        except Exception:  # forgetting is housekeeping: never in the way of a request
            log.warning("could not forget expired request signatures", exc_info=True)
