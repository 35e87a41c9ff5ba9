"""Continuous protection's health as people and scripts read it: ``status --json`` (the fixed
keys kept), the terminal, Slack's status, list and App Home within Slack's limits, and the
console on 80 columns — the window, the recovery point, the slot, the last base backup, and each
problem with its next step."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console as RichConsole

from bot.console_render import render
from bot.render import blocks
from bot.render import json as render_json
from bot.render import text as render_text
from bot.render.slack_limits import validate_message, validate_view
from core.catalog import BackupEntry, FreshnessStatus
from core.keys import BackupKey
from core.wal.health import SlotState, WalLimits, WalStatus
from core.wal.names import Segment
from core.wal.recovery import RecoverableWindow
from tests.support.fake_slack import block_texts
from tests.support.manifests import make_manifest

GiB = 1 << 30
SLOT = SlotState(
    "blnk_backup",
    True,
    active=True,
    wal_status="reserved",
    retained_bytes=3 * GiB // 2,
    safe_wal_size=8 * GiB,
    max_keep_bytes=10 * GiB,
)


def _readings() -> None:
    """The readings the tests render, as of now: the renderers count ages to the clock, so
    they are made again for each test (a module imported minutes before would age)."""
    global NOW, WINDOW, HEALTHY, BROKEN, FRESH
    NOW = datetime.now(UTC)
    WINDOW = RecoverableWindow(
        earliest=datetime(2026, 12, 1, 2, 0, 7, tzinfo=UTC),
        latest=NOW - timedelta(seconds=3),
        latest_lsn="0/5000000",
        base_backups=2,
        last_base_backup=datetime(2026, 12, 2, 2, 0, 9, tzinfo=UTC),
    )
    HEALTHY = WalStatus(WINDOW, SLOT, NOW - timedelta(seconds=2), (), NOW, WalLimits())
    BROKEN = replace(
        HEALTHY,
        window=replace(WINDOW, latest=NOW - timedelta(minutes=20)),
        slot=replace(
            SLOT, active=False, wal_status="lost", retained_bytes=None, safe_wal_size=None
        ),
        receiver_last_seen=NOW - timedelta(minutes=20),
        gaps=(Segment(1, 9), Segment(1, 10)),
    )
    FRESH = FreshnessStatus(NOW, 24, 1, 0, 8, None, None)


_readings()


@pytest.fixture(autouse=True)
def _now() -> None:
    _readings()


def shown(message: blocks.Message) -> str:
    return "\n".join([message.text, *block_texts(message.blocks)])


def test_status_json_keeps_its_fixed_keys_and_adds_the_slot_and_the_problems() -> None:
    body = render_json.wal(BROKEN)
    assert body["recoverable_window"] == WINDOW.as_dict() | {
        "latest": BROKEN.window.latest.isoformat()  # type: ignore[union-attr]
    }
    assert 1190 < body["recovery_point_lag_seconds"] < 1300
    assert body["last_base_backup"] == "2026-12-02T02:00:09+00:00"
    assert body["slot"] == {
        "name": "blnk_backup",
        "exists": True,
        "active": False,
        "wal_status": "lost",
        "retained_bytes": None,
        "safe_wal_size": None,
        "max_slot_wal_keep_size": 10 * GiB,
        "retained_share": None,
        "error": None,
    }
    assert body["wal_gaps"] == {
        "count": 2,
        "segments": ["000000010000000000000009", "00000001000000000000000A"],
    }
    assert body["chain_broken"] is True
    assert [p["code"] for p in body["problems"]] == ["chain_broken", "receiver_down", "wal_lag"]
    assert all(set(p) == {"code", "message", "next_step"} for p in body["problems"])
    healthy = render_json.wal(HEALTHY)
    assert healthy["slot"]["retained_share"] == 0.15 and healthy["problems"] == []


def test_status_text_shows_the_window_the_slot_and_each_problem_with_its_next_step() -> None:
    lines = render_text.wal(HEALTHY).splitlines()
    assert lines[0] == (
        f"Point-in-time recovery: 2026-12-01 02:00:07 UTC .. {WINDOW.latest:%Y-%m-%d %H:%M:%S} UTC"  # type: ignore[union-attr]
    )
    assert re.fullmatch(r"  recovery point \d+\.\d s behind now", lines[1]), lines[1]
    assert lines[2] == (
        "  slot           blnk_backup: active, reserved; keeps 1.5 GiB, 15% of its 10.0 GiB cap"
    )
    assert lines[4] == "  base backups   2, the last 2026-12-02 02:00:09 UTC"
    assert not any(line.startswith("✗") for line in lines)

    broken = render_text.wal(BROKEN)
    assert "✗ over 60 s" in broken
    assert "  slot           blnk_backup: NOT active, lost" in broken
    assert "  archive        2 WAL segment(s) missing" in broken
    assert "✗ chain_broken: " in broken and "✗ receiver_down: " in broken
    assert (
        "    next: recreate the slot, which takes a base backup at once: `/blnk-backups wal-slot"
        in broken
    )


def test_an_unreadable_slot_says_why_and_hostile_server_text_stays_text() -> None:
    error = "could not connect: <!channel> \x1b[2J\nfake line"
    unreadable = replace(HEALTHY, slot=SlotState("blnk_backup", None, error=error))
    text = render_text.wal(unreadable)
    assert "could not be read (could not connect: <!channel> \\x1b[2J\\nfake line)" in text
    message = blocks.status(FRESH, wal=unreadable)
    assert "<!channel>" not in shown(message) and "&lt;!channel&gt;" in shown(message)
    assert "\x1b" not in shown(message)


def test_slack_status_shows_point_in_time_recovery_and_what_to_do() -> None:
    message = blocks.status(FRESH, {"backup": NOW}, wal=HEALTHY)
    text = shown(message)
    assert "Backups are healthy" in text
    for expected in (
        "*Point-in-time recovery*",
        "*Restorable window*\n2026-12-01 02:00:07 UTC →",
        "s behind now",
        "blnk_backup: active, reserved; keeps 1.5 GiB, 15% of its 10.0 GiB cap",
        "*Last base backup*\n2026-12-02 02:00:09 UTC (2 in all)",
        "*WAL receiver*\nlast seen",
    ):
        assert expected in text, expected

    message = blocks.status(FRESH, wal=BROKEN)
    text = shown(message)
    assert "Backups need attention" in text
    assert message.text == "Backup status: chain_broken; receiver_down; wal_lag"
    assert ":warning: *chain_broken*: " in text and ":warning: over 60 s" in text
    assert (
        "→ recreate the slot, which takes a base backup at once: `/blnk-backups wal-slot " in text
    )
    assert "`blnk-backup wal-slot recreate --yes`" in text
    validate_message(message.text, message.blocks)


def test_without_wal_archive_slack_shows_nothing_of_it() -> None:
    for message in (blocks.status(FRESH), blocks.backups_list([])):
        assert "Point-in-time" not in shown(message)


def test_the_list_ends_with_point_in_time_recovery_even_when_long() -> None:
    keys = [BackupKey.at(NOW - timedelta(hours=h)) for h in range(20)]
    entries = [
        BackupEntry(k, 8, True, make_manifest(k, reason="r" * 200 + "&" * 100)) for k in keys
    ]
    message = blocks.backups_list(entries, wal=BROKEN)
    validate_message(message.text, message.blocks)
    text = shown(message)
    assert "*Point-in-time recovery*" in text and "*chain_broken*" in text
    assert text.rstrip().endswith("proves one restorable.")
    empty = blocks.backups_list([], wal=HEALTHY)
    assert "No backups yet" in shown(empty) and "*Restorable window*" in shown(empty)
    failed = blocks.backups_list([], wal_error="the bucket is down")
    assert "Could not read the WAL archive:* the bucket is down" in shown(failed)


def test_app_home_shows_point_in_time_recovery_and_its_problems_need_attention() -> None:
    view = blocks.home_view(FRESH, [], [], None, wal=BROKEN, now=NOW)
    validate_view(view)
    text = "\n".join(block_texts(view))
    assert ":warning: *Needs attention*" in text
    assert "• point-in-time recovery: chain_broken" in text
    assert "*Restorable window*" in text and "`blnk-backup wal-slot recreate --yes`" in text
    calm = "\n".join(block_texts(blocks.home_view(FRESH, [], [], None, wal=HEALTHY, now=NOW)))
    assert ":white_check_mark: *Healthy*" in calm and "*Recovery point*" in calm


def test_the_console_draws_it_within_80_columns_commands_whole() -> None:
    worst = replace(
        BROKEN,
        slot=replace(
            SLOT, name="s" * 63, active=False, wal_status="unreserved", retained_bytes=11 * GiB
        ),
    )
    message = blocks.status(FRESH, {"backup": NOW, "base_backup": NOW}, wal=worst)
    console = RichConsole(file=io.StringIO(), width=80, color_system=None, record=True)
    console.print(render(message.text, message.blocks))
    lines = [line.rstrip() for line in console.export_text().splitlines()]
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert any(line.startswith("  Restorable window:") for line in lines)
    flowing = " ".join(" ".join(lines).split())
    assert "slot_retention:" in flowing and "chain_broken:" in flowing
    assert '(or "blnk-backup wal-slot recreate --yes")' in flowing  # code spans quoted, never cut
