"""The manifest: a small JSON object written next to a dump, last, only after verification.

A manifest read back from a bucket is untrusted input. ``parse_manifest`` is the one place that
decides whether its bytes are a manifest, and ``completeness_problem`` whether it makes its dump
a complete backup: it must parse, have every field with the right type, say
``"status": "verified"``, and name the same key and size as the dump beside it. Anything else
makes the backup *incomplete* for listing, status, retention and restore tests alike.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import TypeAdapter, ValidationError

FORMAT_VERSION = 1
COMPLETE_STATUS = "verified"
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few KiB; anything this big is not one
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """The bytes are not a valid manifest; the message says what is wrong, in one line."""


@dataclass(frozen=True)
class LedgerTotals:
    """Per-currency ledger aggregates; amounts are decimal strings so nothing is rounded."""

    balance_sum: str
    balance_count: int
    transaction_count: int
    transaction_amount_sum: str


@dataclass(frozen=True)
class LedgerAnchor:
    """Where Blnk's transaction hash chain stood (``blnk.chain_state``): its length and the
    hash of its last link. A later copy of the ledger whose chain holds ``head_hash`` at
    ``last_seq`` has this history as its prefix."""

    last_seq: int
    head_hash: str


@dataclass(frozen=True)
class SnapshotStats:
    """What the database held in the dump's snapshot.

    ``ledger_anchor`` is None for a database without Blnk's hash chain (and in manifests
    written before anchors were recorded); ``content_digests`` (SHA-256 of each table's
    ordered rows, see core.dbstats.table_digests) is None unless BACKUP_CONTENT_DIGEST is on."""

    row_counts: dict[str, int]
    ledger: dict[str, LedgerTotals]
    objects: dict[str, int]  # tables, indexes, constraints, functions, triggers, ...
    ledger_anchor: LedgerAnchor | None = None
    content_digests: dict[str, str] | None = None


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
        """Given manifest JSON, return a Manifest. Raise ManifestError if it is not one."""
        return parse_manifest(raw)


_ADAPTER: TypeAdapter[Manifest] | None = None


def _adapter() -> TypeAdapter[Manifest]:
    global _ADAPTER  # built on first use: it costs a few ms that a CLI start should not pay
    if _ADAPTER is None:
        _ADAPTER = TypeAdapter(Manifest)
    return _ADAPTER


def parse_manifest(raw: bytes | str) -> Manifest:
    """Given the bytes of a manifest, return the Manifest.

    Raise ManifestError (one line, naming the first problem) if it is not JSON, misses a field,
    has a field of the wrong type, a time without a time zone, a malformed SHA-256 or amount,
    or a negative size.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest is {len(raw)} bytes, larger than any real manifest")
    try:
        manifest = _adapter().validate_json(raw, strict=True)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        if error["type"] == "json_invalid":
            raise ManifestError(f"manifest is not JSON ({error['msg']})") from None
        where = ".".join(str(p) for p in error["loc"]) or "document"
        raise ManifestError(f"manifest field {where}: {error['msg']}") from None
    except ValueError as exc:  # not JSON at all
        raise ManifestError(f"manifest is not JSON ({type(exc).__name__})") from None
    if manifest.started_at.tzinfo is None or manifest.finished_at.tzinfo is None:
        raise ManifestError("manifest times have no time zone")
    if not _SHA256_HEX.match(manifest.sha256):
        raise ManifestError("manifest sha256 is not 64 lowercase hex digits")
    if manifest.size < 0 or manifest.part_count < 0:
        raise ManifestError("manifest size or part count is negative")
    anchor = manifest.stats.ledger_anchor
    if anchor is not None:
        if anchor.last_seq < 0:
            raise ManifestError("manifest ledger anchor has a negative last_seq")
        if not _SHA256_HEX.match(anchor.head_hash):
            raise ManifestError("manifest ledger anchor head_hash is not 64 lowercase hex digits")
    for table, digest in (manifest.stats.content_digests or {}).items():
        if not _SHA256_HEX.match(digest):
            raise ManifestError(f"manifest content digest of {_quoted(table)} is not a SHA-256")
    for currency, totals in manifest.stats.ledger.items():
        for amount in (totals.balance_sum, totals.transaction_amount_sum):
            try:
                Decimal(amount)
            except InvalidOperation:
                raise ManifestError(
                    f"manifest ledger {_quoted(currency)}: {_quoted(amount)} is not an amount"
                ) from None
    return manifest


QUOTED_AT_MOST = 120  # characters of a value read from a manifest that a problem quotes


def _quoted(value: object) -> str:
    """A value read from a manifest, quoted for a problem text and cut short: whoever can
    write to the bucket must not be able to write megabytes into every listing, the audit log
    and Slack."""
    text = repr(value)
    return text if len(text) <= QUOTED_AT_MOST else text[: QUOTED_AT_MOST - 1] + "…"


def completeness_problem(manifest: Manifest, key: str, dump_size: int) -> str | None:
    """Given a parsed manifest and the dump it sits next to, return why it does not make that
    dump a complete backup, or None if it does."""
    if manifest.status != COMPLETE_STATUS:
        return f"manifest status is {_quoted(manifest.status)}, not {COMPLETE_STATUS!r}"
    if manifest.key != key:
        return f"manifest names another key ({_quoted(manifest.key)})"
    if manifest.size != dump_size:
        return f"manifest says {manifest.size} bytes but the dump has {dump_size}"
    return None
