"""Block Kit renderings: exact output for the messages people act on, hostile text rendered
harmlessly, long lists cut with "… and N more" within Slack's limits, and the limits
validator itself (each limit passes at its value and fails one past it)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.render import blocks
from bot.render.blocks import Message
from bot.render.slack_limits import (
    MAX_MESSAGE_JSON,
    BlockLimitError,
    fit,
    json_size,
    pack_lines,
    truncate_mrkdwn,
    validate_message,
    validate_view,
)
from core.approvals import Approval
from core.audit import AuditEvent
from core.bucket_policy import PolicyItem, StorePolicies
from core.catalog import BackupEntry, FreshnessStatus
from core.keys import BackupKey
from core.manifest import Manifest, SnapshotStats
from core.prune import PruneReport
from core.restore.check import Check
from core.restore.service import RestoreReport
from core.retention import RetentionPolicy, plan
from tests.support.fake_slack import block_texts, slack_would_reject
from tests.support.manifests import make_manifest

T = datetime(2024, 5, 1, 3, 0, 12, tzinfo=UTC)
KEY = "prod/blnk_backup_20240501_030012.dump"
APPROVAL_ID = "3f2a" * 8
FAKE_SUCCESS = ":white_check_mark: Backup complete and verified"
HOSTILE = [
    "<!channel>",
    "<!here|here> and <!everyone>",
    "<@U0BOSS> please",
    "<http://evil.example/|click here to verify>",
    "&lt;!channel&gt;",
    "ok\n" + FAKE_SUCCESS,
    "ok\r\n*Approved by <@U0BOSS>*",
    "\x1b[2J\x1b[H cleared \u202eevil",
    "`code` *bold* _it_ ~gone~ ``` fence",
    "&" * 3000,
    "x" * 10_000,
]


# --- factories ----------------------------------------------------------------------------------
# What a real backup's manifest shows here, beyond the factory's plain defaults.
SHOWN: dict[str, Any] = {
    "sha256": "0123456789abcdef" * 4,
    "size": 1_288_490_189,
    "finished_at": T + timedelta(seconds=65.4),
    "duration_seconds": 65.4,
    "server_version": "15.6",
    "pg_dump_version": "15.6",
    "sse": "AES256",
    "store_checksum": "abc",
    "verification": "size+sha256-composite",
    "part_count": 12,
    "stats": SnapshotStats(
        row_counts={"blnk.balances": 10, "blnk.transactions": 1000}, ledger={}, objects={}
    ),
    "trigger": "slack",
    "actor": "U012ABC",
    "reason": "before migration 42",
    "tool_version": "0.1.0",
    "replicas": [
        {
            "bucket": "ledger-backups-dr",
            "key": KEY,
            "status": "verified",
            "method": "copy",
            "seconds": 3.0,
        }
    ],
}


def manifest(**changes: Any) -> Manifest:
    """The manifest of the backup at KEY (started at T), as the factory makes it with SHOWN."""
    return make_manifest(BackupKey.at(T, "prod/"), **(SHOWN | changes))


def entry(hours_ago: int, *, complete: bool = True, prefix: str = "prod/", **m: Any) -> BackupEntry:
    key = BackupKey.at(T - timedelta(hours=hours_ago), prefix)
    if not complete:
        return BackupEntry(key, 1024, False, None, m.get("problem", "no manifest"))
    return BackupEntry(key, 1_000_000, True, manifest(key=key.key, **m))


def freshness(**changes: Any) -> FreshnessStatus:
    fields: dict[str, Any] = {
        "checked_at": T,
        "stale_after_hours": 24,
        "complete_count": 3,
        "incomplete_count": 0,
        "total_size": 3_000_000,
        "newest": entry(2),
        "oldest": entry(50),
        "last_restore_test": {"key": KEY, "passed": True, "finished_at": T.isoformat()},
    }
    fields.update(changes)
    return FreshnessStatus(**fields)


def restore_report(checks: list[Check], notes: list[str] | None = None) -> RestoreReport:
    return RestoreReport(
        key=KEY,
        database="blnk_restore_test_20240501030500_abc123",
        checks=checks,
        durations={"download": 2.5, "restore": 30.0, "checks": 4.0, "total": 36.5},
        finished_at=T,
        amcheck="ran on 42 indexes",
        notes=notes or [],
    )


def prune_report(count: int, *, applied: bool = False, reason: str = "") -> PruneReport:
    keys = [BackupKey.at(T - timedelta(hours=6 * i), "prod/") for i in range(count)]
    decided = plan(keys, RetentionPolicy(daily_days=2, weekly_days=14, monthly_days=60), T)
    report = PruneReport("s3://ledger-backups/prod/", decided, applied)
    if applied:
        report.deleted = [k.key for k in decided.to_delete]
    if reason:
        report.incomplete = {f"prod/blnk_backup_2024010{i}_000000.dump": reason for i in range(3)}
        report.errors = [reason]
    return report


def approval(**changes: Any) -> Approval:
    fields: dict[str, Any] = {
        "id": APPROVAL_ID,
        "action": "delete",
        "params": {"key": "prod/blnk_backup_20240401_030000.dump"},
        "summary": [
            "Delete backup `prod/blnk_backup_20240401_030000.dump` (1024 bytes) "
            "from s3://ledger-backups/prod/"
        ],
        "requested_by": "U012ABC",
        "requested_via": "slack",
        "reason": "disk full",
        "requested_at": T,
        "expires_at": T + timedelta(minutes=30),
        "status": "pending",
        "decided_by": None,
        "decided_at": None,
        "finished_at": None,
        "outcome": None,
        "display": {},
    }
    fields.update(changes)
    return Approval(**fields)


def event(i: int, text: str = "nightly") -> AuditEvent:
    return AuditEvent(
        id=i,
        at=T - timedelta(minutes=i),
        run_id=f"run{i}",
        action="backup",
        outcome="failed" if i % 2 else "succeeded",
        actor="U012ABC" if i % 3 else "scheduler",
        trigger="slack" if i % 3 else "schedule",
        reason=text,
        key=KEY,
        error_code="dump_failed" if i % 2 else None,
        error_cause=f"pg_dump: error: {text}\nTraceback (most recent call last):"
        if i % 2
        else None,
    )


def every_message(text: str) -> dict[str, Message]:
    """Every renderer, with ``text`` wherever a person or storage supplies text."""
    hostile_key = BackupKey(T, text[:50])
    hostile_entry = BackupEntry(
        hostile_key, 10, True, manifest(key=hostile_key.key, reason=text, actor=text)
    )
    failing = [Check(text, False, text, text), Check("rows", True, "1", "1")]
    policies = StorePolicies(
        text,
        [PolicyItem("versioning", False, text, "Enabled"), PolicyItem(text, True, text, "")],
        [text],
    )
    return {
        "backup_progress": blocks.backup_progress("dumping", text, 5, 10, text, text, 3.0),
        "backup_progress_stage": blocks.backup_progress(text, None, 0, None, "U1", None, 0.0),
        "backup_succeeded": blocks.backup_succeeded(
            manifest(reason=text, key=text, database=text, replicas=[{"key": text, "error": text}]),
            text,
            text,
        ),
        "operation_failed": blocks.operation_failed(text, text, text, text, text, text),
        "restore_progress": blocks.restore_progress(text, text, text, 1.0),
        "restore_result": blocks.restore_result(restore_report(failing, [text]), text),
        "backups_list": blocks.backups_list(
            [hostile_entry, entry(1, complete=False, problem=text)]
        ),
        "status": blocks.status(
            freshness(
                breaches=[text],
                newest=hostile_entry,
                last_restore_test={"key": text, "passed": False, "error": text},
                incomplete=[entry(3, complete=False, problem=text)],
            ),
            {text: T},
        ),
        "prune_plan": blocks.prune_plan([prune_report(20, reason=text)]),
        "prune_applied": blocks.prune_plan([prune_report(20, applied=True, reason=text)]),
        "policies": blocks.policies([policies], applied=False),
        "audit": blocks.audit([event(1, text), event(2, text)]),
        "help": blocks.help_message(),
        "usage": blocks.usage(text),
        "refusal": blocks.refusal(text),
        "already_running": blocks.already_running(text),
        "alert": blocks.alert(text, [f"*Reason:* {text}", f"*Cause:* {text}"], text),
        "approval_request": blocks.approval_request(
            approval(summary=[text, text], reason=text, requested_by=text, action=text), T
        ),
        "approval_decided": blocks.approval_decided(
            approval(
                status="failed",
                summary=[text],
                reason=text,
                decided_by=text,
                decided_at=T,
                finished_at=T,
                outcome=text,
            )
        ),
    }


def texts_of(message: Message) -> list[str]:
    return [message.text, *block_texts(message.blocks)]


def text_objects(value: Any) -> list[tuple[str, str]]:
    """(type, text) of every text object inside blocks."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        if value.get("type") in ("plain_text", "mrkdwn") and isinstance(value.get("text"), str):
            found.append((value["type"], value["text"]))
        for item in value.values():
            found += text_objects(item)
    elif isinstance(value, list):
        for item in value:
            found += text_objects(item)
    return found


MENTION = re.compile(r"<@[UW][A-Z0-9]+>")


def assert_harmless(message: Message, name: str = "") -> None:
    """No control sequence but our own user mentions, no unescaped & in mrkdwn, no line that a
    hostile newline started."""
    for kind, text in [("mrkdwn", message.text), *text_objects(message.blocks)]:
        tokens = re.findall(r"<[^>]*>?", text)
        assert all(MENTION.fullmatch(t) for t in tokens), (name, tokens, text[:200])
        assert "<!" not in text and "<http" not in text, name
        assert "\x1b" not in text and "\u202e" not in text and "\r" not in text, name
        for line in text.split("\n")[1:]:
            assert not line.startswith((FAKE_SUCCESS, "*Approved by")), (name, text[:300])
        if kind == "mrkdwn":
            assert re.search(r"&(?!amp;|lt;|gt;)", text) is None, (name, text[:200])


def assert_within_limits(message: Message) -> None:
    validate_message(message.text, message.blocks)
    assert slack_would_reject(message.blocks) is None
    assert json_size(message.blocks) <= MAX_MESSAGE_JSON


# --- exact output -------------------------------------------------------------------------------
def mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def test_a_verified_backup_reads_exactly_like_this() -> None:
    message = blocks.backup_succeeded(manifest(), "ledger-backups", "U012ABC")

    assert message.text == (
        "Backup complete and verified: s3://ledger-backups/prod/blnk_backup_20240501_030012.dump "
        "(1.2 GiB (1,288,490,189 bytes), SHA-256 "
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef)"
    )
    assert message.blocks == [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": ":white_check_mark: Backup complete and verified",
                "emoji": True,
            },
        },
        {
            "type": "section",
            "text": mrkdwn("`s3://ledger-backups/prod/blnk_backup_20240501_030012.dump`"),
        },
        {
            "type": "section",
            "fields": [
                mrkdwn("*Size*\n1.2 GiB (1,288,490,189 bytes)"),
                mrkdwn("*SHA-256*\n`" + "0123456789abcdef" * 4 + "`"),
                mrkdwn("*Duration*\n1 min 05 s"),
                mrkdwn(
                    "*Verified*\nsize and SHA-256 checked against the bucket "
                    "(`size+sha256-composite`)"
                ),
                mrkdwn("*Requested by*\n<@U012ABC>"),
                mrkdwn("*Reason*\nbefore migration 42"),
                mrkdwn("*Database*\n`blnk` (PostgreSQL 15.6)"),
                mrkdwn(
                    "*Second region*\n✓ `s3://ledger-backups-dr/prod/"
                    "blnk_backup_20240501_030012.dump` (copy)"
                ),
            ],
        },
        {
            "type": "context",
            "elements": [
                mrkdwn(
                    "Started 2024-05-01 03:00:12 UTC, finished 2024-05-01 03:01:17 UTC · "
                    "1,010 rows in 2 tables · pg_dump 15.6, compression level 1, 12 parts"
                )
            ],
        },
    ]


def confirm(title: str, text: str, yes: str, style: str) -> dict[str, Any]:
    return {
        "title": {"type": "plain_text", "text": title},
        "text": {"type": "plain_text", "text": text},
        "confirm": {"type": "plain_text", "text": yes},
        "deny": {"type": "plain_text", "text": "Cancel"},
        "style": style,
    }


def test_an_approval_request_reads_exactly_like_this() -> None:
    message = blocks.approval_request(approval(), T + timedelta(minutes=1))

    assert message.text == (
        "Approval needed: Delete a backup, asked by <@U012ABC> (expires in 29 min, at 03:30 UTC)"
    )
    assert message.blocks == [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": "Approval needed: Delete a backup",
                "emoji": True,
            },
        },
        {
            "type": "section",
            "text": mrkdwn(
                "<@U012ABC> asks for approval; this request *expires in 29 min, at 03:30 UTC*.\n"
                "*What will happen:*"
            ),
        },
        {
            "type": "section",
            "text": mrkdwn(
                "Delete backup `prod/blnk_backup_20240401_030000.dump` (1024 bytes) "
                "from s3://ledger-backups/prod/"
            ),
        },
        {
            "type": "section",
            "fields": [
                mrkdwn("*Requested by*\n<@U012ABC>"),
                mrkdwn("*Reason*\ndisk full"),
                mrkdwn("*Requested*\n2024-05-01 03:00:12 UTC"),
            ],
        },
        {
            "type": "actions",
            "block_id": f"approval:{APPROVAL_ID}",
            "elements": [
                {
                    "type": "button",
                    "action_id": "approval_approve",
                    "text": {"type": "plain_text", "text": "Approve", "emoji": False},
                    "value": APPROVAL_ID,
                    "style": "primary",
                    "confirm": confirm(
                        "Approve this request?",
                        "Delete a backup: it runs as soon as you confirm.",
                        "Approve",
                        "primary",
                    ),
                },
                {
                    "type": "button",
                    "action_id": "approval_deny",
                    "text": {"type": "plain_text", "text": "Deny", "emoji": False},
                    "value": APPROVAL_ID,
                    "style": "danger",
                    "confirm": confirm(
                        "Deny this request?",
                        "Nothing will be done and the request is closed.",
                        "Deny",
                        "danger",
                    ),
                },
            ],
        },
        {
            "type": "context",
            "elements": [
                mrkdwn(
                    "Only an approver other than the requester can decide, and only once. "
                    f"Request `{APPROVAL_ID}`."
                )
            ],
        },
    ]


def test_an_approval_request_past_its_deadline_says_it_expired() -> None:
    message = blocks.approval_request(approval(), T + timedelta(minutes=31))

    assert "expired at 03:30 UTC" in message.blocks[1]["text"]["text"]


def test_a_decided_request_has_no_buttons_and_says_who_decided_when_and_the_outcome() -> None:
    decided = approval(
        status="executed",
        decided_by="U0APPROVER",
        decided_at=T + timedelta(minutes=2),
        finished_at=T + timedelta(minutes=3),
        outcome="deleted prod/blnk_backup_20240401_030000.dump from 2 store(s)\nsecond line",
    )

    message = blocks.approval_decided(decided)

    assert all(b["type"] != "actions" for b in message.blocks)
    text = "\n".join(texts_of(message))
    assert "approved by <@U0APPROVER> at 2024-05-01 03:02:12 UTC" in text
    assert "✓ deleted prod/blnk_backup_20240401_030000.dump from 2 store(s)" in text
    assert "second line" not in text
    assert message.blocks[0]["text"]["text"].startswith(":white_check_mark: Approved and done")


@pytest.mark.parametrize(
    ("status", "words"),
    [
        ("denied", "denied by <@U0APPROVER>"),
        ("expired", "nobody decided in time"),
        ("failed", "✗ restore_failed: boom"),
        ("executing", "running now"),
    ],
)
def test_every_decision_state_is_spelled_out(status: str, words: str) -> None:
    decided = approval(
        status=status,
        decided_by=None if status == "expired" else "U0APPROVER",
        decided_at=T,
        finished_at=T,
        outcome="restore_failed: boom",
    )

    message = blocks.approval_decided(decided)

    assert words in "\n".join(texts_of(message))
    assert all(b["type"] != "actions" for b in message.blocks)


@pytest.mark.parametrize(
    ("uploaded", "expected", "shown"),
    [
        (
            400 << 20,
            1000 << 20,
            "400.0 MiB (419,430,400 bytes) so far (about 40% of the previous backup's size)",
        ),
        (3000 << 20, 1000 << 20, "(about 99% of the previous backup's size)"),
        (400 << 20, None, "400.0 MiB (419,430,400 bytes) so far"),
        (400 << 20, 0, "400.0 MiB (419,430,400 bytes) so far"),
    ],
)
def test_dumping_progress_shows_bytes_and_a_percentage_capped_below_100(
    uploaded: int, expected: int | None, shown: str
) -> None:
    message = blocks.backup_progress("dumping", KEY, uploaded, expected, "U1", "r", 12.0)

    first = message.blocks[0]["text"]["text"]
    assert shown in first
    if not expected:
        assert "%" not in first


@pytest.mark.parametrize(
    "stage", ["preflight", "dumping", "verifying", "replicating", "writing_manifest", "done"]
)
def test_every_backup_stage_has_its_own_words(stage: str) -> None:
    message = blocks.backup_progress(stage, None, 0, None, "U1", None, 0.0)

    assert "stage " not in message.blocks[0]["text"]["text"]


def test_a_failure_shows_the_first_line_of_the_cause_and_never_a_traceback() -> None:
    cause = "pg_dump: error: connection refused\nTraceback (most recent call last):\n  File x"

    message = blocks.operation_failed("Backup", "dump_failed", cause, "U1", "why", "e1d2")

    text = "\n".join(texts_of(message))
    assert "`dump_failed` pg_dump: error: connection refused" in text
    assert "Traceback" not in text and "File x" not in text
    assert "Error id `e1d2`" in text


@pytest.mark.parametrize(
    ("who", "shown"),
    [
        ("U012ABC", "<@U012ABC>"),
        ("W0ENTERPRISE", "<@W0ENTERPRISE>"),
        ("slack:U012ABC", "<@U012ABC>"),
        ("schedule:scheduler", "the scheduler"),
        ("cli:alice", "alice (CLI)"),
        ("u012abc", "u012abc"),
        ("U012ABC|everyone", "U012ABC|everyone"),
        ("<@U012ABC>", "&lt;@U012ABC&gt;"),
        ("U012ABC\n", "<@U012ABC>"),
        ("C0CHANNEL", "C0CHANNEL"),
    ],
)
def test_only_user_ids_become_mentions(who: str, shown: str) -> None:
    assert blocks.mention(who) == shown


# --- hostile text -------------------------------------------------------------------------------
@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: repr(t[:24]))
def test_hostile_text_renders_harmlessly_and_within_limits_everywhere(text: str) -> None:
    for name, message in every_message(text).items():
        assert_within_limits(message)
        assert_harmless(message, name)


def test_an_escaped_looking_reason_is_shown_literally_not_unescaped() -> None:
    message = blocks.refusal("&lt;!channel&gt;")

    assert "&amp;lt;!channel&amp;gt;" in message.blocks[0]["text"]["text"]


def test_a_10000_character_reason_is_cut_with_an_ellipsis() -> None:
    message = blocks.backup_progress("preflight", KEY, 0, None, "U1", "y" * 10_000, 1.0)

    reason = next(t for t in texts_of(message) if t.startswith("*Reason*"))
    assert reason.endswith("…") and len(reason) < 600


def test_the_home_view_is_harmless_with_hostile_text() -> None:
    for text in HOSTILE:
        view = blocks.home_view(
            freshness(breaches=[text], last_restore_test={"key": text, "passed": False}),
            [entry(1, reason=text, actor=text)],
            [approval(summary=[text], reason=text, requested_by=text)],
            {text: T},
            last_ledger_proof=text,
            error=text,
            now=T,
        )
        validate_view(view)
        assert_harmless(Message("x", view["blocks"]))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=4000))
def test_any_text_at_all_renders_within_limits_and_harmlessly(text: str) -> None:
    for message in every_message(text).values():
        assert_within_limits(message)
        assert_harmless(message)


# --- long lists ---------------------------------------------------------------------------------
def more_line(message: Message) -> str:
    return next(t for t in texts_of(message) if re.search(r"… and \d+ more", t))


def test_200_backups_are_listed_within_limits_ending_with_how_many_more() -> None:
    entries = [entry(i, reason="r" * 300) for i in range(200)]

    message = blocks.backups_list(entries)

    assert_within_limits(message)
    shown = sum(t.count("blnk_backup_") for t in block_texts(message.blocks))
    hidden = int(re.search(r"… and (\d+) more", more_line(message))[1])  # type: ignore[index]
    assert shown + hidden == 200 and shown > 10


@pytest.mark.parametrize("applied", [False, True])
def test_a_500_decision_prune_plan_fits_and_lists_deletions_first(applied: bool) -> None:
    report = prune_report(500, applied=applied)
    assert len(report.plan.decisions) == 500 and report.plan.to_delete

    message = blocks.prune_plan([report])

    assert_within_limits(message)
    lines = "\n".join(block_texts(message.blocks)).split("\n")
    first_decision = next(ln for ln in lines if "`prod/blnk_backup_" in ln)
    assert first_decision.startswith("deleted" if applied else "*delete*")
    assert "… and" in more_line(message)


def test_two_stores_with_500_decisions_each_both_appear() -> None:
    first, second = prune_report(500), prune_report(500)
    second.location = "s3://ledger-backups-dr/prod/"

    message = blocks.prune_plan([first, second])

    assert_within_limits(message)
    text = "\n".join(block_texts(message.blocks))
    assert "*s3://ledger-backups/prod/*" in text and "*s3://ledger-backups-dr/prod/*" in text


def test_100_failed_checks_fit_with_how_many_more() -> None:
    checks = [Check(f"rows in blnk.table_{i}", False, "1000" * 20, "999" * 20) for i in range(100)]

    message = blocks.restore_result(restore_report(checks, ["note " * 100] * 10), "U1")

    assert_within_limits(message)
    shown = sum(t.count("✗ *rows in") for t in block_texts(message.blocks))
    hidden = int(re.search(r"… and (\d+) more failed checks", more_line(message))[1])  # type: ignore[index]
    assert shown + hidden == 100
    assert message.blocks[0]["text"]["text"] == ":x: Restore test FAILED: 100 of 100 checks"


def test_a_long_audit_log_and_many_policy_errors_fit() -> None:
    events = [event(i, "reason " * 100) for i in range(500)]
    results = [
        StorePolicies(
            f"s3://bucket-{s}/",
            [PolicyItem(f"item {i}", False, "x" * 500, "y" * 500) for i in range(60)],
            ["error " * 100] * 30,
        )
        for s in range(3)
    ]

    for message in (blocks.audit(events), blocks.policies(results, applied=False)):
        assert_within_limits(message)
        assert "… and" in more_line(message)


def test_an_approval_with_500_summary_lines_keeps_its_buttons() -> None:
    lines = [f"• delete `prod/blnk_backup_2024{i:04d}_000000.dump`" for i in range(500)]

    message = blocks.approval_request(approval(action="prune_apply", summary=lines), T)

    assert_within_limits(message)
    assert [b["type"] for b in message.blocks].count("actions") == 1
    assert "more lines" in more_line(message)


def test_the_home_view_shows_50_pending_approvals_within_100_blocks() -> None:
    pending = [
        approval(id=f"{i:032x}", summary=["Delete backup `x`" * 100] * 20) for i in range(50)
    ]
    view = blocks.home_view(
        freshness(), [entry(i) for i in range(20)], pending, {"backup": T}, now=T
    )

    validate_view(view)
    assert slack_would_reject(view["blocks"], "view") is None
    cards = [t for t in block_texts(view["blocks"]) if "asked by <@U012ABC>" in t]
    assert len(cards) == 50


def test_the_home_view_cuts_150_pending_approvals_with_how_many_more() -> None:
    pending = [approval(id=f"{i:032x}") for i in range(150)]

    view = blocks.home_view(None, [], pending, None, error="bucket unreachable", now=T)

    validate_view(view)
    assert len(view["blocks"]) <= 100
    assert any(re.search(r"… and \d+ more pending approvals", t) for t in block_texts(view))


def test_every_renderer_passes_both_our_validator_and_the_fakes_own_checks() -> None:
    for message in every_message("before migration 42").values():
        assert_within_limits(message)
        assert message.text.strip()


# --- the validator ------------------------------------------------------------------------------
def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def button(**changes: Any) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "action_id": "a",
        "text": {"type": "plain_text", "text": "Go"},
        "value": "v",
    }
    element.update(changes)
    return element


def dialog(title: int = 5, text: int = 5, yes: int = 5, no: int = 5) -> dict[str, Any]:
    return {
        "title": {"type": "plain_text", "text": "t" * title},
        "text": {"type": "mrkdwn", "text": "x" * text},
        "confirm": {"type": "plain_text", "text": "y" * yes},
        "deny": {"type": "plain_text", "text": "n" * no},
    }


def json_sized(n: int) -> list[dict[str, Any]]:
    """Sections whose JSON is exactly n characters long (n around 12,000)."""
    fixed = [section("x" * 2200)] * 4
    filler = n - json_size([section(""), *fixed])
    return [section("x" * filler), *fixed]


# Each case builds (text, blocks) around a size n; it must pass at the limit and fail past it.
LIMITS: dict[str, tuple[int, Callable[[int], tuple[str, list[dict[str, Any]]]]]] = {
    "blocks per message": (50, lambda n: ("t", [section("x")] * n)),
    "section text": (3000, lambda n: ("t", [section("x" * n)])),
    "field text": (
        2000,
        lambda n: ("t", [{"type": "section", "fields": [{"type": "mrkdwn", "text": "x" * n}]}]),
    ),
    "fields": (
        10,
        lambda n: ("t", [{"type": "section", "fields": [{"type": "mrkdwn", "text": "x"}] * n}]),
    ),
    "header text": (
        150,
        lambda n: ("t", [{"type": "header", "text": {"type": "plain_text", "text": "x" * n}}]),
    ),
    "context elements": (
        10,
        lambda n: ("t", [{"type": "context", "elements": [{"type": "mrkdwn", "text": "x"}] * n}]),
    ),
    "button text": (
        75,
        lambda n: (
            "t",
            [
                {
                    "type": "actions",
                    "elements": [button(text={"type": "plain_text", "text": "x" * n})],
                }
            ],
        ),
    ),
    "button value": (
        2000,
        lambda n: ("t", [{"type": "actions", "elements": [button(value="v" * n)]}]),
    ),
    "action_id": (
        255,
        lambda n: ("t", [{"type": "actions", "elements": [button(action_id="a" * n)]}]),
    ),
    "block_id": (255, lambda n: ("t", [{**section("x"), "block_id": "b" * n}])),
    "confirm title": (
        100,
        lambda n: ("t", [{"type": "actions", "elements": [button(confirm=dialog(title=n))]}]),
    ),
    "confirm text": (
        300,
        lambda n: ("t", [{"type": "actions", "elements": [button(confirm=dialog(text=n))]}]),
    ),
    "confirm button": (
        30,
        lambda n: ("t", [{"type": "actions", "elements": [button(confirm=dialog(yes=n))]}]),
    ),
    "deny button": (
        30,
        lambda n: ("t", [{"type": "actions", "elements": [button(confirm=dialog(no=n))]}]),
    ),
    "message JSON": (MAX_MESSAGE_JSON, lambda n: ("t", json_sized(n))),
    "fallback text": (40_000, lambda n: ("t" * n, [section("x")])),
}


@pytest.mark.parametrize("limit", LIMITS, ids=str)
def test_each_limit_passes_at_its_value_and_fails_one_past_it(limit: str) -> None:
    value, build = LIMITS[limit]

    validate_message(*build(value))
    with pytest.raises(BlockLimitError):
        validate_message(*build(value + 1))


def test_the_json_limit_case_is_exactly_at_the_limit() -> None:
    built = json_sized(MAX_MESSAGE_JSON)

    assert json_size(built) == MAX_MESSAGE_JSON


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_a_message_without_fallback_text_is_refused(text: str) -> None:
    with pytest.raises(BlockLimitError, match="fallback"):
        validate_message(text, [section("x")])


@pytest.mark.parametrize(
    "bad",
    [
        [section("")],
        [{"type": "section"}],
        [{**section("x"), "block_id": "b"}, {**section("y"), "block_id": "b"}],
        [{"type": "actions", "elements": [button(), button()]}],
        [{"type": "header", "text": {"type": "mrkdwn", "text": "x"}}],
        [{"type": "actions", "elements": [button(style="loud")]}],
        ["not a block"],
    ],
    ids=[
        "empty text",
        "no text nor fields",
        "duplicate block_id",
        "duplicate action_id",
        "mrkdwn header",
        "unknown style",
        "not a block",
    ],
)
def test_malformed_blocks_are_refused(bad: list[Any]) -> None:
    with pytest.raises(BlockLimitError):
        validate_message("t", bad)


def test_a_view_may_have_100_blocks_but_not_101() -> None:
    validate_view({"type": "home", "blocks": [section("x")] * 100})
    with pytest.raises(BlockLimitError, match="101 blocks"):
        validate_view({"type": "home", "blocks": [section("x")] * 101})
    with pytest.raises(BlockLimitError):
        validate_view({"type": "popup", "blocks": []})


def test_an_emoji_counts_as_two_characters_like_utf16() -> None:
    validate_message("t", [section("😀" * 1500)])
    with pytest.raises(BlockLimitError):
        validate_message("t", [section("😀" * 1500 + "x")])


mrkdwn_text = st.text(alphabet=st.sampled_from(list("ab&<>\n😀é")), max_size=300).map(blocks.escape)


@settings(max_examples=300, deadline=None)
@given(mrkdwn_text, st.integers(min_value=1, max_value=320))
def test_truncation_never_cuts_an_escape_and_respects_the_limit(text: str, limit: int) -> None:
    cut = truncate_mrkdwn(text, limit)

    assert len(cut.encode("utf-16-le")) // 2 <= limit
    if cut != text:
        head = cut.removesuffix("…")
        assert text.startswith(head)
        assert re.search(r"&(?!amp;|lt;|gt;)", head) is None


def test_truncation_never_cuts_a_mention_in_half() -> None:
    cut = truncate_mrkdwn("hello <@U012ABCDEF> there", 12)

    assert cut == "hello …"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=400), max_size=120),
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=300, max_value=12_000),
)
def test_packed_lines_stay_within_blocks_and_budget_and_count_what_is_left_out(
    lines: list[str], max_blocks: int, budget: int
) -> None:
    escaped = [blocks.escape(line) for line in lines]

    packed = pack_lines(
        escaped,
        section,
        max_blocks=max_blocks,
        budget=budget,
        more_line=lambda n: f"… and {n} more",
    )

    assert len(packed) <= max_blocks and json_size(packed) <= budget
    validate_message("t", packed)
    parts = "\n".join(b["text"]["text"] for b in packed).split("\n") if packed else []
    assert bool(packed) == bool(escaped)
    more = re.fullmatch(r"… and (\d+) more", parts[-1]) if parts else None
    if more is None:
        assert parts == escaped
    else:
        shown = parts[:-1]
        assert shown == escaped[: len(shown)] and len(shown) + int(more[1]) == len(escaped)


def test_fit_keeps_everything_that_fits_and_counts_the_rest() -> None:
    items = [section(str(i)) for i in range(30)]

    assert fit(items, 30, lambda n: section(f"{n} more")) == items
    cut = fit(items, 10, lambda n: section(f"{n} more"))
    assert cut[:9] == items[:9] and cut[9] == section("21 more")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(section, st.text(min_size=1, max_size=3100)),
            st.builds(
                lambda t: {"type": "header", "text": {"type": "plain_text", "text": t}},
                st.text(min_size=1, max_size=160),
            ),
        ),
        max_size=55,
    )
)
def test_whatever_our_validator_accepts_the_fake_slack_accepts_too(built: list[Any]) -> None:
    try:
        validate_message("t", built)
    except BlockLimitError:
        return
    assert slack_would_reject(built) is None


def test_rendered_blocks_round_trip_through_json() -> None:
    for message in every_message("x").values():
        assert json.loads(json.dumps(message.blocks)) == message.blocks


def test_a_restore_result_and_the_status_say_what_was_proven_about_the_ledger() -> None:
    report = restore_report([Check("rows blnk.transactions", True, "10", "10")])
    proven = {
        "ran": True,
        "passed": True,
        "headline": "ledger proven: 40 balances, 2,000 transactions, chain to seq 1,998",
        "failed": [],
    }
    object.__setattr__(report, "ledger_proof", proven)
    assert any(
        "✓ ledger proven: 40 balances" in t for t in texts_of(blocks.restore_result(report, "U1"))
    )
    failed = proven | {"passed": False, "headline": "ledger proof FAILED: chain head"}
    object.__setattr__(report, "ledger_proof", failed)
    assert any(
        "✗ ledger proof FAILED: chain head" in t
        for t in texts_of(blocks.restore_result(report, "U1"))
    )
    state = freshness(
        last_restore_test={
            "key": "blnk_backup_20261126_030000.dump",
            "passed": True,
            "finished_at": "2026-11-26T04:00:00+00:00",
            "ledger_proof": proven,
        }
    )
    assert any("chain to seq 1,998" in t for t in texts_of(blocks.status(state)))
    not_blnk = {"ran": False, "headline": "ledger not proven: no blnk schema", "skipped": []}
    assert blocks.ledger_line(not_blnk) == "- ledger not proven: no blnk schema"
    assert blocks.ledger_line(None) == "not checked"
