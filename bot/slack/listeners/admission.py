"""What every listener does after its acknowledgement: admit the caller, then queue the work.

Bolt's listener threads (a small pool) must stay free to acknowledge the next request within
Slack's 3 s. Someone named outright in SLACK_OPERATORS / SLACK_APPROVERS is admitted there and
then, without any I/O; anyone else is admitted on the bot's own bounded admission pool, where a
user-group lookup, a refusal's audit record and its answer may take their time. A crowd of
outsiders fills at most that pool's queue (then they are dropped, logged), never Bolt's threads
or the job executor an operator's work waits in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from bot.render import blocks
from bot.slack.jobs import JobsFull
from bot.slack.messenger import Renderable, public
from bot.slack.operations import Caller

if TYPE_CHECKING:
    from bot.slack.parts import SlackBot

log = logging.getLogger("blnk_backup.slack.admission")

BUSY = "the bot is busy with other work; try again in a minute"


def crash_reply(caller: Caller, what: str) -> Callable[[BaseException, str], None]:
    """What a job that crashed tells its caller: a short message with the error id."""

    def crashed(_exc: BaseException, error_id: str) -> None:
        caller.respond(
            blocks.operation_failed(
                what, "internal_error", "something went wrong", error_id=error_id
            )
        )

    return crashed


def admit_and_queue(
    bot: SlackBot,
    caller: Caller,
    what: str,
    work: Callable[[], None],
    *,
    approver: bool = False,
) -> None:
    """Admit caller (an operator, or with ``approver`` an approver) and queue ``work`` on the
    job executor; refuse (audited, answered) anyone else. Never waits on I/O when the caller
    is named outright; otherwise the admission runs on the admission pool."""
    if bot.ops.authorizer.listed(caller.user_id, approver=approver):
        _queue(bot, caller, what, work)
        return

    def admit() -> None:
        if bot.ops.admit(caller, what, approver=approver):
            _queue(bot, caller, what, work)
        else:
            log.info("slack %s by %s: refused", what, caller.user_id)

    try:
        bot.admission.submit(f"admit {what}", admit)
    except JobsFull:
        log.warning("slack %s by %s: dropped, the admission queue is full", what, caller.user_id)


def _queue(bot: SlackBot, caller: Caller, what: str, work: Callable[[], None]) -> None:
    try:
        bot.jobs.submit(what, work, crash_reply(caller, what))
    except JobsFull:
        log.warning("slack %s by %s: refused, the job queue is full", what, caller.user_id)
        caller.respond(blocks.refusal(BUSY))
        return
    log.info("slack %s by %s: queued", what, caller.user_id)


def ephemeral(
    bot: SlackBot, respond: Callable[..., object], **extra: object
) -> Callable[[Renderable], None]:
    """A reply only the caller sees, through the request's response_url (scrubbed like every
    message: no database host or user)."""

    def reply(message: Renderable) -> None:
        shown = public(message, bot.messenger.scrub)
        respond(text=shown.text, blocks=shown.blocks, response_type="ephemeral", **extra)

    return reply
