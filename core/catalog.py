"""Read-side use cases: the list of backups and the freshness status.

Only complete backups (a manifest that parses and matches its dump) count; everything else is
listed as incomplete with the reason. S3 lists keys in ascending order and keys sort by their
UTC start time, so the newest backup is the *last* complete key, never the first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
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
    problem: str | None = None  # why it is not complete

    @property
    def started_at(self) -> datetime:
        return self.key.started_at

    @classmethod
    def of(cls, backup: StoredBackup) -> BackupEntry:
        return cls(backup.key, backup.size, backup.complete, backup.manifest, backup.problem)


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
    incomplete: list[BackupEntry] = field(default_factory=list)

    @property
    def newest_age_hours(self) -> float | None:
        if self.newest is None:
            return None
        return (self.checked_at - self.newest.started_at).total_seconds() / 3600

    @property
    def healthy(self) -> bool:
        return not self.breaches


class BackupCatalog:
    """Lists backups and judges freshness against the thresholds it was built with."""

    def __init__(
        self,
        store: S3Store,
        *,
        stale_after_hours: float,
        restore_test_max_age_days: float | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.stale_after_hours = stale_after_hours
        self.restore_test_max_age_days = restore_test_max_age_days
        self.clock = clock

    def list(self, limit: int = 20, include_incomplete: bool = False) -> list[BackupEntry]:
        """Return the newest backups first (complete ones only, unless include_incomplete)."""
        backups = [b for b in self.store.list_backups() if include_incomplete or b.complete]
        return [BackupEntry.of(b) for b in reversed(backups)][:limit]

    def _last_restore_test(self, backups: Sequence[StoredBackup]) -> dict[str, Any] | None:
        tested = [b for b in backups if b.complete and b.restore_tested_at is not None]
        if not tested:
            return None
        newest = max(tested, key=lambda b: b.restore_tested_at or b.last_modified)
        record = self.store.get_json(newest.key.restore_test_key)
        return record if isinstance(record, dict) else None

    def status(self) -> FreshnessStatus:
        """Return the freshness status: newest complete backup, its age, the last restore
        test and any breaches (no backups, stale, last restore test failed or too old)."""
        now = self.clock()
        backups = self.store.list_backups()
        complete = [b for b in backups if b.complete]
        newest = BackupEntry.of(complete[-1]) if complete else None
        oldest = BackupEntry.of(complete[0]) if complete else None
        breaches = []
        last_test = self._last_restore_test(backups)
        if last_test is not None and last_test.get("passed") is not True:
            breaches.append(
                f"last restore test failed: {last_test.get('key')} "
                f"({last_test.get('error') or 'checks failed'})"
            )
        if self.restore_test_max_age_days is not None and complete:
            limit = timedelta(days=self.restore_test_max_age_days)
            tested_at = _parse_time(last_test.get("finished_at")) if last_test else None
            running_for = now - complete[0].key.started_at
            if tested_at is None and running_for > limit:
                breaches.append(
                    f"no restore test yet, and backups go back {running_for.days} days "
                    f"(RESTORE_TEST_MAX_AGE_DAYS={self.restore_test_max_age_days:g})"
                )
            elif tested_at is not None and now - tested_at > limit:
                breaches.append(
                    f"the last restore test is {(now - tested_at).days} days old "
                    f"(RESTORE_TEST_MAX_AGE_DAYS={self.restore_test_max_age_days:g})"
                )
        if newest is None:
            breaches.append("no backups: no complete backup exists in the bucket")
        else:
            age = (now - newest.started_at).total_seconds() / 3600
            if age > self.stale_after_hours:
                breaches.append(
                    f"stale: the newest backup is {age:.1f} h old "
                    f"(STALE_AFTER_HOURS={self.stale_after_hours:g})"
                )
        incomplete = [BackupEntry.of(b) for b in backups if not b.complete]
        return FreshnessStatus(
            checked_at=now,
            stale_after_hours=self.stale_after_hours,
            complete_count=len(complete),
            incomplete_count=len(incomplete),
            total_size=sum(b.size for b in complete),
            newest=newest,
            oldest=oldest,
            last_restore_test=last_test,
            breaches=breaches,
            incomplete=incomplete,
        )


def _parse_time(raw: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(raw)) if raw else None
    except ValueError:
        return None
    if parsed is not None and parsed.tzinfo is None:
        return None
    return parsed
