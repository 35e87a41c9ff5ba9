"""Event listeners: the App Home tab, published when a person opens it — the backups for
operators and approvers, a short notice (published at once, nothing queued) for anyone else."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from slack_bolt import App
from slack_sdk.errors import SlackApiError

from bot.slack.jobs import JobsFull

if TYPE_CHECKING:
    from bot.slack.app import SlackBot

log = logging.getLogger("blnk_backup.slack.events")


def register(app: App, bot: SlackBot) -> None:
    @app.event("app_home_opened")
    def on_home_opened(ack: Any, event: dict[str, Any]) -> None:
        ack()
        if event.get("tab", "home") != "home":
            return
        user_id = str(event.get("user", ""))

        def publish(view: dict[str, Any] | None = None) -> None:
            try:
                bot.client.views_publish(user_id=user_id, view=view or bot.ops.home(user_id))
            except SlackApiError as exc:
                log.warning("could not publish the Home tab: %s", exc.response.get("error"))

        refused = bot.ops.home_refused(user_id)
        if refused is not None:
            publish(refused)
            return
        try:
            bot.jobs.submit("home", publish)
        except JobsFull:
            log.warning("the Home tab of %s was not refreshed: the bot is busy", user_id)
