"""Plain-text renderings of engine results for terminals (the CLI and the console).

Everything read back from storage — reasons, actors, keys, causes — is untrusted: ``_safe``
makes control characters visible, so a stored reason can never print a fake
"✓ backup uploaded and verified" line or move the cursor.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len, set_cell_size

from core.database import PgTarget
from core.errors import EXIT_USAGE, EngineError
from core.redact import neutralise

if TYPE_CHECKING:
    from core.audit import AuditEvent
    from core.bucket_policy import StorePolicies
    from core.catalog import BackupEntry, FreshnessStatus
    from core.manifest import Manifest
    from core.prune import PruneReport
    from core.restore.service import RestoreReport
    from core.wal.health import SlotState, WalStatus
    from core.wal.recovery import RecoveryResult


def _safe(value: Any) -> str:
    return neutralise("" if value is None else str(value))


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def cut(text: str, width: int) -> str:
    """Given text, return it in at most ``width`` terminal cells, ending with "…" if cut."""
    if cell_len(text) <= width:
        return text
    return set_cell_size(text, max(0, width - 1)).rstrip() + "…"


def _column(text: str, width: int) -> str:
    """text cut to ``width`` cells and padded to exactly that many (wide characters count 2)."""
    text = cut(text, width)
    return text + " " * (width - cell_len(text))


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


def backup(manifest: Manifest, bucket: str) -> str:
    lines = [
        "✓ backup uploaded and verified",
        f"  key       s3://{bucket}/{_safe(manifest.key)}",
        f"  size      {human_size(manifest.size)} "
        f"({_count(manifest.size, 'byte')}, {_count(manifest.part_count, 'part')})",
        f"  sha256    {manifest.sha256}",
        f"  verified  {manifest.verification}",
        f"  duration  {human_duration(manifest.duration_seconds)}",
        f"  database  {_safe(manifest.database)} (PostgreSQL {_safe(manifest.server_version)}), "
        f"{_count(sum(manifest.stats.row_counts.values()), 'row')} in "
        f"{_count(len(manifest.stats.row_counts), 'table')}",
    ]
    for replica in manifest.replicas:
        mark = "✓" if replica.get("status") == "verified" else "✗"
        lines.append(
            f"  replica   {mark} s3://{_safe(replica.get('bucket'))}/{_safe(replica.get('key'))} "
            f"({_safe(replica.get('method'))}"
            + (f": {_safe(replica.get('error'))}" if replica.get("error") else "")
            + ")"
        )
    return "\n".join(lines)


def entries(items: list[BackupEntry]) -> str:
    if not items:
        return "no backups yet"
    rows = [f"{'KEY':<44} {'STARTED (UTC)':<20} {'SIZE':>10}  {'BY':<16} REASON"]
    for e in items:
        m = e.manifest
        if e.complete and m is not None:
            by, note = f"{m.trigger}:{m.actor}", m.reason or ""
        else:
            by, note = "(incomplete)", e.problem or ""
        rows.append(
            f"{_safe(e.key.key):<44} {e.started_at:%Y-%m-%d %H:%M:%S}  "
            f"{human_size(e.size):>10}  {_column(_safe(by), 16)} {_safe(note)}".rstrip()
        )
    return "\n".join(rows)


def status(state: FreshnessStatus, next_runs: dict[str, datetime] | None = None) -> str:
    """Freshness as a person reads it: healthy or the breaches, newest and oldest backup, the
    last restore test (a failed one with what each failed check expected and found), counts,
    incomplete backups, and when the scheduler runs each job next."""
    head = "✓ healthy" if state.healthy else "✗ " + "; ".join(_safe(b) for b in state.breaches)
    lines = [head]
    if state.newest is not None and state.newest_age_hours is not None:
        lines.append(
            f"  newest    {_safe(state.newest.key.key)} ({state.newest_age_hours:.1f} h old, "
            f"limit {state.stale_after_hours:g} h)"
        )
    if state.oldest is not None:
        lines.append(f"  oldest    {_safe(state.oldest.key.key)}")
    test = state.last_restore_test
    gone = " (that backup has been deleted since)"
    if test is None:
        lines.append("  restore   no restore test yet: run blnk-backup restore-test latest")
    elif test.get("passed") is True:
        when = _safe(test.get("finished_at"))[:19].replace("T", " ")
        lines.append(
            f"  restore   last backup proven restorable: {_safe(test.get('key'))}, at {when} UTC"
            + (gone if test.get("backup_deleted") is True else "")
        )
    else:
        lines.append(
            f"  restore   last restore test FAILED: {_safe(test.get('key'))}"
            + (gone if test.get("backup_deleted") is True else "")
        )
        lines += _failed_test_lines(test)
    proof = test.get("ledger_proof") if test is not None else None
    if isinstance(proof, dict) and proof.get("headline"):
        mark = "✓" if proof.get("passed") is True else "✗" if proof.get("passed") is False else "-"
        lines.append(f"  ledger    {mark} {_safe(proof.get('headline'))}")
    lines.append(
        f"  backups   {state.complete_count:,} complete, {human_size(state.total_size)} in all"
        + (f", {state.incomplete_count:,} incomplete" if state.incomplete_count else "")
    )
    for e in state.incomplete[:10]:
        lines.append(f"  ! {_safe(e.key.key)}: {_safe(e.problem)}")
    if len(state.incomplete) > 10:
        lines.append(f"  ! … and {len(state.incomplete) - 10} more (blnk-backup list --all)")
    runs = sorted((next_runs or {}).items(), key=lambda item: item[1])
    for i, (job, at) in enumerate(runs):
        label = "next runs" if i == 0 else ""
        lines.append(
            f"  {label:<9} {_column(_safe(job), 16)} {at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        )
    return "\n".join(lines)


def _failed_test_lines(test: dict[str, Any]) -> list[str]:
    """Why the last restore test failed (its record is read back from the bucket: untrusted):
    the error, or each failed check with what it expected and what it found."""
    lines = []
    if test.get("error"):
        lines.append(f"            {_safe(test.get('error'))}")
    failed = test.get("failed_checks")
    if isinstance(failed, list):
        checks = [c for c in failed if isinstance(c, dict)]
        for check in checks[:10]:
            lines.append(
                f"            ✗ {_safe(check.get('name'))}: expected {_safe(check.get('expected'))}"
                f", found {_safe(check.get('found'))}"
            )
        if len(checks) > 10:
            lines.append(f"            … and {len(checks) - 10} more failed checks")
    return lines


AUDIT_CAUSE_WIDTH = 100  # of an error's first line; `audit --json` has it whole


def audit(events: list[AuditEvent], *, action: str | None = None) -> str:
    """The audit log as aligned columns (time UTC, action, outcome, who, what), newest first;
    a value too long for its column, or a long cause, is cut with "…"."""
    if not events:
        return f"no {action} events in the audit log" if action else "the audit log is empty"
    rows = []
    for e in events:
        what = _safe(e.key or "")
        if e.error_code:
            cause = (e.error_cause or "").splitlines()[0] if e.error_cause else ""
            what = f"{_safe(e.error_code)}: {cut(_safe(cause), AUDIT_CAUSE_WIDTH)}"
        elif e.reason:
            reason = cut(_safe(e.reason), AUDIT_CAUSE_WIDTH)
            what = f"{what} ({reason})" if what else reason
        rows.append(
            (
                f"{e.at:%Y-%m-%d %H:%M:%S}",
                _safe(e.action),
                _safe(e.outcome),
                f"{_safe(e.trigger)}:{_safe(e.actor)}",
                what,
            )
        )
    head = ("TIME (UTC)", "ACTION", "OUTCOME", "BY", "WHAT")
    limits = (19, 18, 10, 24)
    widths = [
        min(limit, max(cell_len(row[i]) for row in [head, *rows])) for i, limit in enumerate(limits)
    ]
    return "\n".join(
        (
            "  ".join(_column(row[i], width) for i, width in enumerate(widths)) + "  " + row[-1]
        ).rstrip()
        for row in [head, *rows]
    )


def restore(report: RestoreReport) -> str:
    what = "restored into" if report.kept else "restore-tested in scratch database"
    head = "✓" if report.passed else "✗"
    verdict = (
        "all checks passed" if report.passed else f"{len(report.failed_checks):,} check(s) FAILED"
    )
    d = report.durations
    lines = [
        f"{head} {_safe(report.key)} {what} {_safe(report.database)}: {verdict}",
        f"  time      download {human_duration(d.get('download'))}, restore "
        f"{human_duration(d.get('restore'))}, checks {human_duration(d.get('checks'))}, "
        f"total {human_duration(d.get('total'))}",
        f"  checks    {len(report.checks):,} ({_safe(report.amcheck)})",
    ]
    lines += _ledger_proof_lines(report.ledger_proof)
    for note in report.notes:
        lines.append(f"  note      {_safe(note)}")
    for check in report.failed_checks:
        lines.append(
            f"  ✗ {_safe(check.name)}: expected {_safe(check.expected)}, found {_safe(check.found)}"
        )
    return "\n".join(lines)


def _ledger_proof_lines(proof: dict[str, Any] | None) -> list[str]:
    """The ledger proof of a restore: its headline, then what it could not check and why,
    its warnings and what a person should know (e.g. transactions not chained yet)."""
    if not proof:
        return []
    mark = "✓" if proof.get("passed") is True else "✗" if proof.get("passed") is False else "-"
    lines = [f"  ledger    {mark} {_safe(proof.get('headline'))}"]
    for label, field in (("skipped", "skipped"), ("warning", "warnings"), ("info", "info")):
        items = proof.get(field)
        if isinstance(items, list):  # a record read back from the bucket is untrusted
            lines += [f"  {label:<9} {_safe(item)}" for item in items]
    return lines


def quote_identifier(name: str) -> str:
    """Quote a PostgreSQL identifier the way the server parses it: in double quotes, with each
    double quote doubled. Printed SQL stays one harmless statement whatever the name."""
    return '"' + neutralise(name).replace('"', '""') + '"'


def switch_over(new: PgTarget, current_dbname: str) -> str:
    """How to point Blnk at a restored database: the new URL, or SQL that swaps the names."""
    new_name = new.dbname
    old = quote_identifier(current_dbname)
    backup_name = quote_identifier(current_dbname[:48] + "_before_restore")
    return (
        "To switch Blnk over: stop Blnk, point BLNK_DATA_SOURCE_DNS (or data_source.dns in "
        f"blnk.json) at\n  {new.display}\nkeeping your user and password, then start Blnk. "
        "Or swap names while Blnk is stopped:\n"
        f"  ALTER DATABASE {old} RENAME TO {backup_name};\n"
        f"  ALTER DATABASE {quote_identifier(new_name)} RENAME TO {old};"
    )


def _prune_wal_lines(r: PruneReport) -> list[str]:
    from core.prune import wal_summary

    assert r.wal is not None
    lines = [f"  {_safe(wal_summary(r.wal))}"]
    for d in r.wal.decisions:
        mark = "keep  " if d.keep else "DELETE"
        lines.append(f"  {mark} base {d.base.stamp}  {'; '.join(_safe(x) for x in d.reasons)}")
    for key in r.wal.orphans:
        lines.append(f"  remove {_safe(key)}  no base.json: never usable")
    if r.applied:
        lines.append(
            f"  deleted {len(r.bases_deleted):,} base backups and {r.wal_deleted:,} WAL files"
        )
    return lines


def prune(reports: list[PruneReport]) -> str:
    lines = []
    for r in reports:
        deleting = r.plan.to_delete
        mode = "deleted" if r.applied and not r.plan.paused else "would delete (dry run)"
        lines.append(f"{_safe(r.location)}: keep {len(r.plan.to_keep):,}, {mode} {len(deleting):,}")
        if r.plan.paused:
            lines.append(f"  ⏸ paused: {_safe(r.plan.paused)}")
        for d in r.plan.decisions:
            mark = "keep  " if d.keep else "DELETE"
            lines.append(f"  {mark} {_safe(d.key.key)}  {'; '.join(_safe(x) for x in d.reasons)}")
        for key, problem in r.incomplete.items():
            lines.append(f"  skip   {_safe(key)}  not a complete backup ({_safe(problem)})")
        for key in r.orphan_side_files:
            verb = "removed" if r.applied and not r.plan.paused else "will remove"
            lines.append(f"  {verb} {_safe(key)}  its dump is gone (an interrupted prune)")
        if r.wal is not None:
            lines += _prune_wal_lines(r)
        for error in r.errors:
            lines.append(f"  ✗ {_safe(error)}")
    if reports and not reports[0].applied:
        lines.append("dry run: nothing was deleted; run with --apply to delete")
    return "\n".join(lines)


def policies(results: list[StorePolicies], applied: bool) -> str:
    lines = []
    for result in results:
        lines.append(f"{_safe(result.location)} ({'after apply' if applied else 'check'})")
        for item in result.items:
            if item.ok:
                lines.append(f"  ✓ {item.name}: {_safe(item.current)}")
            elif item.unsupported:
                lines.append(f"  - {item.name}: not supported by this store")
            else:
                lines.append(
                    f"  ✗ {item.name}: {_safe(item.current)} (recommended: {item.recommended})"
                )
        for error in result.errors:
            lines.append(f"  ✗ {_safe(error)}")
    if not applied and not all(r.ok for r in results):
        lines.append("run `blnk-backup bucket apply --yes` to apply what is missing")
    return "\n".join(lines)


def error_line(exc: EngineError) -> str:
    """How a command's error reads on stderr: a usage or configuration problem as the
    person's to fix (``error: …``), anything else with its code."""
    if exc.exit_status == EXIT_USAGE:
        return f"error: {exc}"
    return f"✗ {exc.code}: {exc}"


def wal(status: WalStatus) -> str:
    """The point-in-time recovery lines of ``status``: the recoverable window, the recovery
    point's lag, the slot, the receiver, the last base backup, then each problem and what to
    do next."""
    window = status.window
    limits = status.limits
    lines = []
    if window.earliest is None or window.latest is None:
        lines.append(
            "Point-in-time recovery: nothing recoverable yet (no base backup with its WAL)"
        )
    else:
        lag = status.recovery_point_lag_seconds or 0.0
        over = f"  ✗ over {limits.max_lag_seconds:,.0f} s" if lag > limits.max_lag_seconds else ""
        lines += [
            f"Point-in-time recovery: {_when(window.earliest)} .. {_when(window.latest)}",
            f"  recovery point {lag:,.1f} s behind now{over}",
        ]
    lines += [
        f"  slot           {slot_line(status.slot)}",
        f"  receiver       {receiver_line(status)}",
        f"  base backups   {window.base_backups:,}, the last {_when(window.last_base_backup)}",
    ]
    if status.gaps:
        lines.append(f"  archive        {len(status.gaps):,} WAL segment(s) missing")
    for problem in status.problems():
        lines.append(f"✗ {problem.code}: {_safe(problem.message)}")
        lines.append(f"    next: {_safe(problem.next_step)}")
    return "\n".join(lines)


def slot_line(slot: SlotState) -> str:
    """The replication slot in one line: active or not, wal_status, the WAL it keeps and the
    share of its cap (shared by the terminal and Slack renderers: our own wording)."""
    if slot.error is not None:
        return f"{slot.name}: could not be read ({_safe(slot.error)})"
    if not slot.exists:
        return f"{slot.name}: does not exist"
    state = "active" if slot.active else "NOT active"
    line = f"{slot.name}: {state}, {slot.wal_status or 'no WAL reserved'}"
    if slot.retained_bytes is not None:
        line += f"; keeps {human_size(slot.retained_bytes)}"
        share = slot.retained_share
        if slot.max_keep_bytes and share is not None:
            line += f", {share:.0%} of its {human_size(slot.max_keep_bytes)} cap"
    if slot.max_keep_bytes is None:
        line += "; no cap (max_slot_wal_keep_size = -1)"
    return line


def receiver_line(status: WalStatus) -> str:
    """When the WAL receiver last refreshed its position in the bucket."""
    age = status.receiver_age_seconds()
    if status.receiver_last_seen is None or age is None:
        return "never seen (no wal/position.json)"
    return f"last seen {_when(status.receiver_last_seen)} ({human_duration(age)} ago)"


def behind_primary(result: RecoveryResult) -> str:
    """How far the point a restore test reached was behind the primary when it began."""
    parts = []
    if result.behind_primary_seconds is not None:
        parts.append(f"{result.behind_primary_seconds:,.1f} s")
    if result.behind_primary_bytes is not None:
        parts.append(f"{result.behind_primary_bytes:,} bytes of WAL")
    said = " and ".join(parts) or "unknown"
    return f"{said} behind the primary ({result.primary_lsn}) when the test began"


def recovery(result: RecoveryResult) -> str:
    """A point-in-time recovery's result."""
    lines = [
        f"{'✓' if result.passed else '✗'} recovered to {_when(result.target)} from "
        f"{result.base} in {result.seconds:,.1f} s",
        f"  stopped {result.stopped}; last transaction at "
        f"{_when(result.last_transaction_at)}; LSN {result.lsn or '?'}; "
        f"timeline {result.timeline}",
    ]
    if result.proof is not None:
        lines.append(f"  {result.proof.headline()}")
    if result.primary_lsn is not None:
        lines.append(f"  recovery point: {behind_primary(result)}")
    if result.database:
        lines.append(f"  the Blnk database is in the new database {result.database!r}")
    if result.cluster:
        lines.append(f"  the recovered cluster is in {result.cluster} (stopped)")
    lines += [f"  note: {n}" for n in result.notes]
    return neutralise("\n".join(lines))


def _when(when: datetime | None) -> str:
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if when else "unknown"
