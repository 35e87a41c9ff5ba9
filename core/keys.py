"""Backup object keys: ``{prefix}blnk_backup_YYYYMMDD_HHMMSS.dump`` (UTC time of the start).

Only keys that match this pattern exactly are ever listed, pruned or restored; anything else in
the bucket is never touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from core.errors import UsageError

MANIFEST_SUFFIX = ".manifest.json"
RESTORE_TEST_SUFFIX = ".restore-test.json"
_NAME = re.compile(r"^blnk_backup_(\d{8})_(\d{6})\.dump$")


@dataclass(frozen=True, order=True)
class BackupKey:
    """A parsed backup key. Ordering is by start time, which is the newest-last order."""

    started_at: datetime
    prefix: str

    @classmethod
    def at(cls, started_at: datetime, prefix: str = "") -> BackupKey:
        if started_at.tzinfo is None:
            raise ValueError("backup times must be timezone-aware")
        return cls(started_at.astimezone(UTC).replace(microsecond=0), prefix)

    @classmethod
    def parse(cls, key: str, prefix: str = "") -> BackupKey | None:
        """Given a full object key, return the BackupKey, or None if it is not one of ours."""
        if not key.startswith(prefix):
            return None
        match = _NAME.match(key[len(prefix) :])
        if not match:
            return None
        try:
            when = datetime.strptime(match[1] + match[2], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            return None  # e.g. blnk_backup_20241399_250000.dump
        return cls(when, prefix)

    @classmethod
    def parse_or_raise(cls, key: str, prefix: str = "") -> BackupKey:
        """Like parse, for user input: raise UsageError with the expected shape."""
        parsed = cls.parse(key, prefix) or cls.parse(prefix + key, prefix)
        if parsed is None:
            raise UsageError(
                f"{key!r} is not a backup key: expected {prefix}blnk_backup_YYYYMMDD_HHMMSS.dump"
            )
        return parsed

    @property
    def name(self) -> str:
        return f"blnk_backup_{self.started_at:%Y%m%d_%H%M%S}.dump"

    @property
    def key(self) -> str:
        return self.prefix + self.name

    @property
    def manifest_key(self) -> str:
        return self.key + MANIFEST_SUFFIX

    @property
    def restore_test_key(self) -> str:
        """Where the result of the latest restore test of this backup is kept."""
        return self.key + RESTORE_TEST_SUFFIX

    def __str__(self) -> str:
        return self.key
