"""The Slack app's commands end to end: signed requests over real HTTP (waitress,
/slack/events) into the Bolt app, the real engine behind it (PostgreSQL, the S3 server process)
and a fake Slack Web API on loopback that records every call. Each test checks what a person
would see in Slack. Approvals: tests/test_slack_approvals.py.

After every test, everything the bot sent — chat.postMessage, chat.update, chat.postEphemeral,
response URLs, views.publish — is checked against our own Block Kit validator and searched for
secrets (the AWS secret key, the signing secret, database passwords).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.render.blocks import refusal
from bot.render.slack_limits import validate_message
from core.actor import Actor
from core.database import PgTarget, database_exists
from core.restore.service import SCRATCH_PREFIX
from tests.support.fake_slack import FakeSlack, block_texts
from tests.support.faultproxy import FaultProxy
from tests.support.slack_fixtures import SlackFactory
from tests.support.slack_requests import (
    ALERTS,
    CHANNEL,
    GROUP,
    GROUP_MEMBER,
    OPERATOR,
    OPERATOR2,
    STRANGER,
    Harness,
    SlackSender,
    assert_quick_ack,
    channel_messages,
    everything_shown,
    visible,
    wait_message,
)
from tests.support.stores import SECRET_KEY, bucket_keys

SEED = Actor("seed", "cli")


# --- /blnk-backup ---------------------------------------------------------------------------------
def test_a_backup_updates_one_channel_message_then_reports_key_size_sha_who_and_why(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app(progress_interval=0)
    sent = app.command("/blnk-backup", "before migration 42")
    assert_quick_ack(sent)
    assert sent.reply.json() == {}  # a bare acknowledgement: the channel message follows
    done = wait_message(fake, "Backup complete")
    [run] = [e for e in app.events("backup") if e.outcome == "succeeded"]
    assert (run.actor, run.trigger, run.reason) == (OPERATOR, "slack", "before migration 42")
    assert run.key is not None and run.sha256 is not None and run.size is not None
    assert run.key in bucket_keys(s3, bucket)
    assert run.key + ".manifest.json" in bucket_keys(s3, bucket)
    # One channel message, posted once and updated in place through every stage.
    [posted] = fake.calls("chat.postMessage")
    assert posted.params["channel"] == CHANNEL
    assert fake.messages(CHANNEL) == [done]
    assert {c.params["ts"] for c in fake.calls("chat.update")} == {done.ts}
    stages = [text for text, _blocks in done.versions]
    assert stages[0].startswith("Backup running: checking the database")
    assert len(stages) >= 3  # the first state, at least one later one, the result
    order = ["checking", "dumping", "verifying", "writing the manifest", "finished"]
    seen = [_stage_index(order, s) for s in stages[:-1]]
    assert seen == sorted(seen)  # states coalesce, but never go back
    # The final state: key, size, SHA-256 prefix, who asked and why.
    shown = visible(done)
    assert run.key in shown
    assert f"{run.size:,} bytes" in shown
    assert run.sha256[:16] in shown
    assert f"<@{OPERATOR}>" in shown
    assert "before migration 42" in shown
    assert "actions" not in {b["type"] for b in done.blocks}
    assert sent.responses() == []  # nothing ephemeral: the channel message says it all


def _stage_index(order: list[str], text: str) -> int:
    return next(i for i, word in enumerate(order) if text.startswith(f"Backup running: {word}"))


def test_progress_updates_are_throttled_per_message_but_the_final_one_always_goes_out(
    start_app: SlackFactory, fake: FakeSlack
) -> None:
    app = start_app(progress_interval=30)
    app.command("/blnk-backup", "throttled")
    done = wait_message(fake, "Backup complete")
    # The first state is posted, every later progress state falls within 30 s of it: only
    # the final state is sent as an update.
    [(first, _), (last, _)] = done.versions
    assert first.startswith("Backup running") and last.startswith("Backup complete")
    assert len(fake.calls("chat.update")) == 1


def test_a_second_backup_while_one_runs_is_told_who_started_the_running_one(
    start_app: SlackFactory, fake: FakeSlack
) -> None:
    app = start_app()
    release = threading.Event()
    entered = threading.Event()
    original = app.services.store.check_bucket

    def slow_check_bucket() -> None:  # the first backup holds the lock until released
        entered.set()
        release.wait(30)
        original()

    app.services.store.check_bucket = slow_check_bucket  # type: ignore[method-assign]
    try:
        app.command("/blnk-backup", "first")
        assert entered.wait(30)
        second = app.command("/blnk-backup", "second", user=OPERATOR2)
        assert_quick_ack(second)
        reply = second.wait_response()
        assert reply["response_type"] == "ephemeral"
        assert "already running" in visible(reply)
        assert f"<@{OPERATOR}>" in visible(reply)
        # Acknowledgements stay quick while the backup runs.
        for _ in range(10):
            assert_quick_ack(app.command("/blnk-backups", "help"))
    finally:
        release.set()
    wait_message(fake, "Backup complete")
    assert [e.reason for e in app.events("backup") if e.outcome == "succeeded"] == ["first"]
    assert len(channel_messages(fake, "Backup")) == 1


def test_a_failing_backup_ends_its_message_as_a_failure_and_alerts_the_alert_channel(
    start_app: SlackFactory, fake: FakeSlack
) -> None:
    app = start_app(database="blnk_there_is_no_such_database")
    app.command("/blnk-backup", "doomed")
    failed = wait_message(fake, "Backup failed")
    assert "preflight_failed" in visible(failed)
    assert "Traceback" not in visible(failed)
    alert = wait_message(fake, "Backup failed", channel=ALERTS)
    shown = visible(alert)
    assert "preflight_failed" in shown and "doomed" in shown
    [run] = [e for e in app.events("backup") if e.outcome == "failed"]
    assert run.error_code == "preflight_failed"


# --- acknowledgement and signatures ---------------------------------------------------------------
def test_commands_are_acknowledged_before_any_web_api_call_even_when_slack_is_slow(
    start_app: SlackFactory, fake: FakeSlack
) -> None:
    # Every Web API call takes 2 s: an acknowledgement that waited for one (auth.test on the
    # first request, a user-group lookup, a post) would take that long.
    fake.delay("*", 2.0)
    app = start_app()
    first = app.command("/blnk-backups", "help", user=GROUP_MEMBER)  # the app's first request
    assert_quick_ack(first, limit=1.0)
    first.wait_response()
    fake.clear_faults()


def test_acknowledgements_stay_quick_while_a_backup_runs(
    start_app: SlackFactory, fake: FakeSlack
) -> None:
    app = start_app(progress_interval=0)
    app.command("/blnk-backup", "busy")
    fake.wait_for(lambda: bool(fake.messages(CHANNEL)))  # it has started
    during = []
    while not channel_messages(fake, "Backup complete"):
        during.append(app.command("/blnk-backups", "help"))
        assert len(during) < 500, "the backup did not finish"
    assert during, "no command was sent while the backup ran"
    for sent in during:
        assert_quick_ack(sent)
    fake.wait_for(lambda: all(s.responses() for s in during))


def test_an_operation_that_crashes_tells_the_person_an_error_id_and_no_traceback(
    start_app: SlackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = start_app()

    def broken(limit: int = 20, include_incomplete: bool = False) -> Any:
        raise RuntimeError("an unexpected bug, with internals")

    app.services.catalog.list = broken  # type: ignore[method-assign]
    reply = app.command("/blnk-backups", "list").wait_response()
    assert reply["response_type"] == "ephemeral"
    shown = visible(reply)
    assert "something went wrong" in shown and "Error id" in shown
    assert "internals" not in shown and "Traceback" not in shown
    error_id = shown.split("Error id `")[1].split("`")[0]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the log has the traceback


def test_a_command_the_app_does_not_handle_is_refused_and_runs_nothing(
    start_app: SlackFactory, fake: FakeSlack
) -> None:
    app = start_app()
    sent = app.command("/blnk-unknown", "list")
    assert sent.reply.status == 404
    assert app.services.audit.events() == [] and fake.calls() == []


@pytest.mark.parametrize(
    "tamper",
    ["bad signature", "wrong secret", "stale timestamp", "future timestamp", "no headers"],
)
def test_unsigned_badly_signed_or_stale_requests_are_rejected_with_401_and_run_nothing(
    start_app: SlackFactory, fake: FakeSlack, tamper: str
) -> None:
    app = start_app()
    body = app.slack.command_body(
        "/blnk-backup",
        "should never run",
        user_id=OPERATOR,
        channel_id=CHANNEL,
        response_url=fake.response_url("tampered"),
    )
    form = "application/x-www-form-urlencoded"
    if tamper == "bad signature":
        headers = app.slack.headers(body)
        headers["X-Slack-Signature"] = headers["X-Slack-Signature"][:-4] + "0000"
        reply = app.slack.post(body, form, headers=headers)
    elif tamper == "wrong secret":
        reply = SlackSender(app.slack.url, "not-the-secret").post(body, form)
    elif tamper == "stale timestamp":
        reply = app.slack.post(body, form, timestamp=int(time.time()) - 5 * 60 - 30)
    elif tamper == "future timestamp":
        reply = app.slack.post(body, form, timestamp=int(time.time()) + 5 * 60 + 30)
    else:
        reply = app.slack.post(body, form, signed=False)
    assert reply.status == 401
    # A properly signed request on the same app works: the 401 was about the signature.
    assert app.command("/blnk-backups", "help").wait_response()
    assert app.services.audit.events() == []
    assert fake.responses("tampered") == []
    assert fake.calls("chat.postMessage") == []


# --- reading commands -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("list", "backups, the newest"),
        ("status", "Backup status"),
        ("prune", "Retention plan (dry run)"),
        ("audit", "audit events"),
        ("help", "Blnk backup commands"),
        ("", "Blnk backup commands"),
        ("bucket check", "Bucket policies"),
    ],
)
def test_reading_commands_answer_privately_through_the_response_url(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str, text: str, expect: str
) -> None:
    app = start_app()
    keys = app.seed(s3, [0.1, 1, 2, 40, 41])
    app.services.audit.record(
        action="backup", outcome="succeeded", actor=SEED, key=keys[0], reason="seeded"
    )
    sent = app.command("/blnk-backups", text)
    assert_quick_ack(sent)
    reply = sent.wait_response()
    assert reply["response_type"] == "ephemeral"
    assert expect in reply["text"]
    if text == "list":
        assert all(k in visible(reply) for k in keys)
    if text == "prune":
        assert "Dry run: nothing was deleted" in visible(reply)
    if text == "audit":
        assert "seeded" in visible(reply)
    assert sorted(bucket_keys(s3, bucket)) == sorted(
        [k for key in keys for k in (key, key + ".manifest.json")]
    )
    assert fake.calls("chat.postMessage") == []  # nothing public
    assert len(sent.responses()) == 1


def test_a_restore_test_shows_its_progress_then_the_result(
    start_app: SlackFactory, fake: FakeSlack
) -> None:
    app = start_app(progress_interval=0)
    key = app.services.backups.run(SEED).manifest.key
    sent = app.command("/blnk-restore-test", "latest")
    assert_quick_ack(sent)
    done = wait_message(fake, "Restore test of", timeout=120)
    assert "passed" in done.text and key in done.text
    stages = [t for t, _ in done.versions]
    assert stages[0].startswith("Restore test running: downloading")
    assert len(stages) >= 3  # the first state, at least one later one, the result
    order = ["downloading", "restoring", "comparing"]
    seen = [next(i for i, w in enumerate(order) if w in s) for s in stages[:-1]]
    assert seen == sorted(seen) and seen[-1] > 0
    assert f"<@{OPERATOR}>" in visible(done)
    [run] = [e for e in app.events("restore_test") if e.outcome == "succeeded"]
    assert run.key == key and run.actor == OPERATOR


def test_a_long_phase_keeps_its_elapsed_time_counting_with_no_new_event(
    start_app: SlackFactory, fake: FakeSlack, proxy: FaultProxy
) -> None:
    app = start_app(progress_interval=0.2, s3_endpoint_url=proxy.endpoint)
    key = app.services.backups.run(SEED).manifest.key
    slow_download = f"GET /{app.settings.s3_bucket}/{key}"
    proxy.faults.delay = lambda r: 3.5 if f"{r.method} {r.path}" == slow_download else 0.0
    app.command("/blnk-restore-test", "latest")
    done = wait_message(fake, "Restore test of", timeout=120)
    downloading = [
        blocks for text, blocks in done.versions if text.startswith("Restore test running: down")
    ]
    elapsed = {t for b in downloading for t in block_texts(b) if t.startswith("*Elapsed*")}
    assert len(elapsed) >= 3, elapsed  # redrawn about every second while nothing else happens


def test_a_backup_that_breaks_on_something_unexpected_ends_its_message_as_failed(
    start_app: SlackFactory, fake: FakeSlack, proxy: FaultProxy
) -> None:
    # Not a EngineError: the audit log's table is gone when the run's end is recorded.
    proxy.faults.delay = lambda r: 1.5 if "partNumber=" in r.path else 0.0
    app = start_app(s3_endpoint_url=proxy.endpoint)
    app.command("/blnk-backup", "the last one")
    wait_message(fake, "Backup running", timeout=60)
    with sqlite3.connect(app.settings.audit_database_url.removeprefix("sqlite:///")) as db:
        db.execute("DROP TABLE audit_events")
    proxy.faults.delay = lambda _r: 0.0
    message = wait_message(fake, "Backup failed", timeout=60)
    assert "internal_error" in message.visible_text() and "Error id" in message.visible_text()
    calls = len(fake.calls("chat.update"))
    time.sleep(2.5)  # nothing keeps redrawing a message that has ended
    assert len(fake.calls("chat.update")) == calls


# --- bad arguments --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("command", "text"),
    [
        ("/blnk-backups", "frobnicate"),
        ("/blnk-backups", "delete"),
        ("/blnk-backups", "bucket frobnicate"),
        ("/blnk-restore", "latest blnk_new"),
        ("/blnk-restore", "latest into"),
        ("/blnk-restore-test", "one two"),
        # A quote never closed: refused, never a database named `"weird`.
        ("/blnk-restore", 'latest into "weird name'),
        ("/blnk-restore", "latest into \u201cweird name"),  # a typographic quote
        ("/blnk-restore", "latest into \u2018weird name"),
        ("/blnk-backups", 'delete "blnk_backup_20200101_000000.dump why'),
    ],
)
def test_bad_arguments_get_the_usage_in_the_acknowledgement_and_change_nothing(
    start_app: SlackFactory, fake: FakeSlack, command: str, text: str
) -> None:
    app = start_app()
    sent = app.command(command, text)
    assert_quick_ack(sent)
    body = sent.reply.json()
    validate_message(body["text"], body["blocks"])
    assert "Nothing was changed" in visible(body)
    assert command in visible(body)  # the usage names the command
    time.sleep(0.3)  # nothing was handed to a job: there is nothing to wait for
    assert app.services.audit.events() == []
    assert app.services.approvals.pending() == []
    assert fake.calls() == []


def _refused_changing_nothing(app: Any, fake: FakeSlack, sent: Any, why: str) -> None:
    """Acknowledged at once, refused privately with ``why``, and nothing asked or posted."""
    assert_quick_ack(sent)
    reply = sent.wait_response()
    assert reply["response_type"] == "ephemeral"
    assert why in visible(reply) and "Nothing was changed" in visible(reply)
    assert app.services.approvals.pending() == []
    assert not [e for e in app.services.audit.events() if e.action.startswith("approval")]
    assert fake.messages() == []


@pytest.mark.parametrize(
    ("command", "text", "why"),
    [
        ("/blnk-backups", "delete blnk_backup_20200101_000000.dump", "does not exist"),
        ("/blnk-backups", "delete not-a-backup.txt", "not-a-backup.txt"),
        ("/blnk-restore", "blnk_backup_20200101_000000.dump into blnk_new", "does not exist"),
        ("/blnk-backups", "prune apply", "deletes nothing"),
        # `latest`, as the usage suggests, with no backup at all: said plainly.
        ("/blnk-restore", "latest into blnk_new", "there is no complete backup to restore yet"),
        ("/blnk-restore", "Latest into blnk_new", "there is no complete backup to restore yet"),
    ],
)
def test_arguments_that_name_nothing_real_get_the_usage_and_request_no_approval(
    start_app: SlackFactory, fake: FakeSlack, command: str, text: str, why: str
) -> None:
    app = start_app()
    sent = app.command(command, text)
    _refused_changing_nothing(app, fake, sent, why)


@pytest.mark.parametrize(
    ("into", "why"),
    [
        ("postgres", "database 'postgres' already exists"),
        ("template1", "database 'template1' already exists"),
        ("{source}", "refusing to restore into the source database"),
        ("\u201c{source}\u201d", "refusing to restore into the source database"),  # quoted
        (f"{SCRATCH_PREFIX}mine", f"names starting with {SCRATCH_PREFIX} are for restore tests"),
        ('"{too_long}"', "database names must be 1-63 bytes long"),  # 71 bytes, quoted
    ],
)
def test_a_restore_the_restore_would_refuse_is_refused_before_anyone_is_asked_to_approve(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, pg_server: PgTarget, into: str, why: str
) -> None:
    app = start_app()
    app.seed(s3, [0.5])  # a complete backup: only the target name is wrong
    source = app.services.target.dbname
    into = into.format(source=source, too_long="a" * 40 + " " + "b" * 30)
    sent = app.command("/blnk-restore", f"latest into {into} because")
    _refused_changing_nothing(app, fake, sent, why)
    assert not database_exists(pg_server, f"{SCRATCH_PREFIX}mine")


def test_a_restore_whose_server_does_not_answer_is_refused_before_any_approval(
    start_app: SlackFactory, fake: FakeSlack, s3: Any
) -> None:
    # Whether the name is free cannot be checked: refused with the server's reason, not
    # "something went wrong" and not an approval request that can only fail.
    app = start_app(database="blnk_there_is_no_such_database")
    app.seed(s3, [0.5])
    reply = app.command("/blnk-restore", "latest into blnk_new").wait_response()
    assert reply["response_type"] == "ephemeral"
    shown = visible(reply)
    assert "Not done" in shown and "blnk_there_is_no_such_database" in shown
    assert "something went wrong" not in shown
    assert app.services.approvals.pending() == []
    assert fake.messages() == []


# --- authorization --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("command", "text"),
    [("/blnk-backup", "sneaky"), ("/blnk-backups", "list"), ("/blnk-restore-test", "")],
)
def test_a_user_who_is_not_an_operator_is_refused_privately_and_audited(
    start_app: SlackFactory, fake: FakeSlack, command: str, text: str
) -> None:
    app = start_app()
    sent = app.command(command, text, user=STRANGER)
    assert_quick_ack(sent)
    reply = sent.wait_response()
    assert reply["response_type"] == "ephemeral"
    assert "Not done" in reply["text"] and "SLACK_OPERATORS" in reply["text"]
    [refused] = app.services.audit.events()
    assert (refused.action, refused.actor, refused.trigger) == ("unauthorized", STRANGER, "slack")
    assert refused.details_dict()["attempted"] in {"backup", "list", "restore_test"}
    assert fake.messages() == []


def test_a_member_of_a_user_group_in_slack_operators_may_run_commands(
    start_app: SlackFactory, fake: FakeSlack, s3: Any
) -> None:
    app = start_app()
    [key] = app.seed(s3, [0.5])
    reply = app.command("/blnk-backups", "list", user=GROUP_MEMBER).wait_response()
    assert key in visible(reply)
    [lookup] = fake.calls("usergroups.users.list")
    assert lookup.params["usergroup"] == GROUP
    # The same group does not make a stranger an operator.
    refused = app.command("/blnk-backups", "list", user=STRANGER).wait_response()
    assert "Not done" in refused["text"]
    assert [e.actor for e in app.services.audit.events(action="unauthorized")] == [STRANGER]


# --- Slack trouble --------------------------------------------------------------------------------
def test_a_429_during_a_backup_is_waited_out_and_the_final_message_arrives(
    start_app: SlackFactory, fake: FakeSlack
) -> None:
    app = start_app(progress_interval=0)
    fake.rate_limit("chat.postMessage", times=1, retry_after=1)
    fake.rate_limit("chat.update", times=2, retry_after=1)
    app.command("/blnk-backup", "rate limited")
    done = wait_message(fake, "Backup complete")
    assert [e.outcome for e in app.events("backup")] == ["started", "succeeded"]
    limited = [c for c in fake.calls() if c.status == 429]
    assert [c.method for c in limited] == ["chat.postMessage", "chat.update", "chat.update"]
    assert fake.messages(CHANNEL) == [done]
    assert app.bot.messenger.outbox is not None and app.bot.messenger.outbox.waiting() == 0


def test_a_slow_slack_does_not_slow_the_backup(start_app: SlackFactory, fake: FakeSlack) -> None:
    app = start_app(progress_interval=0)
    fake.delay("chat.update", 2.5)  # every update takes 2.5 s (a backup makes several)
    app.command("/blnk-backup", "slack is slow")
    wait_message(fake, "Backup complete", timeout=60)
    [run] = [e for e in app.events("backup") if e.outcome == "succeeded"]
    assert run.duration_seconds is not None and run.duration_seconds < 2.5


def _make_outbox_due(app: Harness) -> None:
    """Move the outbox's next attempts into the past (as if its back-off had passed)."""
    from sqlalchemy import update
    from sqlmodel import Session

    from core.outbox import OutboxRow

    with Session(app.services.audit.engine) as session:
        session.execute(
            update(OutboxRow).values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()


def _outbox_row(app: Harness) -> Any:
    """The one message in the outbox, as stored (attempts, next attempt, last error, ...)."""
    from sqlmodel import Session, select

    from core.outbox import OutboxRow

    with Session(app.services.audit.engine) as session:
        [row] = session.exec(select(OutboxRow)).all()
    return row


@pytest.mark.parametrize("trouble", ["ok false", "unreachable"])
def test_a_result_that_cannot_be_posted_is_audited_kept_in_the_outbox_and_delivered_later(
    start_app: SlackFactory, fake: FakeSlack, trouble: str
) -> None:
    app = start_app()
    outbox = app.bot.messenger.outbox
    assert outbox is not None
    if trouble == "ok false":
        fake.fail("chat.postMessage", "internal_error", times=None)
        fake.fail("chat.update", "internal_error", times=None)
    else:
        from tests.support.s3server import free_port

        app.bot.client.base_url = f"http://127.0.0.1:{free_port()}/api/"  # nothing listens
    sent = app.command("/blnk-backup", "slack is down")
    # The person still hears of it privately (response URLs are not the Web API) ...
    reply = sent.wait_response(timeout=60)
    assert reply["text"].startswith("Backup complete")
    # ... the backup is audited as it went, and the channel message waits in the outbox.
    assert [e.outcome for e in app.events("backup")] == ["started", "succeeded"]
    fake.wait_for(lambda: outbox.waiting() == 1)
    assert fake.messages(CHANNEL) == []
    assert app.bot.messenger.flush_outbox() == 0  # not due yet: it backs off
    fake.clear_faults()
    app.bot.client.base_url = fake.base_url
    _make_outbox_due(app)
    assert app.bot.messenger.flush_outbox() == 1
    [delivered] = fake.messages(CHANNEL)
    assert delivered.text.startswith("Backup complete") and "slack is down" in visible(delivered)
    assert outbox.waiting() == 0
    assert app.bot.messenger.flush_outbox() == 0  # delivered once


def test_keeping_a_message_in_the_outbox_is_not_an_error(
    start_app: SlackFactory, fake: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    app = start_app()
    fake.fail("chat.postMessage", "internal_error")
    assert app.bot.messenger.post(CHANNEL, refusal("kept")) is None
    assert app.bot.messenger.outbox is not None and app.bot.messenger.outbox.waiting() == 1
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_final_update_that_fails_is_delivered_later_as_an_update_of_the_same_message(
    start_app: SlackFactory, fake: FakeSlack
) -> None:
    app = start_app(progress_interval=60)  # the first post, then only the final update
    fake.fail("chat.update", "internal_error", times=None)
    app.command("/blnk-backup", "update fails")
    outbox = app.bot.messenger.outbox
    assert outbox is not None
    fake.wait_for(lambda: outbox.waiting() == 1, timeout=60)
    [message] = fake.messages(CHANNEL)
    assert message.text.startswith("Backup running")
    assert [e.outcome for e in app.events("backup")] == ["started", "succeeded"]
    fake.clear_faults()
    _make_outbox_due(app)
    assert app.bot.messenger.flush_outbox() == 1
    [message] = fake.messages(CHANNEL)
    assert message.text.startswith("Backup complete")


def test_a_retry_while_slack_still_fails_keeps_the_message_and_waits_longer_each_time(
    start_app: SlackFactory, fake: FakeSlack
) -> None:
    app = start_app()
    fake.fail("chat.postMessage", "internal_error", times=None)
    assert app.bot.messenger.post(CHANNEL, refusal("kept through the outage")) is None
    assert _outbox_row(app).attempts == 1
    for attempts, back_off in ((2, timedelta(seconds=60)), (3, timedelta(seconds=120))):
        _make_outbox_due(app)
        asked = len(fake.calls("chat.postMessage"))
        before = datetime.now(UTC)
        app.bot.housekeeping()  # the service's half-minute round: Slack fails again
        after = datetime.now(UTC)
        assert len(fake.calls("chat.postMessage")) == asked + 1
        row = _outbox_row(app)
        assert (row.attempts, row.last_error) == (attempts, "internal_error")
        assert row.delivered_at is None and row.given_up_at is None
        assert before + back_off <= row.next_attempt_at <= after + back_off
        app.bot.housekeeping()  # not due yet: Slack is not asked again
        assert len(fake.calls("chat.postMessage")) == asked + 1
    fake.clear_faults()
    _make_outbox_due(app)
    app.bot.housekeeping()
    [delivered] = fake.messages(CHANNEL)
    assert "kept through the outage" in visible(delivered)
    assert app.bot.messenger.outbox is not None and app.bot.messenger.outbox.waiting() == 0


# --- hostile text and secrets ---------------------------------------------------------------------
HOSTILE = "<!channel> <http://evil.example|click> <@U0OPER0002>\n✓ backup uploaded and verified"


def done_key(app: Harness) -> str:
    [run] = [e for e in app.events("backup") if e.outcome == "succeeded"]
    assert run.key is not None
    return run.key


def _assert_harmless(texts: list[str]) -> None:
    for text in texts:
        assert "<!here>" not in text
        assert "<!channel>" not in text
        assert "<http://evil.example" not in text
        assert "<@U0OPER0002>" not in text
        for line in text.splitlines():
            assert not line.strip().startswith("✓ backup uploaded"), text


@pytest.mark.parametrize("as_sent", ["escaped by Slack", "raw"])
def test_hostile_reasons_are_harmless_in_every_message(
    start_app: SlackFactory, fake: FakeSlack, as_sent: str
) -> None:
    app = start_app()
    text = HOSTILE
    if as_sent == "escaped by Slack":  # Slack sends &, < and > as HTML entities
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    app.command("/blnk-backup", text)
    done = wait_message(fake, "Backup complete")
    assert "evil.example" in visible(done)  # shown, as text
    for what in ("list", "audit", "status"):
        app.command("/blnk-backups", what).wait_response()
    # Hostile keys and database names, echoed in a usage reply and an approval request.
    hostile_word = "&lt;!here&gt;" if as_sent == "escaped by Slack" else "<!here>"
    usage = app.command("/blnk-backups", f"delete {hostile_word}").wait_response()
    assert "here" in visible(usage)  # shown, as text
    app.command("/blnk-restore", f"{done_key(app)} into {hostile_word} {text}")  # and a reason
    request = wait_message(fake, "Approval needed")
    assert "evil.example" in visible(request)  # the reason is shown, as text
    app.slack.event({"type": "app_home_opened", "user": OPERATOR, "tab": "home"})
    fake.wait_for(lambda: bool(fake.views(OPERATOR)))
    # And a failing backup's alert carries the reason too.
    failing = start_app(database="blnk_no_such_db_for_hostile")
    failing.command("/blnk-backup", text)
    wait_message(fake, "Backup failed", channel=ALERTS)
    _assert_harmless(everything_shown(fake))


@pytest.fixture(scope="module")
def password_db() -> Iterator[PgTarget]:
    """A small Blnk database on a server that checks passwords."""
    from core.blnkgen import generate
    from tests.support.pgcluster import PasswordCluster

    cluster = PasswordCluster()
    cluster.start()
    try:
        server = PgTarget.from_url(cluster.url())
        generate(server, "ledger", 200)
        yield server.with_dbname("ledger")
    finally:
        cluster.stop()


def test_no_message_contains_the_database_password_or_the_aws_secret(
    start_app: SlackFactory,
    fake: FakeSlack,
    password_db: PgTarget,
    secrets: list[str],
) -> None:
    from tests.support.pgcluster import PasswordCluster

    password = PasswordCluster.password
    secrets.append(password)
    url = password_db.secret_conninfo()
    app = start_app(database_url=url, restore_test_database_url=url)
    app.command("/blnk-backup", "with a password")
    wait_message(fake, "Backup complete")
    app.command("/blnk-restore-test", "latest")
    wait_message(fake, "Restore test of", timeout=120)
    for what in ("status", "audit", "bucket check"):
        app.command("/blnk-backups", what).wait_response()
    # A failure that names the server: a database that does not exist there.
    missing = password_db.with_dbname("not_there").secret_conninfo()
    broken = start_app(database_url=missing)
    broken.command("/blnk-backup", "fails")
    wait_message(fake, "Backup failed", channel=ALERTS)
    # (check_everything_sent, after the test, searches every call for the secrets)
    shown = "\n".join(everything_shown(fake))
    assert password not in shown and SECRET_KEY not in shown
