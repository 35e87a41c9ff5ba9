"""Pruning: list, plan (core/retention.py), show the plan, and — only with apply — delete.

Deletes dumps first and their side files last (restore-test records, then manifests), so an
interrupted prune leaves manifests without dumps, which the next prune finishes. Each store
(the primary and, if configured, the replica) is listed and planned on its own with the same
policy and the same clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from core.audit import Actor, AuditLog
from core.config import Settings
from core.errors import StorageError, UsageError
from core.keys import BackupKey
from core.retention import RetentionPlan, RetentionPolicy, plan
from core.s3store import S3Store

log = logging.getLogger("blnk_backup.prune")


def policy_from(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy(
        daily_days=settings.retention_daily_days,
        weekly_days=settings.retention_weekly_days,
        monthly_days=settings.retention_monthly_days,
        min_keep=settings.retention_min_keep,
        stale_after_hours=settings.stale_after_hours,
    )


@dataclass
class PruneReport:
    location: str
    plan: RetentionPlan
    applied: bool
    # dumps that are not complete backups (no manifest, an unreadable or mismatched one), with
    # the reason: never planned, never deleted
    incomplete: dict[str, str] = field(default_factory=dict)
    orphan_side_files: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class PruneService:
    def __init__(
        self,
        settings: Settings,
        stores: list[S3Store],
        audit: AuditLog,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.audit = audit
        self.clock = clock

    def prune(self, actor: Actor, *, apply: bool = False) -> list[PruneReport]:
        """Plan retention for every store; delete only with apply. Return one report per store.

        A store whose listing fails gets a paused plan (nothing deleted) and an error. Audited
        as one ``prune`` run: ``planned`` for a dry run, ``failed`` if anything could not be
        listed or deleted."""
        now = self.clock()
        policy = policy_from(self.settings)
        with self.audit.run("prune", actor, details={"apply": apply}) as run:
            reports = [self._prune_store(store, policy, now, apply) for store in self.stores]
            errors = [e for r in reports for e in r.errors]
            run.note(
                details=[
                    {
                        "store": r.location,
                        "paused": r.plan.paused,
                        "keep": len(r.plan.to_keep),
                        "delete": [k.key for k in r.plan.to_delete][:500],
                        "deleted": r.deleted[:500],
                        "incomplete": dict(list(r.incomplete.items())[:100]),
                    }
                    for r in reports
                ]
            )
            if errors:
                run.end("failed", error_code="prune_incomplete", error_cause="; ".join(errors))
            elif not apply:
                run.end("planned")
        return reports

    def _prune_store(
        self, store: S3Store, policy: RetentionPolicy, now: datetime, apply: bool
    ) -> PruneReport:
        try:
            inventory = store.inventory()
        except StorageError as exc:
            paused = plan([], policy, now, listing_complete=False)
            return PruneReport(store.location, paused, apply, errors=[f"listing failed: {exc}"])
        complete = [b.key for b in inventory.backups if b.complete]
        decided = plan(complete, policy, now)
        report = PruneReport(
            store.location,
            decided,
            apply,
            incomplete={b.key.key: b.problem or "" for b in inventory.backups if not b.complete},
            orphan_side_files=list(inventory.orphan_side_files),
        )
        if not apply or decided.paused:
            return report
        doomed = decided.to_delete
        failed_dumps = store.delete_many([k.key for k in doomed])
        report.errors += failed_dumps
        failed = {e.split(":")[0] for e in failed_dumps}
        gone = [k for k in doomed if k.key not in failed]
        report.deleted = [k.key for k in gone]
        # Side files last, manifests very last: a prune cut short here is finished next time.
        records = [k.restore_test_key for k in gone] + [
            f for f in report.orphan_side_files if not f.endswith(".manifest.json")
        ]
        manifests = [k.manifest_key for k in gone] + [
            f for f in report.orphan_side_files if f.endswith(".manifest.json")
        ]
        report.errors += store.delete_many(records)
        report.errors += store.delete_many(manifests)
        for key in report.deleted:
            log.info("pruned %s from %s", key, store.location)
        return report

    def delete_one(self, actor: Actor, which: str) -> list[str]:
        """Delete one backup from every store: the dump first, then its restore-test record,
        the manifest last (a delete cut short is finished by the next prune). Return the keys
        deleted. Raise UsageError for a key that is not a backup here, or for the newest
        complete backup (never deleted by hand). Audited as one ``delete`` run."""
        with self.audit.run("delete", actor, key=which) as run:
            primary = self.stores[0]
            key = BackupKey.parse_or_raise(which, primary.prefix)
            run.note(key=key.key)
            complete = [b.key for b in primary.list_backups() if b.complete]
            if complete and complete[-1] == key:
                raise UsageError(f"{key} is the newest complete backup: it is never deleted")
            deleted: list[str] = []
            found = False
            for store in self.stores:
                if store.head(key.key) is None and store.head(key.manifest_key) is None:
                    continue
                found = True
                for batch in ([key.key], [key.restore_test_key], [key.manifest_key]):
                    failed = store.delete_many(batch)
                    if failed:
                        raise StorageError(f"deleting from {store.location}: {failed[0]}")
                deleted.append(f"{store.location}{key.name}")
            if not found:
                raise UsageError(f"{key} does not exist in {primary.location}")
            run.note(details={"deleted": deleted})
        return deleted
