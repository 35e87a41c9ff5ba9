"""Requests as Slack sends them to an app in HTTP mode, over real HTTP, and the bot under test.

``AppServer`` serves a WSGI app (``bot.http.HttpApi``) with waitress on a loopback port, on a
thread of its own, exactly as ``blnk-backup-bot`` does in HTTP mode. ``SlackSender`` signs
bodies with the signing secret (``v0:{timestamp}:{body}``, HMAC-SHA256, checked against
``slack_sdk.signature.SignatureVerifier``) and POSTs slash commands (form-encoded), block
actions (form field ``payload`` holding JSON) and events (JSON) to ``/slack/events``.

    with AppServer(HttpApi(services, slack_app=bot.app)) as server:
        slack = SlackSender(server.url("/slack/events"), "signing-secret")
        reply = slack.command("/blnk-backups", "list", user_id="U1", response_url=...)
        assert reply.status == 200

``SlackApps`` starts whole bots (``build_slack`` + ``HttpApi`` + ``AppServer``) talking to a
``FakeSlack``; ``Harness`` drives one of them as people in Slack would (``command``,
``click``) and reads the engine's side (approvals, audit events).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from slack_sdk.signature import SignatureVerifier

from bot.http import HttpApi, serve
from bot.render.blocks import APPROVE_ACTION, DENY_ACTION
from bot.render.slack_limits import validate_message, validate_view
from bot.slack.app import build_slack
from bot.slack.jobs import JobRunner
from bot.slack.parts import SlackBot
from core.approvals import Approval
from core.audit import AuditEvent
from core.config import Settings
from core.services import Services
from tests.support.fake_slack import FAKE_TOKEN, FakeMessage, FakeSlack, block_texts
from tests.support.seeding import seed

TEAM_ID = "T0000FAKE"


@dataclass(frozen=True)
class Reply:
    """The app's HTTP answer, and when it arrived (time.monotonic())."""

    status: int
    body: bytes
    headers: dict[str, str]
    sent_at: float
    received_at: float

    @property
    def seconds(self) -> float:
        return self.received_at - self.sent_at

    def json(self) -> dict[str, Any]:
        """The body as JSON ({} for an empty body, as a bare ``ack()`` answers)."""
        if not self.body.strip():
            return {}
        loaded = json.loads(self.body)
        assert isinstance(loaded, dict)
        return loaded


class AppServer:
    """Serve a WSGI app with waitress on 127.0.0.1 (a free port) until ``stop()``."""

    def __init__(self, api: HttpApi, threads: int = 8, trusted_proxy: str | None = None) -> None:
        self.api = api
        self._server = serve(api, "127.0.0.1", 0, threads=threads, trusted_proxy=trusted_proxy)
        # waitress notices close() at its next poll: poll often so tests stop quickly
        self._server.adj.asyncore_loop_timeout = 0.05
        self._thread = threading.Thread(target=self._run, name="waitress", daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # closed under its loop: how it stops
            self._server.run()

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    def url(self, path: str = "/slack/events") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> AppServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.close()
        self._thread.join(timeout=10)
        self._server.task_dispatcher.shutdown()

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def signature(secret: str, timestamp: str, body: str) -> str:
    """Slack's request signature: ``v0=`` + HMAC-SHA256 of ``v0:{timestamp}:{body}``."""
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class SlackSender:
    """Sends signed requests to an app's /slack/events, the way Slack does."""

    def __init__(self, url: str, signing_secret: str, team_id: str = TEAM_ID) -> None:
        self.url = url
        self.secret = signing_secret
        self.team_id = team_id

    def headers(self, body: str, *, timestamp: int | None = None) -> dict[str, str]:
        """The signature headers for body (now, or at ``timestamp``)."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signed = signature(self.secret, stamp, body)
        # Our signing must be what Slack's own verifier accepts (for a fresh timestamp).
        if timestamp is None:
            verifier = SignatureVerifier(self.secret)
            assert verifier.is_valid(body, stamp, signed), "the test helper signs wrongly"
        return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signed}

    def post(
        self,
        body: str,
        content_type: str,
        *,
        headers: dict[str, str] | None = None,
        timestamp: int | None = None,
        signed: bool = True,
        timeout: float = 30.0,
    ) -> Reply:
        """POST body; ``headers`` replace the signature headers (or add to them)."""
        sent = {"Content-Type": content_type}
        if signed:
            sent |= self.headers(body, timestamp=timestamp)
        sent |= headers or {}
        request = urllib.request.Request(  # noqa: S310 (loopback)
            self.url, data=body.encode(), headers=sent, method="POST"
        )
        began = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                raw, status = response.read(), response.status
                got = dict(response.headers.items())
        except urllib.error.HTTPError as exc:
            raw, status, got = exc.read(), exc.code, dict(exc.headers.items())
        return Reply(status, raw, got, began, time.monotonic())

    # --- what Slack sends ---------------------------------------------------------------------
    def command_body(
        self,
        command: str,
        text: str,
        *,
        user_id: str,
        channel_id: str,
        response_url: str,
    ) -> str:
        return urllib.parse.urlencode(
            {
                "token": "deprecated-verification-token",
                "team_id": self.team_id,
                "team_domain": "fake",
                "channel_id": channel_id,
                "channel_name": "ops",
                "user_id": user_id,
                "user_name": f"name-of-{user_id}",
                "command": command,
                "text": text,
                "api_app_id": "A0FAKEAPP",
                "is_enterprise_install": "false",
                "response_url": response_url,
                "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:12]}",
            }
        )

    def command(
        self,
        command: str,
        text: str = "",
        *,
        user_id: str,
        channel_id: str,
        response_url: str,
        **options: Any,
    ) -> Reply:
        """A slash command, form-encoded as Slack sends it."""
        body = self.command_body(
            command, text, user_id=user_id, channel_id=channel_id, response_url=response_url
        )
        return self.post(body, "application/x-www-form-urlencoded", **options)

    def click(
        self,
        action_id: str,
        value: str,
        *,
        user_id: str,
        channel_id: str,
        message_ts: str,
        response_url: str,
        block_id: str = "b",
        **options: Any,
    ) -> Reply:
        """A button click (``block_actions``): the JSON payload in the form field ``payload``."""
        payload = {
            "type": "block_actions",
            "team": {"id": self.team_id, "domain": "fake"},
            "user": {"id": user_id, "username": f"name-of-{user_id}", "team_id": self.team_id},
            "api_app_id": "A0FAKEAPP",
            "token": "deprecated-verification-token",
            "container": {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel_id,
                "is_ephemeral": False,
            },
            "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:12]}",
            "channel": {"id": channel_id, "name": "ops"},
            "message": {"type": "message", "ts": message_ts, "text": "…"},
            "response_url": response_url,
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": block_id,
                    "value": value,
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        body = urllib.parse.urlencode({"payload": json.dumps(payload)})
        return self.post(body, "application/x-www-form-urlencoded", **options)

    def event(self, event: dict[str, Any], **options: Any) -> Reply:
        """An Events API callback (JSON) carrying ``event``."""
        body = json.dumps(
            {
                "token": "deprecated-verification-token",
                "team_id": self.team_id,
                "api_app_id": "A0FAKEAPP",
                "event": event,
                "type": "event_callback",
                "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}",
                "event_time": int(time.time()),
                "authorizations": [
                    {"team_id": self.team_id, "user_id": "UBOT0001", "is_bot": True}
                ],
            }
        )
        return self.post(body, "application/json", **options)


# --- the app under test ---------------------------------------------------------------------------
# Who is who in the tests: Slack user IDs as Slack makes them (U + capitals and digits), so the
# bot shows them as mentions.
SIGNING_SECRET = "8f14e45fceea167a5a36dedd4bea2543"
OPERATOR, OPERATOR2 = "U0OPER0001", "U0OPER0002"
APPROVER1, APPROVER2 = "U0APPR0001", "U0APPR0002"
GROUP, GROUP_MEMBER = "S0GROUP001", "U0GRPM0001"  # GROUP is in SLACK_OPERATORS
STRANGER = "U0STRANGE1"
CHANNEL, ALERTS = "C0OPS00001", "C0ALERTS01"
MESSAGE_CALLS = ("chat.postMessage", "chat.update", "chat.postEphemeral", "response_url")


def fake_slack() -> FakeSlack:
    """The fake Web API the tests use (not started), with GROUP_MEMBER in GROUP."""
    return FakeSlack(FAKE_TOKEN, user_groups={GROUP: [GROUP_MEMBER]})


def slack_overrides(fake: FakeSlack) -> dict[str, Any]:
    """The settings (for conftest's make_settings) of a bot talking to fake."""
    return {
        "slack_bot_token": FAKE_TOKEN,
        "slack_signing_secret": SIGNING_SECRET,
        "slack_api_base_url": fake.base_url,
        "slack_alert_channel": ALERTS,
        "slack_operators": f"{OPERATOR} {OPERATOR2} {GROUP}",
        "slack_approvers": f"{APPROVER1} {APPROVER2}",
        "restore_tests": True,
    }


@dataclass
class Sent:
    """A request sent to the app: its HTTP reply and the response_url it carried."""

    reply: Reply
    response_name: str
    fake: FakeSlack

    def responses(self) -> list[dict[str, Any]]:
        return self.fake.responses(self.response_name)

    def wait_response(self, timeout: float = 20.0) -> dict[str, Any]:
        """Wait for the (first) reply sent to this request's response_url; return it."""
        self.fake.wait_for(lambda: bool(self.responses()), timeout)
        return self.responses()[0]


@dataclass
class Harness:
    """One running bot: its settings, services, Slack parts and HTTP server."""

    fake: FakeSlack
    settings: Settings
    services: Services
    bot: SlackBot
    server: AppServer
    slack: SlackSender
    _names: Iterator[int] = field(default_factory=itertools.count)
    _stopped: bool = False

    def _response_name(self) -> str:
        return f"r{next(self._names)}-{id(self)}"

    def command(
        self, command: str, text: str = "", user: str = OPERATOR, channel: str = CHANNEL
    ) -> Sent:
        name = self._response_name()
        reply = self.slack.command(
            command,
            text,
            user_id=user,
            channel_id=channel,
            response_url=self.fake.response_url(name),
        )
        return Sent(reply, name, self.fake)

    def click(self, message: FakeMessage, approve: bool = True, user: str = APPROVER1) -> Sent:
        """Press Approve (or Deny) on an approval request message, as user."""
        name = self._response_name()
        action = APPROVE_ACTION if approve else DENY_ACTION
        reply = self.slack.click(
            action,
            buttons(message)[action],
            user_id=user,
            channel_id=message.channel,
            message_ts=message.ts,
            response_url=self.fake.response_url(name),
        )
        return Sent(reply, name, self.fake)

    def seed(self, s3: Any, days_ago: list[float]) -> list[str]:
        """Put complete (seeded) backups started days_ago into the bucket; return their keys."""
        assert self.settings.s3_bucket is not None
        return [k.key for k in seed(s3, self.settings.s3_bucket, days_ago)]

    def request_delete(self, s3: Any, user: str = OPERATOR) -> tuple[str, FakeMessage, str]:
        """Seed three backups and ask to delete the oldest; return its key, the approval
        request message and the approval id."""
        keys = self.seed(s3, [2, 1, 0.1])
        sent = self.command("/blnk-backups", f"delete {keys[0]}", user=user)
        assert_quick_ack(sent)
        message = wait_message(self.fake, "Approval needed", timeout=20)
        return keys[0], message, buttons(message)[APPROVE_ACTION]

    def approval_status(self, approval_id: str) -> str:
        found = self.services.approvals.get(approval_id)
        assert found is not None
        return found.status

    def wait_status(self, approval_id: str, *statuses: str, timeout: float = 60) -> Approval:
        """Wait until the approval request reaches one of statuses; return it."""

        def reached() -> bool:
            return self.approval_status(approval_id) in statuses

        self.fake.wait_for(reached, timeout)
        found = self.services.approvals.get(approval_id)
        assert found is not None
        return found

    def events(self, action: str) -> list[AuditEvent]:
        """The audit events of action, oldest first."""
        return list(reversed(self.services.audit.events(action=action, limit=500)))

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.server.stop()
        self.bot.close()
        self.services.close()


class SlackApps:
    """Starts bots on one fake Slack (``start``); ``close`` stops them all, then checks every
    message and view they sent against our validator and for the given secrets."""

    def __init__(
        self, fake: FakeSlack, make_settings: Callable[..., Settings], secrets: list[str]
    ) -> None:
        self.fake = fake
        self.make_settings = make_settings
        self.secrets = secrets
        self.started: list[Harness] = []

    def start(
        self,
        settings: Settings | None = None,
        progress_interval: float = 0.2,
        jobs: JobRunner | None = None,
        **overrides: Any,
    ) -> Harness:
        """A running bot for settings (or make_settings(**slack settings, **overrides)),
        with its own job executor ``jobs`` if given."""
        settings = settings or self.make_settings(**(slack_overrides(self.fake) | overrides))
        services = Services(settings)
        bot = build_slack(settings, services, progress_interval=progress_interval, jobs=jobs)
        server = AppServer(HttpApi(services, slack_app=bot.app)).start()
        harness = Harness(
            self.fake, settings, services, bot, server, SlackSender(server.url(), SIGNING_SECRET)
        )
        self.started.append(harness)
        return harness

    def close(self) -> None:
        for harness in self.started:
            harness.stop()
        check_everything_sent(self.fake, self.secrets)


def check_everything_sent(fake: FakeSlack, secrets: list[str]) -> None:
    """Every message and view sent passes our validator; no secret is in any call."""
    for call in fake.calls():
        blob = json.dumps(call.params, ensure_ascii=False)
        for secret in secrets:
            assert secret not in blob, f"a secret was sent to Slack in {call.method}"
        if call.method in MESSAGE_CALLS:
            validate_message(call.params["text"], call.params.get("blocks") or [])
        if call.method == "views.publish":
            view = call.params["view"]
            validate_view(json.loads(view) if isinstance(view, str) else view)


# --- reading what Slack was sent ------------------------------------------------------------------
def buttons(message: FakeMessage) -> dict[str, str]:
    """action_id → value of every button in a message."""
    found = {}
    for block in message.blocks:
        for element in block.get("elements", []) if block.get("type") == "actions" else []:
            found[element["action_id"]] = element["value"]
    return found


def visible(message: FakeMessage | dict[str, Any]) -> str:
    """Everything a person can read in a message (fallback text and every block text)."""
    if isinstance(message, FakeMessage):
        return message.visible_text()
    return "\n".join([str(message.get("text", "")), *block_texts(message.get("blocks", []))])


def everything_shown(fake: FakeSlack) -> list[str]:
    """The readable text of every message, response and view sent to the fake."""
    shown = []
    for call in fake.calls():
        if call.method in MESSAGE_CALLS:
            shown.append(visible(call.params))
        if call.method == "views.publish":
            view = call.params["view"]
            shown += block_texts(json.loads(view) if isinstance(view, str) else view)
    return shown


def channel_messages(fake: FakeSlack, prefix: str, channel: str = CHANNEL) -> list[FakeMessage]:
    """The channel's messages whose (current) fallback text starts with prefix."""
    return [m for m in fake.messages(channel) if m.text.startswith(prefix)]


def wait_message(
    fake: FakeSlack, prefix: str, channel: str = CHANNEL, timeout: float = 60.0
) -> FakeMessage:
    """Wait until a channel message reads (now) as prefix...; return it."""
    fake.wait_for(lambda: bool(channel_messages(fake, prefix, channel)), timeout)
    return channel_messages(fake, prefix, channel)[0]


def assert_quick_ack(sent: Sent, limit: float = 1.0) -> None:
    assert sent.reply.status == 200, sent.reply.body
    assert sent.reply.seconds < limit, f"acknowledged after {sent.reply.seconds:.2f} s"
