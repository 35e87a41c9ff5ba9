"""Four-eyes approvals in Slack end to end (restore, delete, prune apply, bucket apply):
the request message with its buttons, clicks signed and sent over real HTTP, the decision and
the execution by the real engine, and the request message updated as it goes. The App Home
tab, which lists pending requests, is here too. The set-up is tests/test_slack_commands.py's.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.render.blocks import APPROVE_ACTION, DENY_ACTION
from bot.render.slack_limits import validate_view
from core.actor import Actor
from core.database import (
    PgTarget,
    comment_on_database,
    create_database,
    database_exists,
    drop_database,
)
from core.keys import BackupKey
from core.restore.service import INCOMPLETE_RESTORE
from tests.support.fake_slack import FakeMessage, FakeSlack, block_texts
from tests.support.slack_fixtures import SlackFactory
from tests.support.slack_requests import (
    APPROVER1,
    APPROVER2,
    CHANNEL,
    OPERATOR,
    OPERATOR2,
    STRANGER,
    Sent,
    assert_quick_ack,
    buttons,
    visible,
    wait_message,
)
from tests.support.stores import bucket_keys

SEED = Actor("seed", "cli")


def final_state(fake: FakeSlack, message: FakeMessage, prefix: str) -> FakeMessage:
    """Wait until the request message reads prefix...; check its buttons are gone; return it."""
    fake.wait_for(lambda: fake.message(CHANNEL, message.ts).text.startswith(prefix), 60)
    final = fake.message(CHANNEL, message.ts)
    assert "actions" not in {b["type"] for b in final.blocks}, "the buttons are still there"
    return final


# --- approvals ------------------------------------------------------------------------------------
def test_delete_goes_through_an_approval_by_a_different_approver_then_runs_and_says_so(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app()
    doomed, message, approval_id = app.request_delete(s3)
    shown = visible(message)
    assert doomed in shown and "Delete backup" in shown
    assert f"<@{OPERATOR}>" in shown and "expires in 30 min" in shown
    assert set(buttons(message)) == {APPROVE_ACTION, DENY_ACTION}
    assert doomed in bucket_keys(s3, bucket)  # nothing happens before approval
    click = app.click(message, approve=True, user=APPROVER1)
    assert_quick_ack(click)
    done = app.wait_status(approval_id, "executed", "failed")
    assert done.status == "executed", done.outcome
    final = final_state(fake, message, "Approved and done")
    assert f"approved by <@{APPROVER1}>" in visible(final)
    assert "deleted" in visible(final) and doomed in visible(final)
    # The request message went: request → decided (running) → outcome.
    assert [t.split(":")[0] for t, _ in final.versions] == [
        "Approval needed",
        "Approved",
        "Approved and done",
    ]
    assert doomed not in bucket_keys(s3, bucket)
    assert doomed + ".manifest.json" not in bucket_keys(s3, bucket)
    actions = [(e.action, e.outcome) for e in reversed(app.services.audit.events())]
    assert actions == [
        ("approval_requested", "recorded"),
        ("approval_decided", "approved"),
        ("delete", "started"),
        ("delete", "succeeded"),
    ]
    assert app.events("delete")[0].actor == OPERATOR  # run on behalf of the requester


def test_an_approved_delete_is_refused_if_its_backup_became_the_newest_before_it_ran(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app()
    older, newest = app.seed(s3, [1, 0.1])
    app.command("/blnk-backups", f"delete {older}")  # allowed: it is not the newest now
    message = wait_message(fake, "Approval needed")
    approval_id = buttons(message)[APPROVE_ACTION]
    shown = fake.hold("chat.update")  # the message saying it is approved; execution follows
    app.click(message, approve=True, user=APPROVER1)
    shown.wait_arrived()
    assert app.approval_status(approval_id) == "approved"
    # Between the approval and the execution the newest backup goes (by hand, say).
    s3.delete_object(Bucket=bucket, Key=newest)
    s3.delete_object(Bucket=bucket, Key=newest + ".manifest.json")
    shown.release()

    why = f"{older} is the newest complete backup: it is never deleted"
    done = app.wait_status(approval_id, "executed", "failed")
    assert (done.status, done.outcome) == ("failed", f"usage_error: {why}")
    assert {older, older + ".manifest.json"} <= set(bucket_keys(s3, bucket))
    final = final_state(fake, message, "Approved, but it failed")
    assert f"approved by <@{APPROVER1}>" in visible(final) and why in visible(final)
    assert [(e.outcome, e.error_cause) for e in app.events("delete")] == [
        ("started", None),
        ("failed", why),
    ]


def test_a_denied_request_runs_nothing_and_the_message_says_who_denied_it(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app()
    doomed, message, approval_id = app.request_delete(s3)
    app.click(message, approve=False, user=APPROVER2)
    app.wait_status(approval_id, "denied")
    final = final_state(fake, message, "Denied")
    assert f"denied by <@{APPROVER2}>" in visible(final)
    assert doomed in bucket_keys(s3, bucket)
    assert app.events("delete") == []


def test_the_requester_cannot_approve_their_own_request(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app()
    doomed, message, approval_id = app.request_delete(s3, user=APPROVER1)
    refused = app.click(message, approve=True, user=APPROVER1).wait_response()
    assert refused["response_type"] == "ephemeral" and refused["replace_original"] is False
    assert "cannot decide their own request" in visible(refused)
    assert app.approval_status(approval_id) == "pending"
    assert [e.error_cause for e in app.events("approval_refused")] == [
        "the requester cannot decide their own request"
    ]
    assert doomed in bucket_keys(s3, bucket)
    assert fake.message(CHANNEL, message.ts).updates == 0  # the buttons stay for the others
    # Another approver can.
    app.click(message, approve=True, user=APPROVER2)
    assert app.wait_status(approval_id, "executed", "failed").status == "executed"


def test_an_operator_who_is_not_an_approver_cannot_approve(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app()
    doomed, message, approval_id = app.request_delete(s3)
    refused = app.click(message, approve=True, user=OPERATOR2).wait_response()
    assert "Not done" in refused["text"] and "SLACK_APPROVERS" in refused["text"]
    stranger = app.click(message, approve=False, user=STRANGER).wait_response()
    assert "SLACK_APPROVERS" in stranger["text"]
    assert app.approval_status(approval_id) == "pending"
    assert [(e.actor, e.details_dict()["attempted"]) for e in app.events("unauthorized")] == [
        (OPERATOR2, "approve"),
        (STRANGER, "deny"),
    ]
    assert doomed in bucket_keys(s3, bucket)


@pytest.mark.parametrize("who", ["the same approver twice", "two approvers"])
def test_simultaneous_clicks_execute_the_request_once(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str, who: str
) -> None:
    app = start_app()
    doomed, message, approval_id = app.request_delete(s3)
    users = [APPROVER1, APPROVER1] if who == "the same approver twice" else [APPROVER1, APPROVER2]
    users *= 2  # each of them clicking twice
    barrier = threading.Barrier(len(users))
    clicks: list[Sent] = []

    def press(user: str) -> None:
        barrier.wait()
        clicks.append(app.click(message, approve=True, user=user))

    threads = [threading.Thread(target=press, args=(u,)) for u in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(c.reply.status == 200 for c in clicks)
    assert app.wait_status(approval_id, "executed", "failed").status == "executed"
    fake.wait_for(lambda: sum(len(c.responses()) for c in clicks) == len(users) - 1)
    answers = [visible(r) for c in clicks for r in c.responses()]
    assert all("already approved by" in a for a in answers), answers
    assert [e.outcome for e in app.events("delete")] == ["started", "succeeded"]
    assert len(app.events("approval_decided")) == 1
    assert doomed not in bucket_keys(s3, bucket)


def test_an_expired_request_is_refused_and_runs_nothing(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app(approval_ttl_minutes=5)
    doomed, message, approval_id = app.request_delete(s3)
    assert "expires in 5 min" in visible(message)
    book = app.services.approvals
    later = datetime.now(UTC) + timedelta(minutes=5, seconds=1)
    book.clock = lambda: later  # five minutes and a second later
    refused = app.click(message, approve=True, user=APPROVER1).wait_response()
    assert "expired" in visible(refused)
    assert app.approval_status(approval_id) == "expired"
    assert [e.action for e in app.services.audit.events(limit=3)][:2] == [
        "approval_refused",
        "approval_expired",
    ]
    assert app.events("delete") == []
    assert doomed in bucket_keys(s3, bucket)
    # The request message no longer offers buttons nobody can use.
    final_state(fake, message, "Expired")


def test_a_click_just_before_expiry_still_counts(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app(approval_ttl_minutes=5)
    doomed, message, approval_id = app.request_delete(s3)
    later = datetime.now(UTC) + timedelta(minutes=4, seconds=50)
    app.services.approvals.clock = lambda: later
    app.click(message, approve=True, user=APPROVER1)
    assert app.wait_status(approval_id, "executed", "failed").status == "executed"
    assert doomed not in bucket_keys(s3, bucket)


def test_a_pending_request_survives_a_restart_of_the_app(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    before = start_app()
    doomed, message, approval_id = before.request_delete(s3)
    before.stop()
    # A new process: new services, a new Bolt app, the same audit database.
    after = start_app(settings=before.settings)
    after.click(message, approve=True, user=APPROVER2)
    assert after.wait_status(approval_id, "executed", "failed").status == "executed"
    final = final_state(fake, message, "Approved and done")
    assert doomed not in bucket_keys(s3, bucket)
    assert f"approved by <@{APPROVER2}>" in visible(final)


def test_prune_apply_deletes_exactly_what_the_approved_plan_showed(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app()
    keys = app.seed(s3, [0.1, 1, 2, 3, 100.1, 100.2, 100.3])
    plan = app.services.pruner.prune(SEED, apply=False)[0].plan
    doomed = sorted(k.key for k in plan.to_delete)
    assert doomed  # the oldest day holds three backups; retention keeps one of them
    app.command("/blnk-backups", "prune apply")
    message = wait_message(fake, "Approval needed")
    assert all(k in visible(message) for k in doomed)
    assert set(bucket_keys(s3, bucket)) >= set(keys)
    approval_id = buttons(message)[APPROVE_ACTION]
    app.click(message, approve=True, user=APPROVER2)
    done = app.wait_status(approval_id, "executed", "failed")
    assert done.status == "executed", done.outcome
    left = bucket_keys(s3, bucket)
    assert [k for k in keys if k not in left] == [k for k in keys if k in doomed]
    final = final_state(fake, message, "Approved and done")
    assert f"approved by <@{APPROVER2}>" in visible(final)
    assert f"deleted {len(doomed)} backup(s)" in visible(final)


def test_an_approved_prune_deletes_only_the_backups_its_request_showed(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app()
    keys = app.seed(s3, [0.1, 1, 2, 3, 100.1, 100.2, 100.3])
    app.command("/blnk-backups", "prune apply")
    message = wait_message(fake, "Approval needed")
    shown = sorted(k.key for k in app.services.pruner.prune(SEED, apply=False)[0].plan.to_delete)
    # After the request, more backups become ones the retention plan would delete.
    later = app.seed(s3, [400.1, 400.2])
    assert set(later) <= {
        k.key for k in app.services.pruner.prune(SEED, apply=False)[0].plan.to_delete
    }
    approval_id = buttons(message)[APPROVE_ACTION]
    app.click(message, approve=True, user=APPROVER1)
    done = app.wait_status(approval_id, "executed", "failed")
    assert done.status == "executed", done.outcome
    left = bucket_keys(s3, bucket)
    assert sorted(k for k in keys + later if k not in left) == shown  # exactly the card's
    assert all(k in left and k + ".manifest.json" in left for k in later)


def test_an_approved_prune_deletes_nothing_once_a_planned_backup_must_be_kept(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app(retention_min_keep=2, stale_after_hours=24 * 400)
    keys = app.seed(s3, [0.1, 1, 2, 3, 100.1, 100.2, 100.3])
    app.command("/blnk-backups", "prune apply")
    message = wait_message(fake, "Approval needed")
    approval_id = buttons(message)[APPROVE_ACTION]
    # Before the approval, the newer backups go: the approved ones are now the newest two.
    for key in keys[:4]:
        s3.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": key}, {"Key": key + ".manifest.json"}]}
        )
    before = bucket_keys(s3, bucket)
    app.click(message, approve=True, user=APPROVER1)
    done = app.wait_status(approval_id, "executed", "failed")
    assert done.status == "failed"
    assert "nothing was deleted" in (done.outcome or "")
    assert "RETENTION_MIN_KEEP" in (done.outcome or "")
    assert bucket_keys(s3, bucket) == before
    final = final_state(fake, message, "Approved, but it failed")
    assert "plan_changed" in visible(final)
    [run] = [e for e in app.events("prune") if e.outcome == "failed"]
    assert run.error_code == "plan_changed"


def test_an_approved_bucket_apply_changes_nothing_once_the_bucket_changed(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app()
    app.command("/blnk-backups", "bucket apply")
    message = wait_message(fake, "Approval needed")
    approval_id = buttons(message)[APPROVE_ACTION]
    # Someone turns versioning on by hand before the approval.
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    app.click(message, approve=True, user=APPROVER1)
    done = app.wait_status(approval_id, "executed", "failed")
    assert done.status == "failed"
    assert "versioning is now Enabled" in (done.outcome or "")
    assert "nothing was changed" in (done.outcome or "")
    items = {i.name: i for i in app.services.bucket_policies.check()[0].items}
    assert not items["public access block"].ok and not items["default encryption"].ok


def test_bucket_apply_goes_through_an_approval_and_fixes_the_bucket(
    start_app: SlackFactory, fake: FakeSlack
) -> None:
    app = start_app()
    assert not all(r.ok for r in app.services.bucket_policies.check())
    app.command("/blnk-backups", "bucket apply")
    message = wait_message(fake, "Approval needed")
    assert "versioning" in visible(message)
    approval_id = buttons(message)[APPROVE_ACTION]
    app.click(message, approve=True, user=APPROVER1)
    done = app.wait_status(approval_id, "executed", "failed")
    assert done.status == "executed", done.outcome
    after = app.services.bucket_policies.check()
    assert all(i.ok or i.unsupported for r in after for i in r.items)
    final = final_state(fake, message, "Approved and done")
    assert f"approved by <@{APPROVER1}>" in visible(final)
    assert "bucket policies applied" in visible(final)


def test_restore_into_a_new_database_goes_through_an_approval_and_creates_it(
    start_app: SlackFactory, fake: FakeSlack, pg_server: PgTarget
) -> None:
    app = start_app()
    key = app.services.backups.run(SEED).manifest.key
    into = f"blnk_restored_{uuid.uuid4().hex[:10]}"
    try:
        app.command("/blnk-restore", f"{key} into {into}")
        message = wait_message(fake, "Approval needed")
        assert key in visible(message) and into in visible(message)
        assert not database_exists(pg_server, into)
        approval_id = buttons(message)[APPROVE_ACTION]
        app.click(message, approve=True, user=APPROVER1)
        done = app.wait_status(approval_id, "executed", "failed", timeout=120)
        assert done.status == "executed", done.outcome
        assert database_exists(pg_server, into)
        final = visible(final_state(fake, message, "Approved and done"))
        assert f"approved by <@{APPROVER1}>" in final
        assert f"restored {key} into {into!r}: all checks passed" in final
        assert [e.outcome for e in app.events("restore")] == ["started", "succeeded"]
    finally:
        if database_exists(pg_server, into):
            drop_database(pg_server, into)


@pytest.mark.parametrize(
    ("typed", "into", "reason"),
    [
        ('"weird name" Grace\'s test', "weird name", "Grace's test"),
        # What some Slack clients send when a person types the same quotes.
        ("\u201cweird name\u201d Grace\u2019s test", "weird name", "Grace\u2019s test"),
        ('\u2018it"s\u2019 why', 'it"s', "why"),
        # Alone, U+2019 is an apostrophe (what smart punctuation makes of '), not a quote.
        ("grace\u2019s_db Bob\u2019s audit", "grace\u2019s_db", "Bob\u2019s audit"),
        ("'a b'\"c d\"", "a bc d", None),  # as a shell joins them
        ('"Z\u00fcrich donn\u00e9es"  two  spaces', "Z\u00fcrich donn\u00e9es", "two spaces"),
    ],
)
def test_a_restore_request_reads_the_name_like_a_shell_word_and_the_reason_as_typed(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, typed: str, into: str, reason: str | None
) -> None:
    app = start_app()
    [key] = app.seed(s3, [0.5])
    app.command("/blnk-restore", f"latest into {typed}")
    message = wait_message(fake, "Approval needed")
    [pending] = app.services.approvals.pending()
    [backup] = app.services.catalog.list()
    assert backup.manifest is not None
    # `latest`, pinned to the newest backup, and to its content
    assert pending.params == {"key": key, "into": into, "sha256": backup.manifest.sha256}
    assert pending.reason == reason
    assert into in visible(message)


def test_restore_into_a_quoted_name_with_spaces_creates_exactly_that_database(
    start_app: SlackFactory, fake: FakeSlack, pg_server: PgTarget
) -> None:
    app = start_app()
    key = app.services.backups.run(SEED).manifest.key
    into = f"blnk restored {uuid.uuid4().hex[:8]} \u00e9t\u00e9"
    try:
        app.command("/blnk-restore", f"latest into \u201c{into}\u201d Grace's test")
        message = wait_message(fake, "Approval needed")
        approval_id = buttons(message)[APPROVE_ACTION]
        app.click(message, approve=True, user=APPROVER1)
        done = app.wait_status(approval_id, "executed", "failed", timeout=120)
        assert done.status == "executed", done.outcome
        assert database_exists(pg_server, into)
        assert f"restored {key} into {into!r}: all checks passed" in visible(
            final_state(fake, message, "Approved and done")
        )
        [requested] = app.events("approval_requested")
        assert requested.reason == "Grace's test"
        [restored] = [e for e in app.events("restore") if e.outcome == "succeeded"]
        assert restored.reason == "Grace's test"  # the approved run carries the reason too
    finally:
        drop_database(pg_server, into)


def test_a_database_a_killed_restore_left_half_restored_does_not_block_a_request(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, pg_server: PgTarget
) -> None:
    # The restore itself drops such a leftover before it creates the database again, so the
    # check made before the approval must not call the name taken.
    app = start_app()
    app.seed(s3, [0.5])
    into = f"blnk_half_{uuid.uuid4().hex[:8]}"
    create_database(pg_server, into)
    try:
        killed = app.services.audit.record(  # a restore of this bot, killed outright
            action="restore",
            outcome="started",
            actor=Actor(OPERATOR, "slack"),
            details={"into": into, "server": app.services.target.display},
        )
        comment_on_database(pg_server, into, f"{INCOMPLETE_RESTORE}{killed.run_id}")
        app.command("/blnk-restore", f"latest into {into}")
        wait_message(fake, "Approval needed")
        assert [a.params["into"] for a in app.services.approvals.pending()] == [into]
    finally:
        drop_database(pg_server, into)


# --- App Home ------------------------------------------------------------------------------------
def test_opening_the_app_home_publishes_backups_and_pending_approvals(
    start_app: SlackFactory, fake: FakeSlack, s3: Any
) -> None:
    app = start_app()
    doomed, _message, _approval_id = app.request_delete(s3)
    reply = app.slack.event({"type": "app_home_opened", "user": APPROVER1, "tab": "home"})
    assert reply.status == 200 and reply.seconds < 1.0
    fake.wait_for(lambda: bool(fake.views(APPROVER1)))
    [view] = fake.views(APPROVER1)
    validate_view(view)
    shown = "\n".join(block_texts(view))
    assert doomed in shown
    assert "Pending approvals (1)" in shown
    assert "Delete a backup" in shown
    # The messages tab is not the Home tab: nothing to publish.
    app.slack.event({"type": "app_home_opened", "user": APPROVER2, "tab": "messages"})
    time.sleep(0.3)
    assert fake.views(APPROVER2) == []


def test_housekeeping_expires_an_overdue_request_and_takes_its_buttons_away(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app(approval_ttl_minutes=5)
    doomed, message, approval_id = app.request_delete(s3)
    app.bot.housekeeping()  # not yet due: nothing changes
    assert app.approval_status(approval_id) == "pending"
    assert set(buttons(fake.message(CHANNEL, message.ts))) == {APPROVE_ACTION, DENY_ACTION}
    later = datetime.now(UTC) + timedelta(minutes=5, seconds=1)
    app.services.approvals.clock = lambda: later
    app.bot.housekeeping()  # nobody clicked: the service's half-minute round expires it
    assert app.approval_status(approval_id) == "expired"
    final = final_state(fake, message, "Expired")
    assert "nobody decided in time" in visible(final) and doomed in visible(final)
    assert [e.outcome for e in app.events("approval_expired")] == ["recorded"]
    app.bot.housekeeping()  # once only
    assert len(app.events("approval_expired")) == 1
    assert doomed in bucket_keys(s3, bucket)


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("delete {oldest} duplicate of last night's", "delete"),
        ("prune apply quarterly clean-up", "prune_apply"),
        ("delete \u201c{oldest}\u201d duplicate of last night\u2019s", "delete"),  # quoted key
    ],
)
def test_a_risky_request_may_say_why_and_the_approver_sees_it(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str, text: str, action: str
) -> None:
    app = start_app()
    keys = app.seed(s3, [0.1, 1, 2, 3, 100.1, 100.2, 100.3])  # prune has something to delete
    command = text.format(oldest=keys[-1])
    reason = command.split(" ", 2)[-1]
    app.command("/blnk-backups", command)
    message = wait_message(fake, "Approval needed", timeout=20)
    assert reason in visible(message)
    [requested] = app.events("approval_requested")
    assert requested.reason == reason and requested.details_dict()["request"] == action
    assert set(keys) <= set(bucket_keys(s3, bucket))  # nothing happens before approval


def test_a_reason_with_control_characters_is_refused_and_nothing_is_requested(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app()
    keys = app.seed(s3, [2, 1, 0.1])
    sent = app.command("/blnk-backups", f"delete {keys[0]} fine\x1b[2Jforged")
    reply = sent.reply.json()  # refused in the acknowledgement, before any work is queued
    assert "control characters" in visible(reply) and "Nothing was changed" in visible(reply)
    assert app.services.approvals.pending() == []
    assert app.events("approval_requested") == []


def test_a_prune_too_big_for_one_request_is_approved_in_turns_every_key_shown(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    from core.prune import MAX_APPROVED_DELETIONS

    app = start_app()
    old = app.seed(s3, [400 + i / 100 for i in range(MAX_APPROVED_DELETIONS + 30)])
    app.seed(s3, [0.1, 1, 2])
    app.command("/blnk-backups", "prune apply")
    message = wait_message(fake, "Approval needed")
    shown = visible(message)
    assert "more lines" not in shown
    assert f"delete {MAX_APPROVED_DELETIONS:,} of the {len(old):,}" in shown
    approval = app.services.approvals.get(buttons(message)[APPROVE_ACTION])
    assert approval is not None
    [approved] = approval.params["stores"].values()
    assert len(approved["delete"]) == MAX_APPROVED_DELETIONS
    assert all(key in shown for key in approved["delete"])  # every key it deletes is on it
    assert approved["delete"] == sorted(old)[:MAX_APPROVED_DELETIONS]  # the oldest first


def test_a_restore_runs_only_the_content_that_was_approved(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str, pg_server: PgTarget
) -> None:
    from tests.support.manifests import make_manifest

    app = start_app()
    [key] = app.seed(s3, [0.5])
    into = f"blnk_pinned_{uuid.uuid4().hex[:8]}"
    app.command("/blnk-restore", f"{key} into {into}")
    message = wait_message(fake, "Approval needed")
    approval = app.services.approvals.get(buttons(message)[APPROVE_ACTION])
    assert approval is not None and approval.params["sha256"] in visible(message)
    # Someone with write access to the bucket swaps the dump and its manifest, consistently.
    swapped = b"PGDMP... another database altogether"
    parsed = BackupKey.parse_or_raise(key, "")
    s3.put_object(Bucket=bucket, Key=key, Body=swapped)
    s3.put_object(
        Bucket=bucket, Key=parsed.manifest_key, Body=make_manifest(parsed, body=swapped).to_json()
    )
    app.click(message, approve=True, user=APPROVER1)
    done = app.wait_status(approval.id, "executed", "failed")
    assert done.status == "failed" and "plan_changed" in (done.outcome or "")
    assert not database_exists(pg_server, into)
