"""Block Kit renderings of engine results for Slack, built with slack_sdk's block models.

Every function returns a ``Message`` (fallback ``text`` plus ``blocks``) that has passed
``slack_limits.validate_message``; ``home_view`` returns a view that has passed
``validate_view``. Long lists end with "… and N more" rather than break a limit.

Everything that comes from a person or from storage — reasons, keys, actor names, error causes,
check names, approval summaries — is untrusted. ``escape`` makes control characters visible
(``core.redact.neutralise``: a newline cannot start a fake "✓ backup verified" line) and
escapes ``&``, ``<`` and ``>``, so ``<!channel>`` cannot ping anyone and ``<http://x|y>`` cannot
forge a link; every mrkdwn text object is also sent with ``verbatim`` on, so Slack does not
turn bare "@channel" or URLs into mentions and links. Texts are cut with
``truncate_mrkdwn``, which never splits an escape. Slack user IDs (``U…``/``W…``) are shown
as mentions; anything else is shown as escaped text. Plain-text objects (headers, buttons)
only ever hold our own wording.

Times are shown in UTC, sizes in binary units with the exact byte count where it matters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from bot.render.slack_limits import (
    MAX_FIELD_TEXT,
    MAX_FIELDS,
    MAX_HEADER_TEXT,
    MAX_MESSAGE_BLOCKS,
    MAX_SECTION_TEXT,
    MAX_VIEW_BLOCKS,
    Block,
    budget_left,
    fit,
    pack_lines,
    truncate_mrkdwn,
    validate_message,
    validate_view,
)
from bot.render.text import human_duration, human_size, receiver_line, slot_line
from core.redact import neutralise

if TYPE_CHECKING:
    from core.approvals import Approval
    from core.audit import AuditEvent
    from core.bucket_policy import StorePolicies
    from core.catalog import BackupEntry, FreshnessStatus
    from core.manifest import Manifest
    from core.prune import PruneReport
    from core.restore.service import RestoreReport
    from core.wal.health import WalStatus
    from core.wal.recovery import RecoveryResult

__all__ = [
    "Message",
    "alert",
    "already_running",
    "approval_decided",
    "approval_request",
    "audit",
    "backup_progress",
    "backup_succeeded",
    "backups_list",
    "clip",
    "escape",
    "help_message",
    "home_view",
    "mention",
    "operation_failed",
    "policies",
    "prune_plan",
    "recovery_result",
    "refusal",
    "restore_progress",
    "restore_result",
    "status",
    "usage",
    "wal_blocks",
]

APPROVE_ACTION = "approval_approve"
DENY_ACTION = "approval_deny"
APPROVAL_BLOCK_PREFIX = "approval:"  # block_id of the buttons: approval:<id>
MAX_FALLBACK = 3000  # our own fallback texts stay short: they are notifications
_USER_ID = re.compile(r"[UW][A-Z0-9]{1,30}")
_TRIGGER_NAMES = {"cli": "CLI", "api": "HTTP API", "slack": "Slack", "console": "console"}


@dataclass
class Message:
    """A Slack message: the fallback ``text`` (notifications, screen readers, old clients) and
    the Block Kit ``blocks``. Pass both to chat.postMessage / chat.update."""

    text: str
    blocks: list[dict[str, Any]]


# --- escaping -----------------------------------------------------------------------------------
def escape(value: object) -> str:
    """Given untrusted text, return it safe inside mrkdwn: control characters made visible and
    ``&``, ``<``, ``>`` escaped (so it cannot mention, ping or link)."""
    text = neutralise("" if value is None else str(value))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(value: object, limit: int = 300) -> str:
    """Like escape, and at most ``limit`` characters once escaped (cut with "…", never inside
    an escape)."""
    return truncate_mrkdwn(escape(value), limit)


def _code(value: object, limit: int = 300) -> str:
    """Untrusted text as inline code; a backtick inside cannot end the code span."""
    return "`" + clip("?" if value is None else str(value).replace("`", "\u02cb"), limit - 2) + "`"


def _plain(text: str, limit: int) -> str:
    """Our own wording for a plain_text object: one line, at most ``limit`` characters, and no
    angle brackets even so."""
    text = neutralise(text).replace("<", "\u2039").replace(">", "\u203a")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def mention(who: str | None) -> str:
    """Show who asked: a Slack user ID (``U…``/``W…``, also as ``slack:U…``) becomes a
    mention; ``schedule:…`` is the scheduler; anything else is escaped text."""
    if who is None or not str(who).strip():
        return "_unknown_"
    raw = str(who).strip()
    trigger, _, name = raw.partition(":")
    if not name:
        trigger, name = "", raw
    if trigger in ("", "slack") and _USER_ID.fullmatch(name):
        return f"<@{name}>"
    if trigger == "schedule":
        return "the scheduler"
    if trigger in _TRIGGER_NAMES:
        return f"{clip(name, 100)} ({_TRIGGER_NAMES[trigger]})"
    return clip(raw, 100)


def _actor(trigger: str | None, name: str | None) -> str:
    return mention(f"{trigger}:{name}" if trigger else name)


def _utc(when: datetime | None, seconds: bool = True) -> str:
    if when is None:
        return "-"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M{':%S' if seconds else ''}} UTC"


def _bytes(size: int) -> str:
    return f"{human_size(size)} ({size:,} bytes)"


def _first_line(message: object) -> str:
    lines = [ln.strip() for ln in str(message or "").splitlines() if ln.strip()]
    return lines[0] if lines else "no details were given"


# --- blocks -------------------------------------------------------------------------------------
def _mrkdwn(text: str) -> MarkdownTextObject:
    return MarkdownTextObject(text=text, verbatim=True)


def _section(text: str, *, block_id: str | None = None) -> Block:
    text = text if text.strip() else "_(empty)_"  # Slack refuses an empty text
    block: Block = SectionBlock(
        text=_mrkdwn(truncate_mrkdwn(text, MAX_SECTION_TEXT)), block_id=block_id
    ).to_dict()
    return block


def _fields(pairs: Sequence[tuple[str, str]]) -> list[Block]:
    """Label/value pairs (values already escaped mrkdwn) as one or two sections of fields."""
    items = [
        _mrkdwn(truncate_mrkdwn(f"*{label}*\n{value}", MAX_FIELD_TEXT)) for label, value in pairs
    ]
    return [
        SectionBlock(fields=items[i : i + MAX_FIELDS]).to_dict()
        for i in range(0, len(items), MAX_FIELDS)
    ]


def _header(text: str) -> Block:
    block: Block = HeaderBlock(
        text=PlainTextObject(text=_plain(text, MAX_HEADER_TEXT) or "(untitled)", emoji=True)
    ).to_dict()
    return block


def _context(*texts: str) -> Block:
    block: Block = ContextBlock(
        elements=[_mrkdwn(truncate_mrkdwn(t, MAX_SECTION_TEXT)) for t in texts if t]
    ).to_dict()
    return block


def _divider() -> Block:
    block: Block = DividerBlock().to_dict()
    return block


def _lines(
    lines: Sequence[str],
    *,
    max_blocks: int,
    budget: int | None,
    more: Callable[[int], str] = lambda n: f"_… and {n} more_",
) -> list[Block]:
    return pack_lines(lines, _section, max_blocks=max_blocks, budget=budget, more_line=more)


def _message(text: str, blocks: list[Block]) -> Message:
    fallback = truncate_mrkdwn(text, MAX_FALLBACK)
    validate_message(fallback, blocks)
    return Message(fallback, blocks)


def _with_list(
    head: list[Block],
    lines: Sequence[str],
    tail: list[Block],
    more: Callable[[int], str] = lambda n: f"_… and {n} more_",
) -> list[Block]:
    """head + as many of lines as fit (then "… and N more") + tail, within a message's limits."""
    room = MAX_MESSAGE_BLOCKS - len(head) - len(tail)
    body = _lines(lines, max_blocks=room, budget=budget_left(head + tail), more=more)
    return head + body + tail


# --- backups ------------------------------------------------------------------------------------
_BACKUP_STAGES = {
    "preflight": "checking the database, the bucket and the tools",
    "dumping": "dumping the database and uploading it",
    "verifying": "verifying the upload's size and checksum against the bucket",
    "replicating": "copying the backup to the second region",
    "writing_manifest": "writing the manifest (a backup counts only once it has one)",
    "done": "finished; the result follows",
}

_VERIFICATION = {
    "size+crc32-full-object": "size and the whole object's CRC32 checked against the bucket",
    "size+crc32-composite": "size and every part's CRC32 checked against the bucket",
    "size+sha256-composite": "size and SHA-256 checked against the bucket",
    "size+content-md5-parts": "size and every part's MD5 checked against the bucket",
}


def backup_progress(
    stage: str,
    key: str | None,
    uploaded: int,
    expected: int | None,
    requested_by: str,
    reason: str | None,
    elapsed: float,
) -> Message:
    """A running backup: its stage (with bytes so far while dumping), key, time, who and why."""
    doing = _BACKUP_STAGES.get(stage) or f"stage {clip(stage, 60)}"
    if stage == "dumping":
        doing += f": {_bytes(uploaded)} so far"
        if expected is not None and expected > 0:
            percent = min(99, max(0, uploaded) * 100 // expected)
            doing += f" (about {percent}% of the previous backup's size)"
    pairs = [
        ("Backup", _code(key) if key else "_key not chosen yet_"),
        ("Elapsed", human_duration(elapsed)),
        ("Requested by", mention(requested_by)),
    ]
    if reason:
        pairs.append(("Reason", clip(reason, 500)))
    blocks = [
        _section(f":hourglass_flowing_sand: *Backup running:* {doing}"),
        *_fields(pairs),
        _context(
            "This message updates as the backup goes on. "
            "Nothing is backed up until it says *verified*."
        ),
    ]
    return _message(f"Backup running: {doing}", blocks)


def _replica_line(replica: dict[str, Any]) -> str:
    where = _code(f"s3://{replica.get('bucket')}/{replica.get('key')}", 400)
    if replica.get("status") == "verified":
        return f"✓ {where} ({clip(replica.get('method'), 60)})"
    return f"✗ {where}: {clip(_first_line(replica.get('error') or 'not verified'), 300)}"


def backup_succeeded(manifest: Manifest, bucket: str, requested_by: str) -> Message:
    """A verified backup: key, size, SHA-256 (in full: people compare it with sha256sum),
    duration, who and why, verification, replicas."""
    location = f"s3://{bucket}/{manifest.key}"
    verification = _VERIFICATION.get(manifest.verification)
    verified = (
        f"{verification} ({_code(manifest.verification, 80)})"
        if verification
        else _code(manifest.verification, 200)
    )
    replicas = [_replica_line(r) for r in manifest.replicas[:5]]
    if len(manifest.replicas) > 5:
        replicas.append(f"_… and {len(manifest.replicas) - 5} more_")
    rows = sum(manifest.stats.row_counts.values())
    pairs = [
        ("Size", _bytes(manifest.size)),
        ("SHA-256", _code(manifest.sha256)),
        ("Duration", human_duration(manifest.duration_seconds)),
        ("Verified", verified),
        ("Requested by", mention(requested_by)),
        ("Reason", clip(manifest.reason, 500) if manifest.reason else "_none given_"),
        (
            "Database",
            f"{_code(manifest.database, 100)} (PostgreSQL {clip(manifest.server_version, 40)})",
        ),
        ("Second region", "\n".join(replicas) if replicas else "_not configured_"),
    ]
    blocks = [
        _header(":white_check_mark: Backup complete and verified"),
        _section(_code(location, 1000)),
        *_fields(pairs),
        _context(
            f"Started {_utc(manifest.started_at)}, finished {_utc(manifest.finished_at)} · "
            f"{rows:,} rows in {len(manifest.stats.row_counts)} tables · "
            f"pg_dump {clip(manifest.pg_dump_version, 40)}, compression level "
            f"{manifest.compression_level}, {manifest.part_count:,} "
            + ("part" if manifest.part_count == 1 else "parts")
        ),
    ]
    text = (
        f"Backup complete and verified: {clip(location, 600)} "
        f"({_bytes(manifest.size)}, SHA-256 {manifest.sha256})"
    )
    return _message(text, blocks)


def operation_failed(
    what: str,
    code: str,
    message: str,
    requested_by: str | None = None,
    reason: str | None = None,
    error_id: str | None = None,
) -> Message:
    """A failure in one line (the first line of the message, never a traceback)."""
    cause = clip(_first_line(message), 500)
    blocks = [
        _header(f":x: {what} failed"),
        _section(f"*Cause:* {_code(code, 80)} {cause}"),
    ]
    pairs = []
    if requested_by:
        pairs.append(("Requested by", mention(requested_by)))
    if reason:
        pairs.append(("Reason", clip(reason, 500)))
    blocks += _fields(pairs) if pairs else []
    notes = ["`/blnk-backups audit` shows the record."]
    if error_id:
        notes.insert(0, f"Error id {_code(error_id, 60)}: the details are in the bot's log.")
    blocks.append(_context(" ".join(notes)))
    return _message(f"{clip(what, 100)} failed: {clip(code, 80)}: {cause}", blocks)


def already_running(holder: str | None) -> Message:
    who = f" (started by {mention(holder)})" if holder else ""
    text = (
        f":hourglass_flowing_sand: A backup is already running{who}. Only one runs at a time; "
        "its own message shows the result. Try again when it has finished."
    )
    return _message(f"A backup is already running{who}.", [_section(text)])


# --- restores -----------------------------------------------------------------------------------
_RESTORE_STAGES = {
    "downloading": "downloading the backup and checking its SHA-256 against the manifest",
    "restoring": "restoring it into a scratch database with pg_restore",
    "checking": "comparing row counts and ledger totals with the manifest, running amcheck",
}


def restore_progress(stage: str, key: str | None, requested_by: str, elapsed: float) -> Message:
    """A running restore test: its stage, backup, time and who asked."""
    doing = _RESTORE_STAGES.get(stage) or f"stage {clip(stage, 60)}"
    blocks = [
        _section(f":hourglass_flowing_sand: *Restore test running:* {doing}"),
        *_fields(
            [
                ("Backup", _code(key) if key else "_the newest complete backup_"),
                ("Elapsed", human_duration(elapsed)),
                ("Requested by", mention(requested_by)),
            ]
        ),
        _context(
            "The scratch database is dropped at the end; the source database is never touched."
        ),
    ]
    return _message(f"Restore test running: {doing}", blocks)


def recovery_result(result: RecoveryResult, requested_by: str) -> Message:
    """A finished point-in-time recovery (or its restore test): where it got to, the ledger."""
    proof = result.proof.summary() if result.proof is not None else None
    if result.passed:
        title = f":white_check_mark: Recovered to {_utc(result.target)}"
    else:
        title = f":x: Recovered to {_utc(result.target)}, the ledger NOT proven"
    where = (
        f"into the new database {_code(result.database, 200)}"
        if result.database
        else "in a scratch cluster (removed)"
    )
    last = _utc(result.last_transaction_at) if result.last_transaction_at else "unknown"
    blocks = [
        _header(title),
        _section(f"From {_code(result.base, 300)} and the WAL after it, {where}."),
        *_fields(
            [
                ("Stopped", clip(result.stopped, 200)),
                ("Last transaction", last),
                ("LSN, timeline", f"{result.lsn or '?'}, {result.timeline}"),
                ("Ledger", ledger_line(proof)),
                ("Time (RTO)", human_duration(result.seconds)),
                ("Requested by", mention(requested_by)),
            ]
        ),
    ]
    if result.primary_lsn is not None:
        from bot.render.text import behind_primary

        blocks.append(_context(f"Recovery point: {clip(behind_primary(result), 500)}"))
    return _message(f"{title}: {result.stopped}", blocks)


def restore_result(report: RestoreReport, requested_by: str) -> Message:
    """A finished restore test (or restore): verdict, timings, checks, failed checks, notes."""
    failed = report.failed_checks
    what = "Restore" if report.kept else "Restore test"
    if report.passed:
        title = f":white_check_mark: {what} passed: all {len(report.checks)} checks"
    else:
        title = f":x: {what} FAILED: {len(failed)} of {len(report.checks)} checks"
    where = (
        f"into the new database {_code(report.database, 200)} (kept)"
        if report.kept
        else f"into the scratch database {_code(report.database, 200)} (dropped)"
    )
    d = report.durations
    timing = (
        f"download {human_duration(d.get('download'))}, "
        f"restore {human_duration(d.get('restore'))}, "
        f"checks {human_duration(d.get('checks'))}, total {human_duration(d.get('total'))}"
    )
    head = [
        _header(title),
        _section(f"{_code(report.key, 600)} restored {where}."),
        *_fields(
            [
                ("Checks", f"{len(report.checks)} run, {len(failed)} failed"),
                ("amcheck", clip(report.amcheck, 300)),
                ("Ledger", ledger_line(report.ledger_proof)),
                ("Time", timing),
                ("Requested by", mention(requested_by)),
            ]
        ),
    ]
    tail = [_context(f"Finished {_utc(report.finished_at)}")]
    notes = _lines(
        [f"*Note:* {clip(n, 500)}" for n in report.notes],
        max_blocks=2,
        budget=1500,
    )
    lines = [
        f"✗ *{clip(c.name, 200)}*: expected {_code(c.expected, 200)}, found {_code(c.found, 200)}"
        for c in failed
    ]
    blocks = _with_list(head, lines, notes + tail, more=lambda n: f"_… and {n} more failed checks_")
    verdict = (
        "passed" if report.passed else f"FAILED ({len(failed)} of {len(report.checks)} checks)"
    )
    return _message(f"{what} of {clip(report.key, 600)} {verdict}", blocks)


# --- reading ------------------------------------------------------------------------------------
def _entry_line(entry: BackupEntry) -> str:
    key = _code(entry.key.key, 300)
    manifest = entry.manifest
    if not entry.complete or manifest is None:
        return f"⚠ {key} · {human_size(entry.size)} · incomplete: {clip(entry.problem, 300)}"
    line = (
        f"{key} · {human_size(entry.size)} · {human_duration(manifest.duration_seconds)} · "
        f"{_actor(manifest.trigger, manifest.actor)}"
    )
    return line + (f" · {clip(manifest.reason, 200)}" if manifest.reason else "")


def backups_list(
    entries: list[BackupEntry],
    *,
    wal: WalStatus | None = None,
    wal_error: str | None = None,
) -> Message:
    """The backups given (newest first), one line each; incomplete ones say why. With
    WAL_ARCHIVE, point-in-time recovery after them (``wal_blocks``)."""
    pitr = wal_blocks(wal, wal_error)
    if not entries:
        text = "No backups yet. `/blnk-backup [reason]` makes one."
        return _message(text, [_section(text), *pitr])
    complete = sum(1 for e in entries if e.complete)
    head = [_header(f"Backups, newest first ({len(entries)})")]
    tail = [
        *pitr,
        _context(
            f"{complete} complete, {len(entries) - complete} incomplete. Only backups with a "
            "verified manifest count. `/blnk-restore-test KEY` proves one restorable."
        ),
    ]
    lines = [_entry_line(e) for e in entries]
    newest = entries[0].key.key
    return _message(
        f"{len(entries)} backups, the newest {clip(newest, 300)}",
        _with_list(head, lines, tail),
    )


def _restore_test_line(test: dict[str, Any] | None) -> str:
    if not isinstance(test, dict):
        return "none yet: `/blnk-restore-test latest` proves the newest backup restorable"
    when = clip(str(test.get("finished_at") or "?")[:19].replace("T", " "), 40)
    gone = " (that backup has been deleted since)" if test.get("backup_deleted") is True else ""
    if test.get("passed") is True:
        proof = test.get("ledger_proof")
        tail = f"\n{ledger_line(proof)}" if isinstance(proof, dict) else ""
        return f"✓ passed: {_code(test.get('key'), 300)}, at {when} UTC{gone}{tail}"
    why = test.get("error") or "checks failed"
    return (
        f"✗ FAILED: {_code(test.get('key'), 300)}, at {when} UTC{gone} "
        f"({clip(_first_line(why), 300)})"
    )


def ledger_line(proof: dict[str, Any] | None) -> str:
    """One line on what the restore test proved about the ledger inside the backup."""
    if not isinstance(proof, dict):
        return "not checked"
    headline = clip(proof.get("headline") or "no result", 300)
    mark = "✓" if proof.get("passed") is True else "-" if proof.get("ran") is False else "✗"
    return f"{mark} {headline}"


def _next_runs_lines(next_runs: dict[str, datetime] | None) -> list[str]:
    runs = sorted((next_runs or {}).items(), key=lambda item: item[1])
    return [f"• {clip(name, 80)}: {_utc(when, seconds=False)}" for name, when in runs]


def status(
    state: FreshnessStatus,
    next_runs: dict[str, datetime] | None = None,
    *,
    wal: WalStatus | None = None,
    wal_error: str | None = None,
) -> Message:
    """Freshness: healthy or the breaches, newest and oldest backup, last restore test, counts,
    incomplete backups and the next scheduled runs; with WAL_ARCHIVE (``wal``, or the error
    reading it) point-in-time recovery and its problems with their next steps."""
    wal_problems = [p.code for p in wal.problems()] if wal is not None else []
    healthy = state.healthy and not wal_problems and wal_error is None
    if healthy:
        head = [_header(":white_check_mark: Backups are healthy")]
    else:
        head = [_header(":warning: Backups need attention")]
        head += _lines([f"• {clip(b, 500)}" for b in state.breaches], max_blocks=2, budget=3500)
    newest = "none"
    if state.newest is not None and state.newest_age_hours is not None:
        newest = (
            f"{_code(state.newest.key.key, 300)}\n{state.newest_age_hours:.1f} h old "
            f"(limit {state.stale_after_hours:g} h)"
        )
    pairs = [
        ("Newest", newest),
        ("Oldest", _code(state.oldest.key.key, 300) if state.oldest else "none"),
        ("Complete backups", f"{state.complete_count}, {human_size(state.total_size)} in all"),
        ("Incomplete", str(state.incomplete_count)),
        ("Last restore test", _restore_test_line(state.last_restore_test)),
        ("Checked", _utc(state.checked_at)),
    ]
    head += _fields(pairs)
    head += wal_blocks(wal, wal_error)
    runs = _next_runs_lines(next_runs)
    if runs:
        head.append(_section("*Next runs*\n" + "\n".join(runs[:20])))
    lines = [f"⚠ {_code(e.key.key, 300)}: {clip(e.problem, 300)}" for e in state.incomplete]
    if len(lines) > 10:  # keep it short: the incomplete backups are listed elsewhere
        lines = [*lines[:10], f"_… and {len(lines) - 10} more incomplete_"]
    blocks = _with_list(head, lines, [])
    said = [clip(b, 300) for b in state.breaches] + [clip(c, 40) for c in wal_problems]
    said += ["the WAL archive could not be read"] if wal_error is not None else []
    summary = "healthy" if healthy else "; ".join(said)
    return _message(f"Backup status: {summary}", blocks)


# --- point-in-time recovery -----------------------------------------------------------------------
def wal_blocks(wal: WalStatus | None, error: str | None = None) -> list[Block]:
    """Point-in-time recovery for status, the list and App Home: the recoverable window, the
    recovery point now, the slot's retained WAL (and share of its cap), the receiver, the last
    base backup, then each problem with what to do next. Nothing without WAL_ARCHIVE."""
    if wal is None and error is None:
        return []
    head = _section("*Point-in-time recovery*")
    if wal is None:
        return [
            head,
            _section(f":warning: *Could not read the WAL archive:* {clip(error, 1000)}"),
        ]
    window, limit = wal.window, wal.limits.max_lag_seconds
    if window.earliest is not None and window.latest is not None:
        span = f"{_utc(window.earliest)} →\n{_utc(window.latest)}"
    else:
        span = "_nothing recoverable yet (no base backup with its WAL)_"
    lag = wal.recovery_point_lag_seconds
    point = "-" if lag is None else f"{lag:,.1f} s behind now"
    if lag is not None and lag > limit:
        point += f" :warning: over {limit:,.0f} s"
    base = (
        f"{_utc(window.last_base_backup)} ({window.base_backups:,} in all)"
        if window.last_base_backup is not None
        else "none yet"
    )
    blocks = [
        head,
        *_fields(
            [
                ("Restorable window", span),
                ("Recovery point", point),
                ("Replication slot", clip(slot_line(wal.slot), 600)),
                ("WAL receiver", clip(receiver_line(wal), 300)),
                ("Last base backup", base),
            ]
        ),
    ]
    lines = [
        f":warning: *{clip(p.code, 40)}*: {clip(p.message, 800)}\n→ {clip(p.next_step, 800)}"
        for p in wal.problems()
    ]
    return blocks + _lines(lines, max_blocks=3, budget=None)


def audit(events: list[AuditEvent]) -> Message:
    """Audit events, newest first, one line each."""
    if not events:
        return _message("The audit log is empty.", [_section("The audit log is empty.")])
    lines = []
    for e in events:
        line = (
            f"`{_utc(e.at)[:19]}` *{clip(e.action, 60)}* {clip(e.outcome, 30)} · "
            f"{_actor(e.trigger, e.actor)}"
        )
        if e.key:
            line += f" · {_code(e.key, 300)}"
        if e.error_code:
            cause = _first_line(e.error_cause) if e.error_cause else ""
            line += f" · {_code(e.error_code, 60)} {clip(cause, 200)}"
        elif e.reason:
            line += f" · {clip(e.reason, 200)}"
        lines.append(line)
    head = [_header("Audit log, newest first")]
    tail = [_context("Times are UTC. The log is append-only.")]
    return _message(f"{len(events)} audit events", _with_list(head, lines, tail))


# --- retention and bucket policies ---------------------------------------------------------------
def _prune_lines(report: PruneReport) -> list[str]:
    applied = report.applied and not report.plan.paused
    deleted = set(report.deleted)
    lines: list[str] = []
    if report.plan.paused:
        lines.append(f":double_vertical_bar: *Paused:* {clip(report.plan.paused, 500)}")
    lines += [f"✗ {clip(_first_line(error), 400)}" for error in report.errors]
    for d in report.plan.decisions:
        if d.keep:
            continue
        verb = "deleted" if d.key.key in deleted else "*not deleted*"
        verb = verb if applied else "*delete*"
        lines.append(f"{verb} {_code(d.key.key, 300)} — {clip('; '.join(d.reasons), 300)}")
    for d in report.plan.decisions:
        if d.keep:
            lines.append(f"keep {_code(d.key.key, 300)} — {clip('; '.join(d.reasons), 300)}")
    for key, problem in report.incomplete.items():
        lines.append(f"skip {_code(key, 300)} — not a complete backup ({clip(problem, 200)})")
    verb = "removed" if applied else "will remove"
    for key in report.orphan_side_files:
        lines.append(f"{verb} {_code(key, 300)} — its dump is gone (an interrupted prune)")
    if report.wal is not None:
        lines += _prune_wal_lines(report)
    return lines


def _prune_wal_lines(report: PruneReport) -> list[str]:
    from core.prune import wal_summary

    assert report.wal is not None
    lines = [f"*Point-in-time recovery* — {clip(wal_summary(report.wal), 500)}"]
    deleted = set(report.bases_deleted)
    for d in report.wal.decisions:
        if d.keep:
            continue
        verb = (
            "*delete*"
            if not report.applied
            else "deleted"
            if d.base.stamp in deleted
            else "*not deleted*"
        )
        lines.append(
            f"{verb} base backup {_code(d.base.stamp, 40)} — {clip('; '.join(d.reasons), 300)}"
        )
    if report.applied:
        lines.append(f"WAL files deleted: {report.wal_deleted:,}")
    return lines


def prune_plan(reports: list[PruneReport]) -> Message:
    """The retention plan per store: keep/delete per backup with the reasons; dry run or
    applied; paused when nothing may be deleted."""
    dry = not reports or not reports[0].applied
    head = [_header("Retention plan (dry run)" if dry else "Retention applied")]
    if dry:
        footer = (
            "Dry run: nothing was deleted. `/blnk-backups prune apply` asks an approver to "
            "delete what is marked *delete*."
        )
    else:
        footer = (
            "Dumps are deleted first and manifests last; an interrupted prune finishes next time."
        )
    tail = [_context(footer)]
    if not reports:
        return _message(
            "No stores to prune.", [*head, _section("No stores are configured."), *tail]
        )
    blocks_left = MAX_MESSAGE_BLOCKS - len(head) - len(tail)
    budget = budget_left(head + tail)
    share_blocks, share_budget = blocks_left // len(reports), budget // len(reports)
    body: list[Block] = []
    summaries = []
    for report in reports:
        to_delete, to_keep = len(report.plan.to_delete), len(report.plan.to_keep)
        if dry or report.plan.paused:
            count = f"keep {to_keep}, delete {to_delete}"
        else:
            count = f"keep {to_keep}, deleted {len(report.deleted)} of {to_delete}"
        summaries.append(f"{clip(report.location, 200)}: {count}")
        title = f"*{clip(report.location, 300)}*: {count}"
        if report.plan.paused:
            title += " — *paused*, nothing is deleted"
        body += _lines([title, *_prune_lines(report)], max_blocks=share_blocks, budget=share_budget)
    mode = "dry run" if dry else "applied"
    return _message(f"Retention plan ({mode}): " + "; ".join(summaries), head + body + tail)


def policies(results: list[StorePolicies], applied: bool) -> Message:
    """Each store's bucket settings against the recommended ones."""
    head = [_header("Bucket policies after apply" if applied else "Bucket policies")]
    lines: list[str] = []
    for result in results:
        bad = [i for i in result.items if not i.ok and not i.unsupported]
        verdict = "all recommended settings in place" if result.ok else f"{len(bad)} to fix"
        lines.append(f"*{clip(result.location, 300)}*: {verdict}")
        for item in result.items:
            name = clip(item.name, 100)
            if item.ok:
                lines.append(f"✓ {name}: {clip(item.current, 300)}")
            elif item.unsupported:
                lines.append(f"- {name}: not supported by this store")
            else:
                lines.append(
                    f"✗ {name}: {clip(item.current, 300)} "
                    f"(recommended: {clip(item.recommended, 300)})"
                )
        lines += [f"✗ {clip(_first_line(error), 400)}" for error in result.errors]
    tail = []
    if not applied and not all(r.ok for r in results):
        tail.append(
            _context(
                "`/blnk-backups bucket apply` asks an approver to apply what is missing. "
                "Lifecycle rules with other ids are kept as they are."
            )
        )
    if not results:
        lines = ["No stores are configured."]
    ok = all(r.ok for r in results)
    text = "Bucket policies: " + ("all in place" if ok else "some need attention")
    return _message(text, _with_list(head, lines, tail))


# --- small replies --------------------------------------------------------------------------------
def help_message() -> Message:
    from bot.slack.commands import SPECS

    lines = [f"`{s.synopsis}` — {s.does}" + (" (approval)" if s.risky else "") for s in SPECS]
    blocks = [
        _header("Blnk backup commands"),
        _section("\n".join(lines)),
        _context(
            "*(approval)*: a second authorised person must press Approve before anything "
            "happens. Keys look like `blnk_backup_YYYYMMDD_HHMMSS.dump`."
        ),
    ]
    return _message("Blnk backup commands: " + ", ".join(s.synopsis for s in SPECS), blocks)


def usage(message: str) -> Message:
    """A command that could not be understood; nothing was changed."""
    text = f":information_source: {clip(message, 1000)}"
    blocks = [
        _section(text),
        _context("Nothing was changed. `/blnk-backups help` lists every command."),
    ]
    return _message(f"Not understood: {clip(message, 1000)}", blocks)


def refusal(why: str) -> Message:
    """A request that was not carried out, and why."""
    text = f":no_entry: *Not done:* {clip(why, 1000)}"
    return _message(f"Not done: {clip(why, 1000)}", [_section(text)])


_SEVERITY = {"high": ":rotating_light:", "medium": ":warning:", "low": ":information_source:"}


def alert(title: str, lines: list[str], severity: str = "high") -> Message:
    """An alert for the alert channel. ``lines`` may use *bold* and `code`; anything else in
    them is escaped (they carry reasons and causes), so they can neither mention nor link."""
    icon = _SEVERITY.get(severity, ":warning:")
    head = [_header(f"{icon} {title}")]
    tail = [_context(f"Severity: *{clip(severity, 20)}*")]
    body = [clip(line, 1500) for line in lines] or ["_no details_"]
    first = clip(_first_line(lines[0]), 300) if lines else ""
    text = f"{clip(title, 150)} ({clip(severity, 20)})" + (f": {first}" if first else "")
    return _message(text, _with_list(head, body, tail))


# --- approvals ------------------------------------------------------------------------------------
_ACTIONS = {
    "restore": "Restore a backup into a new database",
    "delete": "Delete a backup",
    "prune_apply": "Apply the retention plan (delete backups)",
    "bucket_apply": "Apply the recommended bucket policies",
    "wal_slot_recreate": "Recreate the WAL replication slot (and take a base backup)",
    "wal_slot_drop": "Drop the WAL replication slot",
    "restore_at": "Recover the ledger to a point in time into a new database",
}


def _action_name(action: str) -> str:
    """What a request does, in words: raw text (escape it for mrkdwn)."""
    return _ACTIONS.get(action) or _plain(f"Run {action}", 60)


def _summary_lines(approval: Approval) -> list[str]:
    summary = approval.summary if isinstance(approval.summary, list) else [approval.summary]
    return [clip(line, 1000) for line in summary] or ["_no details were recorded_"]


def _expiry(approval: Approval, now: datetime) -> str:
    minutes = math.ceil((approval.expires_at - now).total_seconds() / 60)
    at = f"{approval.expires_at.astimezone(UTC):%H:%M} UTC"
    if minutes <= 0:
        return f"expired at {at}"
    return f"expires in {minutes} min, at {at}"


def approval_request(approval: Approval, now: datetime) -> Message:
    """An approval request: exactly what will happen, who asked and why, when it expires, and
    Approve / Deny buttons (each with a confirm dialog; the server checks every click)."""
    action = _action_name(approval.action)
    expiry = _expiry(approval, now)
    head = [
        _header(f"Approval needed: {action}"),
        _section(
            f"{mention(approval.requested_by)} asks for approval; this request *{expiry}*.\n"
            "*What will happen:*"
        ),
    ]
    pairs = [
        ("Requested by", mention(approval.requested_by)),
        ("Reason", clip(approval.reason, 500) if approval.reason else "_none given_"),
        ("Requested", _utc(approval.requested_at)),
    ]
    approve = ButtonElement(
        text=PlainTextObject(text="Approve", emoji=False),
        action_id=APPROVE_ACTION,
        value=approval.id,
        style="primary",
        confirm=ConfirmObject(
            title=PlainTextObject(text="Approve this request?"),
            text=PlainTextObject(text=f"{action}: it runs as soon as you confirm."),
            confirm=PlainTextObject(text="Approve"),
            deny=PlainTextObject(text="Cancel"),
            style="primary",
        ),
    )
    deny = ButtonElement(
        text=PlainTextObject(text="Deny", emoji=False),
        action_id=DENY_ACTION,
        value=approval.id,
        style="danger",
        confirm=ConfirmObject(
            title=PlainTextObject(text="Deny this request?"),
            text=PlainTextObject(text="Nothing will be done and the request is closed."),
            confirm=PlainTextObject(text="Deny"),
            deny=PlainTextObject(text="Cancel"),
            style="danger",
        ),
    )
    buttons: Block = ActionsBlock(
        block_id=f"{APPROVAL_BLOCK_PREFIX}{approval.id}", elements=[approve, deny]
    ).to_dict()
    tail = [
        *_fields(pairs),
        buttons,
        _context(
            "Only an approver other than the requester can decide, and only once. "
            f"Request {_code(approval.id, 80)}."
        ),
    ]
    blocks = _with_list(
        head, _summary_lines(approval), tail, more=lambda n: f"_… and {n} more lines_"
    )
    text = (
        f"Approval needed: {escape(action)}, asked by {mention(approval.requested_by)} ({expiry})"
    )
    return _message(text, blocks)


_DECIDED = {
    "approved": ":white_check_mark: Approved",
    "executing": ":hourglass_flowing_sand: Approved, running",
    "executed": ":white_check_mark: Approved and done",
    "failed": ":x: Approved, but it failed",
    "denied": ":no_entry_sign: Denied",
    "expired": ":hourglass: Expired",
    "pending": ":hourglass_flowing_sand: Waiting for a decision",
}


def approval_decided(approval: Approval) -> Message:
    """A decided request, buttons gone: who decided and when, the status, then the outcome."""
    action = _action_name(approval.action)
    state = _DECIDED.get(approval.status) or _plain(f"Request {approval.status}", 40)
    head = [
        _header(f"{state}: {action}"),
        _section(f"{mention(approval.requested_by)} asked to run this. *What it does:*"),
    ]
    if approval.status == "expired":
        decision = f"nobody decided in time; expired at {_utc(approval.decided_at)}"
    elif approval.status == "pending":
        decision = "_not decided yet_"
    else:
        verb = "denied" if approval.status == "denied" else "approved"
        decision = f"{verb} by {mention(approval.decided_by)} at {_utc(approval.decided_at)}"
    pairs = [
        ("Requested by", mention(approval.requested_by)),
        ("Reason", clip(approval.reason, 500) if approval.reason else "_none given_"),
        ("Decision", decision),
    ]
    if approval.status == "executing":
        pairs.append(("Outcome", "_running now…_"))
    elif approval.status in ("executed", "failed"):
        mark = "✓" if approval.status == "executed" else "✗"
        outcome = clip(_first_line(approval.outcome or "no outcome was recorded"), 1000)
        pairs.append(("Outcome", f"{mark} {outcome}\n_at {_utc(approval.finished_at)}_"))
    tail = [*_fields(pairs), _context(f"Request {_code(approval.id, 80)}.")]
    blocks = _with_list(
        head, _summary_lines(approval), tail, more=lambda n: f"_… and {n} more lines_"
    )
    words = state.split(" ", 1)[-1] if state.startswith(":") else state  # no emoji code
    text = f"{escape(words)}: {escape(action)} ({decision})"
    if approval.status in ("executed", "failed"):
        text += f": {clip(_first_line(approval.outcome or ''), 300)}"
    return _message(text, blocks)


# --- App Home -------------------------------------------------------------------------------------
def home_view(
    state: FreshnessStatus | None,
    backups: list[BackupEntry],
    pending: list[Approval],
    next_runs: dict[str, datetime] | None,
    last_ledger_proof: str | None = None,
    error: str | None = None,
    *,
    now: datetime | None = None,
    wal: WalStatus | None = None,
    wal_error: str | None = None,
) -> dict[str, Any]:
    """The App Home tab: freshness, last restore test, point-in-time recovery (with
    WAL_ARCHIVE), newest backups, pending approvals and the next scheduled runs, within a
    view's 100 blocks. Decisions are taken on the request's channel message, not here."""
    now = now or datetime.now(UTC)
    wal_problems = wal.problems(now) if wal is not None else []
    blocks: list[Block] = [_header("Blnk backups")]
    if error:
        blocks.append(_section(f":warning: *Could not read the backups:* {clip(error, 1000)}"))
    if state is not None:
        breaches = [clip(b, 400) for b in state.breaches]
        breaches += [f"point-in-time recovery: {clip(p.code, 40)}" for p in wal_problems]
        if wal_error is not None:
            breaches.append("point-in-time recovery: the WAL archive could not be read")
        if not breaches:
            health = ":white_check_mark: *Healthy*"
        else:
            shown = breaches[:5]
            more = len(breaches) - len(shown)
            health = ":warning: *Needs attention*\n" + "\n".join(f"• {b}" for b in shown)
            health += f"\n_… and {more} more_" if more > 0 else ""
        blocks.append(_section(health))
        newest = "none"
        if state.newest is not None and state.newest_age_hours is not None:
            newest = (
                f"{_code(state.newest.key.key, 300)}\n{state.newest_age_hours:.1f} h old "
                f"(limit {state.stale_after_hours:g} h)"
            )
        restore_line = _restore_test_line(state.last_restore_test)
        if last_ledger_proof:
            restore_line += f"\n{clip(last_ledger_proof, 500)}"
        blocks += _fields(
            [
                ("Newest backup", newest),
                (
                    "Backups",
                    f"{state.complete_count} complete, {human_size(state.total_size)}"
                    + (f", {state.incomplete_count} incomplete" if state.incomplete_count else ""),
                ),
                ("Last restore test", restore_line),
                ("Checked", _utc(state.checked_at)),
            ]
        )
    blocks += wal_blocks(wal, wal_error)
    runs = _next_runs_lines(next_runs)
    if runs:
        blocks.append(_section("*Next runs*\n" + "\n".join(runs[:20])))
    blocks += [_divider(), _section("*Newest backups*")]
    if backups:
        blocks += _lines([_entry_line(e) for e in backups[:20]], max_blocks=3, budget=None)
    else:
        blocks.append(_section("_No backups yet._"))
    blocks += [_divider(), _section(f"*Pending approvals ({len(pending)})*")]
    footer = _context(f"Updated {_utc(now)}. Approve or deny on the request's message.")
    if pending:
        cards = [
            _section(
                f"*{escape(_action_name(p.action))}* · asked by {mention(p.requested_by)} · "
                f"{_expiry(p, now)}\n"
                + "\n".join(truncate_mrkdwn(line, 200) for line in _summary_lines(p)[:5])
                + (f"\n_… and {len(p.summary) - 5} more lines_" if len(p.summary) > 5 else "")
            )
            for p in pending
        ]
        room = MAX_VIEW_BLOCKS - len(blocks) - 1
        blocks += fit(cards, room, lambda n: _section(f"_… and {n} more pending approvals_"))
    else:
        blocks.append(_section("_None._"))
    blocks.append(footer)
    view = {"type": "home", "blocks": blocks}
    validate_view(view)
    return view


def home_refused(why: str) -> dict[str, Any]:
    """The App Home tab of someone who may not see the backups: a short notice, nothing of
    the backups, the bucket or the approvals."""
    blocks: list[Block] = [
        _header("Blnk backups"),
        _section(
            ":lock: This bot's backups are shown to its operators and approvers only "
            f"({escape(why)}). Ask whoever runs it to add your Slack member ID to "
            "`SLACK_OPERATORS` if you need them."
        ),
    ]
    view = {"type": "home", "blocks": blocks}
    validate_view(view)
    return view
