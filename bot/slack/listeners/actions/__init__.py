"""Button listeners: Approve / Deny on an approval request. Acknowledged at once; the clicker is
checked (an approver) before anything is queued; the decision (not the requester, pending, not
expired) and the execution run on the bot's job executor."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from slack_bolt import App

from bot.render import blocks
from bot.slack.jobs import JobsFull
from bot.slack.messenger import Renderable
from bot.slack.operations import Caller

if TYPE_CHECKING:
    from bot.slack.app import SlackBot

APPROVE, DENY = "approval_approve", "approval_deny"
log = logging.getLogger("blnk_backup.slack.actions")


def register(app: App, bot: SlackBot) -> None:
    def on_click(ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        ack()
        approve = action.get("action_id") == APPROVE
        approval_id = str(action.get("value") or "")

        def reply(message: Renderable) -> None:
            respond(
                text=message.text,
                blocks=message.blocks,
                response_type="ephemeral",
                replace_original=False,
            )

        caller = Caller(
            str(body.get("user", {}).get("id", "")),
            str((body.get("channel") or body.get("container") or {}).get("id", "")),
            reply,
        )

        def crashed(_exc: BaseException, error_id: str) -> None:
            reply(
                blocks.operation_failed(
                    "Approval", "internal_error", "something went wrong", error_id=error_id
                )
            )

        what = "approve" if approve else "deny"
        if not bot.ops.admit(caller, what, approver=True):
            log.info("slack %s by %s: refused (not an approver)", what, caller.user_id)
            return
        try:
            bot.jobs.submit(
                f"decide {approval_id}",
                lambda: bot.ops.run_decision(approval_id, caller, approve),
                crashed,
            )
        except JobsFull:
            log.warning("slack %s by %s: refused, the job queue is full", what, caller.user_id)
            reply(blocks.refusal("the bot is busy with other work; try again in a minute"))
            return
        log.info("slack %s by %s: queued", what, caller.user_id)

    app.action(APPROVE)(on_click)
    app.action(DENY)(on_click)
