"""Backups as the program writes them, put straight into a bucket: a dump, then a valid
manifest that matches it (or, for fault tests, a manifest with something wrong)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from core.keys import BackupKey
from tests.support.manifests import DUMP, make_manifest


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
        manifest = make_manifest(key, **manifest_changes)
        s3.put_object(Bucket=bucket, Key=key.manifest_key, Body=manifest.to_json())
    return keys


def put_manifest_body(s3: Any, bucket: str, key: BackupKey, body: bytes | dict[str, Any]) -> None:
    """Replace a backup's manifest with these bytes (or this JSON object)."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    s3.put_object(Bucket=bucket, Key=key.manifest_key, Body=raw)
