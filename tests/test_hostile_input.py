"""Hostile input gets a clear error and changes nothing; stored text is shown harmlessly."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.cli import main
from core.audit import Actor
from core.database import PgTarget
from core.errors import UsageError
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


pytestmark = pytest.mark.usefixtures("clean_env")


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
