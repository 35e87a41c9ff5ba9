"""Event listeners: the App Home tab, published when a person opens it — the backups for
operators and approvers (built on the job executor), a short notice for anyone else (built and
published on the admission pool, at most once per person every few minutes, never on Bolt's
threads)."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from slack_bolt import App
from slack_sdk.errors import SlackApiError

from bot.slack.jobs import JobsFull
from bot.slack.messenger import scrub_texts

if TYPE_CHECKING:
    from bot.slack.parts import SlackBot

log = logging.getLogger("blnk_backup.slack.events")

NOTICE_EVERY = 300.0  # seconds: an outsider's Home tab is answered (and audited) this seldom


def register(app: App, bot: SlackBot) -> None:
    noticed: dict[str, float] = {}
    lock = threading.Lock()

    def publish(user_id: str, view: dict[str, Any] | None = None) -> None:
        try:
            client = bot.lookups if view is not None else bot.client
            shown = scrub_texts(view or bot.ops.home(user_id), bot.messenger.scrub)
            client.views_publish(user_id=user_id, view=shown)
        except SlackApiError as exc:
            log.warning("could not publish the Home tab: %s", exc.response.get("error"))

    def answer(user_id: str) -> None:
        """On the admission pool: an operator through a user group gets the backups (built on
        the job executor); anyone else the notice, at most once every NOTICE_EVERY."""
        if bot.ops.authorizer.may_operate(user_id).allowed:
            bot.jobs.submit("home", lambda: publish(user_id))
            return
        now = time.monotonic()
        with lock:
            if now - noticed.get(user_id, -NOTICE_EVERY) < NOTICE_EVERY:
                return  # told a moment ago
            noticed[user_id] = now
            if len(noticed) > 10_000:
                noticed.clear()
        refused = bot.ops.home_refused(user_id)
        if refused is not None:
            publish(user_id, refused)

    @app.event("app_home_opened")
    def on_home_opened(ack: Any, event: dict[str, Any]) -> None:
        ack()
        if event.get("tab", "home") != "home":
            return
        user_id = str(event.get("user", ""))
        try:
            if bot.ops.authorizer.listed(user_id):
                bot.jobs.submit("home", lambda: publish(user_id))
            else:
                bot.admission.submit("home", lambda: answer(user_id))
        except JobsFull:
            log.warning("the Home tab of %s was not refreshed: the bot is busy", user_id)
