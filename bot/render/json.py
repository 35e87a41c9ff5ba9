"""JSON shapes of engine results: ``--json`` on the command line and the HTTP API's bodies.

JSON escapes control characters itself, so stored text (reasons, causes) is safe here as is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError, EngineError

if TYPE_CHECKING:
    from core.audit import AuditEvent
    from core.bucket_policy import PolicyItem, StorePolicies
    from core.catalog import BackupEntry, FreshnessStatus
    from core.manifest import Manifest
    from core.prune import PruneReport
    from core.restore.service import RestoreReport
    from core.wal.health import WalProblem, WalStatus


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def error(exc: EngineError) -> dict[str, Any]:
    """The error object of a failed command or request: a code and a message."""
    body: dict[str, Any] = {"error": {"code": exc.code, "message": exc.message}}
    if isinstance(exc, ConfigError):
        body["error"]["problems"] = exc.problems
    return body


def backup(manifest: Manifest, bucket: str) -> dict[str, Any]:
    return {
        "message": f"backup uploaded to s3://{bucket}/{manifest.key} and verified",
        "key": manifest.key,
        "bucket": bucket,
        "size": manifest.size,
        "sha256": manifest.sha256,
        "store_checksum": manifest.store_checksum,
        "verification": manifest.verification,
        "started_at": _iso(manifest.started_at),
        "finished_at": _iso(manifest.finished_at),
        "duration_seconds": manifest.duration_seconds,
        "database": manifest.database,
        "compression_level": manifest.compression_level,
        "replicas": manifest.replicas,
    }


def entry(item: BackupEntry) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key": item.key.key,
        "started_at": _iso(item.started_at),
        "size": item.size,
        "complete": item.complete,
    }
    if item.problem is not None:
        body["problem"] = item.problem
    if item.manifest is not None:
        body |= {
            "sha256": item.manifest.sha256,
            "duration_seconds": item.manifest.duration_seconds,
            "trigger": item.manifest.trigger,
            "actor": item.manifest.actor,
            "reason": item.manifest.reason,
        }
    return body


def entries(items: list[BackupEntry]) -> list[dict[str, Any]]:
    return [entry(i) for i in items]


def status(state: FreshnessStatus, next_runs: dict[str, datetime] | None = None) -> dict[str, Any]:
    """Freshness; ``next_runs`` (job → when the scheduler runs it next) when given."""
    body: dict[str, Any] = {
        "healthy": state.healthy,
        "breaches": state.breaches,
        "checked_at": _iso(state.checked_at),
        "stale_after_hours": state.stale_after_hours,
        "complete_backups": state.complete_count,
        "incomplete_backups": state.incomplete_count,
        "incomplete": [entry(e) for e in state.incomplete],
        "total_size": state.total_size,
        "newest": entry(state.newest) if state.newest else None,
        "newest_age_hours": (
            round(state.newest_age_hours, 3) if state.newest_age_hours is not None else None
        ),
        "oldest": entry(state.oldest) if state.oldest else None,
        "last_restore_test": state.last_restore_test,
    }
    if next_runs is not None:
        body["next_runs"] = {
            job: _iso(when) for job, when in sorted(next_runs.items(), key=lambda item: item[1])
        }
    return body


def audit_event(event: AuditEvent) -> dict[str, Any]:
    """An audit event, its ``details`` as the JSON value they hold (stored as text; an
    unparsable value is given as the text it is)."""
    body = dataclasses.asdict(event)
    body["at"] = event.at.isoformat()
    if isinstance(body.get("details"), str):
        with contextlib.suppress(ValueError):
            body["details"] = json.loads(body["details"])
    return body


def audit(events: list[AuditEvent]) -> list[dict[str, Any]]:
    return [audit_event(e) for e in events]


def restore(report: RestoreReport) -> dict[str, Any]:
    return {
        "key": report.key,
        "passed": report.passed,
        "database": report.database,
        "kept": report.kept,
        "durations": report.durations,
        "amcheck": report.amcheck,
        "notes": report.notes,
        "ledger_proof": report.ledger_proof,
        "checks": [
            {"name": c.name, "passed": c.passed, "expected": c.expected, "found": c.found}
            for c in report.checks
        ],
    }


def prune(reports: list[PruneReport]) -> list[dict[str, Any]]:
    return [
        {
            "store": r.location,
            "applied": r.applied,
            "paused": r.plan.paused,
            "decisions": [
                {"key": d.key.key, "keep": d.keep, "reasons": list(d.reasons)}
                for d in r.plan.decisions
            ],
            "incomplete_untouched": r.incomplete,
            "orphan_side_files": r.orphan_side_files,
            "deleted": r.deleted,
            "errors": r.errors,
        }
        | ({"base_backups": _prune_wal(r)} if r.wal is not None else {})
        for r in reports
    ]


def _prune_wal(r: PruneReport) -> dict[str, Any]:
    assert r.wal is not None
    return {
        "paused": r.wal.paused,
        "decisions": [
            {"stamp": d.base.stamp, "keep": d.keep, "reasons": list(d.reasons)}
            for d in r.wal.decisions
        ],
        "orphans": r.wal.orphans,
        "wal_keep_from": r.wal.keep_from.name if r.wal.keep_from else None,
        "wal_to_delete": len(r.wal.wal_to_delete),
        "bases_deleted": r.bases_deleted,
        "wal_deleted": r.wal_deleted,
    }


def policy_item(item: PolicyItem) -> dict[str, Any]:
    return {
        "name": item.name,
        "ok": item.ok,
        "unsupported": item.unsupported,
        "current": item.current,
        "recommended": item.recommended,
    }


def policies(results: list[StorePolicies]) -> dict[str, Any]:
    return {
        r.location: {"ok": r.ok, "items": [policy_item(i) for i in r.items], "errors": r.errors}
        for r in results
    }


MAX_GAPS_SHOWN = 20  # segment names; the count is always whole


def wal_problem(problem: WalProblem) -> dict[str, Any]:
    return {"code": problem.code, "message": problem.message, "next_step": problem.next_step}


def wal(status: WalStatus) -> dict[str, Any]:
    """Continuous protection's health, for ``status --json``: ``recoverable_window`` and
    ``recovery_point_lag_seconds`` (a fixed interface, as they were), the slot, the receiver,
    the archive's gaps, the last base backup and the problems with their next steps."""
    lag = status.recovery_point_lag_seconds
    slot = status.slot
    share = slot.retained_share
    return {
        "recoverable_window": status.window.as_dict(),
        "recovery_point_lag_seconds": round(lag, 3) if lag is not None else None,
        "last_base_backup": _iso(status.last_base_backup),
        "slot": {
            "name": slot.name,
            "exists": slot.exists,
            "active": slot.active,
            "wal_status": slot.wal_status,
            "retained_bytes": slot.retained_bytes,
            "safe_wal_size": slot.safe_wal_size,
            "max_slot_wal_keep_size": slot.max_keep_bytes,
            "retained_share": round(share, 4) if share is not None else None,
            "error": slot.error,
        },
        "receiver_last_seen": _iso(status.receiver_last_seen),
        "wal_gaps": {
            "count": len(status.gaps),
            "segments": [g.name for g in status.gaps[:MAX_GAPS_SHOWN]],
        },
        "chain_broken": status.chain_broken,
        "problems": [wal_problem(p) for p in status.problems()],
    }
