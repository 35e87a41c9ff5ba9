"""Hostile input gets a clear error and changes nothing; stored text is shown harmlessly."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from bot.render import text as render_text
from core.audit import Actor
from core.config import load_settings
from core.database import PgTarget
from core.errors import ConfigError, PreflightError, UsageError
from core.redact import neutralise
from core.services import Services
from tests.support.helpers import bucket_keys, incomplete_uploads
from tests.support.seeding import seed

FAKE_SUCCESS = "\n✓ backup uploaded and verified"
HOSTILE_REASONS = [
    "ok" + FAKE_SUCCESS,
    "bell\x07",
    "escape \x1b[2J\x1b[H cleared",
    "carriage\rreturn",
    "nul\x00byte",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("AWS_", "S3_", "BLNK_", "BACKUP_", "RETENTION_", "SLACK_")):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("reason", HOSTILE_REASONS)
def test_a_reason_with_control_characters_is_refused_and_changes_nothing(
    make_settings: Any,
    use_settings: Any,
    reason: str,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings()
    use_settings(settings)
    if "\x00" in reason:  # argv cannot carry NUL: the engine refuses it directly
        services = Services(settings)
        with pytest.raises(UsageError, match="control characters"):
            services.backups.run(Actor("eve", "cli"), reason=reason)
        services.close()
    else:
        assert main(["backup", "--reason", reason]) == 2
        assert "control characters" in capsys.readouterr().err
    assert bucket_keys(s3, bucket) == [] and incomplete_uploads(s3, bucket) == []


def test_an_actor_with_control_characters_is_refused(
    make_settings: Any, use_settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    use_settings(make_settings())
    assert main(["--actor", "mallory\x1b[1A", "backup"]) == 2
    assert "actor name" in capsys.readouterr().err
    with pytest.raises(UsageError):
        Actor("line\nbreak", "slack")


def test_stored_reasons_and_actors_are_neutralised_in_list_and_audit(
    make_settings: Any,
    use_settings: Any,
    s3: Any,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Text that reached the bucket or the audit log some other way is shown harmlessly.
    seed(s3, bucket, [0.1], reason="ok" + FAKE_SUCCESS + "\x1b[31m", actor="x\rbob")
    settings = make_settings()
    services = Services(settings)
    services.audit.record(
        action="backup",
        outcome="failed",
        actor=Actor("cron", "cli"),
        error_code="dump_failed",
        error_cause="pg_dump: error\x1b[2J" + FAKE_SUCCESS,
    )
    services.close()
    use_settings(settings)
    for command in (["list"], ["audit"], ["status"]):
        main(command)
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\r" not in out
        assert not any(line.startswith("✓ backup uploaded") for line in out.splitlines())


def test_neutralise_makes_every_control_character_visible() -> None:
    assert neutralise("a\nb\x1b[0m\x07\u202e") == "a\\nb\\x1b[0m\\x07\\u202e"
    assert neutralise("plain text, ümlauts and ✓") == "plain text, ümlauts and ✓"


def test_switch_over_sql_quotes_identifiers_so_a_hostile_name_stays_one_name() -> None:
    hostile = 'x"; DROP DATABASE src; --'
    new = PgTarget.from_url("postgresql://postgres@127.0.0.1:5432/postgres").with_dbname(hostile)
    text = render_text.switch_over(new, 'blnk"prod')
    assert 'ALTER DATABASE "x""; DROP DATABASE src; --" RENAME TO "blnk""prod";' in text
    assert 'ALTER DATABASE "blnk""prod" RENAME TO "blnk""prod_before_restore";' in text
    # The printed URL is percent-encoded: pasting it names the same database.
    assert "postgresql://postgres@127.0.0.1:5432/x%22%3B%20DROP%20DATABASE%20src%3B%20--" in text


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


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////proc/no/such/place/audit.sqlite3",
        "nosuchdb://x/y",
        "postgresql://u:hunter2@127.0.0.1:1/nowhere",
        "not a url",
    ],
)
def test_an_unusable_audit_database_exits_2_naming_the_variable_without_its_password(
    make_settings: Any,
    use_settings: Any,
    url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_settings(make_settings())
    monkeypatch.setenv("AUDIT_DATABASE_URL", url)
    assert main(["audit"]) == 2
    err = capsys.readouterr().err
    assert "AUDIT_DATABASE_URL" in err and "hunter2" not in err
    assert "internal error" not in err


def test_json_failures_print_a_json_error_object_on_stdout_too(
    make_settings: Any, use_settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    use_settings(make_settings(), S3_BACKUP_BUCKET="no-such-bucket-here")
    assert main(["backup", "--json"]) == 2
    captured = capsys.readouterr()
    body = json.loads(captured.out)
    assert body["error"]["code"] == "config_error"
    assert "S3_BACKUP_BUCKET" in body["error"]["message"]
    assert captured.err.startswith("error: ")
    assert main(["restore-test", "not-a-key", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] in {"usage_error", "config_error"}


def test_generate_db_uses_the_local_server_its_help_names_not_the_backup_target(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import LOCAL_SERVER, build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["generate-db"].format_help()  # type: ignore[union-attr]
    assert "127.0.0.1:5432" in " ".join(help_text.split())
    # A production URL in the environment must not be where demo data goes.
    monkeypatch.setenv("BLNK_DATABASE_URL", "postgresql://blnk@prod.invalid:5432/blnk")
    name = f"blnk_gen_{datetime.now(UTC):%H%M%S%f}"
    try:
        assert main(["generate-db", name, "--transactions", "10", "--json"]) == 0
        body = json.loads(capsys.readouterr().out)
        assert body["server"] == PgTarget.from_url(LOCAL_SERVER).display
    finally:
        from core.database import drop_database

        drop_database(PgTarget.from_url(LOCAL_SERVER), name)
