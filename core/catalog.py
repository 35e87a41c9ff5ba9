"""Read-side use cases: the list of backups and the freshness status.

Only complete backups (a manifest that parses and matches its dump) count; everything else is
listed as incomplete with the reason. S3 lists keys in ascending order and keys sort by their
UTC start time, so the newest backup is the *last* complete key, never the first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from core.audit import Actor, AuditLog
from core.errors import ConfigError, EngineError, StorageError, UsageError
from core.keys import BackupKey
from core.manifest import Manifest
from core.store.listing import StoredBackup
from core.store.s3 import S3Store

log = logging.getLogger("blnk_backup.catalog")

# A restore test's record is written just before its run's end is audited: an audited end
# this close after the record's time is the same test.
SAME_TEST = timedelta(minutes=1)
FIRST_READING_WAIT = 2.0  # seconds a caller waits for the very first reading of the bucket


LATEST = "latest"  # names the newest complete backup wherever a key is asked for


def newest_complete(backups: Sequence[StoredBackup]) -> StoredBackup | None:
    """The newest complete backup of a listing (oldest first, as S3 lists keys), or None."""
    complete = [b for b in backups if b.complete]
    return complete[-1] if complete else None


def refuse_newest(key: BackupKey, backups: Sequence[StoredBackup]) -> None:
    """Raise UsageError if ``key`` is the newest complete backup: it is never deleted, by hand
    or by an approved plan (retention keeps it by its own rule, core/retention.py)."""
    newest = newest_complete(backups)
    if newest is not None and newest.key == key:
        raise UsageError(f"{key} is the newest complete backup: it is never deleted")


def resolve(
    store: S3Store, which: str, *, purpose: str = "restore"
) -> tuple[StoredBackup, list[StoredBackup] | None]:
    """The complete backup ``which`` names — a key, or LATEST (any case) for the newest complete
    one — and the bucket's listing when it was read to find it. Raise UsageError saying why
    there is none: no complete backup yet, a key that is not one, absent, or incomplete (no
    manifest, an unreadable or mismatched one)."""
    if which.lower() == LATEST:
        listed = store.listing.backups()
        newest = newest_complete(listed)
        if newest is None:
            raise UsageError(f"there is no complete backup to {purpose} yet")
        return newest, listed
    key = BackupKey.parse_or_raise(which, store.prefix)
    found = store.listing.find(key)
    if found is None:
        raise UsageError(f"{key} does not exist in {store.location}")
    if not found.complete or found.manifest is None:
        raise UsageError(f"{key} is not a complete backup: {found.problem}")
    return found, None


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
    # one code per breach, in the same order: no_backups, stale, restore_test_failed,
    # no_restore_test, restore_test_too_old (names nothing: fit for unauthenticated probes)
    breach_codes: list[str] = field(default_factory=list)

    @property
    def newest_age_hours(self) -> float | None:
        if self.newest is None:
            return None
        return (self.checked_at - self.newest.started_at).total_seconds() / 3600

    @property
    def healthy(self) -> bool:
        return not self.breaches


@dataclass(frozen=True)
class _Reading:
    at: float  # time.monotonic() when read
    backups: Sequence[StoredBackup] | None
    status: FreshnessStatus | None
    error: EngineError | None


class BackupCatalog:
    """Lists backups and judges freshness against the thresholds it was built with."""

    def __init__(
        self,
        store: S3Store,
        *,
        stale_after_hours: float,
        restore_test_max_age_days: float | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        audit: AuditLog | None = None,
    ) -> None:
        self.store = store
        self.audit = audit
        self.stale_after_hours = stale_after_hours
        self.restore_test_max_age_days = restore_test_max_age_days
        self.clock = clock
        self._reading: _Reading | None = None  # the bucket as last read (or why it could not be)
        self._refreshing = False
        self._changed = threading.Condition()

    def _read(self, max_age: float) -> _Reading:
        """The bucket as read now, or up to ``max_age`` seconds ago, for callers anyone may
        trigger often (a health check, App Home): one reads at a time and the others are
        answered with the last reading meanwhile, never held up behind a slow store; a failed
        reading is kept as long as a good one (a store that is down is not asked again on
        every call)."""
        with self._changed:
            reading = self._reading
            if reading is not None and time.monotonic() - reading.at <= max_age:
                return reading
            if self._refreshing:
                if reading is not None:
                    return reading  # stale, while someone else reads
                self._changed.wait_for(lambda: self._reading is not None, FIRST_READING_WAIT)
                if self._reading is None:
                    raise StorageError("the bucket is being read; ask again in a moment")
                return self._reading
            self._refreshing = True
        try:
            backups = self.store.listing.backups()
            fresh = _Reading(time.monotonic(), backups, self._status(backups), None)
        except EngineError as exc:
            fresh = _Reading(time.monotonic(), None, None, exc)
        except BaseException:
            with self._changed:
                self._refreshing = False
                self._changed.notify_all()
            raise
        with self._changed:
            self._reading, self._refreshing = fresh, False
            self._changed.notify_all()
        return fresh

    def _backups(self, max_age: float) -> Sequence[StoredBackup]:
        if max_age <= 0:
            return self.store.listing.backups()
        reading = self._read(max_age)
        if reading.error is not None:
            raise reading.error
        assert reading.backups is not None
        return reading.backups

    def list(
        self, limit: int = 20, include_incomplete: bool = False, max_age: float = 0
    ) -> list[BackupEntry]:
        """Return the newest backups first (complete ones only, unless include_incomplete),
        from a listing at most ``max_age`` seconds old."""
        backups = [b for b in self._backups(max_age) if include_incomplete or b.complete]
        return [BackupEntry.of(b) for b in reversed(backups)][:limit]

    def _last_restore_test(self, backups: Sequence[StoredBackup]) -> dict[str, Any] | None:
        """The newest restore test: the record kept next to its backup, or — when the audit
        log knows a newer one whose backup has been deleted since (pruned, deleted by hand)
        or whose record could not be written — what the audit log recorded, saying so."""
        tested = [b for b in backups if b.complete and b.restore_tested_at is not None]
        record: dict[str, Any] | None = None
        if tested:
            newest = max(tested, key=lambda b: b.restore_tested_at or b.last_modified)
            found = self.store.get_json(newest.key.restore_test_key)
            record = found if isinstance(found, dict) else None
        event = self.audit.last_restore_test() if self.audit is not None else None
        if event is None or not event.key:
            return record
        ended = event.at if event.at.tzinfo else event.at.replace(tzinfo=UTC)
        recorded_at = _parse_time(record.get("finished_at")) if record else None
        if recorded_at is not None and ended <= recorded_at + SAME_TEST:
            return record  # the record is this test's, or newer
        details = event.details_dict()
        listed = {b.key.key for b in backups}
        return {
            "key": event.key,
            "passed": event.outcome == "succeeded",
            "finished_at": ended.isoformat(),
            "error": None if event.outcome == "succeeded" else event.error_cause,
            "ledger_proof": details.get("ledger_proof"),
            "backup_deleted": event.key not in listed,
            "from_audit_log": True,
        }

    def check_freshness(self, actor: Actor) -> FreshnessStatus:
        """The freshness check: read the bucket now and judge it, audited as a
        ``freshness_check`` run that fails (and so alerts) on any breach."""
        if self.audit is None:
            raise ConfigError(["AUDIT_DATABASE_URL: the freshness check records its result"])
        with self.audit.run("freshness_check", actor) as run:
            status = self.status()
            run.note(
                details={
                    "complete": status.complete_count,
                    "newest": status.newest.key.key if status.newest else None,
                    "breaches": status.breaches,
                }
            )
            if status.breaches:
                run.end("failed", error_code="breach", error_cause="; ".join(status.breaches))
        return status

    def status(self, max_age: float = 0) -> FreshnessStatus:
        """Return the freshness status: newest complete backup, its age, the last restore
        test and any breaches (no backups, stale, last restore test failed or too old) —
        checked now, or up to ``max_age`` seconds ago (``checked_at`` says when)."""
        if max_age <= 0:
            return self._status(self.store.listing.backups())
        reading = self._read(max_age)
        if reading.error is not None:
            raise reading.error
        assert reading.status is not None
        return reading.status

    def _status(self, backups: Sequence[StoredBackup]) -> FreshnessStatus:
        now = self.clock()
        complete = [b for b in backups if b.complete]
        newest = BackupEntry.of(complete[-1]) if complete else None
        oldest = BackupEntry.of(complete[0]) if complete else None
        breaches: list[tuple[str, str]] = []  # (code, what a person reads)
        last_test = self._last_restore_test(backups)
        if last_test is not None and last_test.get("passed") is not True:
            breaches.append(
                (
                    "restore_test_failed",
                    f"last restore test failed: {last_test.get('key')} "
                    f"({last_test.get('error') or 'checks failed'})",
                )
            )
        if self.restore_test_max_age_days is not None and complete:
            limit = timedelta(days=self.restore_test_max_age_days)
            tested_at = _parse_time(last_test.get("finished_at")) if last_test else None
            running_for = now - complete[0].key.started_at
            if tested_at is None and running_for > limit:
                breaches.append(
                    (
                        "no_restore_test",
                        f"no restore test yet, and backups go back {running_for.days} days "
                        f"(RESTORE_TEST_MAX_AGE_DAYS={self.restore_test_max_age_days:g})",
                    )
                )
            elif tested_at is not None and now - tested_at > limit:
                breaches.append(
                    (
                        "restore_test_too_old",
                        f"the last restore test is {(now - tested_at).days} days old "
                        f"(RESTORE_TEST_MAX_AGE_DAYS={self.restore_test_max_age_days:g})",
                    )
                )
        if newest is None:
            breaches.append(("no_backups", "no backups: no complete backup exists in the bucket"))
        else:
            age = (now - newest.started_at).total_seconds() / 3600
            if age > self.stale_after_hours:
                breaches.append(
                    (
                        "stale",
                        f"stale: the newest backup is {age:.1f} h old "
                        f"(STALE_AFTER_HOURS={self.stale_after_hours:g})",
                    )
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
            breaches=[text for _code, text in breaches],
            incomplete=incomplete,
            breach_codes=[code for code, _text in breaches],
        )


def _parse_time(raw: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(raw)) if raw else None
    except ValueError:
        return None
    if parsed is not None and parsed.tzinfo is None:
        return None
    return parsed
