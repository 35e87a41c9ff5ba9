"""The blnk-backup command line: exit codes, JSON output, clear errors, no secrets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from core.database import PgTarget
from tests.support.helpers import SECRET_KEY, bucket_keys
from tests.support.seeding import seed


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    s3_server: Any,
    bucket: str,
    blnk_db: PgTarget,
    pg_bin_dir: str | None,
) -> dict[str, str]:
    env = {
        "BLNK_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{blnk_db.dbname}",
        "S3_BACKUP_BUCKET": bucket,
        "S3_ENDPOINT_URL": s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": "AKIATESTTESTTEST",
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "AUDIT_DATABASE_URL": f"sqlite:///{tmp_path / 'audit.sqlite3'}",
        "S3_MAX_ATTEMPTS": "2",
    }
    if pg_bin_dir is not None:  # the test server is the embedded 18: its client tools
        env["PG_BIN_DIR"] = pg_bin_dir
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


def test_backup_list_status_audit_round_trip_as_json(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str], s3: Any, bucket: str
) -> None:
    assert main(["status", "--json"]) == 1  # no backups yet: a breach, exit 1
    status = _json(capsys)
    assert status["healthy"] is False and status["breaches"][0].startswith("no backups")

    assert main(["--actor", "oncall", "backup", "--reason", "before migration 42", "--json"]) == 0
    backup = _json(capsys)
    assert backup["key"] in bucket_keys(s3, bucket)
    assert len(backup["sha256"]) == 64 and backup["size"] > 0

    assert main(["list", "--json"]) == 0
    listed = _json(capsys)
    assert [e["key"] for e in listed] == [backup["key"]]
    assert listed[0]["reason"] == "before migration 42" and listed[0]["actor"] == "oncall"

    assert main(["status", "--json"]) == 0
    status = _json(capsys)
    assert status["healthy"] is True and status["newest"]["key"] == backup["key"]
    assert status["newest_age_hours"] < 1

    assert main(["audit", "--json"]) == 0
    events = _json(capsys)
    assert [e["outcome"] for e in events[:2]] == ["succeeded", "started"]
    assert events[0]["trigger"] == "cli" and events[0]["actor"] == "oncall"


def test_status_reports_stale_when_the_newest_backup_is_too_old(
    cli_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    s3: Any,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert main(["backup", "--json"]) == 0
    capsys.readouterr()
    # An older complete backup must not be taken for the newest (S3 lists ascending).
    seed(s3, bucket, [0], now=datetime(2020, 1, 1, tzinfo=UTC))
    assert main(["status", "--json"]) == 1
    status = _json(capsys)
    assert status["complete_backups"] == 2
    assert status["newest"]["key"] != "blnk_backup_20200101_000000.dump"
    # Backups going back to 2020 and never a restore test: that alone is the breach.
    assert [b.split(",")[0] for b in status["breaches"]] == ["no restore test yet"]
    monkeypatch.setenv("STALE_AFTER_HOURS", "0.0001")
    assert main(["status"]) == 1
    assert "stale" in capsys.readouterr().out


def test_human_output_is_readable(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backup", "--reason", "manual"]) == 0
    captured = capsys.readouterr()
    assert "✓ backup uploaded and verified" in captured.out
    assert "sha256" in captured.out
    assert "dumping" in captured.err  # progress goes to stderr
    assert main(["list"]) == 0
    assert "manual" in capsys.readouterr().out


def test_invalid_values_exit_2_and_never_echo_secrets(
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BACKUP_COMPRESSION_LEVEL", "eleven")
    monkeypatch.setenv("S3_BACKUP_BUCKET", "UPPER_case")
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert "BACKUP_COMPRESSION_LEVEL" in err and "S3_BACKUP_BUCKET" in err
    assert SECRET_KEY not in err


def test_a_failed_backup_exits_1_with_a_clear_line_and_no_secret(
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(
        "BLNK_DATABASE_URL", "postgresql://postgres:pw-XYZ@127.0.0.1:5432/no_such_db"
    )
    assert main(["backup"]) == 1
    err = capsys.readouterr().err
    assert "preflight_failed" in err and "no_such_db" in err
    assert "pw-XYZ" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "bound"),
    [
        (["audit", "--limit", "99999999999999999999"], "at most 10000"),
        (["audit", "--limit", "10001"], "at most 10000"),
        (["list", "--limit", "99999999999999999999"], "at most 10000"),
        (["generate-db", "blnk_never_made", "--transactions", "99999999999999999999"], "at most"),
    ],
    ids=["audit huge", "audit one too many", "list huge", "generate-db huge"],
)
def test_a_number_beyond_its_bound_is_a_usage_error_not_an_internal_error(
    cli_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    bound: str,
) -> None:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert bound in err and "internal error" not in err


def test_the_largest_audit_limit_is_accepted(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "--limit", "10000", "--json"]) == 0
    assert isinstance(_json(capsys), list)


def test_the_console_script_is_installed_and_answers(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AUDIT_DATABASE_URL": f"sqlite:///{tmp_path / 'a.sqlite3'}",
    }
    done = subprocess.run(
        [str(bin_dir / "blnk-backup"), "status"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "S3_BACKUP_BUCKET" in done.stderr


def test_an_overlong_reason_is_a_usage_error_and_changes_nothing(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str], s3: Any, bucket: str
) -> None:
    assert main(["backup", "--reason", "x" * 501]) == 2
    assert "reason is longer than 500" in capsys.readouterr().err
    assert bucket_keys(s3, bucket) == []
    assert main(["audit", "--json"]) == 0
    assert _json(capsys) == []


def test_verbose_logs_never_show_the_secrets(
    make_settings: Any, blnk_db: PgTarget, tmp_path: Path
) -> None:
    from tests.support.helpers import settings_env

    db_password = "Db-Pa55-Never-Logged"  # the local server trusts loopback, so any works
    settings = make_settings(
        database_url=f"postgresql://postgres:{db_password}@127.0.0.1:5432/{blnk_db.dbname}"
    )
    env = settings_env(settings, PATH=os.environ["PATH"], HOME=str(tmp_path))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "blnk-backup"), "-v", "backup", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DEBUG" in done.stderr  # verbose really was on
    for secret in (SECRET_KEY, db_password):
        assert secret not in done.stdout and secret not in done.stderr


def test_restore_prune_apply_and_bucket_apply_take_a_reason_into_the_audit_log(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str], blnk_db: PgTarget
) -> None:
    assert main(["backup", "--json"]) == 0
    assert main(["prune", "--apply", "--reason", "quarterly clean-up", "--json"]) == 0
    assert main(["bucket", "apply", "--yes", "--reason", "ticket OPS-7", "--json"]) in (0, 1)
    # Refused (it is the source database) after the run was recorded, with its reason.
    argv = ["restore", "latest", "--into", blnk_db.dbname, "--yes", "--reason", "drill 7"]
    assert main(argv) == 2
    assert main(["prune", "--apply", "--reason", "two\nlines"]) == 2
    capsys.readouterr()
    assert main(["audit", "--json"]) == 0
    reasons = {(e["action"], e["outcome"], e["reason"]) for e in _json(capsys)}
    assert ("prune", "succeeded", "quarterly clean-up") in reasons
    assert ("bucket_apply", "started", "ticket OPS-7") in reasons
    assert ("restore", "failed", "drill 7") in reasons
    assert not any(reason and "two" in reason for _, _, reason in reasons)


def test_audit_says_when_an_action_name_is_unknown(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "--action", "bakup"]) == 2
    err = capsys.readouterr().err
    assert "'bakup' is not an action the audit log records" in err
    assert "did you mean backup?" in err
    assert main(["audit", "--action", "restore_test"]) == 0
    assert capsys.readouterr().out.strip() == "no restore_test events in the audit log"


def test_every_action_the_code_audits_is_one_audit_action_accepts() -> None:
    from bot.cli import AUDIT_ACTIONS

    root = Path(__file__).resolve().parents[1]
    audited: set[str] = set()
    for path in [*root.joinpath("core").rglob("*.py"), *root.joinpath("bot").rglob("*.py")]:
        source = path.read_text()
        audited |= set(re.findall(r"audit\.run\(\s*\"([a-z_]+)\"", source))
        audited |= set(re.findall(r"\baction=\"([a-z_]+)\"", source))
    audited -= {"store_true", "version"}  # argparse's, not the audit log's
    assert {"backup", "restore", "prune", "scheduled_run", "unauthorized"} <= audited
    assert audited <= set(AUDIT_ACTIONS), audited - set(AUDIT_ACTIONS)


def test_status_shows_the_next_scheduled_runs(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKUP_SCHEDULE", "0 3 * * *")
    monkeypatch.setenv("RETENTION_SCHEDULE", "")  # disabled: not shown
    assert main(["status"]) == 1  # no backups yet
    out = capsys.readouterr().out
    assert re.search(
        r"^  next runs (backup|freshness_check)\s+\d{4}-\d\d-\d\d \d\d:\d\d UTC$", out, re.M
    ), out
    # Its own line, or the first (between 00:00 and 03:00 UTC it is the next of all).
    assert re.search(r"^(\s+|  next runs )backup\s+\d{4}-\d\d-\d\d 03:00 UTC$", out, re.M), out
    assert "retention" not in out
    assert main(["status", "--json"]) == 1
    runs = _json(capsys)["next_runs"]
    assert set(runs) == {"backup", "freshness_check", "restore_test"}
    assert datetime.fromisoformat(runs["backup"]).hour == 3


def test_on_a_terminal_backup_progress_is_drawn_live_and_ends_at_100_percent(
    cli_env: dict[str, str],
) -> None:
    import pexpect
    import pyte

    child = pexpect.spawn(
        str(Path(sys.executable).parent / "blnk-backup"),
        ["backup", "--reason", "drawn on a terminal"],
        env={**os.environ, "TERM": "xterm"},
        dimensions=(40, 80),
        timeout=120,
    )
    screen = pyte.Screen(80, 40)
    stream = pyte.ByteStream(screen)
    while True:
        try:
            stream.feed(child.read_nonblocking(65536, timeout=120))
        except pexpect.EOF:
            break
    child.close()
    assert child.exitstatus == 0
    lines = [line.rstrip() for line in screen.display if line.strip()]
    shown = "\n".join(lines)
    dump = next(line for line in lines if "dumping and uploading" in line)
    assert dump.startswith("✓") and dump.endswith("100 %"), shown
    assert re.search(r"^  [\d,]+ bytes · [\d.]+ \w+/s$", shown, re.M), shown
    assert re.search(r"^  backup finished after [\d.]+ s$", shown, re.M), shown
    assert "✓ backup uploaded and verified" in shown
    # Every phase ended: no spinner is left on the screen.
    assert not re.search("[\u2800-\u28ff]", shown), shown
