"""The manifest: a small JSON object written next to a dump, last, only after verification.

A backup without a manifest is not a backup: listing, retention and restore tests count only
keys whose manifest exists and says ``"status": "verified"``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

FORMAT_VERSION = 1


@dataclass(frozen=True)
class LedgerTotals:
    """Per-currency ledger aggregates; amounts are decimal strings so nothing is rounded."""

    balance_sum: str
    balance_count: int
    transaction_count: int
    transaction_amount_sum: str


@dataclass(frozen=True)
class SnapshotStats:
    """What the database held in the dump's snapshot."""

    row_counts: dict[str, int]
    ledger: dict[str, LedgerTotals]
    objects: dict[str, int]  # tables, indexes, constraints, functions, triggers


@dataclass(frozen=True)
class Manifest:
    key: str
    status: str
    sha256: str
    size: int
    started_at: datetime
    finished_at: datetime
    duration_seconds: float
    database: str
    server_version: str
    pg_dump_version: str
    compression_level: int
    storage_class: str
    sse: str
    store_checksum: str | None
    verification: str
    part_count: int
    stats: SnapshotStats
    trigger: str
    actor: str
    reason: str | None
    tool_version: str
    replicas: list[dict[str, Any]] = field(default_factory=list)
    first_part_size: int = 8 << 20  # the part layout, so a replica can reproduce the checksum
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        body = asdict(self)
        body["started_at"] = self.started_at.isoformat()
        body["finished_at"] = self.finished_at.isoformat()
        return json.dumps(body, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Manifest:
        """Given manifest JSON, return a Manifest. Raise ValueError if it is malformed."""
        try:
            body = json.loads(raw)
            stats = body.pop("stats")
            ledger = {cur: LedgerTotals(**tot) for cur, tot in stats["ledger"].items()}
            body["stats"] = SnapshotStats(stats["row_counts"], ledger, stats["objects"])
            body["started_at"] = datetime.fromisoformat(body["started_at"])
            body["finished_at"] = datetime.fromisoformat(body["finished_at"])
            return cls(**body)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed manifest: {exc}") from exc
