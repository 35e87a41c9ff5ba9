"""Block Kit messages drawn for a terminal: the console shows exactly the messages the Slack
bot would post, readably — headers underlined, mrkdwn reduced to plain text, fields in two
columns, buttons as the console command that presses them."""

from __future__ import annotations

import html
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from rich.cells import cell_len
from rich.console import Console as RichConsole
from rich.console import ConsoleOptions, Group, RenderableType, RenderResult
from rich.emoji import Emoji, NoEmoji
from rich.table import Table
from rich.text import Text

from bot.render.blocks import APPROVE_ACTION, DENY_ACTION

WIDTH = 100  # of a header's underline in plain output
RULE_WIDTH = 60  # of a header's underline on a terminal (rich wraps what is wider)
FIELD_LABEL_WIDTH = 18
_LINK = re.compile(r"<(https?://[^|>]+)\|([^>]+)>")
# The shortcodes the renderers emit, drawn as signs every terminal font has (rich's emoji
# table covers any other; tests/unit/test_console_render.py checks blocks.py emits no unmapped one).
EMOJI = {
    ":white_check_mark:": "✓",
    ":x:": "✗",
    ":warning:": "⚠",
    ":hourglass_flowing_sand:": "⏳",
    ":hourglass:": "⌛",
    ":information_source:": "ℹ",  # noqa: RUF001 - the information sign is meant
    ":rotating_light:": "🚨",
    ":no_entry:": "⛔",
    ":no_entry_sign:": "🚫",
    ":double_vertical_bar:": "⏸",
    ":lock:": "🔒",
    ":bell:": "🔔",
}
# A shortcode stands alone: "12:30:45" or "fix:the:thing" hold none.
SHORTCODE = re.compile(r"(?<![\w:]):([a-z][a-z0-9_+-]*):(?![\w:])")
_MENTION = re.compile(r"<@([UW][A-Z0-9]+)>")
_CODE = re.compile(r"`([^`\n]*)`")


def emoji(match: re.Match[str]) -> str:
    """A shortcode as a terminal shows it: our sign for it, else rich's emoji, else its name
    in words (never the raw ``:code:``)."""
    if match[0] in EMOJI:
        return EMOJI[match[0]]
    try:
        return str(Emoji(match[1]))
    except NoEmoji:
        return "[" + match[1].replace("_", " ") + "]"


def _code_span(match: re.Match[str]) -> str:
    """Inline code without its backticks; a value with spaces (a database named "blnk copy")
    in quotes, so where it begins and ends stays plain."""
    value = match[1]
    return f'"{value}"' if any(c.isspace() for c in value) else value


def plain(mrkdwn: str) -> str:
    """Slack mrkdwn → plain text: links as "text (url)", mentions as @U…, entities decoded,
    *bold*, _italic_ and `code` markers dropped."""
    text = _LINK.sub(lambda m: f"{m[2]} ({m[1]})", mrkdwn)
    text = _MENTION.sub(lambda m: f"@{m[1]}", text)
    text = re.sub(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])", r"\1", text)
    text = re.sub(r"(?<![\w_])_([^_\n]+)_(?![\w_])", r"\1", text)
    text = text.replace("```", "")
    text = _CODE.sub(_code_span, text).replace("`", "")
    text = SHORTCODE.sub(emoji, text)
    return html.unescape(text)


def _text(obj: dict[str, Any] | None) -> str:
    if not obj:
        return ""
    raw = str(obj.get("text", ""))
    if obj.get("type") == "mrkdwn":
        return plain(raw)
    return SHORTCODE.sub(emoji, raw)


@dataclass(frozen=True)
class Row:
    """One piece of a message as a terminal shows it."""

    kind: str  # header, text, field, context, divider, buttons
    text: str
    label: str = ""  # a field's label


def rows(text: str, blocks: list[dict[str, Any]]) -> list[Row]:
    """Given a message (fallback text and blocks), return what a terminal shows, in order."""
    if not blocks:
        return [Row("text", plain(text))]
    found: list[Row] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            found.append(Row("header", _text(block.get("text"))))
        elif kind == "section":
            if block.get("text"):
                found.append(Row("text", _text(block["text"])))
            for item in block.get("fields") or []:
                label, _, value = _text(item).partition("\n")
                found.append(Row("field", value, label))
            accessory = block.get("accessory")
            if accessory and accessory.get("type") == "button":
                found.append(Row("buttons", _button(accessory)))
        elif kind == "context":
            parts = [_text(e) for e in block.get("elements") or [] if e.get("type") != "image"]
            found.append(Row("context", " · ".join(p for p in parts if p)))
        elif kind == "divider":
            found.append(Row("divider", ""))
        elif kind == "actions":
            buttons = [_button(e) for e in block.get("elements") or [] if e.get("type") == "button"]
            found.append(Row("buttons", "  ".join(buttons)))
        elif kind == "rich_text":
            found.append(Row("text", plain(text)))
    return found


def draw(text: str, blocks: list[dict[str, Any]]) -> list[str]:
    """Given a message (fallback text and blocks), return the plain lines it shows as (for
    output that is not a terminal: no escape codes, no wrapping)."""
    lines: list[str] = []
    for row in rows(text, blocks):
        if row.kind == "header":
            lines += [row.text, "─" * min(WIDTH, max(8, len(row.text)))]
        elif row.kind == "field":
            lines.append(f"  {row.label + ':':<18} {' '.join(row.text.split())}".rstrip())
        elif row.kind == "context":
            lines.append("  " + row.text)
        elif row.kind == "divider":
            lines.append("┄" * 40)
        elif row.kind == "text":
            lines += row.text.splitlines()
        else:
            lines.append(row.text)
    return [piece for line in lines for piece in line.split("\n")]


def render(
    text: str,
    blocks: list[dict[str, Any]],
    *,
    prefix: str = "",
    prefix_style: str = "",
    skip_fields: Collection[str] = (),
) -> RenderableType:
    """Given a message, return it for rich to lay out on a terminal of any width: fields in
    two columns whose values wrap under themselves, the header bold, context dimmed, the
    ``prefix`` (a channel's tag) once on the left of it all. Never markup: message text is
    text. ``skip_fields``: labels not to show (the live region's own clock replaces
    "Elapsed")."""
    parts: list[RenderableType] = []
    fields: Fields | None = None
    for row in rows(text, blocks):
        if row.kind == "field":
            if row.label in skip_fields:
                continue
            if fields is None:
                fields = Fields()
                parts.append(fields)
            fields.pairs.append((row.label, row.text))
            continue
        fields = None
        if row.kind == "header":
            parts.append(Text(row.text, style="bold"))
            parts.append(Text("─" * min(RULE_WIDTH, max(8, cell_len(row.text)))))
        elif row.kind == "context":
            parts.append(Text(row.text, style="dim"))
        elif row.kind == "divider":
            parts.append(Text("┄" * 40, style="dim"))
        elif row.kind == "buttons":
            parts.append(Text(row.text, style="bold cyan"))
        else:
            parts.append(Text(row.text))
    body = Group(*parts)
    if not prefix:
        return body
    tagged = Table.grid()
    tagged.add_column(no_wrap=True)
    tagged.add_column()
    tagged.add_row(Text(prefix, style=prefix_style), body)
    return tagged


@dataclass
class Fields:
    """Label/value pairs in two columns, values wrapping under themselves. A value with a word
    too wide for its column (a SHA-256 on 80 columns) goes on a line of its own below its
    label instead, so the word is never broken and can be copied whole."""

    pairs: list[tuple[str, str]] = field(default_factory=list)

    def __rich_console__(self, console: RichConsole, options: ConsoleOptions) -> RenderResult:
        indent = 1 + FIELD_LABEL_WIDTH + 2  # the grid's first two columns and their padding
        room = options.max_width - indent
        grid: Table | None = None
        for label, value in self.pairs:
            widest = max((cell_len(word) for word in value.split()), default=0)
            if widest > room and widest <= options.max_width - 4:
                if grid is not None:
                    yield grid
                    grid = None
                yield Text("  " + label + ":", style="bold")
                yield Text("    " + value)
                continue
            if grid is None:
                grid = Table.grid(padding=(0, 1))
                grid.add_column(width=1, no_wrap=True)
                grid.add_column(width=FIELD_LABEL_WIDTH, no_wrap=True, overflow="ellipsis")
                grid.add_column(overflow="fold")
            grid.add_row("", Text(label + ":", style="bold"), Text(value))
        if grid is not None:
            yield grid


def _button(element: dict[str, Any]) -> str:
    label = _text(element.get("text"))
    action = str(element.get("action_id", ""))
    value = str(element.get("value", ""))
    if action == APPROVE_ACTION:
        return f"[{label}: type /approve {value[:8]}]"
    if action == DENY_ACTION:
        return f"[{label}: type /deny {value[:8]}]"
    return f"[{label}]"
