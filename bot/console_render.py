"""Block Kit messages drawn for a terminal: the console shows exactly the messages the Slack
bot would post, readably — headers underlined, mrkdwn reduced to plain text, fields in two
columns, buttons as the console command that presses them."""

from __future__ import annotations

import html
import re
from typing import Any

WIDTH = 100
_LINK = re.compile(r"<(https?://[^|>]+)\|([^>]+)>")
_EMOJI = {
    ":white_check_mark:": "✓",
    ":x:": "✗",
    ":warning:": "⚠",
    ":hourglass_flowing_sand:": "⏳",
    ":information_source:": "ℹ",  # noqa: RUF001 - the information sign is meant
    ":rotating_light:": "🚨",
    ":no_entry:": "⛔",
    ":lock:": "🔒",
    ":bell:": "🔔",
}
_SHORTCODE = re.compile(r":[a-z0-9_+-]+:")
_MENTION = re.compile(r"<@([UW][A-Z0-9]+)>")


def plain(mrkdwn: str) -> str:
    """Slack mrkdwn → plain text: links as "text (url)", mentions as @U…, entities decoded,
    *bold*, _italic_ and `code` markers dropped."""
    text = _LINK.sub(lambda m: f"{m[2]} ({m[1]})", mrkdwn)
    text = _MENTION.sub(lambda m: f"@{m[1]}", text)
    text = re.sub(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])", r"\1", text)
    text = re.sub(r"(?<![\w_])_([^_\n]+)_(?![\w_])", r"\1", text)
    text = text.replace("```", "").replace("`", "")
    text = _SHORTCODE.sub(lambda m: _EMOJI.get(m[0], m[0]), text)
    return html.unescape(text)


def _text(obj: dict[str, Any] | None) -> str:
    if not obj:
        return ""
    raw = str(obj.get("text", ""))
    if obj.get("type") == "mrkdwn":
        return plain(raw)
    return _SHORTCODE.sub(lambda m: _EMOJI.get(m[0], m[0]), raw)


def draw(text: str, blocks: list[dict[str, Any]]) -> list[str]:
    """Given a message (fallback text and blocks), return the lines a terminal shows."""
    if not blocks:
        return [plain(text)]
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            title = _text(block.get("text"))
            lines += [title, "─" * min(WIDTH, max(8, len(title)))]
        elif kind == "section":
            if block.get("text"):
                lines += _text(block["text"]).splitlines()
            for field in block.get("fields") or []:
                label, _, value = _text(field).partition("\n")
                lines.append(f"  {label + ':':<18} {' '.join(value.split())}".rstrip())
            accessory = block.get("accessory")
            if accessory and accessory.get("type") == "button":
                lines.append(_button(accessory))
        elif kind == "context":
            parts = [_text(e) for e in block.get("elements") or [] if e.get("type") != "image"]
            lines.append("  " + " · ".join(p for p in parts if p))
        elif kind == "divider":
            lines.append("┄" * 40)
        elif kind == "actions":
            buttons = [_button(e) for e in block.get("elements") or [] if e.get("type") == "button"]
            lines.append("  ".join(buttons))
        elif kind == "rich_text":
            lines.append(plain(text))
    return [piece for line in lines for piece in line.split("\n")]


def _button(element: dict[str, Any]) -> str:
    label = _text(element.get("text"))
    action = str(element.get("action_id", ""))
    value = str(element.get("value", ""))
    if action == "approval_approve":
        return f"[{label}: type /approve {value[:8]}]"
    if action == "approval_deny":
        return f"[{label}: type /deny {value[:8]}]"
    return f"[{label}]"
