"""Slash command text → what to do. Pure parsing, no I/O: a bad or unknown argument is a
UsageError whose message is the usage line a person needs.

Arguments that name something (a backup key, a new database's name) are read like words in a
shell, so a database name may hold spaces, quotes and any letter: ``into "weird name"``. A
reason is free text after them, taken as typed: reading it like a shell would break on the
apostrophe in "Grace's test"."""

from __future__ import annotations

import html
import io
import shlex
from dataclasses import dataclass

from core.errors import UsageError
from core.operations import (
    BUCKET_APPLY,
    DELETE,
    PRUNE_APPLY,
    RESTORE_AT,
    RISKY_ACTIONS,
    WAL_SLOT_DROP,
    WAL_SLOT_RECREATE,
)
from core.operations import RESTORE as RESTORE_ACTION
from core.redact import MAX_REASON_LENGTH, check_plain_text

BACKUP, BACKUPS, RESTORE_TEST, RESTORE = (
    "/blnk-backup",
    "/blnk-backups",
    "/blnk-restore-test",
    "/blnk-restore",
)
COMMANDS = (BACKUP, BACKUPS, RESTORE_TEST, RESTORE)


@dataclass(frozen=True)
class Spec:
    """One thing a person can ask for: the slash command, the words after it, what it takes,
    the ``action`` it parses to, and what it does (the help line). The help message, the
    usage lines, the console's help and its Tab completion are all drawn from SPECS."""

    command: str
    words: str  # the subcommand's words ("prune apply"), "" for none
    takes: str  # its arguments as written in help ("KEY [reason]"), "" for none
    action: str
    does: str

    @property
    def risky(self) -> bool:
        """It changes something: a second person approves it first."""
        return self.action in RISKY_ACTIONS

    @property
    def synopsis(self) -> str:
        """``/blnk-backups delete KEY [reason]``"""
        return " ".join(part for part in (self.command, self.words, self.takes) if part)


SPECS = (
    Spec(
        BACKUP,
        "",
        "[reason]",
        "backup",
        "back up the ledger database now; one message follows it to the end",
    ),
    Spec(BACKUPS, "list", "", "list", "the newest complete backups"),
    Spec(
        BACKUPS,
        "status",
        "",
        "status",
        "freshness, the last restore test and the next scheduled runs",
    ),
    Spec(BACKUPS, "prune", "", "prune", "the retention plan, as a dry run (deletes nothing)"),
    Spec(
        BACKUPS,
        "prune apply",
        "[reason]",
        PRUNE_APPLY,
        "delete what the retention plan marks delete",
    ),
    Spec(BACKUPS, "delete", "KEY [reason]", DELETE, "delete one backup, never the newest"),
    Spec(
        BACKUPS,
        "bucket check",
        "",
        "bucket_check",
        "compare the bucket's settings with the recommended ones",
    ),
    Spec(
        BACKUPS, "bucket apply", "[reason]", BUCKET_APPLY, "apply the recommended bucket settings"
    ),
    Spec(
        BACKUPS,
        "wal-slot recreate",
        "[reason]",
        WAL_SLOT_RECREATE,
        "make the WAL slot again (after it was lost) and take a base backup",
    ),
    Spec(
        BACKUPS,
        "wal-slot drop",
        "[reason]",
        WAL_SLOT_DROP,
        "drop the WAL slot: the primary stops keeping WAL for the bot",
    ),
    Spec(BACKUPS, "audit", "", "audit", "the newest audit events"),
    Spec(BACKUPS, "help", "", "help", "this message"),
    Spec(
        RESTORE_TEST,
        "",
        "[KEY | latest | pitr [at TIME]]",
        "restore_test",
        "restore a backup (or recover to a time) in scratch and prove the ledger",
    ),
    Spec(
        RESTORE,
        "",
        "KEY|latest into NEWDB [reason]",
        RESTORE_ACTION,
        "restore into a new database beside the source",
    ),
    Spec(
        RESTORE,
        "",
        "latest at TIME into NEWDB [reason]",
        RESTORE_AT,
        "recover the ledger as it was at TIME (WAL_ARCHIVE) into a new database",
    ),
)
_BY_WORDS = {tuple(s.words.split()): s for s in SPECS if s.command == BACKUPS}
_BY_WORDS[()] = _BY_WORDS[("help",)]
_EXAMPLES = {
    BACKUP: ", e.g. `/blnk-backup before migration 42`",
    RESTORE: (
        ", e.g. `/blnk-restore latest into blnk_restored incident 1234` or "
        '`/blnk-restore latest at "2026-12-02 14:02:59Z" into blnk_1402`; quote a name with '
        'spaces or quotes in it as in a shell: `into "blnk restored"`'
    ),
}


def _usage(command: str) -> str:
    specs = [s for s in SPECS if s.command == command]
    if command == BACKUPS:
        return f"`{BACKUPS} " + " | ".join(f"{s.words} {s.takes}".strip() for s in specs) + "`"
    return " or ".join(f"`{s.synopsis}`" for s in specs) + _EXAMPLES.get(command, "")


USAGE = {command: _usage(command) for command in COMMANDS}

LATEST = "latest"
PITR = "pitr"  # /blnk-restore-test pitr: a point-in-time restore test
# Some Slack clients turn the quotes a person types into typographic ones: they quote too.
_TYPOGRAPHIC_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"'})
# Single typographic quotes (U+2018, U+2019) quote only where an opening one is typed: alone,
# U+2019 is an apostrophe, as smart punctuation makes of one (grace's_db).
_TYPOGRAPHIC_SINGLE_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'"})


@dataclass(frozen=True)
class Request:
    """A parsed slash command: ``action`` is what to do, the rest its arguments."""

    action: str  # backup list status prune prune_apply delete bucket_check bucket_apply
    #              audit help restore_test restore
    key: str | None = None  # a backup key, or LATEST (PITR for a point-in-time test)
    reason: str | None = None
    into: str | None = None
    at: str | None = None  # a time to recover to, as typed (checked by core)

    @property
    def risky(self) -> bool:
        """It changes something: a second person approves it first."""
        return self.action in RISKY_ACTIONS


def parse(command: str, text: str) -> Request:
    """Given a slash command and its text as Slack sends it, return the Request.

    Raise UsageError (with the command's usage) for unknown commands or arguments."""
    # Slack sends &, < and > in command text as HTML entities.
    text = html.unescape(text or "")
    if command == BACKUP:
        return Request("backup", reason=_reason(text))
    if command == RESTORE_TEST:
        words, rest = _words(text, 3, RESTORE_TEST)
        if words and words[0].lower() == PITR:
            if len(words) == 1 and not rest.strip():
                return Request("restore_test", key=PITR)
            if len(words) == 3 and words[1].lower() == "at" and not rest.strip():
                return Request("restore_test", key=PITR, at=words[2])
            raise UsageError(f"usage: {USAGE[RESTORE_TEST]}")
        if len(words) > 1 or rest.strip():
            raise UsageError(f"one backup at a time: {USAGE[RESTORE_TEST]}")
        return Request("restore_test", key=_key(words[0]) if words else LATEST)
    if command == RESTORE:
        return _parse_restore(text)
    if command == BACKUPS:
        return _parse_backups(text)
    raise UsageError(f"unknown command {command!r}")


def _parse_restore(text: str) -> Request:
    """KEY, the word ``into``, NEWDB (quoted or not), then the reason: the rest as typed; or
    ``latest at TIME into NEWDB [reason]`` (TIME quoted when it holds a space)."""
    first, _rest = _words(text, 2, RESTORE)
    if len(first) == 2 and first[1].lower() == "at":
        words, rest = _words(text, 5, RESTORE)
        if len(words) < 5 or words[0].lower() != LATEST or words[3].lower() != "into":
            raise UsageError(f"usage: {USAGE[RESTORE]}")
        return Request(RESTORE_AT, key=LATEST, at=words[2], into=words[4], reason=_reason(rest))
    words, rest = _words(text, 3, RESTORE)
    if len(words) < 3 or words[1].lower() != "into":
        raise UsageError(f"usage: {USAGE[RESTORE]}")
    key, _into, into = words
    return Request("restore", key=_key(key), into=into, reason=_reason(rest))


def _parse_backups(text: str) -> Request:
    lowered = [w.lower() for w in text.split()]  # the subcommands: plain words, never quoted
    spec = _BY_WORDS.get(tuple(lowered))
    if spec is not None and not spec.takes.startswith("KEY"):
        return Request(spec.action)
    # What takes a reason (the risky ones: it is shown to the approver) may say why.
    spec = _BY_WORDS.get(tuple(lowered[:2]))
    if len(lowered) > 2 and spec is not None and spec.takes == "[reason]":
        _subcommand, rest = _words(text, 2, BACKUPS)
        return Request(spec.action, reason=_reason(rest))
    if lowered[:1] == ["delete"]:
        words, rest = _words(text, 2, BACKUPS)
        if len(words) == 2:
            return Request(DELETE, key=words[1], reason=_reason(rest))
    raise UsageError(f"usage: {USAGE[BACKUPS]}")


def _words(text: str, count: int, command: str) -> tuple[list[str], str]:
    """Return up to ``count`` words from the start of text, read as a POSIX shell reads them
    (quotes group, typographic quotes too), and the text after them exactly as typed.

    Only the words are read as a shell would: the rest is never looked at, so an apostrophe
    in a reason is just an apostrophe. Raise UsageError for a quote a word never closes."""
    # The translation maps one character to one, so what is left of the stream has the same
    # length as what is left of the text.
    plain = text.translate(_TYPOGRAPHIC_QUOTES)
    if "\u2018" in plain:
        plain = plain.translate(_TYPOGRAPHIC_SINGLE_QUOTES)
    stream = io.StringIO(plain)
    lexer = shlex.shlex(stream, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # a '#' in a name is part of the name
    lexer.whitespace += "\u00a0"  # what some clients send for a space
    words: list[str] = []
    try:
        while len(words) < count and (word := lexer.get_token()) is not None:
            words.append(word)
    except ValueError as exc:  # shlex: "No closing quotation" or "No escaped character"
        problem = (
            "a quote is opened and never closed"
            if "quotation" in str(exc)
            else "the text ends with a \\ that escapes nothing"
        )
        raise UsageError(f"{problem}: {USAGE[command]}") from None
    return words, text[len(text) - len(stream.read()) :]


def _key(word: str) -> str:
    """A backup key as typed, or LATEST however it is capitalised."""
    return LATEST if word.lower() == LATEST else word


def _reason(text: str) -> str | None:
    """A reason is one line of free text: runs of whitespace become one space, as before.
    Raise UsageError for control, bidirectional or zero-width characters in it."""
    return check_plain_text("reason", " ".join(text.split()), MAX_REASON_LENGTH)
