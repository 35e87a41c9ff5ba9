"""Configuration: the contract's names, Blnk's fallbacks, every problem at once, no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main
from core.config import load_settings
from core.database import PgTarget
from core.errors import ConfigError, PreflightError

SECRET = "hunter2-very-secret"


pytestmark = pytest.mark.usefixtures("clean_env")


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


def test_a_database_url_without_a_database_name_is_a_configuration_error() -> None:
    for url in ("postgresql://postgres@127.0.0.1:5432", "host=127.0.0.1 user=postgres"):
        with pytest.raises(ConfigError, match=r"BLNK_DATABASE_URL.*names no database"):
            load_settings(database_url=url)
    # The restore-test server is a maintenance connection: no name is fine there.
    load_settings(restore_test_database_url="postgresql://postgres@127.0.0.1:5432")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://blnk:Pw/S3cr3tSLASH@127.0.0.1:5432/blnk",  # libpq: host "blnk", port "Pw"
        "postgresql://blnk:Pw@S3cr3tAT@127.0.0.1:5432/blnk",  # libpq: host "S3cr3tAT@127.0.0.1"
    ],
)
def test_a_password_with_a_raw_slash_or_at_sign_is_refused_without_showing_it(url: str) -> None:
    # Parsed as it stands, part of the password became the host or database name, and every
    # message naming the database showed it (found by a stranger's trial).
    for variable in ("database_url", "restore_test_database_url"):
        with pytest.raises(ConfigError) as refused:
            load_settings(**{variable: url})
        assert "percent-encoded" in str(refused.value) and "S3cr3t" not in str(refused.value)
    with pytest.raises(PreflightError) as refused_here:  # --server-url and the like
        PgTarget.from_url(url)
    assert "S3cr3t" not in str(refused_here.value)
    encoded = url.replace("Pw/", "Pw%2F").replace("Pw@", "Pw%40")
    target = PgTarget.from_url(load_settings(database_url=encoded).database_url.get_secret_value())
    assert target.password is not None and target.password.startswith("Pw")
    assert target.display == "postgresql://blnk@127.0.0.1:5432/blnk"


def test_an_endpoint_url_carrying_credentials_is_refused_without_showing_them() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(s3_endpoint_url="http://user:AwsS3cretZZ9@127.0.0.1:9000")
    assert "S3_ENDPOINT_URL" in str(refused.value) and "AwsS3cret" not in str(refused.value)
    load_settings(s3_endpoint_url="http://127.0.0.1:9000/path@x")  # an @ past the host is fine


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@db.internal/ledger@2024",  # an @ in the database name
        "postgresql://u:p@h1,h2:5433/blnk",  # several hosts, the first on the default port
        "postgresql://u:p%2Fq%40r@h/blnk",  # a password with / and @, percent-encoded
    ],
)
def test_valid_urls_that_look_odd_are_accepted(url: str) -> None:
    assert load_settings(database_url=url).database_url is not None


@pytest.mark.parametrize("url", ["postgresql://u@h:99999/db", "host=h dbname=db port=0"])
def test_a_database_port_out_of_range_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigError, match="port that is not a number from 1 to 65535"):
        load_settings(database_url=url)


@pytest.mark.parametrize("prefix", ["a/../b/", "./x/", "a//b/", "prod\n/", "prod\x1b/", "../"])
def test_a_dangerous_prefix_is_a_configuration_error(prefix: str) -> None:
    with pytest.raises(ConfigError, match="S3_BACKUP_PREFIX"):
        load_settings(s3_prefix=prefix)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
def test_non_finite_numbers_are_configuration_errors(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STALE_AFTER_HOURS", value)
    monkeypatch.setenv("RESTORE_TEST_MAX_AGE_DAYS", value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "STALE_AFTER_HOURS" in str(raised.value)
    assert "RESTORE_TEST_MAX_AGE_DAYS" in str(raised.value)


def test_an_env_file_that_is_not_utf8_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env_file = tmp_path / "blnk.env"
    env_file.write_bytes(b"S3_BACKUP_BUCKET=caf\xe9\n")
    assert main(["--env-file", str(env_file), "status"]) == 2
    err = capsys.readouterr().err
    assert "--env-file" in err and "UTF-8" in err


def test_an_invalid_schedule_is_a_configuration_error_naming_each_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BACKUP_SCHEDULE", "every day at three")
    monkeypatch.setenv("RETENTION_SCHEDULE", "0 4 * * 8")
    monkeypatch.setenv("MONITOR_SCHEDULE", "61 * * * *")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    problems = caught.value.problems
    assert len(problems) == 3
    for variable in ("BACKUP_SCHEDULE", "RETENTION_SCHEDULE", "MONITOR_SCHEDULE"):
        assert any(p.startswith(f"{variable}: ") for p in problems), problems
    monkeypatch.setenv("BACKUP_SCHEDULE", "")  # empty: disabled, not an error
    monkeypatch.delenv("RETENTION_SCHEDULE")
    monkeypatch.delenv("MONITOR_SCHEDULE")
    assert load_settings().backup_schedule == ""


def test_an_api_key_shorter_than_16_characters_is_a_configuration_error() -> None:
    from core.config import load_settings
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="BLNK_API_KEY") as raised:
        load_settings(blnk_api_key="short-key")
    assert "short-key" not in str(raised.value)


def test_missing_configuration_exits_2_naming_the_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUDIT_DATABASE_URL", f"sqlite:///{tmp_path / 'a.sqlite3'}")
    assert main(["backup"]) == 2
    err = capsys.readouterr().err
    assert "BLNK_DATABASE_URL" in err and "S3_BACKUP_BUCKET" in err
    assert "Traceback" not in err
