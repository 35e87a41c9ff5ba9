"""The one factory of manifests for every test: a complete, verified backup's manifest, with
any field overridden."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from core.keys import BackupKey
from core.manifest import Manifest, SnapshotStats

DUMP = b"PGDMP..."
KEY = BackupKey.at(datetime(2026, 11, 26, 3, 0, tzinfo=UTC))


def make_manifest(backup: BackupKey = KEY, /, *, body: bytes = DUMP, **overrides: Any) -> Manifest:
    """The manifest that makes a dump of ``body`` at ``backup`` a complete backup (its key,
    start time, size and SHA-256 from them); ``overrides`` replace any field, ``key`` too."""
    fields: dict[str, Any] = {
        "key": backup.key,
        "status": "verified",
        "sha256": hashlib.sha256(body).hexdigest(),
        "size": len(body),
        "started_at": backup.started_at,
        "finished_at": backup.started_at + timedelta(seconds=1),
        "duration_seconds": 1.0,
        "database": "blnk",
        "server_version": "15.20",
        "pg_dump_version": "15.20",
        "compression_level": 1,
        "storage_class": "STANDARD",
        "sse": "none",
        "store_checksum": None,
        "verification": "seeded by a test",
        "part_count": 1,
        "stats": SnapshotStats({}, {}, {}),
        "trigger": "cli",
        "actor": "seed",
        "reason": None,
        "tool_version": "test",
    }
    fields.update(overrides)
    return Manifest(**fields)
