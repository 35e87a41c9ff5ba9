"""The text and JSON renderers, checked against their exact output: what a person reads in a
terminal and what a script parses must not drift by accident."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from bot.render import json as render_json
from bot.render import text as render_text
from core.audit import AuditEvent
from core.bucket_policy import PolicyItem, StorePolicies
from core.catalog import BackupEntry, FreshnessStatus
from core.database import PgTarget
from core.errors import ConfigError, DumpError
from core.keys import BackupKey
from core.manifest import SnapshotStats
from core.prune import PruneReport
from core.redact import neutralise
from core.restore.check import Check
from core.restore.ledger_proof import LedgerProof
from core.restore.service import RestoreReport
from core.retention import Decision, RetentionPlan
from tests.support.manifests import make_manifest

NEW = BackupKey.at(datetime(2026, 11, 26, 3, 0, 0, tzinfo=UTC))
OLD = BackupKey.at(datetime(2026, 11, 25, 3, 0, 0, tzinfo=UTC))
NO_MANIFEST = "no manifest: the backup did not finish (or is still running)"
COMPLETE = BackupEntry(NEW, 8, True, make_manifest(NEW))
INCOMPLETE = BackupEntry(OLD, 5, False, None, NO_MANIFEST)
SHA = "ee96e4a9b59212a495329c50f9be6ab61531fb44fa4b3965cb5cf0f2dc33a806"


def test_a_backup_renders_as_text_and_json() -> None:
    assert render_text.backup(COMPLETE.manifest, "bkt") == (  # type: ignore[arg-type]
        "✓ backup uploaded and verified\n"
        "  key       s3://bkt/blnk_backup_20261126_030000.dump\n"
        "  size      8 B (8 bytes, 1 part)\n"
        f"  sha256    {SHA}\n"
        "  verified  seeded by a test\n"
        "  duration  1.0 s\n"
        "  database  blnk (PostgreSQL 15.20), 0 rows in 0 tables"
    )
    assert render_json.backup(COMPLETE.manifest, "bkt") == {  # type: ignore[arg-type]
        "message": "backup uploaded to s3://bkt/blnk_backup_20261126_030000.dump and verified",
        "key": "blnk_backup_20261126_030000.dump",
        "bucket": "bkt",
        "size": 8,
        "sha256": SHA,
        "store_checksum": None,
        "verification": "seeded by a test",
        "started_at": "2026-11-26T03:00:00+00:00",
        "finished_at": "2026-11-26T03:00:01+00:00",
        "duration_seconds": 1.0,
        "database": "blnk",
        "compression_level": 1,
        "replicas": [],
    }


def test_a_list_shows_complete_and_incomplete_backups_with_the_reason() -> None:
    assert render_text.entries([COMPLETE, INCOMPLETE]) == (
        "KEY                                          STARTED (UTC)              SIZE  BY"
        "               REASON\n"
        "blnk_backup_20261126_030000.dump             2026-11-26 03:00:00         8 B  cli:seed\n"
        "blnk_backup_20261125_030000.dump             2026-11-25 03:00:00         5 B  "
        f"(incomplete)     {NO_MANIFEST}"
    )
    assert render_json.entries([INCOMPLETE]) == [
        {
            "key": "blnk_backup_20261125_030000.dump",
            "started_at": "2026-11-25T03:00:00+00:00",
            "size": 5,
            "complete": False,
            "problem": NO_MANIFEST,
        }
    ]
    assert render_text.entries([]) == "no backups yet"


def test_status_shows_breaches_the_restore_test_and_incomplete_backups() -> None:
    state = FreshnessStatus(
        checked_at=datetime(2026, 11, 27, 9, 0, tzinfo=UTC),
        stale_after_hours=24,
        complete_count=1,
        incomplete_count=1,
        total_size=8,
        newest=COMPLETE,
        oldest=COMPLETE,
        last_restore_test={"key": NEW.key, "passed": False, "error": "corrupt"},
        breaches=["stale: the newest backup is 30.0 h old (STALE_AFTER_HOURS=24)"],
        incomplete=[INCOMPLETE],
    )
    assert render_text.status(state) == (
        "✗ stale: the newest backup is 30.0 h old (STALE_AFTER_HOURS=24)\n"
        "  newest    blnk_backup_20261126_030000.dump (30.0 h old, limit 24 h)\n"
        "  oldest    blnk_backup_20261126_030000.dump\n"
        "  restore   last restore test FAILED: blnk_backup_20261126_030000.dump\n"
        "            corrupt\n"
        "  backups   1 complete, 8 B in all, 1 incomplete\n"
        f"  ! blnk_backup_20261125_030000.dump: {NO_MANIFEST}"
    )
    body = render_json.status(state)
    assert body["healthy"] is False and body["newest_age_hours"] == 30.0
    assert body["incomplete"][0]["problem"] == NO_MANIFEST
    assert "next_runs" not in body


def test_status_says_what_each_failed_check_of_the_last_restore_test_expected_and_found() -> None:
    failed = {"name": "rows blnk.transactions", "passed": False, "expected": "10", "found": "9"}
    state = FreshnessStatus(
        checked_at=datetime(2026, 11, 27, 9, 0, tzinfo=UTC),
        stale_after_hours=24,
        complete_count=1,
        incomplete_count=0,
        total_size=8,
        newest=COMPLETE,
        oldest=COMPLETE,
        last_restore_test={"key": NEW.key, "passed": False, "failed_checks": [failed, "junk"]},
        breaches=["the last restore test failed"],
        incomplete=[],
    )
    lines = render_text.status(state).splitlines()
    at = lines.index("  restore   last restore test FAILED: blnk_backup_20261126_030000.dump")
    assert lines[at + 1] == "            ✗ rows blnk.transactions: expected 10, found 9"


def test_status_shows_the_next_scheduled_runs_soonest_first() -> None:
    state = FreshnessStatus(
        checked_at=datetime(2026, 11, 27, 9, 0, tzinfo=UTC),
        stale_after_hours=24,
        complete_count=1,
        incomplete_count=0,
        total_size=8,
        newest=COMPLETE,
        oldest=COMPLETE,
        last_restore_test=None,
        breaches=[],
        incomplete=[],
    )
    runs = {
        "retention": datetime(2026, 11, 29, 4, 0, tzinfo=UTC),
        "backup": datetime(2026, 11, 28, 3, 0, tzinfo=UTC),
    }
    assert render_text.status(state, runs).splitlines()[-2:] == [
        "  next runs backup           2026-11-28 03:00 UTC",
        "            retention        2026-11-29 04:00 UTC",
    ]
    assert render_json.status(state, runs)["next_runs"] == {
        "backup": "2026-11-28T03:00:00+00:00",
        "retention": "2026-11-29T04:00:00+00:00",
    }


def _event(action: str, **fields: object) -> AuditEvent:
    base: dict[str, object] = {
        "id": 1,
        "at": datetime(2026, 11, 26, 3, 0, 0, tzinfo=UTC),
        "run_id": "r1",
        "action": action,
        "outcome": "succeeded",
        "actor": "oncall",
        "trigger": "cli",
    }
    return AuditEvent(**(base | fields))


def test_audit_text_keeps_its_columns_aligned_and_ends_cut_text_with_an_ellipsis() -> None:
    events = [
        _event("backup", key=NEW.key, reason="before migration 42"),
        _event(
            "approval_requested",
            outcome="recorded",
            actor="U0123456789ABCDEFGHIJ",
            trigger="slack",
            reason="x" * 300,
        ),
        _event(
            "backup",
            outcome="failed",
            trigger="schedule",
            actor="scheduler",
            error_code="dump_failed",
            error_cause="pg_dump: error: " + "y" * 300 + "\nsecond line",
        ),
    ]
    lines = render_text.audit(events).splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "ACTION", "OUTCOME", "BY", "WHAT"]
    # Every column starts where its heading does, whatever the length of the values.
    for heading in ("ACTION", "OUTCOME", "BY", "WHAT"):
        column = lines[0].index(heading)
        assert all(line[column - 2 : column] == "  " for line in lines[1:]), heading
        assert all(line[column] != " " for line in lines[1:]), heading
    assert "approval_requested" in lines[2]
    assert "slack:U0123456789ABCDEF…" in lines[2]  # a long actor is cut, marked
    assert lines[2].endswith("x…") and len(lines[2]) < 200
    assert lines[3].endswith("y…") and "second line" not in lines[3]
    assert lines[1].endswith(f"{NEW.key} (before migration 42)")
    assert render_text.audit([], action="backup") == "no backup events in the audit log"


def test_audit_json_gives_details_as_an_object() -> None:
    event = _event("prune", details=json.dumps({"apply": True, "stores": ["s3://bkt/"]}))
    assert render_json.audit([event])[0]["details"] == {"apply": True, "stores": ["s3://bkt/"]}
    assert render_json.audit([_event("backup")])[0]["details"] is None


def test_sizes_and_counts_carry_thousands_separators() -> None:
    manifest = make_manifest(
        NEW,
        size=123_456_789,
        stats=SnapshotStats({"blnk.transactions": 1_234_567, "blnk.balances": 2_000}, {}, {}),
    )
    text = render_text.backup(manifest, "bkt")
    assert "(123,456,789 bytes, 1 part)" in text
    assert "1,236,567 rows in 2 tables" in text


def test_a_restore_report_lists_failed_checks_and_notes() -> None:
    report = RestoreReport(
        key=NEW.key,
        database="blnk_restore_test_x",
        checks=[Check("rows blnk.transactions", False, "10", "9"), Check("amcheck", True, "", "")],
        durations={"download": 0.5, "restore": 2.25, "checks": 0.4, "total": 3.3},
        finished_at=datetime(2026, 11, 26, 4, 0, tzinfo=UTC),
        amcheck="ran on 3 B-tree indexes",
        notes=["pg_restore 18.6 into PostgreSQL 15.20: the server does not know x"],
    )
    assert render_text.restore(report).splitlines() == [
        "✗ blnk_backup_20261126_030000.dump restore-tested in scratch database "
        "blnk_restore_test_x: 1 check(s) FAILED",
        "  time      download 0.5 s, restore 2.2 s, checks 0.4 s, total 3.3 s",
        "  checks    2 (ran on 3 B-tree indexes)",
        "  note      pg_restore 18.6 into PostgreSQL 15.20: the server does not know x",
        "  ✗ rows blnk.transactions: expected 10, found 9",
    ]
    body = render_json.restore(report)
    assert body["passed"] is False and body["notes"] == report.notes
    assert body["checks"][0] == {
        "name": "rows blnk.transactions",
        "passed": False,
        "expected": "10",
        "found": "9",
    }


def test_a_prune_plan_and_bucket_policies_read_as_a_person_would_act_on_them() -> None:
    plan = RetentionPlan(
        [
            Decision(OLD, False, ("outside every retention window",)),
            Decision(NEW, True, ("daily: younger than 7 days",)),
        ]
    )
    report = PruneReport("s3://bkt/", plan, False, incomplete={"k.dump": "no manifest"})
    assert render_text.prune([report]) == (
        "s3://bkt/: keep 1, would delete (dry run) 1\n"
        "  DELETE blnk_backup_20261125_030000.dump  outside every retention window\n"
        "  keep   blnk_backup_20261126_030000.dump  daily: younger than 7 days\n"
        "  skip   k.dump  not a complete backup (no manifest)\n"
        "dry run: nothing was deleted; run with --apply to delete"
    )
    results = [
        StorePolicies(
            "s3://bkt/",
            [
                PolicyItem("versioning", True, "Enabled", "Enabled"),
                PolicyItem("public access block", False, "n/a", "-", unsupported=True),
                PolicyItem("default encryption", False, "none", "AES256"),
            ],
            [],
        )
    ]
    assert render_text.policies(results, applied=False) == (
        "s3://bkt/ (check)\n"
        "  ✓ versioning: Enabled\n"
        "  - public access block: not supported by this store\n"
        "  ✗ default encryption: none (recommended: AES256)\n"
        "run `blnk-backup bucket apply --yes` to apply what is missing"
    )
    assert render_json.policies(results)["s3://bkt/"]["ok"] is False


def test_error_objects_carry_a_code_a_message_and_every_configuration_problem() -> None:
    assert render_json.error(DumpError("pg_dump exited with status 1: boom")) == {
        "error": {"code": "dump_failed", "message": "pg_dump exited with status 1: boom"}
    }
    config = render_json.error(ConfigError(["A: is not set", "B: is not a number"]))
    assert config["error"]["code"] == "config_error"
    assert config["error"]["problems"] == ["A: is not set", "B: is not a number"]


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


def test_status_and_the_restore_result_show_the_last_ledger_proof() -> None:
    proof = LedgerProof(
        ran=True,
        checks=[Check("chain head", False, "seq 9 hash x", "no transaction at seq 9")],
        balances=3,
        transactions=10,
        chain_seq=9,
        blnk_version="0.15",
    )
    assert proof.headline() == "ledger proof FAILED: chain head"
    summary = proof.summary()
    assert summary["passed"] is False and summary["failed"] == ["chain head"]
    report = RestoreReport(
        key="blnk_backup_20260101_000000.dump",
        database="blnk_restore_test_x",
        checks=proof.checks,
        durations={"total": 1.0},
        finished_at=datetime(2026, 1, 1, tzinfo=UTC),
        amcheck="ran on 1 B-tree indexes",
        ledger_proof=summary,
    )
    lines = render_text.restore(report).splitlines()
    assert "  ledger    ✗ ledger proof FAILED: chain head" in lines
    assert report.summary()["ledger_proof"] == summary
