"""Slash command listeners: parse (pure), acknowledge before any I/O, check the caller, and only
then hand the work to the bot's job executor (someone who may not run commands never takes a
place in its queue). A bad or unknown argument is answered in the acknowledgement itself with
the usage, and changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slack_bolt import App

from bot.render import blocks
from bot.slack.commands import COMMANDS, parse
from bot.slack.jobs import JobsFull
from bot.slack.messenger import Renderable
from bot.slack.operations import Caller
from core.errors import UsageError

if TYPE_CHECKING:
    from bot.slack.app import SlackBot

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

        def reply(message: Renderable) -> None:
            respond(text=message.text, blocks=message.blocks, response_type="ephemeral")

        caller = Caller(command["user_id"], command["channel_id"], reply)

        def crashed(_exc: BaseException, error_id: str) -> None:
            reply(
                blocks.operation_failed(
                    request.action, "internal_error", "something went wrong", error_id=error_id
                )
            )

        if not bot.ops.admit(caller, request.action):
            log.info("slack %s by %s: refused (not an operator)", request.action, user)
            return
        try:
            bot.jobs.submit(request.action, lambda: bot.ops.run_command(request, caller), crashed)
        except JobsFull:
            log.warning("slack %s by %s: refused, the job queue is full", request.action, user)
            reply(blocks.refusal("the bot is busy with other work; try again in a minute"))
            return
        log.info("slack %s by %s: queued", request.action, user)

    return on_command
