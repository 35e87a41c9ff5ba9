"""Text that crosses a trust boundary: secrets masked before anything is logged, audited or
shown, control characters refused at input and neutralised wherever stored text is echoed.

A reason typed by a person, a key read from a bucket or a cause from pg_dump's stderr is shown
in terminals, Slack and JSON. A newline or an ESC sequence in it could print a fake
"✓ backup uploaded and verified" line or rewrite the screen, so input with control characters is
refused and output replaces them with visible escapes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from core.errors import UsageError

MAX_CAUSE_LENGTH = 4000  # what the audit log keeps of an error's cause
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def mask(text: str, secrets: Iterable[str | None]) -> str:
    """Given text and secret values, return the text with every secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def has_control_characters(text: str) -> bool:
    return _CONTROL.search(text) is not None


def neutralise(text: str) -> str:
    """Given stored text, return it with control and bidi characters made visible (``\\x1b``),
    safe to print on one line of a terminal or a chat message."""
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


def neutralise_lines(text: str) -> str:
    """Like neutralise, but keep newlines (multi-line causes such as a stderr tail)."""
    return "\n".join(neutralise(line) for line in text.split("\n"))


MAX_REASON_LENGTH = 500  # a reason is one line: why a backup, a restore, a deletion


def check_plain_text(what: str, value: str | None, max_length: int) -> str | None:
    """Given user input (a reason, an actor name), return it stripped, or None if empty.

    Raise UsageError if it is too long or holds control characters (newline, ESC, BEL, CR...).
    """
    if value is None:
        return None
    if has_control_characters(value):
        raise UsageError(f"the {what} must be one line of plain text (no control characters)")
    value = value.strip()
    if len(value) > max_length:
        raise UsageError(f"the {what} is longer than {max_length} characters")
    return value or None


def truncate_cause(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Return an error cause ready for the audit log: secrets masked, at most
    MAX_CAUSE_LENGTH characters (the end of a long cause is cut, marked with …)."""
    text = mask(text, secrets)
    if len(text) > MAX_CAUSE_LENGTH:
        text = text[: MAX_CAUSE_LENGTH - 1] + "…"
    return text


def first_line(error: BaseException | str) -> str:
    """Return the first non-empty line of an error's text (library errors often run on)."""
    text = str(error)
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), type(error).__name__)
