"""Read-side use cases: the list of backups and the freshness status.

Only complete backups (manifest present) count. S3 lists keys in ascending order, and keys sort
by their UTC start time, so the newest backup is the *last* complete key, never the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.keys import BackupKey
from core.manifest import Manifest
from core.s3store import S3Store, StoredBackup


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
        manifest = self.store.get_manifest(backup.key) if backup.complete else None
        return BackupEntry(backup.key, backup.size, backup.complete, manifest)

    def _last_restore_test(self, backups: Sequence[StoredBackup]) -> dict[str, Any] | None:
        tested = [b for b in backups if b.restore_tested_at is not None]
        if not tested:
            return None
        newest = max(tested, key=lambda b: b.restore_tested_at or b.last_modified)
        record = self.store.get_json(newest.key.restore_test_key)
        return record if isinstance(record, dict) else None

    def status(self, stale_after_hours: float, now: datetime | None = None) -> FreshnessStatus:
        """Return the freshness status: newest complete backup, its age and any breaches."""
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
