"""Plain-text and JSON renderings of engine results, shared by the CLI and the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from core.audit import AuditEvent
from core.bucket_policy import PolicyItem
from core.catalog import BackupEntry, FreshnessStatus
from core.manifest import Manifest
from core.prune import PruneReport
from core.restore import RestoreReport


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def backup_json(manifest: Manifest, bucket: str) -> dict[str, Any]:
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
    }


def backup_text(manifest: Manifest, bucket: str) -> str:
    return "\n".join(
        [
            "✓ backup uploaded and verified",
            f"  key       s3://{bucket}/{manifest.key}",
            f"  size      {human_size(manifest.size)} "
            f"({manifest.size} bytes, {manifest.part_count} parts)",
            f"  sha256    {manifest.sha256}",
            f"  verified  {manifest.verification}",
            f"  duration  {human_duration(manifest.duration_seconds)}",
            f"  database  {manifest.database} (PostgreSQL {manifest.server_version}), "
            f"{sum(manifest.stats.row_counts.values())} rows in "
            f"{len(manifest.stats.row_counts)} tables",
        ]
    )


def entry_json(entry: BackupEntry) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key": entry.key.key,
        "started_at": _iso(entry.started_at),
        "size": entry.size,
        "complete": entry.complete,
    }
    if entry.manifest is not None:
        body |= {
            "sha256": entry.manifest.sha256,
            "duration_seconds": entry.manifest.duration_seconds,
            "trigger": entry.manifest.trigger,
            "actor": entry.manifest.actor,
            "reason": entry.manifest.reason,
        }
    return body


def list_text(entries: list[BackupEntry]) -> str:
    if not entries:
        return "no backups yet"
    rows = [f"{'KEY':<44} {'STARTED (UTC)':<20} {'SIZE':>10}  {'BY':<16} REASON"]
    for e in entries:
        m = e.manifest
        by = f"{m.trigger}:{m.actor}" if m else "(incomplete)"
        rows.append(
            f"{e.key.key:<44} {e.started_at:%Y-%m-%d %H:%M:%S}  {human_size(e.size):>10}  "
            f"{by[:16]:<16} {(m.reason or '') if m else ''}"
        )
    return "\n".join(rows)


def status_json(status: FreshnessStatus) -> dict[str, Any]:
    return {
        "healthy": status.healthy,
        "breaches": status.breaches,
        "checked_at": _iso(status.checked_at),
        "stale_after_hours": status.stale_after_hours,
        "complete_backups": status.complete_count,
        "incomplete_backups": status.incomplete_count,
        "total_size": status.total_size,
        "newest": entry_json(status.newest) if status.newest else None,
        "newest_age_hours": (
            round(status.newest_age_hours, 3) if status.newest_age_hours is not None else None
        ),
        "oldest": entry_json(status.oldest) if status.oldest else None,
        "last_restore_test": status.last_restore_test,
    }


def status_text(status: FreshnessStatus) -> str:
    head = "✓ healthy" if status.healthy else "✗ " + "; ".join(status.breaches)
    lines = [head]
    if status.newest is not None and status.newest_age_hours is not None:
        lines.append(
            f"  newest    {status.newest.key.key} ({status.newest_age_hours:.1f} h old, "
            f"limit {status.stale_after_hours:g} h)"
        )
    if status.oldest is not None:
        lines.append(f"  oldest    {status.oldest.key.key}")
    test = status.last_restore_test
    if test is None:
        lines.append("  restore   no restore test yet: run blnk-backup restore-test latest")
    elif test.get("passed"):
        when = str(test.get("finished_at", ""))[:19].replace("T", " ")
        lines.append(f"  restore   last backup proven restorable: {test.get('key')}, at {when} UTC")
    else:
        lines.append(f"  restore   last restore test FAILED: {test.get('key')}")
    lines.append(
        f"  backups   {status.complete_count} complete, {human_size(status.total_size)} in all"
        + (f", {status.incomplete_count} without manifest" if status.incomplete_count else "")
    )
    return "\n".join(lines)


def audit_json(event: AuditEvent) -> dict[str, Any]:
    return event.model_dump(mode="json")


def audit_text(events: list[AuditEvent]) -> str:
    if not events:
        return "the audit log is empty"
    rows = []
    for e in events:
        what = e.key or ""
        if e.error_code:
            what = f"{e.error_code}: {(e.error_cause or '').splitlines()[0][:100]}"
        rows.append(
            f"{e.at:%Y-%m-%d %H:%M:%S}  {e.action:<16} {e.outcome:<10} "
            f"{e.trigger}:{e.actor:<12} {what}"
        )
    return "\n".join(rows)


def restore_json(report: RestoreReport) -> dict[str, Any]:
    return {
        "key": report.key,
        "passed": report.passed,
        "database": report.database,
        "kept": report.kept,
        "durations": report.durations,
        "amcheck": report.amcheck,
        "checks": [
            {"name": c.name, "passed": c.passed, "expected": c.expected, "found": c.found}
            for c in report.checks
        ],
    }


def restore_text(report: RestoreReport) -> str:
    what = "restored into" if report.kept else "restore-tested in scratch database"
    head = "✓" if report.passed else "✗"
    verdict = (
        "all checks passed" if report.passed else f"{len(report.failed_checks)} check(s) FAILED"
    )
    d = report.durations
    lines = [
        f"{head} {report.key} {what} {report.database}: {verdict}",
        f"  time      download {human_duration(d.get('download'))}, restore "
        f"{human_duration(d.get('restore'))}, checks {human_duration(d.get('checks'))}, "
        f"total {human_duration(d.get('total'))}",
        f"  checks    {len(report.checks)} ({report.amcheck})",
    ]
    for check in report.failed_checks:
        lines.append(f"  ✗ {check.name}: expected {check.expected}, found {check.found}")
    return "\n".join(lines)


def prune_json(reports: list[PruneReport]) -> list[dict[str, Any]]:
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
        for r in reports
    ]


def prune_text(reports: list[PruneReport]) -> str:
    lines = []
    for r in reports:
        deleting = r.plan.to_delete
        mode = "deleted" if r.applied and not r.plan.paused else "would delete (dry run)"
        lines.append(f"{r.location}: keep {len(r.plan.to_keep)}, {mode} {len(deleting)}")
        if r.plan.paused:
            lines.append(f"  ⏸ paused: {r.plan.paused}")
        for d in r.plan.decisions:
            mark = "keep  " if d.keep else "DELETE"
            lines.append(f"  {mark} {d.key.key}  {'; '.join(d.reasons)}")
        for key in r.incomplete:
            lines.append(f"  skip   {key}  no manifest: not a complete backup, never pruned")
        for key in r.orphan_side_files:
            verb = "removed" if r.applied and not r.plan.paused else "will remove"
            lines.append(f"  {verb} {key}  its dump is gone (an interrupted prune)")
        for error in r.errors:
            lines.append(f"  ✗ {error}")
    if reports and not reports[0].applied:
        lines.append("dry run: nothing was deleted; run with --apply to delete")
    return "\n".join(lines)


def policy_json(item: PolicyItem) -> dict[str, Any]:
    return {
        "name": item.name,
        "ok": item.ok,
        "current": item.current,
        "recommended": item.recommended,
    }


def policy_text(results: dict[str, list[PolicyItem]], applied: bool) -> str:
    lines = []
    for location, items in results.items():
        lines.append(f"{location} ({'after apply' if applied else 'check'})")
        for item in items:
            if item.ok:
                lines.append(f"  ✓ {item.name}: {item.current}")
            else:
                lines.append(f"  ✗ {item.name}: {item.current} (recommended: {item.recommended})")
    if not applied and not all(i.ok for items in results.values() for i in items):
        lines.append("run `blnk-backup bucket apply --yes` to apply what is missing")
    return "\n".join(lines)
