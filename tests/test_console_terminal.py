"""The local console in a real pseudo-terminal of 80 columns, as a person runs it
(``./scripts/run``), its screen read back by a terminal emulator (pyte): progress redrawn in
place leaves no stale line when lines wrap, a typed command is shown once, long values wrap
under their column, no raw emoji shortcode, and the banner says what it is connected to."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pyte
import pytest

from bot.embedded import postgres_answers
from core.database import PgTarget, databases_like

ROOT = Path(__file__).resolve().parents[1]
COLUMNS, ROWS = 80, 70
REASON = "a long reason that certainly wraps past the eightieth column of this terminal window"
RAW_SHORTCODE = re.compile(r"(?<![\w:]):[a-z][a-z0-9_+-]*:(?![\w:])")


class Terminal:
    """A program in a pseudo-terminal, drawn on an emulated screen as its output comes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.child = pexpect.spawn(
            argv[0], argv[1:], env=env, cwd=str(ROOT), dimensions=(ROWS, COLUMNS)
        )
        terminal = self

        class Screen(pyte.Screen):  # type: ignore[misc]
            def write_process_input(self, data: str) -> None:
                # prompt_toolkit asks where the cursor is; a real terminal answers.
                terminal.child.send(data.encode())

        self.screen = Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self.child.read_nonblocking(65536, timeout=0.2)
            except pexpect.TIMEOUT:
                continue
            except (pexpect.EOF, OSError):
                return
            with self._lock:
                self.raw += chunk
                self.stream.feed(chunk)

    def lines(self) -> list[str]:
        with self._lock:
            return [line.rstrip() for line in self.screen.display]

    def wait_for(self, pattern: str, timeout: float = 240) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.lines()
            if re.search(pattern, "\n".join(lines)):
                return lines
            if not self.child.isalive() and not self._reader.is_alive():
                break
            time.sleep(0.2)
        shown = "\n".join(self.lines())
        raise AssertionError(f"{pattern!r} never appeared; the screen:\n{shown}")

    def type(self, line: str) -> None:
        self.child.send((line + "\r").encode())


@pytest.fixture
def terminal(tmp_path: Path, pg_bin_dir: str | None) -> Iterator[Terminal]:
    # Nothing configured: the console brings its own parts, as ./scripts/run does.
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "TERM": "xterm",
        "PYTHON": os.environ.get("PYTHON", "python3"),
        "BLNK_BACKUP_VENV": str(ROOT / ".venv"),
    }
    if pg_bin_dir is not None:  # the test server is the embedded 18: its client tools
        env["PG_BIN_DIR"] = pg_bin_dir
    console = Terminal([str(ROOT / "scripts" / "run")], env)
    yield console
    if console.child.isalive():
        console.type("/quit")
        deadline = time.monotonic() + 60
        while console.child.isalive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if console.child.isalive():
            console.child.kill(9)
    # Its demo database is gone again (others' consoles may share the server: only its own).
    made = {name.decode() for name in re.findall(rb"blnk_console_[0-9a-f]{8}", console.raw)}
    if postgres_answers():  # else it was on the console's own embedded server, gone with it
        local = PgTarget.from_url("postgresql://postgres@127.0.0.1:5432/postgres")
        assert not made & set(databases_like(local, "blnk_console_"))


def _after(lines: list[str], pattern: str) -> list[str]:
    """The lines from the last one matching pattern on."""
    at = max(i for i, line in enumerate(lines) if re.search(pattern, line))
    return lines[at:]


def test_on_an_80_column_terminal_progress_leaves_no_stale_line_and_nothing_is_echoed_twice(
    terminal: Terminal,
) -> None:
    intro = terminal.wait_for(r"^U1> ?$|U1>\s*$")
    banner = "\n".join(intro)
    assert "demo setup" in banner
    assert re.search(r"database\s+127\.0\.0\.1:5432/blnk_console_[0-9a-f]{8}\b", banner)
    assert re.search(r"bucket\s+s3://blnk-console-backups/ at http://127\.0\.0\.1:\d+", banner)
    assert "restore tests" in banner and "scratch databases" in banner
    assert "configured" not in banner and "[real]" not in banner

    terminal.type(f"/blnk-backup {REASON}")
    lines = _after(terminal.wait_for(r"Backup complete and verified"), r"U1> /blnk-backup")
    shown = "\n".join(lines)
    # The command once: the terminal shows what was typed, the console does not echo it.
    assert sum("/blnk-backup a long reason" in line for line in terminal.lines()) == 1, shown
    # Nothing of the running message is left: it was redrawn, wrapped rows and all.
    assert "Backup running" not in shown, shown
    assert "This message updates" not in shown, shown
    # The phases stay, the dump's at 100 %, with its size in bytes.
    phases = [line for line in lines if line.startswith(("✓", "✗"))]
    assert [p.split("  ")[0] for p in phases[:4]] == [
        "✓ checking the database, the bucket and the tools",
        "✓ dumping and uploading",
        "✓ verifying size and checksum against the bucket",
        "✓ writing the manifest",
    ], shown
    assert sum("100 %" in line for line in lines) == 1 and "100 %" in phases[1], shown
    assert re.search(r"^  [\d,]{5,} bytes · ", shown, re.M), shown
    # A long value wraps under its own column.
    reason = next(i for i, line in enumerate(lines) if "Reason:" in line)
    column = lines[reason].index("a long reason")
    assert lines[reason + 1].startswith(" " * column), shown
    assert " ".join(line[column:].strip() for line in lines[reason : reason + 2]) == REASON
    sha = next(line for line in lines if "SHA-256:" in line)
    assert "…" not in sha  # in full
    assert not RAW_SHORTCODE.search(shown), shown

    terminal.type("/blnk-restore-test latest")
    lines = _after(terminal.wait_for(r"Restore test (passed|FAILED)"), r"U1> /blnk-restore-test")
    shown = "\n".join(lines)
    assert "Restore test passed" in shown, shown
    assert "Restore test running" not in shown, shown
    assert [line.split("  ")[0] for line in lines if line.startswith("✓ ")][:3] == [
        "✓ downloading and checking SHA-256",
        "✓ restoring with pg_restore",
        "✓ checking rows, ledger totals and indexes",
    ], shown
    assert not RAW_SHORTCODE.search(shown), shown

    terminal.type("/quit")
    terminal.child.expect(pexpect.EOF, timeout=120)
    terminal.child.close()
    assert terminal.child.exitstatus == 0
    assert b"AKIA" not in terminal.raw and b"console-local-only" not in terminal.raw
