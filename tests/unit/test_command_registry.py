"""One registry of slash commands (bot/slack/commands.SPECS) behind the parser, the usage
lines, the risky flags, Slack's help message, the console's help and its Tab completion: each
of them agrees with every Spec."""

from __future__ import annotations

import re

import pytest

from bot.console import HELP
from bot.console_input import GRAMMAR, KEY, SlashCompleter
from bot.render.blocks import help_message
from bot.slack.commands import COMMANDS, SPECS, USAGE, Spec, parse
from core.operations import RISKY_ACTIONS
from tests.support.fake_slack import block_texts

A_KEY = "blnk_backup_20261126_030000.dump"
# What stands in for each argument a Spec takes, in an example of it.
ARGUMENTS = {
    "KEY": A_KEY,
    "KEY|latest": A_KEY,
    "[KEY | latest | pitr [at TIME]]": A_KEY,
    "NEWDB": "blnk_new",
    "TIME": '"2026-12-02 14:02:59Z"',
}


def _example(spec: Spec, *, optional: bool) -> str:
    """The text after the command that asks for spec: with or without what is optional."""
    takes = spec.takes
    for placeholder in sorted(ARGUMENTS, key=len, reverse=True):  # the longest first
        if placeholder.startswith("[") and not optional:
            takes = takes.replace(placeholder, "")
        takes = takes.replace(placeholder, ARGUMENTS[placeholder])
    takes = takes.replace("[reason]", "why not" if optional else "")
    return " ".join(f"{spec.words} {takes}".split())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.synopsis)
def test_every_spec_parses_back_to_its_action(spec: Spec) -> None:
    bare = parse(spec.command, _example(spec, optional=False))
    full = parse(spec.command, _example(spec, optional=True))
    assert bare.action == full.action == spec.action
    assert bare.risky == full.risky == spec.risky
    if "[reason]" in spec.takes:
        assert (bare.reason, full.reason) == (None, "why not")
    else:
        assert full.reason is None
    if "KEY" in spec.takes:
        assert full.key == A_KEY
    if "NEWDB" in spec.takes:
        assert full.into == "blnk_new"


def test_each_action_has_one_spec_and_the_risky_ones_are_the_operations_approved_first() -> None:
    actions = [spec.action for spec in SPECS]
    assert len(actions) == len(set(actions))
    assert {spec.action for spec in SPECS if spec.risky} == set(RISKY_ACTIONS)
    assert {spec.command for spec in SPECS} == set(COMMANDS)


def test_each_commands_usage_shows_every_spec_of_it() -> None:
    assert set(USAGE) == set(COMMANDS)
    for spec in SPECS:
        shown = f"{spec.words} {spec.takes}".strip()
        assert spec.command in USAGE[spec.command]
        assert shown in USAGE[spec.command], (spec.synopsis, USAGE[spec.command])


def test_slacks_help_message_lists_every_spec_once_marking_the_risky_ones() -> None:
    message = help_message()
    lines = [line for text in block_texts(message.blocks) for line in text.splitlines()]
    for spec in SPECS:
        [line] = [line for line in lines if line.startswith(f"`{spec.synopsis}` — ")]
        assert spec.does in line
        assert line.endswith("(approval)") == spec.risky
        assert spec.synopsis in message.text  # the notification's fallback text too
    assert len([line for line in lines if line.startswith("`/")]) == len(SPECS)


def test_the_consoles_help_fits_80_columns_and_lists_every_synopsis_with_what_it_does() -> None:
    lines = HELP.splitlines()
    assert max(len(line) for line in lines) <= 80
    for spec in SPECS:
        at = lines.index(f"  {spec.synopsis}")
        below = []
        for line in lines[at + 1 :]:
            if not line.startswith(" " * 6):
                break
            below.append(line.strip())
        does = " ".join(below)
        assert does == spec.does + (" (approval)" if spec.risky else "")
    shown = [line.strip() for line in lines if line.startswith("  /blnk-")]
    assert shown == [spec.synopsis for spec in SPECS]


def test_tab_completion_knows_every_command_word_and_where_a_key_goes() -> None:
    for spec in SPECS:
        node: object = GRAMMAR[spec.command]
        for word in spec.words.split():
            assert isinstance(node, dict) and word in node, (spec.synopsis, word)
            node = node[word]
        assert isinstance(node, dict)
        # A key goes there if some spec of these words takes one first.
        keyed = any(
            other.takes.strip("[").startswith("KEY")
            for other in SPECS
            if (other.command, other.words) == (spec.command, spec.words)
        )
        assert (KEY in node) == keyed, spec.synopsis
    # and nothing the registry does not hold: every path of words is some Spec's
    paths = {(spec.command, *spec.words.split()) for spec in SPECS}
    for command in COMMANDS:
        _walk(GRAMMAR[command], (command,), paths)


def _walk(node: object, path: tuple[str, ...], paths: set[tuple[str, ...]]) -> None:
    assert isinstance(node, dict)
    for word, below in node.items():
        if word == KEY or word in ("latest", "into"):
            continue
        assert any(p[: len(path) + 1] == (*path, word) for p in paths), (*path, word)
        _walk(below, (*path, word), paths)


def test_tab_completes_slash_commands_subcommands_keys_and_users() -> None:
    keys = ["blnk_backup_20261126_030000.dump", "blnk_backup_20261125_030000.dump"]
    completer = SlashCompleter(lambda: keys, lambda: ["U1", "U2"])
    assert completer.candidates("/blnk-res")[1][:2] == ["/blnk-backup", "/blnk-backups"]
    assert completer.candidates("/blnk-backups ")[1] == [
        "list", "status", "prune", "delete", "bucket", "wal-slot", "audit", "help"
    ]  # fmt: skip
    assert completer.candidates("/blnk-backups bucket a") == ("a", ["check", "apply"])
    assert completer.candidates("/blnk-backups delete blnk_b") == ("blnk_b", keys)
    assert completer.candidates(f"/blnk-restore {keys[0]} ")[1] == ["into"]
    assert completer.candidates("/as ")[1] == ["U1", "U2"]
    assert completer.candidates("/blnk-backup before ")[1] == []  # a reason is free text


def test_the_help_names_only_commands_that_exist() -> None:
    named = set(re.findall(r"/blnk-[a-z-]+", HELP + help_message().text))
    assert named == set(COMMANDS)


def test_every_safe_action_has_a_slack_handler_and_every_risky_one_an_approval() -> None:
    from bot.slack.operations import SlackOperations

    ops = SlackOperations(None, None, None)  # type: ignore[arg-type]  # no I/O to build it
    safe = {spec.action for spec in SPECS if not spec.risky}
    assert set(ops._commands) == safe
