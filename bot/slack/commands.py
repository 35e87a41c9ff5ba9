"""Slash command text → what to do. Pure parsing, no I/O: a bad or unknown argument is a
UsageError whose message is the usage line a person needs."""

from __future__ import annotations

import html
from dataclasses import dataclass

from core.errors import UsageError

BACKUP, BACKUPS, RESTORE_TEST, RESTORE = (
    "/blnk-backup",
    "/blnk-backups",
    "/blnk-restore-test",
    "/blnk-restore",
)
COMMANDS = (BACKUP, BACKUPS, RESTORE_TEST, RESTORE)

USAGE = {
    BACKUP: "`/blnk-backup [reason]`, e.g. `/blnk-backup before migration 42`",
    BACKUPS: (
        "`/blnk-backups list | status | prune | prune apply [reason] | delete KEY [reason] | "
        "bucket check | bucket apply [reason] | audit | help`"
    ),
    RESTORE_TEST: "`/blnk-restore-test [KEY | latest]`",
    RESTORE: (
        "`/blnk-restore KEY|latest into NEWDB [reason]`, e.g. "
        "`/blnk-restore latest into blnk_restored incident 1234`"
    ),
}

# What each request does, and whether it changes something (then it needs an approval).
RISKY = {"prune_apply", "delete", "bucket_apply", "restore"}


@dataclass(frozen=True)
class Request:
    """A parsed slash command: ``action`` is what to do, the rest its arguments."""

    action: str  # backup list status prune prune_apply delete bucket_check bucket_apply
    #              audit help restore_test restore
    key: str | None = None
    reason: str | None = None
    into: str | None = None

    @property
    def risky(self) -> bool:
        return self.action in RISKY


def parse(command: str, text: str) -> Request:
    """Given a slash command and its text as Slack sends it, return the Request.

    Raise UsageError (with the command's usage) for unknown commands or arguments."""
    # Slack sends &, < and > in command text as HTML entities.
    words = html.unescape(text or "").split()
    if command == BACKUP:
        return Request("backup", reason=" ".join(words) or None)
    if command == RESTORE_TEST:
        if len(words) > 1:
            raise UsageError(f"one backup at a time: {USAGE[RESTORE_TEST]}")
        return Request("restore_test", key=words[0] if words else "latest")
    if command == RESTORE:
        if len(words) < 3 or words[1].lower() != "into":
            raise UsageError(f"usage: {USAGE[RESTORE]}")
        return Request("restore", key=words[0], into=words[2], reason=_reason(words[3:]))
    if command == BACKUPS:
        return _parse_backups(words)
    raise UsageError(f"unknown command {command!r}")


def _parse_backups(words: list[str]) -> Request:
    lowered = [w.lower() for w in words]
    simple = {
        (): "help",
        ("help",): "help",
        ("list",): "list",
        ("status",): "status",
        ("prune",): "prune",
        ("prune", "apply"): "prune_apply",
        ("bucket", "check"): "bucket_check",
        ("bucket", "apply"): "bucket_apply",
        ("audit",): "audit",
    }
    if tuple(lowered) in simple:
        return Request(simple[tuple(lowered)])
    # The risky ones (they become approval requests) may say why, for the approver.
    if len(words) > 2 and tuple(lowered[:2]) in {("prune", "apply"), ("bucket", "apply")}:
        return Request(simple[tuple(lowered[:2])], reason=_reason(words[2:]))
    if len(words) >= 2 and lowered[0] == "delete":
        return Request("delete", key=words[1], reason=_reason(words[2:]))
    raise UsageError(f"usage: {USAGE[BACKUPS]}")


def _reason(words: list[str]) -> str | None:
    return " ".join(words) or None
