"""Posting to Slack without ever hurting a backup: a 429 is retried after its Retry-After
(slack_sdk's retry handlers), connection errors are retried, and a message that still could not
be delivered is kept in the outbox and retried later — never lost silently. Ephemeral replies
are best effort (they only matter while the person is looking)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from core.outbox import Outbox

log = logging.getLogger("blnk_backup.slack.messenger")

# Answers that will not change by waiting: do not fill the outbox with them.
_PERMANENT = {"channel_not_found", "not_in_channel", "is_archived", "invalid_blocks"}


class Renderable(Protocol):
    text: str
    blocks: list[dict[str, Any]]


@dataclass(frozen=True)
class Posted:
    channel: str
    ts: str


@dataclass
class Shown:
    """A message as it leaves for Slack."""

    text: str
    blocks: list[dict[str, Any]]


Scrub = Callable[[str], str]
T = TypeVar("T")


def scrub_texts(value: T, scrub: Scrub) -> T:
    """Given blocks (or a view), return a copy with ``scrub`` applied to every text in it."""
    if isinstance(value, dict):
        return {  # type: ignore[return-value]
            k: scrub(v) if k == "text" and isinstance(v, str) else scrub_texts(v, scrub)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [scrub_texts(v, scrub) for v in value]  # type: ignore[return-value]
    return value


def public(message: Renderable, scrub: Scrub) -> Shown:
    """The message with ``scrub`` (e.g. database hosts and users removed) applied to its
    fallback text and every text in its blocks: what a Slack channel may see."""
    return Shown(scrub(message.text), scrub_texts(message.blocks, scrub))


class Messenger:
    """Every message it sends passes through ``scrub`` first: Slack is a shared place."""

    def __init__(
        self,
        client: WebClient,
        outbox: Outbox | None = None,
        scrub: Scrub = lambda text: text,
    ) -> None:
        self.client = client
        self.outbox = outbox
        self.scrub = scrub

    def post(self, channel: str, message: Renderable, *, keep: bool = True) -> Posted | None:
        """Post a channel message; return where it is, or None if it could not be posted now
        (then, with ``keep``, it waits in the outbox)."""
        message = public(message, self.scrub)
        try:
            response = self.client.chat_postMessage(
                channel=channel, text=message.text, blocks=message.blocks
            )
            return Posted(str(response["channel"]), str(response["ts"]))
        except (SlackApiError, SlackClientError, OSError) as exc:
            if keep:
                self._keep(channel, message, {}, exc)
            else:
                log.warning("a message to %s was not posted: %s", channel, _reason(exc))
            return None

    def update(self, posted: Posted, message: Renderable, *, final: bool = False) -> bool:
        """Update a message in place. A final update that fails goes to the outbox (and is
        then posted as a new message if the old one cannot be found); others are dropped,
        the next one will say more."""
        message = public(message, self.scrub)
        try:
            self.client.chat_update(
                channel=posted.channel, ts=posted.ts, text=message.text, blocks=message.blocks
            )
            return True
        except (SlackApiError, SlackClientError, OSError) as exc:
            if final:
                self._keep(posted.channel, message, {"update_ts": posted.ts}, exc)
            else:
                log.warning("a progress update was not delivered: %s", _reason(exc))
            return False

    def ephemeral(self, channel: str, user: str, message: Renderable) -> None:
        message = public(message, self.scrub)
        try:
            self.client.chat_postEphemeral(
                channel=channel, user=user, text=message.text, blocks=message.blocks
            )
        except (SlackApiError, SlackClientError, OSError) as exc:
            log.warning("an ephemeral reply to %s was not delivered: %s", user, _reason(exc))

    def _keep(
        self, channel: str, message: Renderable, extra: dict[str, Any], exc: BaseException
    ) -> None:
        reason = _reason(exc)
        if self.outbox is None or reason in _PERMANENT:
            log.error("a message to %s was not delivered: %s", channel, reason)
            return
        try:
            self.outbox.add(channel, message.text, {"blocks": message.blocks, **extra}, reason)
        except Exception:  # the audit database is in trouble too: say so, never crash the job
            log.exception("a message to %s (%s) could not be kept in the outbox", channel, reason)
            return
        log.warning("a message to %s went to the outbox: %s", channel, reason)

    def flush_outbox(self) -> int:
        """Deliver what is due in the outbox; return how many were delivered."""
        if self.outbox is None:
            return 0
        delivered = 0
        for pending in self.outbox.claim_due():
            blocks = pending.payload.get("blocks") or []
            ts = pending.payload.get("update_ts")
            try:
                try:
                    if ts:
                        self.client.chat_update(
                            channel=pending.destination, ts=ts, text=pending.text, blocks=blocks
                        )
                    else:
                        raise LookupError
                except (SlackApiError, LookupError) as exc:
                    if isinstance(exc, SlackApiError) and _reason(exc) != "message_not_found":
                        raise
                    self.client.chat_postMessage(
                        channel=pending.destination, text=pending.text, blocks=blocks
                    )
            except (SlackApiError, SlackClientError, OSError) as exc:
                self.outbox.failed(pending.id, pending.attempts, _reason(exc))
                continue
            self.outbox.delivered(pending.id)
            delivered += 1
        return delivered


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error") or exc.response.status_code)
    return type(exc).__name__
