"""Typing at the local console: prompt_toolkit reads each line with history (up/down, Ctrl-R)
and Tab completion of the slash commands, their subcommands, backup keys and user IDs. Piped
input does not come here: it is read line by line as it is."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, cast

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from bot.slack.commands import SPECS

if TYPE_CHECKING:
    from bot.console import Console

KEY = "KEY"  # where a backup key goes
USER = "USER"  # where a user ID goes


def _grammar() -> dict[str, dict[str, object]]:
    """What may follow each word: the slash commands (from the one registry: their
    subcommands' words, KEY where a key goes, ``latest``, ``into``), then the console's own."""
    grammar: dict[str, dict[str, object]] = {}
    for spec in SPECS:
        node = grammar.setdefault(spec.command, {})
        for word in spec.words.split():
            node = cast(dict[str, object], node.setdefault(word, {}))
        first = spec.takes.split(" ", 1)[0].strip("[]")
        if first.startswith("KEY"):  # KEY, KEY|latest, KEY | latest
            after: dict[str, object] = {"into": {}} if " into " in spec.takes else {}
            node.update({"latest": after} if "latest" in spec.takes else {})
            node[KEY] = dict(after)
    for own in ("/approve", "/deny", "/home", "/help", "/quit"):
        grammar[own] = {}
    grammar["/as"] = {USER: {}}
    return grammar


GRAMMAR = _grammar()
KEYS_FRESH_SECONDS = 10.0  # a listing of the bucket serves completions this long


class SlashCompleter(Completer):
    """Completes the word at the cursor from what may follow the words before it."""

    def __init__(self, keys: Callable[[], list[str]], users: Callable[[], list[str]]) -> None:
        self._keys = keys
        self._users = users
        self._listed: tuple[float, list[str]] | None = None

    def keys(self) -> list[str]:
        now = time.monotonic()
        if self._listed is None or now - self._listed[0] > KEYS_FRESH_SECONDS:
            self._listed = (now, self._keys())
        return self._listed[1]

    def candidates(self, before: str) -> tuple[str, list[str]]:
        """Given the text before the cursor, return the word being typed and what may go
        there."""
        words = before.split()
        current = "" if not words or before[-1:].isspace() else words.pop()
        node: object = GRAMMAR
        for word in words:
            if not isinstance(node, dict):
                break
            if word.lower() in node:
                node = node[word.lower()]
            elif KEY in node:
                node = node[KEY]
            elif USER in node:
                node = node[USER]
            else:
                node = {}
        node = node if isinstance(node, dict) else {}
        options: list[str] = []
        for name in node:
            if name == KEY:
                options += self.keys()
            elif name == USER:
                options += self._users()
            else:
                options.append(name)
        return current, options

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        current, options = self.candidates(document.text_before_cursor)
        for option in options:
            if option.lower().startswith(current.lower()):
                yield Completion(option, start_position=-len(current))


def typed_lines(console: Console) -> Iterator[str]:
    """Lines typed at a terminal. Output from other threads (the scheduler's alerts) prints
    above the prompt; Ctrl-C clears the line; Ctrl-D ends."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.formatted_text import FormattedText
    from prompt_toolkit.history import InMemoryHistory
    from prompt_toolkit.patch_stdout import patch_stdout
    from prompt_toolkit.styles import Style

    session: PromptSession[str] = PromptSession(
        history=InMemoryHistory(),
        completer=SlashCompleter(console.backup_keys, console.users),
        complete_while_typing=False,
        style=Style.from_dict({"real": "bold ansired", "user": "bold"}),
    )
    while True:
        console.screen.prompting = True
        try:
            with patch_stdout(raw=True):
                line = session.prompt(lambda: FormattedText(console.prompt()))
        except KeyboardInterrupt:
            continue
        except EOFError:
            return
        finally:
            console.screen.prompting = False
        yield line
