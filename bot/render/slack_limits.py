"""Slack's published Block Kit limits, checked before anything is sent.

slack_sdk's block models check a few limits in ``to_dict()`` (section text, button text, the
confirm dialog) but not the number of blocks, the length of section fields, context elements,
duplicate block ids or the size of the whole message; Slack answers ``invalid_blocks`` or
``msg_blocks_too_long`` for those, and the person waiting for a result sees nothing. This module
checks every limit we rely on (``validate_message``, ``validate_view``) and offers the helpers the
renderers use so that long lists end with "… and N more" instead of breaking a limit (``fit``,
``pack_lines``, ``truncate_mrkdwn``).

Lengths are counted in UTF-16 code units, which is never less than the number of characters,
so an emoji-heavy text is judged conservatively. The size of a message is the length of its
blocks as JSON (``json.dumps`` with its default separators, non-ASCII kept as is).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

Block = dict[str, Any]

MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_SECTION_TEXT = 3000
MAX_FIELD_TEXT = 2000
MAX_FIELDS = 10
MAX_HEADER_TEXT = 150
MAX_CONTEXT_ELEMENTS = 10
MAX_ACTIONS_ELEMENTS = 25
MAX_BUTTON_TEXT = 75
MAX_BUTTON_VALUE = 2000
MAX_BUTTON_URL = 3000
MAX_ID = 255  # action_id, block_id
MAX_CONFIRM_TITLE = 100
MAX_CONFIRM_TEXT = 300
MAX_CONFIRM_BUTTON = 30  # confirm and deny
MAX_TEXT_OBJECT = 3000  # any other text object (context elements, ...)
MAX_MESSAGE_JSON = 12_000  # Slack answers msg_blocks_too_long at around 13,000
MAX_FALLBACK_TEXT = 40_000
MAX_MODAL_TITLE = 24  # a modal's title, submit and close

TEXT_TYPES = ("plain_text", "mrkdwn")
VIEW_TYPES = ("home", "modal")
_ENTITY = re.compile(r"&(?:amp|lt|gt);")


class BlockLimitError(ValueError):
    """Blocks that Slack would refuse; the message names the first offending path and limit."""


def length(text: str) -> int:
    """The length of text as Slack may count it: UTF-16 code units (an emoji may count 2)."""
    return len(text.encode("utf-16-le")) // 2


def json_size(blocks: Sequence[Block]) -> int:
    """The size of blocks as JSON, the measure of MAX_MESSAGE_JSON."""
    return len(json.dumps(list(blocks), ensure_ascii=False))


# --- validation ---------------------------------------------------------------------------------
def validate_message(text: str, blocks: list[Block]) -> None:
    """Check a message (fallback text and blocks) against Slack's limits.

    Raise BlockLimitError naming the first problem: no fallback text, more than 50 blocks, a
    block or element over its limit, duplicate block ids, or blocks larger than 12,000
    characters of JSON."""
    if not isinstance(text, str) or not text.strip():
        raise BlockLimitError("text: a message always needs a non-empty fallback text")
    if length(text) > MAX_FALLBACK_TEXT:
        raise BlockLimitError(
            f"text: {length(text)} characters, more than {MAX_FALLBACK_TEXT} (fallback text)"
        )
    _check_blocks(blocks, MAX_MESSAGE_BLOCKS, "blocks")
    size = json_size(blocks)
    if size > MAX_MESSAGE_JSON:
        raise BlockLimitError(
            f"blocks: {size} characters of JSON, more than {MAX_MESSAGE_JSON} for one message"
        )


def validate_view(view: dict[str, Any]) -> None:
    """Check a Home tab or modal view against Slack's limits (100 blocks, then the same block
    limits as messages; a modal's title, submit and close at most 24 characters).

    Raise BlockLimitError naming the first problem."""
    if not isinstance(view, dict):
        raise BlockLimitError("view: not an object")
    kind = view.get("type")
    if kind not in VIEW_TYPES:
        raise BlockLimitError(f"view.type: {kind!r} is not one of {VIEW_TYPES}")
    if kind == "modal":
        _check_text_object(view.get("title"), "view.title", MAX_MODAL_TITLE, plain=True)
        for optional in ("submit", "close"):
            if view.get(optional) is not None:
                _check_text_object(view[optional], f"view.{optional}", MAX_MODAL_TITLE, plain=True)
    _check_blocks(view.get("blocks"), MAX_VIEW_BLOCKS, "view.blocks")


def _check_blocks(blocks: Any, max_blocks: int, where: str) -> None:
    if not isinstance(blocks, list):
        raise BlockLimitError(f"{where}: not a list")
    if len(blocks) > max_blocks:
        raise BlockLimitError(f"{where}: {len(blocks)} blocks, more than {max_blocks}")
    seen: set[str] = set()
    for index, block in enumerate(blocks):
        path = f"{where}[{index}]"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise BlockLimitError(f"{path}: not a block (an object with a type)")
        block_id = block.get("block_id")
        if block_id is not None:
            _check_id(block_id, f"{path}.block_id")
            if block_id in seen:
                raise BlockLimitError(f"{path}.block_id: {block_id!r} is used twice")
            seen.add(block_id)
        checker = _BLOCK_CHECKS.get(block["type"])
        if checker is not None:
            checker(block, path)


def _check_section(block: Block, path: str) -> None:
    text, fields = block.get("text"), block.get("fields")
    if text is None and not fields:
        raise BlockLimitError(f"{path}: a section needs text or fields")
    if text is not None:
        _check_text_object(text, f"{path}.text", MAX_SECTION_TEXT)
    if fields is not None:
        if not isinstance(fields, list):
            raise BlockLimitError(f"{path}.fields: not a list")
        if len(fields) > MAX_FIELDS:
            raise BlockLimitError(f"{path}.fields: {len(fields)} fields, more than {MAX_FIELDS}")
        for index, item in enumerate(fields):
            _check_text_object(item, f"{path}.fields[{index}]", MAX_FIELD_TEXT)
    accessory = block.get("accessory")
    if accessory is not None:
        _check_element(accessory, f"{path}.accessory")


def _check_header(block: Block, path: str) -> None:
    _check_text_object(block.get("text"), f"{path}.text", MAX_HEADER_TEXT, plain=True)


def _check_context(block: Block, path: str) -> None:
    elements = block.get("elements")
    if not isinstance(elements, list) or not elements:
        raise BlockLimitError(f"{path}.elements: a context needs at least one element")
    if len(elements) > MAX_CONTEXT_ELEMENTS:
        raise BlockLimitError(
            f"{path}.elements: {len(elements)} elements, more than {MAX_CONTEXT_ELEMENTS}"
        )
    for index, element in enumerate(elements):
        if isinstance(element, dict) and element.get("type") in TEXT_TYPES:
            _check_text_object(element, f"{path}.elements[{index}]", MAX_TEXT_OBJECT)


def _check_actions(block: Block, path: str) -> None:
    elements = block.get("elements")
    if not isinstance(elements, list) or not elements:
        raise BlockLimitError(f"{path}.elements: an actions block needs at least one element")
    if len(elements) > MAX_ACTIONS_ELEMENTS:
        raise BlockLimitError(
            f"{path}.elements: {len(elements)} elements, more than {MAX_ACTIONS_ELEMENTS}"
        )
    action_ids: set[str] = set()
    for index, element in enumerate(elements):
        where = f"{path}.elements[{index}]"
        _check_element(element, where)
        action_id = element.get("action_id")
        if action_id is not None:
            if action_id in action_ids:
                raise BlockLimitError(f"{where}.action_id: {action_id!r} is used twice")
            action_ids.add(action_id)


def _check_element(element: Any, path: str) -> None:
    if not isinstance(element, dict) or not isinstance(element.get("type"), str):
        raise BlockLimitError(f"{path}: not an element (an object with a type)")
    if element.get("action_id") is not None:
        _check_id(element["action_id"], f"{path}.action_id")
    if element["type"] == "button":
        _check_text_object(element.get("text"), f"{path}.text", MAX_BUTTON_TEXT, plain=True)
        value = element.get("value")
        if value is not None and (not isinstance(value, str) or length(value) > MAX_BUTTON_VALUE):
            raise BlockLimitError(f"{path}.value: more than {MAX_BUTTON_VALUE} characters")
        url = element.get("url")
        if url is not None and (not isinstance(url, str) or length(url) > MAX_BUTTON_URL):
            raise BlockLimitError(f"{path}.url: more than {MAX_BUTTON_URL} characters")
        if element.get("style") not in (None, "primary", "danger"):
            raise BlockLimitError(f"{path}.style: {element.get('style')!r} is not a style")
    if element.get("confirm") is not None:
        _check_confirm(element["confirm"], f"{path}.confirm")


def _check_confirm(confirm: Any, path: str) -> None:
    if not isinstance(confirm, dict):
        raise BlockLimitError(f"{path}: not an object")
    _check_text_object(confirm.get("title"), f"{path}.title", MAX_CONFIRM_TITLE, plain=True)
    _check_text_object(confirm.get("text"), f"{path}.text", MAX_CONFIRM_TEXT)
    _check_text_object(confirm.get("confirm"), f"{path}.confirm", MAX_CONFIRM_BUTTON, plain=True)
    _check_text_object(confirm.get("deny"), f"{path}.deny", MAX_CONFIRM_BUTTON, plain=True)
    if confirm.get("style") not in (None, "primary", "danger"):
        raise BlockLimitError(f"{path}.style: {confirm.get('style')!r} is not a style")


def _check_text_object(obj: Any, path: str, max_length: int, *, plain: bool = False) -> None:
    if not isinstance(obj, dict) or obj.get("type") not in TEXT_TYPES:
        raise BlockLimitError(f"{path}: not a text object")
    if plain and obj["type"] != "plain_text":
        raise BlockLimitError(f"{path}: must be plain_text, not {obj['type']}")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        raise BlockLimitError(f"{path}.text: empty")
    if length(text) > max_length:
        raise BlockLimitError(f"{path}.text: {length(text)} characters, more than {max_length}")


def _check_id(value: Any, path: str) -> None:
    if not isinstance(value, str) or not value:
        raise BlockLimitError(f"{path}: not a non-empty string")
    if length(value) > MAX_ID:
        raise BlockLimitError(f"{path}: {length(value)} characters, more than {MAX_ID}")


_BLOCK_CHECKS: dict[str, Callable[[Block, str], None]] = {
    "section": _check_section,
    "header": _check_header,
    "context": _check_context,
    "actions": _check_actions,
}


# --- fitting long content -------------------------------------------------------------------------
def truncate_mrkdwn(text: str, limit: int, ellipsis: str = "…") -> str:
    """Return mrkdwn text cut to at most ``limit`` UTF-16 units, ending with ``ellipsis`` when
    cut. The cut never splits an escape (``&amp;``, ``&lt;``, ``&gt;``) or a ``<…>`` token (a
    mention), so what remains is exactly as safe as what was given."""
    if length(text) <= limit:
        return text
    room = limit - length(ellipsis)
    if room <= 0:
        return ellipsis[: max(limit, 0)]
    cut = 0
    used = 0
    for char in text:  # the longest prefix within room
        width = length(char)
        if used + width > room:
            break
        used += width
        cut += 1
    head = text[:cut]
    amp = head.rfind("&")  # only the last one can be cut through
    if amp != -1:
        entity = _ENTITY.match(text, amp)
        if entity is None or entity.end() > cut:
            head = head[:amp]
    opening, closing = head.rfind("<"), head.rfind(">")
    if opening > closing:
        head = head[:opening]  # an unfinished <…> token
    return head + ellipsis


def fit(
    blocks: Sequence[Block],
    limit: int,
    more_block: Callable[[int], Block],
    *,
    budget: int | None = None,
) -> list[Block]:
    """Return ``blocks`` if they fit in ``limit`` blocks (and ``budget`` characters of JSON, if
    given); otherwise as many as fit followed by ``more_block(n)``, where n is how many were
    left out. Returns [] if not even the "more" block fits."""
    if _fits(list(blocks), limit, budget):
        return list(blocks)
    low, high = 0, len(blocks) - 1  # the largest k with blocks[:k] + [more(n - k)] fitting
    best: list[Block] | None = None
    while low <= high:
        k = (low + high) // 2
        candidate = [*blocks[:k], more_block(len(blocks) - k)]
        if _fits(candidate, limit, budget):
            best, low = candidate, k + 1
        else:
            high = k - 1
    return best or []


def pack_lines(
    lines: Sequence[str],
    make_block: Callable[[str], Block],
    *,
    max_blocks: int,
    budget: int | None = None,
    more_line: Callable[[int], str],
    max_chars: int = MAX_SECTION_TEXT,
) -> list[Block]:
    """Pack mrkdwn lines (already escaped) into as few blocks as possible, each block's text at
    most ``max_chars``; at most ``max_blocks`` blocks and ``budget`` characters of JSON. Lines
    that do not fit are replaced by ``more_line(n)`` at the end. A single line longer than
    ``max_chars`` is cut with truncate_mrkdwn."""
    if not lines or max_blocks <= 0:
        return []
    lines = [truncate_mrkdwn(line, max_chars) for line in lines]

    def pack(chosen: Sequence[str], tail: str | None) -> list[Block]:
        texts: list[str] = []
        for line in [*chosen, *([tail] if tail is not None else [])]:
            if texts and length(texts[-1]) + 1 + length(line) <= max_chars:
                texts[-1] += "\n" + line
            else:
                texts.append(line)
        return [make_block(t) for t in texts]

    whole = pack(lines, None)
    if _fits(whole, max_blocks, budget):
        return whole
    low, high = 0, len(lines) - 1
    best: list[Block] = []
    while low <= high:
        k = (low + high) // 2
        candidate = pack(lines[:k], more_line(len(lines) - k))
        if _fits(candidate, max_blocks, budget):
            best, low = candidate, k + 1
        else:
            high = k - 1
    return best


def budget_left(blocks: Sequence[Block], total: int = MAX_MESSAGE_JSON) -> int:
    """How many characters of JSON are left for more blocks after ``blocks`` (a little is kept
    back for the separators between them)."""
    return total - json_size(blocks) - 8


def _fits(blocks: list[Block], limit: int, budget: int | None) -> bool:
    if len(blocks) > limit:
        return False
    return budget is None or json_size(blocks) <= budget
