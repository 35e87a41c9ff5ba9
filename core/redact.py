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
# Every character of Unicode's categories Cc (controls), Cf (format: bidirectional embeddings,
# overrides, isolates and marks, zero-width spaces and joiners, word joiner, invisible
# operators, soft hyphen, BOM, interlinear annotations, tag characters, ...), Zl and Zp (line
# and paragraph separators), and the characters that render as nothing though not "format"
# (combining grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian free variation
# selectors, the Braille blank): "bac\u200bkup" must not pass for "backup", nor "\u202e" turn a
# key around on screen. Variation selectors stay allowed: emoji need them (a reason may say ❤️).
# Written out as ranges (Unicode 14, Python 3.11's) so that importing this costs nothing.
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2"
    "\u115f-\u1160\u17b4-\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202e\u2060-\u2064"
    "\u2066-\u206f\u2800\u3164\ufeff\uffa0\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    "\U000e0020-\U000e007f]"
)


def mask(text: str, secrets: Iterable[str | None]) -> str:
    """Given text and secret values, return the text with every secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def has_control_characters(text: str) -> bool:
    return _CONTROL.search(text) is not None


def neutralise(text: str) -> str:
    """Given stored text, return it with control, bidi and invisible characters made visible
    (``\\x1b``, ``\\u200b``), safe to print on one line of a terminal or a chat message."""
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


def neutralise_lines(text: str) -> str:
    """Like neutralise, but keep newlines (multi-line causes such as a stderr tail)."""
    return "\n".join(neutralise(line) for line in text.split("\n"))


MAX_REASON_LENGTH = 500  # a reason is one line: why a backup, a restore, a deletion


def check_plain_text(what: str, value: str | None, max_length: int) -> str | None:
    """Given user input (a reason, an actor name), return it stripped, or None if empty.

    Raise UsageError if it is too long or holds control characters (newline, ESC, BEL, CR...),
    bidirectional marks or zero-width characters.
    """
    if value is None:
        return None
    if has_control_characters(value):
        raise UsageError(
            f"the {what} must be one line of plain text (no control characters, "
            "bidirectional marks or zero-width characters)"
        )
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


# How libpq and the PostgreSQL tools name where they connect: shown to the operator at a
# terminal, but never in shared places (a Slack channel, App Home, an alert).
_PG_ENDPOINTS = (
    (
        re.compile(r'connection to server at "[^"]*"(?: \([^)]*\))?, port \d+'),
        "connection to the server",
    ),
    (re.compile(r'connection to server on socket "[^"]*"'), "connection to the server"),
    (re.compile(r'\b(user|role) "[^"]*"'), r'\1 "***"'),
    (re.compile(r"\bpostgres(?:ql)?://[^\s/]*"), "postgresql://***"),
    (re.compile(r'\bhost(?: name)? "[^"]*"'), 'host "***"'),
)


class EndpointScrubber:
    """Removes database hosts, ports and user names from text for shared places: libpq's
    phrasings (``connection to server at "db" (10.0.0.5), port 5432``, ``for user "x"``,
    ``could not translate host name "db"``), database URLs, and the configured hosts that
    cannot be mistaken for a word (``db.internal``, ``10.0.0.5``) wherever they stand. A host or
    user that is a plain word (``postgres``) is only removed from those phrasings: elsewhere it
    is as likely a database's name."""

    def __init__(self, hosts: Iterable[str | None]) -> None:
        names = sorted({n for n in hosts if n and any(c in n for c in ".:")}, key=len, reverse=True)
        self._names = (
            re.compile("|".join(rf"(?<![\w.-]){re.escape(n)}(?![\w.-])" for n in names))
            if names
            else None
        )

    def __call__(self, text: str) -> str:
        for pattern, replacement in _PG_ENDPOINTS:
            text = pattern.sub(replacement, text)
        if self._names is not None:
            text = self._names.sub("***", text)
        return text
