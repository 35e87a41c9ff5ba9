"""Backups as the program writes them, put straight into a bucket: a dump, then a valid
manifest that matches it (or, for fault tests, a manifest with something wrong)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from core.keys import BackupKey
from core.manifest import Manifest, SnapshotStats

DUMP = b"PGDMP..."


def manifest_for(key: BackupKey, body: bytes = DUMP) -> Manifest:
    """A manifest that makes a dump of ``body`` at ``key`` a complete backup."""
    return Manifest(
        key=key.key,
        status="verified",
        sha256=hashlib.sha256(body).hexdigest(),
        size=len(body),
        started_at=key.started_at,
        finished_at=key.started_at + timedelta(seconds=1),
        duration_seconds=1.0,
        database="blnk",
        server_version="15.20",
        pg_dump_version="15.20",
        compression_level=1,
        storage_class="STANDARD",
        sse="none",
        store_checksum=None,
        verification="seeded by a test",
        part_count=1,
        stats=SnapshotStats({}, {}, {}),
        trigger="cli",
        actor="seed",
        reason=None,
        tool_version="test",
    )


def seed(
    s3: Any,
    bucket: str,
    days_ago: list[float],
    prefix: str = "",
    now: datetime | None = None,
    **manifest_changes: Any,
) -> list[BackupKey]:
    """Put complete backups started ``days_ago`` before now; return their keys."""
    now = now or datetime.now(UTC)
    keys = [BackupKey.at(now - timedelta(days=d), prefix) for d in days_ago]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key.key, Body=DUMP)
        manifest = replace(manifest_for(key), **manifest_changes)
        s3.put_object(Bucket=bucket, Key=key.manifest_key, Body=manifest.to_json())
    return keys


def put_manifest_body(s3: Any, bucket: str, key: BackupKey, body: bytes | dict[str, Any]) -> None:
    """Replace a backup's manifest with these bytes (or this JSON object)."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    s3.put_object(Bucket=bucket, Key=key.manifest_key, Body=raw)
