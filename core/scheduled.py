"""The scheduled jobs as use cases, and what the audit log keeps about their runs.

The front end (bot/scheduler.py) owns the clock and the triggers and decides *when*; this
module says *what* each job does and records every run, late run and miss, so that any
replica can read back when a job last ran (``last_due``) and close a run whose process died.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from core.actor import Actor
from core.errors import RestoreTestFailed, RetentionError

if TYPE_CHECKING:
    from core.audit import AuditEvent
    from core.services import Services

log = logging.getLogger("blnk_backup.scheduler")

SCHEDULER = Actor("scheduler", "schedule")
JOBS = ("backup", "retention", "freshness_check", "restore_test", "base_backup", "pitr_test")


class ScheduledJobs:
    """What each scheduled job does, each run recorded as a ``scheduled_run``."""

    def __init__(self, services: Services, replica: str) -> None:
        self.services = services
        self.replica = replica  # which process ran it: host:pid
        self.jobs: dict[str, Callable[[str | None], str]] = {
            "backup": self.backup,
            "retention": self.retention,
            "freshness_check": self.freshness_check,
            "restore_test": self.restore_test,
            "base_backup": self.base_backup,
            "pitr_test": self.pitr_test,
        }

    # --- runs and misses --------------------------------------------------------------------
    def run(self, job: str, due: datetime, *, late_by: int = 0, note: str | None = None) -> None:
        """Run ``job`` as the run due at ``due``, audited as a ``scheduled_run`` naming the job
        (its failure is recorded and alerted from the audit stream; raised only if not an
        Exception: an interrupt)."""
        details = {
            "job": job,
            "scheduled_for": due.isoformat(),
            "late_by_seconds": late_by,
            "replica": self.replica,
        }
        try:
            with self.services.audit.run(
                "scheduled_run", SCHEDULER, reason=note, details=details
            ) as run:
                run.note(details=details)  # a failed run's closing event names its job too
                outcome = self.jobs[job](note)
                run.note(details=details | {"outcome": outcome})
        except Exception as exc:  # recorded by the run, alerted from the audit stream
            log.warning("scheduled %s failed: %s", job, exc)

    def missed(self, job: str, when: datetime, *, code: str, cause: str) -> None:
        """Record that the run of ``job`` due at ``when`` did not happen (``missed``), was
        skipped because one still ran (``overlap``) or runs late (``late``)."""
        self.services.audit.record(
            action="schedule_missed",
            outcome="recorded",
            actor=SCHEDULER,
            error_code=code,
            error_cause=cause,
            details={"job": job, "scheduled_for": when.isoformat(), "replica": self.replica},
        )

    def last_due(self, job: str) -> datetime | None:
        """When a run of ``job`` was last due, on any replica sharing the audit log."""
        return self.services.audit.last_scheduled(job)

    def close_dead(self, job: str) -> list[AuditEvent]:
        """Close the runs of ``job`` that started and never ended and whose run lock is free
        (their process was killed); return them."""
        return self.services.audit.close_abandoned("scheduled_run", SCHEDULER, scope={"job": job})

    # --- the jobs ---------------------------------------------------------------------------
    def backup(self, note: str | None) -> str:
        reason = f"scheduled backup ({note})" if note else "scheduled backup"
        result = self.services.backups.run(SCHEDULER, reason=reason)
        return f"backup {result.key}"

    def retention(self, _note: str | None) -> str:
        reports = self.services.pruner.prune(SCHEDULER, apply=True)
        errors = [e for r in reports for e in r.errors]
        if errors:
            raise RetentionError("; ".join(errors))
        return f"deleted {sum(len(r.deleted) for r in reports)} backup(s)"

    def freshness_check(self, _note: str | None) -> str:
        status = self.services.catalog.check_freshness(SCHEDULER)
        return "healthy" if status.healthy else "; ".join(status.breaches)

    def restore_test(self, _note: str | None) -> str:
        report = self.services.restores.test(SCHEDULER, "latest")
        if not report.passed:
            raise RestoreTestFailed(f"restore test of {report.key} failed its checks")
        return f"restore test of {report.key} passed"

    def base_backup(self, note: str | None) -> str:
        reason = f"scheduled base backup ({note})" if note else "scheduled base backup"
        backup = self.services.base_backups.run(SCHEDULER, reason=reason)
        return f"base backup {backup.key}"

    def pitr_test(self, _note: str | None) -> str:
        result = self.services.pitr.test(SCHEDULER)
        if not result.passed:
            raise RestoreTestFailed(
                f"point-in-time restore test to {result.target.isoformat()} failed its ledger proof"
            )
        return f"point-in-time restore test to {result.target.isoformat()} passed"
