"""The scheduler: the daily backup, the weekly retention, the 6-hourly freshness check and the
monthly restore test, each from its ``*_SCHEDULE`` cron expression in ``SCHEDULE_TIMEZONE``
(empty = disabled), run in the bot's process by APScheduler 3.

- Never two runs of a job at once (``max_instances=1``, ``coalesce``; a backup also holds its
  database lock).
- Every scheduled run is audited with the ``schedule`` trigger: a ``scheduled_run`` event
  around the use case's own audited run, naming the job and the time it was due.
- Runs missed while the service was down: when the scheduler starts (or a replica becomes the
  leader) it reads, from the shared audit log, when each job last ran. The newest fire time
  missed since then runs once, now, if it is within ``SCHEDULE_GRACE_MINUTES`` (120 by default)
  — its alert says it was late; older or later-than-grace misses are recorded as
  ``schedule_missed`` and alerted. APScheduler's own misfire grace (1 s by default, which would
  silently skip) is set to the same grace.
- Failures and breaches (stale backups, a failed restore test) land in the audit log and from
  there in ``SLACK_ALERT_CHANNEL``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.actor import Actor
from core.errors import BackupError
from core.schedule import cron_trigger, fire_times_between
from core.services import Services

log = logging.getLogger("blnk_backup.scheduler")

ACTOR = Actor("scheduler", "schedule")
DEFAULT_GRACE = timedelta(minutes=120)
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Job:
    name: str
    variable: str  # the *_SCHEDULE setting
    expression: str


def configured_jobs(services: Services) -> list[Job]:
    s = services.settings
    jobs = [
        Job("backup", "BACKUP_SCHEDULE", s.backup_schedule),
        Job("retention", "RETENTION_SCHEDULE", s.retention_schedule),
        Job("freshness_check", "MONITOR_SCHEDULE", s.monitor_schedule),
        Job("restore_test", "RESTORE_TEST_SCHEDULE", s.restore_test_schedule),
    ]
    return [job for job in jobs if job.expression]


class Scheduler:
    """Runs the configured jobs while this process is the leader (see bot/leader.py)."""

    def __init__(
        self,
        services: Services,
        *,
        grace: timedelta | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.services = services
        self.grace = grace or timedelta(minutes=services.settings.schedule_grace_minutes)
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.timezone = services.settings.schedule_timezone
        self.jobs = configured_jobs(services)
        self.triggers = {job.name: cron_trigger(job.expression, self.timezone) for job in self.jobs}
        self._scheduler: Any = None
        self._lock = threading.Lock()
        self.runners: dict[str, Callable[[], str]] = {
            "backup": self._backup,
            "retention": self._retention,
            "freshness_check": self._freshness_check,
            "restore_test": self._restore_test,
        }

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start firing jobs (and catch up on runs missed while down). Idempotent."""
        from apscheduler.schedulers.background import BackgroundScheduler

        with self._lock:
            if self._scheduler is not None:
                return
            scheduler = BackgroundScheduler(timezone=self.timezone)
            for job in self.jobs:
                scheduler.add_job(
                    self.fire,
                    trigger=self.triggers[job.name],
                    args=[job.name],
                    id=job.name,
                    name=job.name,
                    max_instances=1,
                    coalesce=True,
                    misfire_grace_time=int(self.grace.total_seconds()),
                    replace_existing=True,
                )
            scheduler.start()
            self._scheduler = scheduler
        threading.Thread(target=self.catch_up, name="scheduler-catch-up", daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=False)

    @property
    def running(self) -> bool:
        return self._scheduler is not None

    def next_runs(self) -> dict[str, datetime]:
        """Each job's next run time (computed from its trigger when not leading)."""
        now = self.clock()
        result: dict[str, datetime] = {}
        for job in self.jobs:
            when = self.triggers[job.name].get_next_fire_time(None, now)
            if when is not None:
                result[job.name] = when
        return result

    # --- runs ---------------------------------------------------------------------------------
    def fire(self, name: str, scheduled_for: datetime | None = None, late: bool = False) -> None:
        """Run one job now, audited as a scheduled run (never raises)."""
        due = scheduled_for or self.clock()
        late_by = self.clock() - due
        details = {
            "job": name,
            "scheduled_for": due.isoformat(),
            "late_by_seconds": round(late_by.total_seconds()) if late else 0,
        }
        try:
            with self.services.audit.run(
                "scheduled_run",
                ACTOR,
                reason=f"late run of the missed {name} job" if late else None,
                details=details,
            ) as run:
                outcome = self.runners[name]()
                run.note(details=details | {"outcome": outcome})
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise
            log.warning("scheduled %s failed: %s", name, exc)

    def catch_up(self) -> None:
        """Run (once, late) or report the newest run of each job missed while nobody ran it."""
        now = self.clock()
        for job in self.jobs:
            last = self._last_run(job.name)
            if last is None:
                continue  # never ran here: nothing can have been missed yet
            missed = fire_times_between(self.triggers[job.name], last, now - timedelta(seconds=1))
            if not missed:
                continue
            newest = missed[-1]
            if now - newest <= self.grace:
                for skipped in missed[:-1]:
                    self._missed(job, skipped, coalesced=True)
                self.fire(job.name, scheduled_for=newest, late=True)
            else:
                for skipped in missed[-3:]:
                    self._missed(job, skipped, coalesced=False)

    def _last_run(self, name: str) -> datetime | None:
        """When a run of this job was last due (from any replica), or None."""
        for event in self.services.audit.events(limit=200, action="scheduled_run"):
            details = event.details_dict()
            if details.get("job") == name and details.get("scheduled_for"):
                try:
                    return datetime.fromisoformat(str(details["scheduled_for"]))
                except ValueError:
                    continue
        return None

    def _missed(self, job: Job, when: datetime, *, coalesced: bool) -> None:
        self.services.audit.record(
            action="schedule_missed",
            outcome="recorded",
            actor=ACTOR,
            error_code="missed",
            error_cause=(
                f"the {job.name} run due at {when:%Y-%m-%d %H:%M} {self.timezone} did not happen "
                + (
                    "(a later missed run was run late instead)"
                    if coalesced
                    else f"and is past the {self.grace} grace period: it was not run"
                )
            ),
            details={"job": job.name, "scheduled_for": when.isoformat()},
        )

    # --- the jobs -----------------------------------------------------------------------------
    def _backup(self) -> str:
        result = self.services.backups.run(ACTOR, reason="scheduled backup")
        return f"backup {result.key}"

    def _retention(self) -> str:
        reports = self.services.pruner.prune(ACTOR, apply=True)
        errors = [e for r in reports for e in r.errors]
        if errors:
            raise BackupError("; ".join(errors))
        return f"deleted {sum(len(r.deleted) for r in reports)} backup(s)"

    def _freshness_check(self) -> str:
        with self.services.audit.run("freshness_check", ACTOR) as run:
            status = self.services.catalog.status()
            run.note(
                details={
                    "complete": status.complete_count,
                    "newest": status.newest.key.key if status.newest else None,
                    "breaches": status.breaches,
                }
            )
            if status.breaches:
                run.end("failed", error_code="breach", error_cause="; ".join(status.breaches))
        return "healthy" if status.healthy else "; ".join(status.breaches)

    def _restore_test(self) -> str:
        report = self.services.restores.test(ACTOR, "latest")
        if not report.passed:
            raise BackupError(f"restore test of {report.key} failed its checks")
        return f"restore test of {report.key} passed"
