"""What someone with a Slack account in the workspace, or network access to the service's port,
can and cannot do: see the App Home tab, crowd the job queue out, ride on a user group Slack no
longer answers for, replay a signed request, write the log, guess the API key, learn the
bucket from the health check, send huge bodies, or smuggle invisible characters in. Each is
tried through the real app over HTTP (Slack against the fake Web API), as an attacker would."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from bot.http import HttpApi
from bot.logs import configure as configure_logging
from bot.slack.auth import STALE_LIMIT_SECONDS, Authorizer
from bot.slack.jobs import JobRunner
from core.actor import Actor
from core.database import PgTarget
from core.services import Services
from tests.support.databases import audit_database
from tests.support.fake_slack import FAKE_TOKEN, FakeSlack, block_texts
from tests.support.faultproxy import FaultProxy
from tests.support.slack_fixtures import SlackFactory
from tests.support.slack_requests import (
    CHANNEL,
    GROUP,
    GROUP_MEMBER,
    OPERATOR,
    STRANGER,
    AppServer,
    assert_quick_ack,
    everything_shown,
    wait_message,
)

API_KEY = "blnk-api-key-0123456789abcdef"


def _views(fake: FakeSlack, user: str) -> list[str]:
    """The text of every Home view published for user, newest last."""
    shown = []
    for call in fake.calls("views.publish"):
        if call.params.get("user_id") == user:
            view = call.params["view"]
            view = json.loads(view) if isinstance(view, str) else view
            shown.append("\n".join(block_texts(view)))
    return shown


def _open_home(app: Any, user: str) -> None:
    reply = app.slack.event({"type": "app_home_opened", "user": user, "tab": "home"})
    assert reply.status == 200


# --- Slack: who sees and does what ----------------------------------------------------------------
def test_app_home_shows_outsiders_a_notice_and_nothing_of_the_backups(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    app = start_app()
    key, _newest = app.seed(s3, [2, 0.2])
    app.command("/blnk-backups", "delete " + key)  # a pending approval that names the key
    wait_message(fake, "Approval needed")
    _open_home(app, STRANGER)
    fake.wait_for(lambda: bool(_views(fake, STRANGER)), 20)
    [seen] = _views(fake, STRANGER)
    assert "operators and approvers only" in seen
    for secret_ish in (key, bucket, OPERATOR, "Pending", "127.0.0.1"):
        assert secret_ish not in seen
    [refused] = [e for e in app.events("unauthorized") if e.actor == STRANGER]
    assert refused.details_dict() == {"attempted": "home"}
    # An operator sees the backups, as before.
    _open_home(app, OPERATOR)
    fake.wait_for(lambda: bool(_views(fake, OPERATOR)), 20)
    assert key in _views(fake, OPERATOR)[-1]


def test_app_home_lists_the_bucket_at_most_once_per_half_minute(
    start_app: SlackFactory, fake: FakeSlack, proxy: FaultProxy, s3: Any
) -> None:
    app = start_app(s3_endpoint_url=proxy.endpoint)
    app.seed(s3, [0.2])
    for _ in range(5):
        _open_home(app, OPERATOR)
    fake.wait_for(lambda: len(_views(fake, OPERATOR)) == 5, 30)
    listings = [r for r in proxy.faults.log if r.method == "GET" and "list-type=2" in r.path]
    assert len(listings) == 1


def test_outsiders_never_take_a_place_in_the_job_queue(
    start_app: SlackFactory, fake: FakeSlack, proxy: FaultProxy
) -> None:
    # One worker and one place in the queue. A backup holds the worker (a slow store); then
    # a crowd of outsiders: each is refused at once, and the operator's next command still
    # finds its place in the queue instead of "the bot is busy".
    proxy.faults.delay = lambda r: 2.0 if "partNumber=" in r.path else 0.0
    app = start_app(s3_endpoint_url=proxy.endpoint, jobs=JobRunner(workers=1, queued=1))
    assert_quick_ack(app.command("/blnk-backup", "the long one"))
    wait_message(fake, "Backup")
    outsiders = [app.command("/blnk-backups", "status", user=STRANGER) for _ in range(12)]
    for sent in outsiders:
        assert_quick_ack(sent)
        assert "not in SLACK_OPERATORS" in json.dumps(sent.wait_response())
    mine = app.command("/blnk-backups", "list")
    proxy.faults.delay = lambda _r: 0.0
    answer = json.dumps(mine.wait_response(timeout=120))
    assert "busy" not in answer and "backups" in answer
    assert len([e for e in app.events("unauthorized") if e.actor == STRANGER]) == 12


def test_group_membership_fails_closed_once_lookups_keep_failing(fake: FakeSlack) -> None:
    from slack_sdk import WebClient

    now = [1000.0]
    client = WebClient(token=FAKE_TOKEN, base_url=fake.base_url)
    authorizer = Authorizer(client, [GROUP], [], clock=lambda: now[0])
    assert authorizer.may_operate(GROUP_MEMBER).allowed
    fake.fail("usergroups.users.list", "ratelimited", times=None)  # Slack stops answering
    now[0] += 120  # past the cache: lookups fail, the last membership read is trusted ...
    assert authorizer.may_operate(GROUP_MEMBER).allowed
    now[0] += STALE_LIMIT_SECONDS  # ... for a bounded time only
    assert not authorizer.may_operate(GROUP_MEMBER).allowed
    now[0] += 5  # failed lookups are retried at most every RETRY_FAILED_SECONDS
    assert not authorizer.may_operate(GROUP_MEMBER).allowed
    lookups = len(fake.calls("usergroups.users.list"))
    assert lookups <= 3
    fake.clear_faults()
    now[0] += 20
    assert authorizer.may_operate(GROUP_MEMBER).allowed  # Slack answers again


def test_a_group_nobody_could_ever_read_lets_nobody_in(fake: FakeSlack) -> None:
    from slack_sdk import WebClient

    fake.fail("usergroups.users.list", "missing_scope", times=None)
    client = WebClient(token=FAKE_TOKEN, base_url=fake.base_url)
    authorizer = Authorizer(client, [GROUP], [])
    assert not authorizer.may_operate(GROUP_MEMBER).allowed


# --- Slack over HTTP: signatures ------------------------------------------------------------------
def test_a_replayed_signed_request_is_refused_and_runs_once(
    start_app: SlackFactory, fake: FakeSlack
) -> None:
    app = start_app()
    body = app.slack.command_body(
        "/blnk-backups",
        "status",
        user_id=OPERATOR,
        channel_id=CHANNEL,
        response_url=fake.response_url("replayed"),
    )
    form = "application/x-www-form-urlencoded"
    headers = app.slack.headers(body)
    first = app.slack.post(body, form, headers=headers, signed=False)
    assert first.status == 200
    again = app.slack.post(body, form, headers=headers, signed=False)  # captured, sent again
    assert again.status == 401
    fake.wait_for(lambda: bool(fake.responses("replayed")), 20)
    time.sleep(0.5)
    assert len(fake.responses("replayed")) == 1


@pytest.mark.parametrize("timestamp", ["abc", "1e9", "", "9" * 40, "-1", "0x10", " 1"])
def test_a_malformed_timestamp_is_401_without_a_traceback(
    start_app: SlackFactory, fake: FakeSlack, caplog: pytest.LogCaptureFixture, timestamp: str
) -> None:
    app = start_app()
    body = app.slack.command_body(
        "/blnk-backup", "x", user_id=OPERATOR, channel_id=CHANNEL, response_url=fake.response_url()
    )
    headers = app.slack.headers(body)
    headers["X-Slack-Request-Timestamp"] = timestamp
    reply = app.slack.post(body, "application/x-www-form-urlencoded", headers=headers, signed=False)
    assert reply.status == 401
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    assert app.services.audit.events() == []


@pytest.fixture
def service_log() -> Iterator[io.StringIO]:
    """The service's own logging set-up (bot/logs.py) at its most verbose, into a buffer."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    levels = {name: logging.getLogger(name).level for name in ("slack_bolt", "slack_sdk")}
    buffer = io.StringIO()
    configure_logging(verbose=True, stream=buffer)
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_nothing_of_a_request_body_reaches_the_log_and_every_line_is_one_line(
    start_app: SlackFactory, fake: FakeSlack, service_log: io.StringIO
) -> None:
    app = start_app()
    forged = "\n2026-12-02 03:00:00,000 INFO blnk_backup.backup: backup uploaded and verified\n"
    leaked_url = fake.response_url("must-not-be-logged")
    body = urllib.parse.urlencode(
        {"command": "/blnk-backup", "text": forged + "x" * (1 << 19), "response_url": leaked_url}
    )
    form = "application/x-www-form-urlencoded"
    assert app.slack.post(body, form, signed=False).status == 401  # unsigned
    stale = int(time.time()) - 3600
    assert app.slack.post(body[: 1 << 19], form, timestamp=stale).status == 401  # stale
    headers = app.slack.headers(body[:1000])
    headers["X-Slack-Signature"] = "v0=" + "0" * 64
    assert app.slack.post(body[:1000], form, headers=headers, signed=False).status == 401
    written = service_log.getvalue()
    assert "backup uploaded and verified" not in written
    assert "must-not-be-logged" not in written and "xxxxxxxxxx" not in written
    assert len(written) < 10_000
    lines = written.splitlines()
    assert lines and all(line[:4].isdigit() or line.startswith("  | ") for line in lines)
    assert "refused a Slack request" in written


def test_libraries_that_log_requests_only_ever_log_warnings_whatever_their_level(
    start_app: SlackFactory, service_log: io.StringIO
) -> None:
    start_app()  # Bolt sets its loggers' levels from the root logger's (DEBUG here) on build
    verifier = logging.getLogger("slack_bolt.RequestVerification")
    assert verifier.isEnabledFor(logging.INFO)  # its level alone would let it through
    names = ("slack_bolt.RequestVerification", "slack_bolt.App", "slack_sdk.web.base_client")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        for name in names:
            logger = logging.getLogger(name)
            logger.setLevel(logging.DEBUG)  # however a library sets its own levels
            logger.info("Invalid request signature detected (body: token=SECRET-BODY)")
            logger.debug("sending body=SECRET-BODY")
        logging.getLogger("slack_bolt.App").warning("a warning still shows")
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    written = service_log.getvalue()
    assert "SECRET-BODY" not in written and "a warning still shows" in written


def test_a_log_line_quoting_a_newline_stays_one_line(service_log: io.StringIO) -> None:
    log = logging.getLogger("blnk_backup.test")
    log.warning("cannot read user group %s", "S1\n2026-12-02 03:00:00,000 INFO forged: ok")
    log.warning("long %s", "y" * 100_000)
    lines = service_log.getvalue().splitlines()
    assert len(lines) == 2 and "\\n2026-12-02" in lines[0]
    assert len(lines[1]) < 2_100


# --- the HTTP API ---------------------------------------------------------------------------------
def _request(
    server: AppServer, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST" if body else "GET", path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture
def api(make_settings: Any, proxy: FaultProxy) -> Iterator[tuple[AppServer, Services]]:
    services = Services(make_settings(blnk_api_key=API_KEY, s3_endpoint_url=proxy.endpoint))
    with AppServer(HttpApi(services)) as server:
        yield server, services
    services.close()


def test_wrong_api_keys_are_logged_counted_and_slowed_down_but_the_right_key_gets_in(
    api: tuple[AppServer, Services], service_log: io.StringIO
) -> None:
    server, _services = api
    for attempt in range(5):
        status, _h, _b = _request(server, "/backup-s3", {"Authorization": f"Bearer guess{attempt}"})
        assert status == 401
    status, headers, body = _request(server, "/backup-s3", {"X-Blnk-Key": "guess5"})
    assert status == 429 and int(headers["Retry-After"]) > 0
    assert json.loads(body)["error"]["code"] == "too_many_failures"
    written = service_log.getvalue()
    assert written.count("wrong API key") == 5 and "guess" not in written
    _status, _h, metrics = _request(server, "/metrics")
    assert b"blnk_api_key_failures_total 5.0" in metrics
    assert b"blnk_api_key_throttled_total 1.0" in metrics
    # Blnk's cron, behind the same address, is never locked out by someone else's guessing.
    status, _h, body = _request(server, "/backup-s3", {"X-Blnk-Key": API_KEY})
    assert status == 200, body


def test_behind_a_trusted_proxy_wrong_keys_count_per_forwarded_client(
    make_settings: Any, service_log: io.StringIO
) -> None:
    services = Services(make_settings(blnk_api_key=API_KEY))
    try:
        with AppServer(HttpApi(services), trusted_proxy="127.0.0.1") as server:
            guesser = {"X-Forwarded-For": "203.0.113.7", "X-Blnk-Key": "guess"}
            statuses = [_request(server, "/backup-s3", guesser)[0] for _ in range(6)]
            assert statuses == [401] * 5 + [429]
            other = {"X-Forwarded-For": "198.51.100.2", "X-Blnk-Key": "typo"}
            assert _request(server, "/backup-s3", other)[0] == 401  # not throttled
        assert "from 203.0.113.7" in service_log.getvalue()
    finally:
        services.close()


def test_the_backups_health_check_names_no_store_and_lists_once_a_minute(
    api: tuple[AppServer, Services], proxy: FaultProxy, bucket: str
) -> None:
    server, services = api
    answers = [_request(server, "/healthz?check=backups") for _ in range(5)]
    for status, _headers, body in answers:
        assert status == 503
        shown = body.decode()
        assert bucket not in shown and "127.0.0.1" not in shown and "s3://" not in shown
        assert json.loads(shown)["breaches"] == ["no_backups"]
    listings = [r for r in proxy.faults.log if r.method == "GET" and "list-type=2" in r.path]
    assert len(listings) == 1
    # The store unreachable: a code, not the error's text (which names endpoint and bucket).
    proxy.faults.fail = lambda _r: (503, "SlowDown")
    fresh = HttpApi(services, health_cache_seconds=0)
    with AppServer(fresh) as other:
        status, _h, body = _request(other, "/healthz?check=backups")
    assert status == 503 and bucket not in body.decode()


def _read_answer(sock: socket.socket) -> bytes:
    """An HTTP answer, whole: its head, then as many bytes as its Content-Length says."""
    answer = b""
    with contextlib.suppress(OSError):  # the server may close the connection as it answers
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        while length and len(body) < int(length.group(1)) and (chunk := sock.recv(4096)):
            body += chunk
        answer = head + b"\r\n\r\n" + body
    return answer


@pytest.mark.parametrize("path", ["/backup-s3", "/healthz", "/metrics", "/nowhere"])
@pytest.mark.parametrize("chunked", [False, True])
def test_every_path_refuses_a_body_over_the_limit(
    api: tuple[AppServer, Services], path: str, chunked: bool
) -> None:
    server, services = api
    size = (4 << 20) if chunked else (1 << 20) + 1024  # past waitress's cut-off / the app's
    framing = "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {size}\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: t\r\nX-Blnk-Key: {API_KEY}\r\n{framing}\r\n".encode()
        )
        with contextlib.suppress(OSError):  # the server may answer and close before the end
            chunk = b"x" * 65536
            for _ in range(size // len(chunk) + 1):
                sock.sendall(b"10000\r\n" + chunk + b"\r\n" if chunked else chunk)
        answer = _read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    if not chunked:  # a declared length is refused by the app: JSON, like every error
        assert b"application/json" in answer and b"too_large" in answer, answer
    assert services.audit.events(action="backup") == []


# --- input --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mark",
    [
        *("\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2060", "\ufeff", "\u061c"),
        *("\u3164", "\u115f", "\uffa0", "\u034f", "\u2800", "\u17b4", "\U0001d173", "\u06dd"),
    ],
)
def test_zero_width_and_bidirectional_marks_in_a_reason_are_refused(
    start_app: SlackFactory, fake: FakeSlack, mark: str
) -> None:
    app = start_app()
    sent = app.command("/blnk-backup", f"before{mark}migration 42")
    assert_quick_ack(sent)
    assert "zero-width" in json.dumps(sent.reply.json())  # in the acknowledgement itself
    assert app.services.audit.events(action="backup") == []
    assert fake.calls("chat.postMessage") == []


def test_channel_messages_never_name_the_database_host_or_user(
    start_app: SlackFactory, fake: FakeSlack
) -> None:
    # The database cannot be reached: libpq names its host, address, port and user.
    app = start_app(
        database_url="postgresql://ledger_admin:pw@db-internal.example:1/blnk?connect_timeout=2",
        slack_alert_channel="C0ALERTS01",
    )
    app.command("/blnk-backup", "nightly")
    wait_message(fake, "Backup failed", timeout=60)
    app.bot.alerts.drain() if app.bot.alerts else None
    shown = [m.visible_text() for m in fake.messages(CHANNEL)]
    shown += [m.visible_text() for m in fake.messages("C0ALERTS01")]
    assert shown
    for message in shown:
        assert "db-internal.example" not in message and "ledger_admin" not in message


def test_a_failing_store_is_asked_once_a_minute_not_on_every_health_check(
    api: tuple[AppServer, Services], proxy: FaultProxy, bucket: str
) -> None:
    server, _services = api
    proxy.faults.fail = lambda _r: (503, "ServiceUnavailable")

    def listings() -> int:
        return sum(1 for r in proxy.faults.log if r.method == "GET" and "list-type=2" in r.path)

    answers = [_request(server, "/healthz?check=backups")]
    one_reading = listings()  # the store was asked (with the client's own retries) ...
    answers += [_request(server, "/healthz?check=backups") for _ in range(5)]
    assert listings() == one_reading  # ... once, however often the health check is
    assert {status for status, _h, _b in answers} == {503}
    assert all(bucket not in body.decode() for _s, _h, body in answers)


def test_a_slow_store_never_holds_up_other_requests_behind_health_checks(
    make_settings: Any, proxy: FaultProxy
) -> None:
    services = Services(make_settings(s3_endpoint_url=proxy.endpoint))
    try:
        with AppServer(HttpApi(services, health_cache_seconds=0.5)) as server:
            assert _request(server, "/healthz?check=backups")[0] == 503  # a first reading
            time.sleep(0.6)  # it is due again; now the store takes 6 s to list
            proxy.faults.delay = lambda r: 6.0 if "list-type=2" in r.path else 0.0
            took: list[float] = []

            def probe() -> None:
                began = time.monotonic()
                _request(server, "/healthz?check=backups")
                took.append(time.monotonic() - began)

            probes = [threading.Thread(target=probe) for _ in range(8)]
            for thread in probes:
                thread.start()
            time.sleep(0.3)
            began = time.monotonic()
            assert _request(server, "/healthz")[0] == 200
            assert time.monotonic() - began < 1.0
            for thread in probes:
                thread.join(30)
            # One of them reads the bucket; the others get the last reading at once.
            assert sorted(took)[-2] < 1.0, took
    finally:
        proxy.faults.delay = lambda _r: 0.0
        services.close()


def test_no_slack_text_names_a_database_user_or_host_status_audit_and_home_included(
    start_app: SlackFactory, fake: FakeSlack, pg_server: PgTarget
) -> None:
    # The restore-test server refuses its role: libpq's error names role, host and port, and
    # it is kept in the audit log, where status, audit and App Home read it back.
    port = pg_server.params.get("port", "5432")
    app = start_app(
        restore_test_database_url=f"postgresql://restore_admin:pw@127.0.0.1:{port}/postgres"
    )
    app.services.backups.run(Actor("seed", "cli"))
    app.command("/blnk-restore-test", "latest")
    wait_message(fake, "Restore test failed", timeout=60)
    for text in ("status", "audit"):
        app.command("/blnk-backups", text).wait_response()
    _open_home(app, OPERATOR)
    fake.wait_for(lambda: bool(_views(fake, OPERATOR)), 20)
    shown = everything_shown(fake)
    assert any("role" in text for text in shown)  # the failure is told ...
    for text in shown:
        assert "restore_admin" not in text and "127.0.0.1" not in text  # ... naming nobody


def test_a_request_replayed_to_another_replica_is_refused_too(
    start_app: SlackFactory, fake: FakeSlack, pg_server: PgTarget
) -> None:
    with audit_database(pg_server) as shared:
        first = start_app(audit_database_url=shared)
        second = start_app(audit_database_url=shared)
        body = first.slack.command_body(
            "/blnk-backups",
            "help",
            user_id=OPERATOR,
            channel_id=CHANNEL,
            response_url=fake.response_url("twice"),
        )
        form = "application/x-www-form-urlencoded"
        headers = first.slack.headers(body)
        assert first.slack.post(body, form, headers=headers, signed=False).status == 200
        assert second.slack.post(body, form, headers=headers, signed=False).status == 401


def test_outsiders_opening_app_home_never_wait_for_a_busy_job_queue(
    start_app: SlackFactory, fake: FakeSlack, proxy: FaultProxy
) -> None:
    # No room at all in the job queue: a backup holds its only worker.
    proxy.faults.delay = lambda r: 3.0 if "partNumber=" in r.path else 0.0
    app = start_app(s3_endpoint_url=proxy.endpoint, jobs=JobRunner(workers=1, queued=0))
    app.command("/blnk-backup", "the long one")
    wait_message(fake, "Backup")
    _open_home(app, STRANGER)
    fake.wait_for(lambda: bool(_views(fake, STRANGER)), 10)  # answered all the same
    assert "operators and approvers only" in _views(fake, STRANGER)[0]
    _open_home(app, STRANGER)  # again at once: not answered (nor audited) every time
    time.sleep(1)
    assert len(_views(fake, STRANGER)) == 1
    assert len([e for e in app.events("unauthorized") if e.actor == STRANGER]) == 1
    proxy.faults.delay = lambda _r: 0.0
    wait_message(fake, "Backup complete", timeout=120)


def test_an_approved_bucket_apply_changes_only_what_its_request_listed(
    start_app: SlackFactory, fake: FakeSlack, s3: Any, bucket: str
) -> None:
    from bot.render.blocks import APPROVE_ACTION
    from tests.support.slack_requests import buttons

    app = start_app()
    flags = dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
    )
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=flags)
    app.command("/blnk-backups", "bucket apply")
    message = wait_message(fake, "Approval needed")
    assert "public access block" not in message.visible_text()  # fine when asked
    s3.delete_public_access_block(Bucket=bucket)  # then someone turns it off
    approval_id = buttons(message)[APPROVE_ACTION]
    app.click(message, approve=True)
    done = app.wait_status(approval_id, "executed", "failed")
    assert done.status == "executed", done.outcome
    items = {i.name: i for i in app.services.bucket_policies.check()[0].items}
    assert items["versioning"].ok  # approved: applied
    assert not items["public access block"].ok  # never approved: left as it is
