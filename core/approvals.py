"""Four-eyes approvals for risky operations (restore, delete, prune apply, bucket apply).

A request records exactly what will happen and who asked. It is decided once, by someone other
than the requester, before it expires: one atomic transition (``pending`` → ``approved`` /
``denied`` / ``expired``) is a single conditional UPDATE, so a double click, two approvers at the
same moment, a retried request or a click after expiry decide nothing twice and nothing late.
Execution is claimed the same way (``approved`` → ``executing``), keyed by the request id, so
an approved request runs exactly once. Requests live in the audit database, so they outlive a
restart and are shared by every replica; each step is also an audit event.

Who may approve (user IDs, user groups) is the front end's business — Slack resolves groups —
and it checks before calling ``decide``; the engine enforces everything else.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Update, update
from sqlalchemy.engine import CursorResult
from sqlmodel import Field, Session, SQLModel, col, select

from core.audit import Actor, AuditLog
from core.errors import ApprovalRefused, UsageError
from core.operations import RISKY_ACTIONS
from core.redact import MAX_REASON_LENGTH, check_plain_text

log = logging.getLogger("blnk_backup.approvals")


class ApprovalRecord(SQLModel, table=True):
    __tablename__ = "approvals"

    id: str = Field(primary_key=True)
    action: str = Field(index=True)
    params: str  # JSON: what to do (key, into, ...)
    summary: str  # JSON list of lines: exactly what will happen, shown to approvers
    requested_by: str
    requested_via: str
    reason: str | None = None
    requested_at: datetime
    expires_at: datetime = Field(index=True)
    status: str = Field(index=True)  # pending approved denied expired executing executed failed
    decided_by: str | None = None
    decided_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: str | None = None  # one line: what execution did, or why it failed
    display: str | None = None  # JSON: where a front end shows it (e.g. Slack channel + ts)


@dataclass(frozen=True)
class Approval:
    """A request as front ends see it."""

    id: str
    action: str
    params: dict[str, Any]
    summary: list[str]
    requested_by: str
    requested_via: str
    reason: str | None
    requested_at: datetime
    expires_at: datetime
    status: str
    decided_by: str | None
    decided_at: datetime | None
    finished_at: datetime | None
    outcome: str | None
    display: dict[str, Any]

    @classmethod
    def of(cls, record: ApprovalRecord) -> Approval:
        return cls(
            id=record.id,
            action=record.action,
            params=json.loads(record.params),
            summary=json.loads(record.summary),
            requested_by=record.requested_by,
            requested_via=record.requested_via,
            reason=record.reason,
            requested_at=_aware(record.requested_at),
            expires_at=_aware(record.expires_at),
            status=record.status,
            decided_by=record.decided_by,
            decided_at=_aware(record.decided_at) if record.decided_at else None,
            finished_at=_aware(record.finished_at) if record.finished_at else None,
            outcome=record.outcome,
            display=json.loads(record.display) if record.display else {},
        )


def _aware(when: datetime) -> datetime:
    """SQLite gives datetimes back without their zone; every time here is UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


Clock = Callable[[], datetime]


class ApprovalBook:
    """The approval requests in the audit database, and their one-way transitions."""

    def __init__(self, audit: AuditLog, ttl: timedelta, clock: Clock | None = None) -> None:
        self.audit = audit
        self.engine = audit.engine
        self.ttl = ttl
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        audit.create_tables([ApprovalRecord])

    def request(
        self,
        action: str,
        actor: Actor,
        params: dict[str, Any],
        summary: list[str],
        reason: str | None = None,
    ) -> Approval:
        """Record a pending request and return it. Raise UsageError for an unknown action."""
        if action not in RISKY_ACTIONS:
            raise UsageError(f"{action!r} is not an action that needs approval")
        reason = check_plain_text("reason", reason, MAX_REASON_LENGTH)
        now = self.clock()
        record = ApprovalRecord(
            id=uuid.uuid4().hex,
            action=action,
            params=json.dumps(params, sort_keys=True),
            summary=json.dumps(summary),
            requested_by=actor.name,
            requested_via=actor.trigger,
            reason=reason,
            requested_at=now,
            expires_at=now + self.ttl,
            status="pending",
        )
        with Session(self.engine) as session:
            session.add(record)
            session.commit()
            session.refresh(record)
            approval = Approval.of(record)
        self.audit.record(
            action="approval_requested",
            outcome="recorded",
            actor=actor,
            run_id=approval.id,
            reason=reason,
            key=params.get("key"),
            details={"request": action, "params": params, "summary": summary},
        )
        return approval

    def get(self, request_id: str) -> Approval | None:
        with Session(self.engine) as session:
            record = session.get(ApprovalRecord, request_id)
            return Approval.of(record) if record is not None else None

    def pending(self) -> list[Approval]:
        """Return the requests still open for a decision (pending and not past their deadline).

        Only reads: expiring is ``expire_overdue``'s, whose caller also updates what the front
        end shows (a metrics scrape must not expire a request behind the Slack message's back).
        """
        with Session(self.engine) as session:
            records = session.exec(
                select(ApprovalRecord)
                .where(ApprovalRecord.status == "pending")
                .where(col(ApprovalRecord.expires_at) > self.clock())
                .order_by(col(ApprovalRecord.requested_at))
            ).all()
            return [Approval.of(r) for r in records]

    def set_display(self, request_id: str, display: dict[str, Any]) -> None:
        """Remember where a front end shows the request (to update that message later)."""
        with Session(self.engine) as session:
            session.execute(
                update(ApprovalRecord)
                .where(col(ApprovalRecord.id) == request_id)
                .values(display=json.dumps(display))
            )
            session.commit()

    def decide(self, request_id: str, decider: Actor, *, approve: bool) -> Approval:
        """Approve or deny a pending request, atomically; return it as decided.

        Raise ApprovalRefused if the decider asked for it themselves, if it is unknown, expired
        or already decided (the message says by whom). Every outcome is audited."""
        current = self.get(request_id)
        if current is None:
            raise ApprovalRefused("this approval request does not exist")
        if decider.name == current.requested_by:
            self._refused(current, decider, "the requester cannot decide their own request")
        now = self.clock()
        status = "approved" if approve else "denied"
        with Session(self.engine) as session:
            won = _changed(
                session,
                update(ApprovalRecord)
                .where(
                    col(ApprovalRecord.id) == request_id,
                    col(ApprovalRecord.status) == "pending",
                    col(ApprovalRecord.expires_at) > now,
                    col(ApprovalRecord.requested_by) != decider.name,
                )
                .values(status=status, decided_by=decider.name, decided_at=now),
            )
            session.commit()
        decided = self.get(request_id)
        assert decided is not None
        if won != 1:
            if decided.status == "pending" and decided.expires_at <= now:
                self._expire(decided)
                decided = self.get(request_id) or decided
            self._refused(decided, decider, _why_not(decided))
        self.audit.record(
            action="approval_decided",
            outcome=status,
            actor=decider,
            run_id=request_id,
            key=decided.params.get("key"),
            details={"request": decided.action, "requested_by": decided.requested_by},
        )
        return decided

    def claim_execution(self, request_id: str) -> Approval | None:
        """Move an approved request to ``executing`` and return it, or None if it is not
        approved or another worker claimed it first: execution happens once."""
        with Session(self.engine) as session:
            won = _changed(
                session,
                update(ApprovalRecord)
                .where(
                    col(ApprovalRecord.id) == request_id,
                    col(ApprovalRecord.status) == "approved",
                )
                .values(status="executing"),
            )
            session.commit()
        return self.get(request_id) if won == 1 else None

    def finish(self, request_id: str, *, succeeded: bool, outcome: str) -> Approval:
        """Record how the execution of a claimed request ended."""
        with Session(self.engine) as session:
            session.execute(
                update(ApprovalRecord)
                .where(
                    col(ApprovalRecord.id) == request_id,
                    col(ApprovalRecord.status) == "executing",
                )
                .values(
                    status="executed" if succeeded else "failed",
                    finished_at=self.clock(),
                    outcome=outcome[:1000],
                )
            )
            session.commit()
        finished = self.get(request_id)
        assert finished is not None
        return finished

    def expire_overdue(self) -> list[Approval]:
        """Expire every pending request past its deadline (audited); return them."""
        now = self.clock()
        with Session(self.engine) as session:
            overdue = session.exec(
                select(ApprovalRecord).where(
                    ApprovalRecord.status == "pending", ApprovalRecord.expires_at <= now
                )
            ).all()
            ids = [r.id for r in overdue]
        expired = []
        for request_id in ids:
            approval = self.get(request_id)
            if approval is not None and self._expire(approval):
                expired.append(self.get(request_id) or approval)
        return expired

    def _expire(self, approval: Approval) -> bool:
        with Session(self.engine) as session:
            won = _changed(
                session,
                update(ApprovalRecord)
                .where(
                    col(ApprovalRecord.id) == approval.id,
                    col(ApprovalRecord.status) == "pending",
                )
                .values(status="expired", decided_at=self.clock()),
            )
            session.commit()
        if won == 1:
            self.audit.record(
                action="approval_expired",
                outcome="recorded",
                actor=Actor("approvals", "schedule"),
                run_id=approval.id,
                key=approval.params.get("key"),
                details={"request": approval.action, "requested_by": approval.requested_by},
            )
        return won == 1

    def _refused(self, approval: Approval, decider: Actor, why: str) -> None:
        self.audit.record(
            action="approval_refused",
            outcome="recorded",
            actor=decider,
            run_id=approval.id,
            key=approval.params.get("key"),
            error_code=ApprovalRefused.code,
            error_cause=why,
            details={"request": approval.action, "status": approval.status},
        )
        raise ApprovalRefused(why)


def _changed(session: Session, statement: Update) -> int:
    """Run a conditional UPDATE and return how many rows it changed (0 = lost the race)."""
    result = cast(CursorResult[Any], session.execute(statement))
    return int(result.rowcount)


def _why_not(approval: Approval) -> str:
    if approval.status == "expired":
        return "this request has expired; ask again"
    if approval.status in {"approved", "executing", "executed", "failed"}:
        return f"already approved by {approval.decided_by}"
    if approval.status == "denied":
        return f"already denied by {approval.decided_by}"
    return f"this request is {approval.status}"
