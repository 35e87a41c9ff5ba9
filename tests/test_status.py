"""The freshness status: one object for the CLI, alerts and metrics."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.render import blocks
from core.actor import Actor
from core.services import Services
from tests.support.seeding import seed
from tests.support.slack_requests import visible

pytestmark = pytest.mark.stores

NOW = datetime.now(UTC)
ACTOR = Actor("ops", "cli")


def _status(make_settings: Any) -> Any:
    services = Services(make_settings())
    try:
        return services.catalog.status()
    finally:
        services.close()


def test_counts_sizes_and_the_newest_is_the_last_key_not_the_first(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    keys = seed(s3, bucket, [0.5, 3, 10])
    status = _status(make_settings)
    assert status.newest is not None and status.newest.key == keys[0]
    assert status.oldest is not None and status.oldest.key == keys[2]
    assert status.complete_count == 3 and status.total_size == 3 * len(b"PGDMP...")
    assert 0.4 < (status.newest_age_hours or 0) / 24 < 0.6


def test_breaches_no_backups_then_stale(make_settings: Any, s3: Any, bucket: str) -> None:
    assert _status(make_settings).breaches[0].startswith("no backups")
    seed(s3, bucket, [2])
    assert any(b.startswith("stale") for b in _status(make_settings).breaches)


def test_a_missing_or_old_restore_test_is_a_breach_once_backups_are_old_enough(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    keys = seed(s3, bucket, [0.1, 20])
    assert _status(make_settings).healthy  # running for 20 days: no restore test due yet
    keys += seed(s3, bucket, [50])
    assert any(b.startswith("no restore test yet") for b in _status(make_settings).breaches)
    record = {
        "key": keys[0].key,
        "passed": True,
        "finished_at": (NOW - timedelta(days=60)).isoformat(),
    }
    s3.put_object(Bucket=bucket, Key=keys[0].restore_test_key, Body=json.dumps(record).encode())
    assert any("last restore test is 60 days old" in b for b in _status(make_settings).breaches)
    record["finished_at"] = NOW.isoformat()
    s3.put_object(Bucket=bucket, Key=keys[0].restore_test_key, Body=json.dumps(record).encode())
    status = _status(make_settings)
    assert status.healthy and status.last_restore_test["key"] == keys[0].key


def test_a_restore_test_whose_backup_was_deleted_since_is_still_the_last_one(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    # The restore test proved a backup that a prune (or a delete) removed afterwards, record
    # and all: the status must not say "none yet", nor call a failed test forgotten.
    keys = seed(s3, bucket, [0.1, 20, 50])
    services = Services(make_settings())
    try:
        tested = keys[1]
        with services.audit.run("restore_test", ACTOR, key=tested.key) as run:
            run.note(details={"key": tested.key, "passed": True, "ledger_proof": {"passed": True}})
        s3.delete_object(Bucket=bucket, Key=tested.key)
        s3.delete_object(Bucket=bucket, Key=tested.manifest_key)
        status = services.catalog.status()
        test = status.last_restore_test
        assert test is not None and test["key"] == tested.key and test["passed"] is True
        assert test["backup_deleted"] is True
        assert not any("no restore test yet" in b for b in status.breaches)
        message = blocks.status(status)
        shown = visible({"text": message.text, "blocks": message.blocks})
        assert "none yet" not in shown and "deleted since" in shown

        with services.audit.run("restore_test", ACTOR, key=keys[0].key) as run:
            run.end("failed", error_code="check_failed", error_cause="rows: expected 9, found 8")
        status = services.catalog.status()
        assert status.last_restore_test is not None
        assert status.last_restore_test["passed"] is False
        assert status.last_restore_test["backup_deleted"] is False
        assert any(b.startswith("last restore test failed") for b in status.breaches)
    finally:
        services.close()
