"""Slash command text → what to do (bot/slack/commands.parse), for every command and
subcommand: what each parses to, how names are quoted, what is free text, and the usage a
person gets for anything else. What the bot then does with it: tests/test_slack_commands.py."""

from __future__ import annotations

import pytest

from bot.cli import main
from bot.slack.commands import (
    BACKUP,
    BACKUPS,
    LATEST,
    RESTORE,
    RESTORE_TEST,
    SPECS,
    USAGE,
    Request,
    parse,
)
from core.errors import UsageError
from core.redact import MAX_REASON_LENGTH, check_plain_text

KEY = "blnk_backup_20261126_030000.dump"

# One line per thing a person can ask for (every Spec), and the ways of typing it.
PARSED: list[tuple[str, str, Request]] = [
    (BACKUP, "", Request("backup")),
    (BACKUP, "  before   migration 42 ", Request("backup", reason="before migration 42")),
    (BACKUP, "Grace's test", Request("backup", reason="Grace's test")),  # not read as a shell
    (BACKUP, 'say "hi', Request("backup", reason='say "hi')),  # an open quote in free text
    (BACKUP, "a &amp; b &lt;x&gt;", Request("backup", reason="a & b <x>")),  # Slack's entities
    (BACKUP, "one\ntwo", Request("backup", reason="one two")),  # whitespace runs: one space
    (BACKUPS, "list", Request("list")),
    (BACKUPS, "LIST", Request("list")),  # subcommands in any case
    (BACKUPS, "status", Request("status")),
    (BACKUPS, "prune", Request("prune")),
    (BACKUPS, "prune apply", Request("prune_apply")),
    (BACKUPS, "Prune Apply Grace's test", Request("prune_apply", reason="Grace's test")),
    (BACKUPS, f"delete {KEY}", Request("delete", key=KEY)),
    (BACKUPS, f"delete {KEY} too old", Request("delete", key=KEY, reason="too old")),
    (BACKUPS, 'delete "a key" why', Request("delete", key="a key", reason="why")),
    (BACKUPS, "bucket check", Request("bucket_check")),
    (BACKUPS, "bucket apply", Request("bucket_apply")),
    (BACKUPS, "bucket apply  now, please", Request("bucket_apply", reason="now, please")),
    (BACKUPS, "audit", Request("audit")),
    (BACKUPS, "help", Request("help")),
    (BACKUPS, "", Request("help")),  # the bare command shows the help
    (RESTORE_TEST, "", Request("restore_test", key=LATEST)),
    (RESTORE_TEST, "Latest", Request("restore_test", key=LATEST)),
    (RESTORE_TEST, KEY, Request("restore_test", key=KEY)),
    (RESTORE_TEST, '"a key"', Request("restore_test", key="a key")),
    (RESTORE, "latest into blnk_new", Request("restore", key=LATEST, into="blnk_new")),
    (
        RESTORE,
        'latest at "2026-12-02 14:02:59Z" into blnk_1402 bad migration',
        Request(
            "restore_at",
            key=LATEST,
            at="2026-12-02 14:02:59Z",
            into="blnk_1402",
            reason="bad migration",
        ),
    ),
    (RESTORE_TEST, "pitr", Request("restore_test", key="pitr")),
    (BACKUPS, "wal-slot recreate", Request("wal_slot_recreate")),
    (
        BACKUPS,
        "WAL-SLOT recreate slot lost overnight",
        Request("wal_slot_recreate", reason="slot lost overnight"),
    ),
    (BACKUPS, "wal-slot drop disk 91% full", Request("wal_slot_drop", reason="disk 91% full")),
    (
        RESTORE_TEST,
        "PITR at 2026-12-02T14:02:59Z",
        Request("restore_test", key="pitr", at="2026-12-02T14:02:59Z"),
    ),
    (RESTORE, "LATEST INTO db why", Request("restore", key=LATEST, into="db", reason="why")),
    (
        RESTORE,
        f"{KEY} into blnk_restored incident 1234",
        Request("restore", key=KEY, into="blnk_restored", reason="incident 1234"),
    ),
    # A name is read like a word in a shell: quotes group, and keep what is inside them ...
    (RESTORE, "latest into 'it\"s' why", Request("restore", key=LATEST, into='it"s', reason="why")),
    (RESTORE, "latest into a#b", Request("restore", key=LATEST, into="a#b")),  # no comments
    (RESTORE, "latest into db\u00a0why", Request("restore", key=LATEST, into="db", reason="why")),
    # ... typographic double quotes too, as some Slack clients send the quotes a person typed;
    (
        RESTORE,
        "latest into \u201cweird name\u201d Grace\u2019s test",
        Request("restore", key=LATEST, into="weird name", reason="Grace\u2019s test"),
    ),
    # single typographic ones only where an opening one is typed: alone, \u2019 is an apostrophe.
    (
        RESTORE,
        'latest into \u2018it"s\u2019 why',
        Request("restore", key=LATEST, into='it"s', reason="why"),
    ),
    (
        RESTORE,
        "latest into grace\u2019s_db Bob\u2019s audit",
        Request("restore", key=LATEST, into="grace\u2019s_db", reason="Bob\u2019s audit"),
    ),
]


@pytest.mark.parametrize(("command", "text", "expected"), PARSED)
def test_a_command_parses_to(command: str, text: str, expected: Request) -> None:
    assert parse(command, text) == expected


def test_every_command_and_subcommand_is_among_the_parsed_examples() -> None:
    examples = {(command, request.action) for command, _text, request in PARSED}
    assert {(spec.command, spec.action) for spec in SPECS} <= examples


def test_only_what_changes_something_is_risky() -> None:
    risky = {request.action for _c, _t, request in PARSED if request.risky}
    assert risky == {
        "prune_apply",
        "delete",
        "bucket_apply",
        "restore",
        "restore_at",
        "wal_slot_recreate",
        "wal_slot_drop",
    }


REFUSED: list[tuple[str, str, str]] = [
    # (command, text, what the message says besides the usage)
    (BACKUPS, "frobnicate", "usage"),
    (BACKUPS, "list extra", "usage"),  # what takes nothing takes nothing
    (BACKUPS, "status now", "usage"),
    (BACKUPS, "audit 5", "usage"),
    (BACKUPS, "help me", "usage"),
    (BACKUPS, "bucket", "usage"),
    (BACKUPS, "wal-slot", "usage"),
    (BACKUPS, "wal-slot delete", "usage"),
    (BACKUPS, "prune now", "usage"),  # only `prune apply` takes a reason
    (BACKUPS, "delete", "usage"),  # delete needs its KEY
    (BACKUPS, 'delete "a key', "a quote is opened and never closed"),
    (RESTORE_TEST, f"{KEY} {KEY}", "one backup at a time"),
    (RESTORE_TEST, '"a key', "a quote is opened and never closed"),
    (RESTORE_TEST, "key\\", "the text ends with a \\ that escapes nothing"),
    (RESTORE, "", "usage"),
    (RESTORE, "latest blnk_new", "usage"),  # without the word into
    (RESTORE, "latest onto blnk_new", "usage"),
    (RESTORE, "latest at", "usage"),  # at no time
    (RESTORE, 'latest at "2026-12-02 14:02:59Z" blnk_new', "usage"),  # without into
    (RESTORE, f'{KEY} at "2026-12-02 14:02:59Z" into blnk_new', "usage"),  # from base backups
    (RESTORE_TEST, "pitr at", "usage"),
    (RESTORE_TEST, "pitr now please", "usage"),
    (RESTORE, "latest into", "usage"),  # into nothing
    (RESTORE, 'latest into "weird name', "a quote is opened and never closed"),
    (RESTORE, "latest into \u201cweird name", "a quote is opened and never closed"),
    (RESTORE, "latest into \u2018weird name", "a quote is opened and never closed"),
]


@pytest.mark.parametrize(("command", "text", "says"), REFUSED)
def test_anything_else_is_refused_with_the_commands_usage(
    command: str, text: str, says: str
) -> None:
    with pytest.raises(UsageError) as refused:
        parse(command, text)
    assert says in str(refused.value)
    assert USAGE[command] in str(refused.value)


def test_an_unknown_command_is_refused_by_name() -> None:
    with pytest.raises(UsageError, match="unknown command '/blnk-nope'"):
        parse("/blnk-nope", "list")


@pytest.mark.parametrize(
    ("command", "text"),
    [
        (BACKUP, "ok\x07"),  # BEL
        (BACKUP, "escape \x1b[2J cleared"),
        (BACKUPS, f"delete {KEY} fine\u202eenif"),  # a bidirectional override
        (BACKUPS, "prune apply zero\u200bwidth"),
        (RESTORE, "latest into db nul\x00byte"),
    ],
)
def test_a_reason_with_control_bidirectional_or_zero_width_characters_is_refused(
    command: str, text: str
) -> None:
    with pytest.raises(UsageError, match="the reason must be one line of plain text"):
        parse(command, text)


def test_a_reason_is_at_most_its_length_and_no_longer() -> None:
    longest = "x" * MAX_REASON_LENGTH
    assert parse(BACKUP, longest).reason == longest
    with pytest.raises(UsageError, match=f"longer than {MAX_REASON_LENGTH} characters"):
        parse(BACKUP, longest + "x")


def test_a_reason_may_hold_letters_of_any_script_and_emoji() -> None:
    text = "Grace's test: é ü 中文 עברית ❤️ 👍🏽"
    assert check_plain_text("reason", text, 500) == text
    assert parse(BACKUP, text).reason == text


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as raised:
        main(["list", "--limit", "zero"])
    assert raised.value.code == 2
