"""Messages drawn for a terminal: every emoji shortcode the renderers emit becomes a sign (an
unknown one degrades to a sign or words, never the raw ``:code:``), values with spaces keep
their quotes, and on a terminal of 80 columns field values wrap under their own column."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console as RichConsole

from bot.console_render import EMOJI, draw, plain, render
from bot.render import blocks

ROOT = Path(__file__).resolve().parents[2]
RAW_SHORTCODE = re.compile(r"(?<![\w:]):[a-z][a-z0-9_+-]*:(?![\w:])")


def test_every_shortcode_the_block_kit_renderer_can_emit_has_a_sign() -> None:
    source = (ROOT / "bot" / "render" / "blocks.py").read_text()
    emitted = set(re.findall(r":[a-z_]+:", source))
    assert ":no_entry_sign:" in emitted  # the one the issue saw raw
    assert emitted <= set(EMOJI), emitted - set(EMOJI)
    for code in emitted:
        assert RAW_SHORTCODE.search(plain(f"{code} done")) is None, code


def test_an_unknown_shortcode_degrades_to_an_emoji_or_words_never_the_raw_code() -> None:
    assert plain(":rocket: launched") == "🚀 launched"  # rich's table knows it
    assert plain(":blnk_custom_thing: done") == "[blnk custom thing] done"
    # Colons that are no shortcode stay as they are.
    assert plain("at 12:30:45 UTC") == "at 12:30:45 UTC"
    assert plain("fix:the:thing") == "fix:the:thing"


def test_a_denied_request_is_drawn_without_raw_shortcodes() -> None:
    message = blocks.refusal("nope")
    lines = draw(message.text, message.blocks)
    assert lines == ["⛔ Not done: nope"]
    header = {"type": "header", "text": {"type": "plain_text", "text": ":no_entry_sign: Denied"}}
    assert draw("", [header])[0] == "🚫 Denied"


def test_inline_code_with_spaces_keeps_quotes_so_a_name_reads_whole() -> None:
    assert plain("Create the new database `blnk copy` on host") == (
        'Create the new database "blnk copy" on host'
    )
    assert plain("Restore `blnk_backup_20261126_030000.dump`") == (
        "Restore blnk_backup_20261126_030000.dump"
    )


def _screen(renderable: object, width: int = 80) -> list[str]:
    console = RichConsole(file=io.StringIO(), width=width, color_system=None, record=True)
    console.print(renderable)
    return [line.rstrip() for line in console.export_text().splitlines()]


def test_on_80_columns_a_long_field_value_wraps_under_its_own_column() -> None:
    reason = "a long reason that certainly wraps past the eightieth column of this terminal"
    message = blocks.backup_progress("dumping", "k.dump", 5_000, None, "U1", reason, 3.0)
    lines = _screen(render(message.text, message.blocks, prefix="(you) "))
    assert all(len(line) <= 80 for line in lines)
    at = next(i for i, line in enumerate(lines) if "Reason:" in line)
    column = lines[at].index("a long reason")
    assert lines[at + 1].startswith(" " * column) and lines[at + 1].strip()
    joined = " ".join(line[column:].strip() for line in lines[at : at + 2])
    assert joined == reason
    assert lines[0].startswith("(you) ")
    assert all(line.startswith(" " * len("(you) ")) for line in lines[1:])


def test_the_live_region_leaves_out_the_frozen_elapsed_field() -> None:
    message = blocks.restore_progress("restoring", "latest", "U1", 1.5)
    shown = "\n".join(_screen(render(message.text, message.blocks, skip_fields=("Elapsed",))))
    assert "Restore test running" in shown and "Elapsed" not in shown


def test_on_80_columns_a_full_sha256_is_never_broken_but_goes_below_its_label() -> None:
    from tests.support.manifests import make_manifest

    manifest = make_manifest()
    message = blocks.backup_succeeded(manifest, "bkt", "U1")
    lines = _screen(render(message.text, message.blocks))
    at = lines.index("  SHA-256:")
    assert lines[at + 1] == "    " + manifest.sha256
    assert any(line.startswith("  Size:") for line in lines)  # the others stay in columns
    wide = _screen(render(message.text, message.blocks), width=120)
    assert any(line.startswith("  SHA-256:") and manifest.sha256 in line for line in wide)
