"""Progress drawn on a terminal (bot/terminal.py): bytes with thousands separators, the rate,
the time left from the previous backup's size, an elapsed time that ticks with no event
arriving, every phase of a restore, the dump's final line at 100 % — and, where output is not a
terminal, plain lines with no escape codes. Redrawing is checked on a terminal emulator (pyte)
of 80 columns: what rich drew last is all that is left."""

from __future__ import annotations

import io
import time

import pyte
from rich.console import Console as RichConsole

from bot.terminal import LiveProgress, OperationProgress, PlainProgress
from core.backup import BackupProgress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _text(progress: OperationProgress, width: int = 80) -> list[str]:
    console = RichConsole(file=io.StringIO(), width=width, color_system=None, record=True)
    console.print(progress)
    return [line.rstrip() for line in console.export_text().splitlines()]


def _dump(progress: OperationProgress, clock: FakeClock, sizes: list[int]) -> None:
    progress.backup_event(BackupProgress("preflight"))
    clock.now += 0.5
    for size in sizes:
        progress.backup_event(BackupProgress("dumping", "k.dump", size, 300_000_000))
        clock.now += 1.0


def test_a_dump_shows_bytes_with_separators_its_rate_and_the_time_left() -> None:
    clock = FakeClock()
    progress = OperationProgress("backup", clock=clock)
    _dump(progress, clock, [0, 10_000_000, 20_000_000, 30_000_000])
    lines = _text(progress)
    assert lines[0].startswith("✓ checking the database")
    assert "dumping and uploading  0:04" in lines[1] and "10 %" in lines[1]
    assert "30,000,000 of ~300,000,000 bytes · 9.5 MiB/s · about 0:27 left" in lines[2]
    assert lines[-1] == "  backup: 0:04 elapsed"


def test_the_elapsed_time_ticks_within_a_phase_without_any_event() -> None:
    clock = FakeClock()
    progress = OperationProgress("restore test", clock=clock)
    progress.stage("downloading")
    clock.now += 2
    progress.stage("restoring")
    first = _text(progress)
    clock.now += 75  # pg_restore says nothing while it works
    later = _text(progress)
    assert "✓ downloading and checking SHA-256  2.0 s" in first[0]
    assert "restoring with pg_restore  0:00" in first[1]
    assert "restoring with pg_restore  1:15" in later[1]
    assert later[-1] == "  restore test: 1:17 elapsed"


def test_a_finished_dump_ends_at_100_percent_with_its_final_size() -> None:
    clock = FakeClock()
    progress = OperationProgress("backup", clock=clock)
    _dump(progress, clock, [0, 10_000_000])
    # The dump outgrew the previous backup; verifying carries its final size.
    progress.backup_event(BackupProgress("verifying", "k.dump", 312_345_678, 300_000_000))
    progress.backup_event(BackupProgress("done", "k.dump", 312_345_678, 300_000_000))
    progress.finish(ok=True)
    lines = _text(progress)
    dump = next(i for i, line in enumerate(lines) if "dumping" in line)
    assert lines[dump].startswith("✓") and lines[dump].endswith("100 %")
    assert lines[dump + 1].startswith("  312,345,678 bytes · ")
    assert lines[-1].startswith("  backup finished after")


def test_a_failed_phase_is_marked_as_failed() -> None:
    clock = FakeClock()
    progress = OperationProgress("restore", clock=clock)
    progress.stage("downloading")
    progress.finish(ok=False)
    lines = _text(progress)
    assert lines[0].startswith("✗ downloading")
    assert lines[-1].startswith("  restore failed after")


def test_a_dump_that_failed_midway_is_not_drawn_at_100_percent() -> None:
    clock = FakeClock()
    progress = OperationProgress("backup", clock=clock)
    _dump(progress, clock, [0, 60_000_000])
    progress.finish(ok=False)  # pg_dump died
    lines = _text(progress)
    dump = next(line for line in lines if "dumping" in line)
    assert dump.startswith("✗") and dump.endswith("20 %"), lines


def test_plain_progress_prints_short_lines_without_escape_codes_and_the_total_at_100() -> None:
    out = io.StringIO()
    clock = FakeClock()
    plain = PlainProgress(out, interval=2.0, clock=clock)
    plain.backup_event(BackupProgress("preflight"))
    for size in (0, 1_000_000, 2_000_000, 3_000_000):
        plain.backup_event(BackupProgress("dumping", "k.dump", size, 4_000_000))
        clock.now += 1.0
    plain.backup_event(BackupProgress("verifying", "k.dump", 3_500_000, 4_000_000))
    plain.backup_event(BackupProgress("done", "k.dump", 3_500_000, 4_000_000))
    assert out.getvalue().splitlines() == [
        "… checking the database, the bucket and the tools",
        "… dumping and uploading k.dump",
        "  2,000,000 bytes so far (~50 % of the previous backup)",
        "  3,500,000 bytes uploaded in all (100 %)",
        "… verifying size and checksum against the bucket",
    ]
    assert "\x1b" not in out.getvalue()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_region_redraws_on_its_own_and_leaves_no_stale_line_on_80_columns() -> None:
    out = _Terminal()
    console = RichConsole(file=out, width=80, force_terminal=True, color_system="standard")
    with LiveProgress(console, "restore test with a long name that takes room") as progress:
        progress.stage("downloading")
        time.sleep(0.3)
        progress.stage("restoring")
        time.sleep(2.3)  # no event at all: the region is redrawn by itself
        ticking = out.getvalue()
        progress.stage("checking")
        time.sleep(0.3)
    assert "restoring with pg_restore  0:02" in ticking
    screen = pyte.Screen(80, 24)
    pyte.Stream(screen).feed(out.getvalue().replace("\n", "\r\n"))
    shown = [line.rstrip() for line in screen.display if line.strip()]
    assert [line.split("  ")[0] for line in shown] == [
        "✓ downloading and checking SHA-256",
        "✓ restoring with pg_restore",
        "✓ checking rows, ledger totals and indexes",
        "",
    ], shown
    assert shown[-1].startswith("  restore test with a long name that takes room finished")
