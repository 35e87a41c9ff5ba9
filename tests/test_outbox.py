"""The outbox on a real SQLite audit database: a message that can never be delivered is given
up loudly (logged and audited), never dropped in silence. Its back-off between attempts is
pure: tests/unit/test_outbox_backoff.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from core.audit import AuditLog
from core.outbox import MAX_ATTEMPTS, Outbox, OutboxRow


def test_a_message_that_keeps_failing_is_given_up_logged_and_audited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite3'}", secrets=["xoxb-secret"])
    outbox = Outbox(audit)
    message = outbox.add("C123", "Backup complete", {"blocks": []}, error="channel_not_found")
    assert outbox.waiting() == 1
    for attempts in range(1, MAX_ATTEMPTS - 1):
        outbox.failed(message, attempts, "channel_not_found")
    assert outbox.waiting() == 1 and audit.events(action="outbox_gave_up") == []
    with caplog.at_level(logging.WARNING, logger="blnk_backup.outbox"):
        outbox.failed(message, MAX_ATTEMPTS - 1, "channel_not_found (token xoxb-secret)")
    assert outbox.waiting() == 0
    [event] = audit.events(action="outbox_gave_up")
    assert (event.outcome, event.run_id, event.error_code) == ("failed", message, "undeliverable")
    assert event.details_dict() == {"destination": "C123"}
    assert "after 20 attempts: channel_not_found" in (event.error_cause or "")
    assert "xoxb-secret" not in (event.error_cause or "")
    assert f"gave up delivering message {message} to C123 after 20 attempts" in caplog.text
    assert "xoxb-secret" not in caplog.text
    with audit.engine.connect() as conn:
        row = conn.execute(OutboxRow.__table__.select()).one()  # type: ignore[attr-defined]
    assert row.given_up_at is not None and row.attempts == MAX_ATTEMPTS
