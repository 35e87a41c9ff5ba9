"""Pruning against the S3 server: dry run first, dumps before manifests, nothing outside the
pattern, versioned buckets, stores that reject batch deletes, failed listings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.cli import main
from core.audit import Actor
from core.errors import UsageError
from core.keys import BackupKey
from core.prune import PruneService
from core.services import Services
from tests.support.faultproxy import FaultProxy, Request
from tests.support.helpers import bucket_keys
from tests.support.seeding import put_manifest_body, seed

pytestmark = pytest.mark.stores

ACTOR = Actor("heidi", "cli")
NOW = datetime.now(UTC).replace(microsecond=0)
UNRELATED = {
    "notes.txt": b"keep",
    "blnk_backup_latest.dump": b"not ours",
    "blnk_backup_20200101_000000.dump.bak": b"near miss",
    "other/blnk_backup_20200101_000000.dump": b"another prefix",
}


def pruner(make_settings: Any, **overrides: Any) -> tuple[Services, PruneService]:
    services = Services(make_settings(**overrides))
    return services, services.pruner


def test_dry_run_deletes_nothing_and_apply_deletes_exactly_the_plan(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    for key, body in UNRELATED.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    keys = seed(s3, bucket, [0.1, 1, 2, 10, 40, 100, 400, 500])
    incomplete = BackupKey.at(NOW - timedelta(days=600))
    s3.put_object(Bucket=bucket, Key=incomplete.key, Body=b"no manifest")
    s3.put_object(Bucket=bucket, Key=keys[-1].restore_test_key, Body=b"{}")
    services, service = pruner(make_settings)
    before = sorted(bucket_keys(s3, bucket))

    [dry] = service.prune(ACTOR, apply=False)
    assert sorted(bucket_keys(s3, bucket)) == before
    doomed = {k.key for k in dry.plan.to_delete}
    assert doomed == {keys[-2].key, keys[-1].key}  # 400 and 500 days old
    assert list(dry.incomplete) == [incomplete.key]
    assert "no manifest" in dry.incomplete[incomplete.key]

    [done] = service.prune(ACTOR, apply=True)
    assert set(done.deleted) == doomed and done.errors == []
    left = set(bucket_keys(s3, bucket))
    for key in keys[:-2]:
        assert {key.key, key.manifest_key} <= left
    for key in keys[-2:]:
        assert not {key.key, key.manifest_key, key.restore_test_key} & left
    assert set(UNRELATED) <= left and incomplete.key in left
    for key, body in UNRELATED.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert [e.outcome for e in services.audit.events(action="prune")][:2] == [
        "succeeded",
        "started",
    ]
    # Planning again deletes nothing.
    [again] = service.prune(ACTOR, apply=True)
    assert again.deleted == []
    services.close()


def test_an_empty_prefix_and_a_prefix_never_reach_outside_their_keys(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    ours = seed(s3, bucket, [0.1, 1, 2, 500], prefix="prod/")
    theirs = seed(s3, bucket, [0.1, 500])  # the empty prefix: another deployment's keys
    services, service = pruner(make_settings, s3_prefix="prod/")
    [report] = service.prune(ACTOR, apply=True)
    assert report.deleted == [ours[-1].key]
    left = set(bucket_keys(s3, bucket))
    assert {theirs[1].key, theirs[1].manifest_key} <= left
    services.close()


def test_an_interrupted_prune_is_finished_by_the_next(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    keys = seed(s3, bucket, [0.1, 1, 2])
    gone = BackupKey.at(NOW - timedelta(days=500))
    s3.put_object(Bucket=bucket, Key=gone.manifest_key, Body=b"{}")  # dump already deleted
    services, service = pruner(make_settings)
    [dry] = service.prune(ACTOR, apply=False)
    assert dry.orphan_side_files == [gone.manifest_key]
    assert gone.manifest_key in bucket_keys(s3, bucket)
    service.prune(ACTOR, apply=True)
    assert sorted(bucket_keys(s3, bucket)) == sorted(
        k for key in keys for k in (key.key, key.manifest_key)
    )
    services.close()


def test_nothing_is_deleted_while_backups_are_stale(
    make_settings: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(s3, bucket, [3, 400, 500, 600])
    services, service = pruner(make_settings)
    [report] = service.prune(ACTOR, apply=True)
    assert report.plan.paused and "STALE_AFTER_HOURS" in report.plan.paused
    assert report.deleted == [] and len(bucket_keys(s3, bucket)) == 8
    services.close()


def test_a_versioned_bucket_keeps_old_versions_for_the_lifecycle_rule(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    keys = seed(s3, bucket, [0.1, 1, 2, 500])
    services, service = pruner(make_settings)
    [report] = service.prune(ACTOR, apply=True)
    assert report.deleted == [keys[-1].key]
    assert keys[-1].key not in bucket_keys(s3, bucket)
    versions = s3.list_object_versions(Bucket=bucket, Prefix=keys[-1].key)
    assert {m["Key"] for m in versions.get("DeleteMarkers", [])} >= {keys[-1].key}
    services.close()


def test_stores_that_reject_batch_deletes_get_single_deletes(
    make_settings: Any, s3: Any, bucket: str, proxy: FaultProxy
) -> None:
    keys = seed(s3, bucket, [0.1, 1, 2, 500, 600])
    rejected: list[Request] = []

    def fail(request: Request) -> tuple[int, str] | None:
        if request.method == "POST" and "delete" in request.path.split("?", 1)[-1]:
            rejected.append(request)
            return 501, "NotImplemented"
        return None

    proxy.faults.fail = fail
    services, service = pruner(make_settings, s3_endpoint_url=proxy.endpoint)
    [report] = service.prune(ACTOR, apply=True)
    assert rejected and report.errors == []
    assert set(report.deleted) == {keys[-1].key, keys[-2].key}
    assert not {k.manifest_key for k in keys[-2:]} & set(bucket_keys(s3, bucket))
    deletes = [r.path for r in proxy.faults.log if r.method == "DELETE"]
    last_dump = max(i for i, p in enumerate(deletes) if p.endswith(".dump"))
    first_manifest = min(i for i, p in enumerate(deletes) if p.endswith(".manifest.json"))
    assert last_dump < first_manifest  # dumps first, manifests last
    services.close()


@pytest.mark.parametrize("what_happened", ["was deleted", "has an unreadable manifest"])
def test_a_delete_is_refused_once_its_backup_has_become_the_newest_complete_one(
    make_settings: Any, s3: Any, bucket: str, what_happened: str
) -> None:
    # The delete of `older` was asked for (and approved) while `newer` was the newest; since
    # then, `newer` ...
    older, newer = seed(s3, bucket, [1, 0.1])
    if what_happened == "was deleted":
        s3.delete_object(Bucket=bucket, Key=newer.key)
        s3.delete_object(Bucket=bucket, Key=newer.manifest_key)
    else:
        put_manifest_body(s3, bucket, newer, b"{not json")
    services, service = pruner(make_settings)
    why = f"{older.key} is the newest complete backup: it is never deleted"
    with pytest.raises(UsageError, match=why):
        service.delete_one(ACTOR, older.key)
    assert {older.key, older.manifest_key} <= set(bucket_keys(s3, bucket))
    [failed, started] = services.audit.events(action="delete")
    assert (started.outcome, failed.outcome) == ("started", "failed")
    assert (failed.key, failed.error_code, failed.error_cause) == (older.key, "usage_error", why)
    services.close()


def test_a_failed_listing_deletes_nothing_and_exits_1(
    make_settings: Any,
    s3: Any,
    bucket: str,
    proxy: FaultProxy,
    use_settings: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed(s3, bucket, [0.1, 1, 2, 500])
    proxy.faults.fail = lambda r: (500, "InternalError") if "list-type=2" in r.path else None
    use_settings(make_settings(s3_endpoint_url=proxy.endpoint, s3_max_attempts=1))
    assert main(["prune", "--apply"]) == 1
    out = capsys.readouterr().out
    assert "listing failed" in out and "paused" in out
    assert len(bucket_keys(s3, bucket)) == 8


def test_cli_dry_run_shows_the_plan_with_reasons(
    make_settings: Any,
    s3: Any,
    bucket: str,
    use_settings: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = seed(s3, bucket, [0.1, 500])
    use_settings(make_settings(), RETENTION_MIN_KEEP="1")
    assert main(["prune"]) == 0
    out = capsys.readouterr().out
    assert f"DELETE {keys[1].key}  outside every retention window" in out
    assert "dry run: nothing was deleted" in out
    assert len(bucket_keys(s3, bucket)) == 4
