"""Configuration: the contract's names, Blnk's fallbacks, every problem at once, no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import load_settings
from core.errors import ConfigError

SECRET = "hunter2-very-secret"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith(("AWS_", "S3_", "BLNK_", "BACKUP_", "RETENTION_", "SLACK_")):
            monkeypatch.delenv(name)


def test_every_invalid_variable_is_reported_at_once_by_name_without_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("S3_BACKUP_BUCKET", "Not_A_Bucket")
    monkeypatch.setenv("BACKUP_COMPRESSION_LEVEL", "12")
    monkeypatch.setenv("S3_SSE", "rot13")
    monkeypatch.setenv("SCHEDULE_TIMEZONE", "Mars/Olympus")
    monkeypatch.setenv("BACKUP_SCHEDULE", "every day")
    monkeypatch.setenv("BLNK_DATABASE_URL", f"mysql://root:{SECRET}@db/blnk")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    for name in (
        "S3_BACKUP_BUCKET",
        "BACKUP_COMPRESSION_LEVEL",
        "S3_SSE",
        "SCHEDULE_TIMEZONE",
        "BACKUP_SCHEDULE",
        "BLNK_DATABASE_URL",
    ):
        assert name in message
    assert len(raised.value.problems) == 6
    assert SECRET not in message and "rot13" not in message


def test_blnk_names_are_fallbacks_and_the_contract_names_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BLNK_DATA_SOURCE_DNS", "postgres://blnk:pw@db:5432/blnk")
    monkeypatch.setenv("BLNK_S3_BUCKET_NAME", "blnk-bucket")
    monkeypatch.setenv("BLNK_S3_REGION", "eu-west-1")
    monkeypatch.setenv("BLNK_S3_ENDPOINT", "http://minio:9000")
    monkeypatch.setenv("BLNK_AWS_ACCESS_KEY_ID", "blnk-key")
    monkeypatch.setenv("BLNK_AWS_SECRET_ACCESS_KEY", SECRET)
    settings = load_settings()
    assert settings.s3_bucket == "blnk-bucket"
    assert settings.aws_region == "eu-west-1"
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.aws_access_key_id == "blnk-key"
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value().endswith("/blnk")
    assert settings.addressing_style == "path"  # custom endpoint → path-style
    assert SECRET not in repr(settings) and "pw@" not in repr(settings)

    monkeypatch.setenv("S3_BACKUP_BUCKET", "contract-bucket")
    monkeypatch.setenv("BLNK_DATABASE_URL", "postgres://x@y/contract")
    settings = load_settings()
    assert settings.s3_bucket == "contract-bucket"
    assert settings.database_url.get_secret_value().endswith("/contract")


def test_defaults_follow_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.s3_storage_class == "STANDARD"
    assert (
        settings.retention_daily_days,
        settings.retention_weekly_days,
        settings.retention_monthly_days,
        settings.retention_min_keep,
    ) == (7, 30, 365, 3)
    assert settings.stale_after_hours == 24
    assert settings.backup_schedule == "0 3 * * *"
    assert settings.retention_schedule == "0 4 * * 0"
    assert settings.monitor_schedule == "0 */6 * * *"
    assert settings.restore_test_schedule == "0 5 1 * *"
    assert settings.schedule_timezone == "UTC"
    assert settings.approval_ttl_minutes == 30
    assert settings.addressing_style == "auto"


def test_an_empty_schedule_disables_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_SCHEDULE", "")
    assert load_settings().backup_schedule == ""


def test_missing_bucket_and_database_are_named_when_a_command_needs_them() -> None:
    settings = load_settings()
    with pytest.raises(ConfigError) as raised:
        settings.require("database_url", "s3_bucket")
    assert "BLNK_DATABASE_URL" in str(raised.value)
    assert "S3_BACKUP_BUCKET" in str(raised.value)


def test_user_and_group_ids_are_split_on_commas_and_spaces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLACK_APPROVERS", "U012ABC, S0GROUP  U099XYZ")
    assert load_settings().approvers == ["U012ABC", "S0GROUP", "U099XYZ"]


def test_blnks_own_env_file_can_be_shared(tmp_path: Path) -> None:
    env_file = tmp_path / "blnk.env"
    env_file.write_text(
        "BLNK_DATA_SOURCE_DNS=postgres://blnk:pw@db:5432/blnk\n"
        "BLNK_S3_BUCKET_NAME=ledger-backups\n"
        "BLNK_S3_REGION=eu-central-1\n"
        "SOMETHING_ELSE=ignored\n"
    )
    settings = load_settings(env_file)
    assert settings.s3_bucket == "ledger-backups"
    assert settings.aws_region == "eu-central-1"
    assert settings.database_url is not None


def test_a_missing_env_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.env"
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(missing)
