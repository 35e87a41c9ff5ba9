"""bucket check / apply against the S3 server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.cli import main
from core.bucket_policy import BucketPolicies
from core.services import Services

pytestmark = pytest.mark.stores

UNRELATED_RULE = {
    "ID": "logs-expire",
    "Filter": {"Prefix": "logs/"},
    "Status": "Enabled",
    "Expiration": {"Days": 7},
}


@pytest.fixture
def cli_env(make_settings: Any, use_settings: Any) -> None:
    use_settings(make_settings(s3_prefix="prod/"))


def test_check_reports_everything_missing_on_a_plain_bucket(
    cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bucket", "check", "--json"]) == 1
    [store] = json.loads(capsys.readouterr().out).values()
    assert store["ok"] is False and store["errors"] == []
    assert {i["name"] for i in store["items"] if not i["ok"]} == {
        "versioning",
        "default encryption",
        "public access block",
        "lifecycle blnk-backup-archive",
        "lifecycle blnk-backup-expire",
        "lifecycle blnk-backup-abort-incomplete-uploads",
        "lifecycle blnk-backup-abort-incomplete-base-uploads",
        "lifecycle blnk-backup-base-noncurrent-versions",
        "lifecycle blnk-backup-wal-noncurrent-versions",
        "lifecycle blnk-backup-noncurrent-versions",
    }


# What each test S3 implementation does not implement (answers NotImplemented).
LACKS = {"moto": set(), "seaweedfs": {"public access block", "lifecycle blnk-backup-archive"}}


@pytest.fixture
def lacks(request: pytest.FixtureRequest) -> set[str]:
    return LACKS[request.config.getoption("--s3-server")]


def test_apply_needs_yes_and_then_applies_everything_keeping_unrelated_rules(
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
    s3: Any,
    bucket: str,
    lacks: set[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [UNRELATED_RULE]}
    )
    assert main(["bucket", "apply"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert s3.get_bucket_versioning(Bucket=bucket).get("Status") is None  # unchanged

    assert main(["bucket", "apply", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "✗" not in out
    for item in lacks:  # what the store does not implement is said, and the rest applied
        assert f"- {item}: not supported by this store" in out
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules["logs-expire"]["Expiration"]["Days"] == 7
    assert rules["blnk-backup-expire"]["Expiration"]["Days"] == 365 + 30
    assert rules["blnk-backup-expire"]["Filter"]["Prefix"] == "prod/blnk_backup_"
    assert rules["blnk-backup-abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 1
    }
    assert rules["blnk-backup-wal-noncurrent-versions"]["Filter"]["Prefix"] == "prod/wal/"
    assert "Expiration" not in rules["blnk-backup-wal-noncurrent-versions"]  # only prune
    if "lifecycle blnk-backup-archive" in lacks:
        assert "blnk-backup-archive" not in rules
        monkeypatch.setenv("S3_ARCHIVE_AFTER_DAYS", "0")  # as the apply output suggests
    else:
        assert rules["blnk-backup-archive"]["Transitions"][0]["StorageClass"] == "GLACIER_IR"
    enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    assert enc["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    if "public access block" not in lacks:
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert all(block.values())

    assert main(["bucket", "check"]) == 0  # and applying again changes nothing
    assert main(["bucket", "apply", "--yes"]) == 0
    expected = 8 - len(lacks & {"lifecycle blnk-backup-archive"})
    assert len(s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]) == expected


def test_a_changed_rule_of_ours_is_reported_and_restored(
    make_settings: Any, s3: Any, bucket: str, lacks: set[str]
) -> None:
    archive_days = 0 if "lifecycle blnk-backup-archive" in lacks else 30
    services = Services(make_settings(s3_archive_after_days=archive_days))
    policies = BucketPolicies(services.store, services.settings)
    policies.apply()
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    for rule in rules:
        if rule["ID"] == "blnk-backup-expire":
            rule["Expiration"]["Days"] = 10  # someone shortened it by hand
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    bad = [i for i in policies.check().items if not i.ok and not i.unsupported]
    assert [i.name for i in bad] == ["lifecycle blnk-backup-expire"]
    assert "expire after 10 d" in bad[0].current
    assert policies.apply().ok
    services.close()
