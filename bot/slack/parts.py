"""What the Slack listeners share: the Bolt app, the clients, the operations, the job
executor and the admission pool, the messenger and the alerts (built by bot/slack/app.py)."""

from __future__ import annotations

from dataclasses import dataclass

from slack_bolt import App
from slack_sdk import WebClient

from bot.slack.alerts import Alerts
from bot.slack.jobs import JobRunner
from bot.slack.messenger import Messenger
from bot.slack.operations import SlackOperations


@dataclass
class SlackBot:
    """The Bolt app and what its listeners share."""

    app: App
    client: WebClient
    ops: SlackOperations
    jobs: JobRunner
    messenger: Messenger
    alerts: Alerts | None
    # admitting callers who are not named outright (group lookups, refusals): off Bolt's threads
    admission: JobRunner
    lookups: WebClient  # quick, impatient: for what a person waits on

    def housekeeping(self) -> None:
        """What the service does every half minute: deliver the outbox, expire overdue
        approval requests (their messages lose the buttons)."""
        self.messenger.flush_outbox()
        self.ops.expire_overdue()

    def close(self) -> None:
        self.admission.shutdown(wait=True)
        self.jobs.shutdown(wait=True)
        if self.alerts is not None:
            self.alerts.close()
