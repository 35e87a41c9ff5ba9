"""Read-side use cases: the list of backups and the freshness status.

Only complete backups (manifest present) count. S3 lists keys in ascending order, and keys sort
by their UTC start time, so the newest backup is the *last* complete key, never the first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from core.keys import BackupKey
from core.manifest import Manifest
from core.s3store import S3Store, StoredBackup

log = logging.getLogger("blnk_backup.catalog")


@dataclass(frozen=True)
class BackupEntry:
    key: BackupKey
    size: int
    complete: bool
    manifest: Manifest | None = None

    @property
    def started_at(self) -> datetime:
        return self.key.started_at


@dataclass(frozen=True)
class FreshnessStatus:
    """One status object for the CLI, the bot's alerts and the metrics."""

    checked_at: datetime
    stale_after_hours: float
    complete_count: int
    incomplete_count: int
    total_size: int
    newest: BackupEntry | None
    oldest: BackupEntry | None
    last_restore_test: dict[str, Any] | None = None  # the newest restore-test record
    breaches: list[str] = field(default_factory=list)

    @property
    def newest_age_hours(self) -> float | None:
        if self.newest is None:
            return None
        return (self.checked_at - self.newest.started_at).total_seconds() / 3600

    @property
    def healthy(self) -> bool:
        return not self.breaches


class BackupCatalog:
    def __init__(self, store: S3Store) -> None:
        self.store = store

    def list(self, limit: int = 20, include_incomplete: bool = False) -> list[BackupEntry]:
        """Return the newest backups first, with manifests for complete ones."""
        backups = [b for b in self.store.list_backups() if include_incomplete or b.complete]
        newest_first = list(reversed(backups))[:limit]
        return [self._entry(b) for b in newest_first]

    def _entry(self, backup: StoredBackup) -> BackupEntry:
        manifest = None
        if backup.complete:
            try:
                manifest = self.store.get_manifest(backup.key)
            except ValueError:  # listed and counted, but its details cannot be shown
                log.warning("the manifest of %s is unreadable", backup.key)
        return BackupEntry(backup.key, backup.size, backup.complete, manifest)

    def _last_restore_test(self, backups: Sequence[StoredBackup]) -> dict[str, Any] | None:
        tested = [b for b in backups if b.restore_tested_at is not None]
        if not tested:
            return None
        newest = max(tested, key=lambda b: b.restore_tested_at or b.last_modified)
        record = self.store.get_json(newest.key.restore_test_key)
        return record if isinstance(record, dict) else None

    def status(
        self,
        stale_after_hours: float,
        now: datetime | None = None,
        restore_test_max_age_days: float | None = None,
    ) -> FreshnessStatus:
        """Return the freshness status: newest complete backup, its age, the last restore
        test and any breaches (no backups, stale, last restore test failed or too old)."""
        now = now or datetime.now(UTC)
        backups = self.store.list_backups()
        complete = [b for b in backups if b.complete]
        newest = self._entry(complete[-1]) if complete else None
        oldest = BackupEntry(complete[0].key, complete[0].size, True) if complete else None
        breaches = []
        last_test = self._last_restore_test(backups)
        if last_test is not None and not last_test.get("passed"):
            breaches.append(
                f"last restore test failed: {last_test.get('key')} "
                f"({last_test.get('error') or 'checks failed'})"
            )
        if restore_test_max_age_days is not None and complete:
            limit = timedelta(days=restore_test_max_age_days)
            tested_at = _parse_time(last_test.get("finished_at")) if last_test else None
            running_for = now - complete[0].key.started_at
            if tested_at is None and running_for > limit:
                breaches.append(
                    f"no restore test yet, and backups go back {running_for.days} days "
                    f"(RESTORE_TEST_MAX_AGE_DAYS={restore_test_max_age_days:g})"
                )
            elif tested_at is not None and now - tested_at > limit:
                breaches.append(
                    f"the last restore test is {(now - tested_at).days} days old "
                    f"(RESTORE_TEST_MAX_AGE_DAYS={restore_test_max_age_days:g})"
                )
        if newest is None:
            breaches.append("no backups: no complete backup exists in the bucket")
        else:
            age = (now - newest.started_at).total_seconds() / 3600
            if age > stale_after_hours:
                breaches.append(
                    f"stale: the newest backup is {age:.1f} h old "
                    f"(STALE_AFTER_HOURS={stale_after_hours:g})"
                )
        return FreshnessStatus(
            checked_at=now,
            stale_after_hours=stale_after_hours,
            complete_count=len(complete),
            incomplete_count=len(backups) - len(complete),
            total_size=sum(b.size for b in complete),
            newest=newest,
            oldest=oldest,
            last_restore_test=last_test,
            breaches=breaches,
        )


def _parse_time(raw: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(raw)) if raw else None
    except ValueError:
        return None
