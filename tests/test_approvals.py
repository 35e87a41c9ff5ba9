"""Approvals in the audit database, SQLite and PostgreSQL alike: execution is claimed only
from ``approved``, and only once. A request still pending, one denied or expired, and one
already claimed (executing, executed or failed) give nothing to execute — whoever calls."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.approvals import Approval, ApprovalBook
from core.audit import Actor, AuditLog
from core.database import PgTarget
from tests.support.databases import audit_database

REQUESTER = Actor("U0OPER0001", "slack")
APPROVER = Actor("U0APPR0001", "slack")
KEY = "blnk_backup_20260101_000000.dump"


@pytest.fixture(params=["sqlite", "postgresql"])
def book(
    request: pytest.FixtureRequest, tmp_path: Path, pg_server: PgTarget
) -> Iterator[ApprovalBook]:
    """An approval book on a fresh audit database of each kind (PostgreSQL: shared by
    replicas)."""
    if request.param == "sqlite":
        audit = AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
        yield ApprovalBook(audit, timedelta(minutes=30))
        audit.close()
        return
    with audit_database(pg_server) as url:
        audit = AuditLog(url)
        yield ApprovalBook(audit, timedelta(minutes=30))
        audit.close()


def a_delete_request(book: ApprovalBook) -> Approval:
    return book.request("delete", REQUESTER, {"key": KEY}, [f"Delete backup `{KEY}`"])


def put_in_state(book: ApprovalBook, request_id: str, state: str) -> None:
    """Move a fresh request to ``state`` the way the front ends do."""
    if state == "pending":
        return
    if state == "expired":
        later = datetime.now(UTC) + timedelta(minutes=31)
        book.clock = lambda: later
        assert [a.id for a in book.expire_overdue()] == [request_id]
        return
    book.decide(request_id, APPROVER, approve=state != "denied")
    if state in {"executing", "executed", "failed"}:
        assert book.claim_execution(request_id) is not None
    if state in {"executed", "failed"}:
        book.finish(request_id, succeeded=state == "executed", outcome="done")


@pytest.mark.parametrize(
    "state", ["pending", "denied", "expired", "executing", "executed", "failed"]
)
def test_a_request_that_is_not_approved_cannot_be_claimed_for_execution(
    book: ApprovalBook, state: str
) -> None:
    request_id = a_delete_request(book).id
    put_in_state(book, request_id, state)
    before = book.get(request_id)
    assert before is not None and before.status == state

    assert book.claim_execution(request_id) is None
    assert book.get(request_id) == before  # the refused claim changed nothing


def test_an_approved_request_is_claimed_once_and_a_second_claim_gets_nothing(
    book: ApprovalBook,
) -> None:
    request_id = a_delete_request(book).id
    book.decide(request_id, APPROVER, approve=True)

    claimed = book.claim_execution(request_id)
    assert claimed is not None and claimed.status == "executing"
    assert claimed.decided_by == APPROVER.name and claimed.params == {"key": KEY}
    assert book.claim_execution(request_id) is None  # another worker, a retried click
    finished = book.finish(request_id, succeeded=True, outcome=f"deleted {KEY}")
    assert (finished.status, finished.outcome) == ("executed", f"deleted {KEY}")


def test_an_unknown_request_cannot_be_claimed(book: ApprovalBook) -> None:
    assert book.claim_execution("0" * 32) is None
