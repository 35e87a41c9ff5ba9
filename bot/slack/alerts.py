"""Alerts to SLACK_ALERT_CHANNEL: every failure — a backup, a restore test, a replication, an
orphan clean-up, a breach found by the freshness check, a missed scheduled run — posted from the
audit log's stream of events, so no use case has to remember to alert. One failure, one alert:
what a failed backup also could not clean up is said in its alert, not in alerts of its own.
Posting happens on a thread of its own: a slow or failing Slack never delays the work being
audited."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from bot.slack.messenger import Messenger, Renderable
from core.audit import AuditEvent
from core.redact import neutralise

log = logging.getLogger("blnk_backup.slack.alerts")

# (action, outcome) → (title, severity)
_ALERTS: dict[tuple[str, str], tuple[str, str]] = {
    ("backup", "failed"): ("Backup failed", "high"),
    ("backup", "abandoned"): ("A backup was killed before it ended", "high"),
    ("restore_test", "failed"): ("Restore test failed", "high"),
    ("restore_test", "abandoned"): ("A restore test was killed before it ended", "medium"),
    ("restore", "failed"): ("Restore failed", "high"),
    ("prune", "failed"): ("Pruning failed", "medium"),
    ("delete", "failed"): ("Deleting a backup failed", "medium"),
    ("bucket_apply", "failed"): ("Applying bucket policies failed", "medium"),
    ("replication_failed", "recorded"): ("Replication to the second region failed", "high"),
    ("orphan_cleanup", "failed"): ("Cleaning up after a killed backup failed", "medium"),
    ("orphan_aborted", "recorded"): ("Removed what a killed backup left behind", "low"),
    ("freshness_check", "failed"): ("Backups need attention", "high"),
    ("schedule_missed", "recorded"): ("A scheduled run was missed", "high"),
    ("scheduled_run", "abandoned"): ("A scheduled run was killed before it ended", "medium"),
    ("late_end", "recorded"): ("A run declared dead had in fact gone on, and has ended", "medium"),
    ("base_backup", "failed"): ("A base backup failed (point-in-time recovery)", "high"),
    ("pitr_restore", "failed"): ("A point-in-time recovery failed", "high"),
    ("pitr_restore", "abandoned"): ("A point-in-time recovery was killed midway", "medium"),
    ("wal_problem", "failed"): ("Point-in-time recovery needs attention", "high"),
    ("wal_problem", "succeeded"): ("Point-in-time recovery: resolved", "low"),
    ("wal_slot", "failed"): ("Dropping or recreating the WAL slot failed", "high"),
}
# Refusals a person already sees in their own reply; alert only when the scheduler hits them.
_PERSONAL = {"usage_error", "already_running", "config_error", "approval_refused"}

AlertRenderer = Callable[[str, list[str], str], Renderable]


def alert_for(
    event: AuditEvent, scrub: Callable[[str], str] = lambda text: text
) -> tuple[str, list[str], str] | None:
    """Given an audit event, return (title, lines, severity) if it deserves an alert; the
    cause passes through ``scrub`` (database hosts and users are not for a channel)."""
    found = _ALERTS.get((event.action, event.outcome))
    if found is None:
        return None
    if event.error_code in _PERSONAL and event.trigger != "schedule":
        return None
    title, severity = found
    lines = [f"*When:* {event.at:%Y-%m-%d %H:%M:%S} UTC, {event.trigger}:{event.actor}"]
    job = event.details_dict().get("job") if event.action == "scheduled_run" else None
    if job:
        lines.append(f"*Job:* {neutralise(str(job))}")
    if event.key:
        lines.append(f"*Backup:* `{event.key}`")
    if event.reason:
        lines.append(f"*Reason:* {event.reason}")
    if event.error_cause:
        first = neutralise(scrub((event.error_cause.strip().splitlines() or [""])[0]))
        lines.append(f"*Cause:* {event.error_code}: {first[:500]}")
    lines += _side_effects(event, scrub)
    details = event.details_dict()
    if event.action == "wal_problem":
        code = neutralise(str(details.get("code", event.error_code or "")))[:40]
        if event.outcome == "succeeded":
            lines.append(f"*Resolved:* {code}")
        next_step = details.get("next_step")
        if isinstance(next_step, str):
            lines.append(f"*Next:* {neutralise(scrub(next_step))[:800]}")
    return title, lines, severity


def _side_effects(event: AuditEvent, scrub: Callable[[str], str]) -> list[str]:
    """What a failed backup also could not do (one failure, one alert): an upload it left
    behind, killed runs' uploads it could not clean up first."""
    details = event.details_dict()
    lines = []
    left = details.get("left_behind")
    if isinstance(left, str):
        lines.append(f"*Left behind:* {neutralise(scrub(left))[:500]}")
    janitor = details.get("orphan_cleanup")
    for problem in janitor[:3] if isinstance(janitor, list) else []:
        if isinstance(problem, dict):
            cause = neutralise(scrub(str(problem.get("cause", ""))))[:300]
            lines.append(f"*Also:* cleaning up after a killed backup: {cause}")
    return lines


class Alerts:
    """Subscribe to the audit log and post alerts from a thread of its own."""

    def __init__(
        self,
        messenger: Messenger,
        channel: str,
        render: AlertRenderer,
        scrub: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.messenger = messenger
        self.channel = channel
        self.render = render
        self.scrub = scrub
        self._queue: queue.Queue[AuditEvent | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="slack-alerts", daemon=True)
        self._thread.start()

    def __call__(self, event: AuditEvent) -> None:
        if alert_for(event) is not None:
            self._queue.put(event)

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            try:
                found = alert_for(event, self.scrub)
                if found is not None:
                    title, lines, severity = found
                    self.messenger.post(self.channel, self.render(title, lines, severity))
            except Exception:
                log.exception("posting an alert failed")
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def drain(self) -> None:
        """Wait until every alert so far has been handed to Slack (or the outbox)."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
