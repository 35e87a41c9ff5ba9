"""The Slack app: ``build_slack(settings, services)`` builds the Bolt app with its listeners,
registered per kind (bot/slack/listeners/{commands,actions,events}), and the parts they share
(bot/slack/parts.py: the job executor, the messenger with its outbox, the authorizer, the
alerts).

Signature checks stay on (HTTP mode). A global error handler gives a person a short message
with an error id and the log the traceback; requests nobody handles go there too.
"""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slack_bolt import App, BoltResponse
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.error import BoltUnhandledRequestError
from slack_sdk import WebClient
from slack_sdk.http_retry import RetryHandler
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)

from bot.render import blocks
from bot.slack.alerts import Alerts
from bot.slack.auth import Authorizer
from bot.slack.jobs import JobRunner
from bot.slack.messenger import Messenger
from bot.slack.operations import NextRuns, SlackOperations
from bot.slack.parts import SlackBot
from core.config import Settings
from core.outbox import Outbox
from core.services import Services

log = logging.getLogger("blnk_backup.slack")


def web_client(
    settings: Settings, *, with_token: bool = True, timeout: int = 15, patient: bool = True
) -> WebClient:
    """A Web API client for SLACK_API_BASE_URL that waits out 429s (Retry-After) and retries
    connection errors; not ``patient``: one quick retry of a connection error, no waiting on
    rate limits (for lookups a person is waiting on)."""
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    token = token if with_token else None
    base = settings.slack_api_base_url
    retries: list[RetryHandler] = (
        [
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=3),
        ]
        if patient
        else [ConnectionErrorRetryHandler(max_retry_count=1)]
    )
    return WebClient(
        token=token,
        base_url=base if base.endswith("/") else base + "/",
        timeout=timeout,
        retry_handlers=retries,
    )


def build_slack(
    settings: Settings,
    services: Services,
    *,
    next_runs: NextRuns | None = None,
    progress_interval: float = 3.0,
    jobs: JobRunner | None = None,
) -> SlackBot:
    """Build the Slack side of the bot. Raise ConfigError if SLACK_BOT_TOKEN is missing."""
    settings.require("slack_bot_token")
    client = web_client(settings)
    signing = settings.slack_signing_secret
    app = App(
        # Bolt's own client (for its per-request clients) gets the token from authorize():
        # with a static token Bolt would call auth.test on the first request, before the
        # acknowledgement (a slow or rate-limited Slack would delay it past 3 s). auth.test
        # happens at start-up instead (bot/__main__.py), with a clear error.
        client=web_client(settings, with_token=False),
        authorize=_static_token(client.token),
        signing_secret=signing.get_secret_value() if signing else None,
        raise_error_for_unhandled_request=True,
        process_before_response=False,
        request_verification_enabled=signing is not None,  # Socket Mode has no signatures
        # Listeners only acknowledge and hand work on (listeners/admission.py); a few more
        # threads than Bolt's default 5 keep acknowledgements quick under a burst.
        listener_executor=ThreadPoolExecutor(max_workers=10, thread_name_prefix="bolt"),
    )
    outbox = Outbox(services.audit)
    messenger = Messenger(client, outbox, services.scrub)
    # Membership lookups happen while a person waits: bounded (5 s, no waiting on 429s).
    lookups = web_client(settings, timeout=5, patient=False)
    authorizer = Authorizer(lookups, settings.operators, settings.approvers)
    runner = jobs or JobRunner()
    ops = SlackOperations(
        services,
        messenger,
        authorizer,
        progress_interval=progress_interval,
        next_runs=next_runs,
    )
    alerts = None
    if settings.slack_alert_channel:
        alerts = Alerts(messenger, settings.slack_alert_channel, blocks.alert, services.scrub)
        services.audit.subscribe(alerts)
    admission = JobRunner(workers=2, queued=64, name="bot-admit")
    bot = SlackBot(app, client, ops, runner, messenger, alerts, admission, lookups)

    from bot.slack.listeners import actions, commands, events

    commands.register(app, bot)
    actions.register(app, bot)
    events.register(app, bot)
    _register_error_handler(app)
    return bot


def _static_token(token: str | None) -> Any:
    """Bolt's authorize function for the one workspace: the bot token, no Web API call."""

    def authorize(
        enterprise_id: str | None, team_id: str | None, user_id: str | None
    ) -> AuthorizeResult:
        return AuthorizeResult(
            enterprise_id=enterprise_id, team_id=team_id, user_id=user_id, bot_token=token
        )

    return authorize


def _register_error_handler(app: App) -> None:
    @app.error
    def on_error(error: Exception, body: dict[str, Any], respond: Any) -> BoltResponse | None:
        if isinstance(error, BoltUnhandledRequestError):
            log.warning("unhandled Slack request: %s", body.get("type") or body.get("command"))
            return BoltResponse(status=404, body="")
        error_id = uuid.uuid4().hex[:8]
        log.error("Slack request failed (error id %s)", error_id, exc_info=error)
        if respond is not None and (body.get("response_url") or body.get("response_urls")):
            try:
                message = blocks.operation_failed(
                    "Request", "internal_error", "something went wrong", error_id=error_id
                )
                respond(text=message.text, blocks=message.blocks, response_type="ephemeral")
            except Exception:
                log.exception("could not tell the person about error %s", error_id)
        return None
