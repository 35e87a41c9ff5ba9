"""Button listeners: Approve / Deny on an approval request. Acknowledged at once; the clicker is
admitted (an approver) before anything is queued (listeners/admission.py); the decision (not the
requester, pending, not expired) and the execution run on the bot's job executor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slack_bolt import App

from bot.render.blocks import APPROVE_ACTION, DENY_ACTION
from bot.slack.listeners.admission import admit_and_queue, ephemeral
from bot.slack.operations import Caller

if TYPE_CHECKING:
    from bot.slack.parts import SlackBot


def register(app: App, bot: SlackBot) -> None:
    def on_click(ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any) -> None:
        ack()
        approve = action.get("action_id") == APPROVE_ACTION
        approval_id = str(action.get("value") or "")
        caller = Caller(
            str(body.get("user", {}).get("id", "")),
            str((body.get("channel") or body.get("container") or {}).get("id", "")),
            ephemeral(bot, respond, replace_original=False),
        )
        admit_and_queue(
            bot,
            caller,
            "approve" if approve else "deny",
            lambda: bot.ops.run_decision(approval_id, caller, approve),
            approver=True,
        )

    app.action(APPROVE_ACTION)(on_click)
    app.action(DENY_ACTION)(on_click)
