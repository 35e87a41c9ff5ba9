"""Slash command listeners: parse (pure), acknowledge before any I/O, then admit the caller and
queue the work (listeners/admission.py): someone who may not run commands never takes a place
in the job queue, nor holds up Bolt's threads. A bad or unknown argument is answered in the
acknowledgement itself with the usage, and changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slack_bolt import App

from bot.render import blocks
from bot.slack.commands import COMMANDS, parse
from bot.slack.listeners.admission import admit_and_queue, ephemeral
from bot.slack.operations import Caller
from core.errors import UsageError

if TYPE_CHECKING:
    from bot.slack.parts import SlackBot

log = logging.getLogger("blnk_backup.slack.commands")


def register(app: App, bot: SlackBot) -> None:
    for name in COMMANDS:
        app.command(name)(_listener(bot))


def _listener(bot: SlackBot) -> Callable[..., None]:
    def on_command(ack: Any, command: dict[str, Any], respond: Any) -> None:
        user = str(command.get("user_id") or "")
        try:
            request = parse(command["command"], command.get("text") or "")
        except UsageError as exc:
            usage = blocks.usage(exc.message)
            ack(text=usage.text, blocks=usage.blocks)
            log.info("slack %s by %s: usage error", command.get("command"), user)
            return
        ack()
        caller = Caller(user, str(command.get("channel_id") or ""), ephemeral(bot, respond))
        admit_and_queue(bot, caller, request.action, lambda: bot.ops.run_command(request, caller))

    return on_command
