"""Manifests are untrusted input: one that is not JSON, misses fields, has wrong types, a status
other than verified, or a key or size that does not match its dump makes the backup incomplete
everywhere alike — list (text and JSON), status, prune and restore tests. The parser itself:
tests/unit/test_manifest_parse.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.cli import main
from core.audit import Actor
from core.errors import UsageError
from core.keys import BackupKey
from core.services import Services
from tests.support.helpers import bucket_keys
from tests.support.manifests import make_manifest
from tests.support.seeding import put_manifest_body, seed

pytestmark = pytest.mark.stores

ACTOR = Actor("judy", "cli")
NOW = datetime.now(UTC).replace(microsecond=0)
GOOD = json.loads(make_manifest(BackupKey.at(NOW)).to_json())


@pytest.fixture
def corrupt_newest(s3: Any, bucket: str) -> list[BackupKey]:
    """Seven daily backups whose three newest have a broken manifest each."""
    keys = seed(s3, bucket, [0.1, 0.5, 0.9, 1.5, 200, 300, 400], now=NOW)
    put_manifest_body(s3, bucket, keys[0], b"{not json")
    put_manifest_body(s3, bucket, keys[1], GOOD | {"key": "elsewhere.dump"})
    put_manifest_body(s3, bucket, keys[2], GOOD | {"key": keys[2].key, "size": 999})
    return keys


def test_list_text_and_json_agree_that_broken_manifests_are_incomplete(
    make_settings: Any,
    use_settings: Any,
    corrupt_newest: list[BackupKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_settings(make_settings())
    assert main(["list", "--json"]) == 0
    listed = [e["key"] for e in json.loads(capsys.readouterr().out)]
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert listed == [k.key for k in corrupt_newest[3:]]
    for key in corrupt_newest[:3]:
        assert key.key not in text
    assert main(["list", "--all", "--json"]) == 0
    everything = {e["key"]: e for e in json.loads(capsys.readouterr().out)}
    assert [everything[k.key]["complete"] for k in corrupt_newest] == [False] * 3 + [True] * 4
    assert "not JSON" in everything[corrupt_newest[0].key]["problem"]
    assert "another key" in everything[corrupt_newest[1].key]["problem"]
    assert "999 bytes" in everything[corrupt_newest[2].key]["problem"]


def test_status_counts_only_valid_backups_and_names_the_broken_ones(
    make_settings: Any, corrupt_newest: list[BackupKey]
) -> None:
    services = Services(make_settings())
    status = services.catalog.status()
    services.close()
    assert status.complete_count == 4 and status.incomplete_count == 3
    assert status.newest is not None and status.newest.key == corrupt_newest[3]
    assert {e.key for e in status.incomplete} == set(corrupt_newest[:3])


def test_prune_keeps_the_newest_valid_backups_and_never_deletes_a_dump_with_a_broken_manifest(
    make_settings: Any, corrupt_newest: list[BackupKey], s3: Any, bucket: str
) -> None:
    services = Services(make_settings(retention_min_keep=3, retention_daily_days=0))
    [report] = services.pruner.prune(ACTOR, apply=True)
    services.close()
    remaining = set(bucket_keys(s3, bucket))
    # The broken ones stay, reported; the newest three *valid* backups are the floor.
    assert set(report.incomplete) == {k.key for k in corrupt_newest[:3]}
    for key in corrupt_newest[:3]:
        assert key.key in remaining and key.manifest_key in remaining
    kept_valid = [k for k in corrupt_newest[3:] if k.key in remaining]
    assert kept_valid[:3] == corrupt_newest[3:6]
    assert "not a complete backup" in "\n".join(
        f"not a complete backup ({p})" for p in report.incomplete.values()
    )


def test_restore_test_of_a_backup_with_a_broken_manifest_is_a_clear_usage_error(
    make_settings: Any, corrupt_newest: list[BackupKey]
) -> None:
    services = Services(make_settings(restore_tests=True))
    with pytest.raises(UsageError, match="not a complete backup: unreadable manifest"):
        services.restores.test(ACTOR, corrupt_newest[0].key)
    with pytest.raises(UsageError, match="another key"):
        services.restores.test(ACTOR, corrupt_newest[1].key)
    [failed, _started] = services.audit.events(action="restore_test", limit=2)
    assert failed.outcome == "failed" and failed.error_code == "usage_error"
    services.close()


def test_huge_values_in_manifests_never_bloat_the_audit_log_or_a_listing(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    # Whoever can write to the bucket fills manifests with a near-1-MiB status: every prune
    # (the weekly schedule too) would write it, for ever, into the append-only audit log.
    keys = seed(s3, bucket, [0.1, 1, 2], status="x" * 900_000)
    keys += seed(s3, bucket, [3, 4], key=f"blnk_backup_{'y' * 900_000}.dump")
    services = Services(make_settings())
    try:
        [report] = services.pruner.prune(ACTOR, apply=False)
        assert len(report.incomplete) == 5
        assert all(len(problem) < 400 for problem in report.incomplete.values())
        [planned] = [e for e in services.audit.events(action="prune") if e.outcome == "planned"]
        assert len(planned.details or "") < 70_000
        shown = [e.problem or "" for e in services.catalog.list(include_incomplete=True)]
        assert all(len(problem) < 400 for problem in shown)
    finally:
        services.close()
