"""The local console, run the way the README says (``./scripts/run``) with nothing configured:
it brings a local S3 server and a demo database, and a scripted session backs up, lists,
restore-tests, and deletes a backup that a second user approves. The echo of a typed command
shows control characters instead of obeying them."""

from __future__ import annotations

import getpass
import io
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.console import Console
from core.config import Settings
from core.database import PgTarget, databases_like
from core.redact import has_control_characters
from core.services import Services
from tests.support.helpers import SECRET_KEY

ROOT = Path(__file__).resolve().parents[1]
KEY = re.compile(r"blnk_backup_\d{8}_\d{6}\.dump")


class Session:
    """A console process driven line by line, its output collected as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self._seen = 0
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, pattern: str, timeout: float = 240) -> list[str]:
        """Wait for a line matching pattern after the last one expected; return the lines
        from there to it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for i in range(self._seen, len(self.lines)):
                    if re.search(pattern, self.lines[i]):
                        block, self._seen = self.lines[self._seen : i + 1], i + 1
                        return block
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and self._seen >= len(self.lines)):
                    tail = "\n".join(self.lines[-40:])
                    raise AssertionError(f"no line matching {pattern!r}; last output:\n{tail}")
                self._changed.wait(min(left, 1.0))


@pytest.fixture
def session(tmp_path: Path, pg_server: PgTarget, pg_bin_dir: str | None) -> Iterator[Session]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHON": os.environ.get("PYTHON", "python3"),
        "BLNK_BACKUP_VENV": str(ROOT / ".venv"),
    }
    if pg_bin_dir is not None:  # the test server is the embedded 18: its client tools
        env["PG_BIN_DIR"] = pg_bin_dir
    before = set(databases_like(pg_server, "blnk_console_"))
    console = Session([str(ROOT / "scripts" / "run")], env)
    yield console
    if console.proc.poll() is None:
        console.send("/quit")  # a failed test still lets the console clean up after itself
        try:
            console.proc.wait(60)
        except subprocess.TimeoutExpired:
            console.proc.kill()
            console.proc.wait(30)
    # The demo database and the scratch databases are gone again.
    assert set(databases_like(pg_server, "blnk_console_")) == before
    assert databases_like(pg_server, "blnk_restore_test_") == []


def test_a_scripted_session_backs_up_restore_tests_and_deletes_with_a_second_users_approval(
    session: Session,
) -> None:
    intro = session.expect(r"/help\s+this text")
    assert any("local S3 server" in line for line in intro)
    assert any("demo Blnk database" in line for line in intro)

    session.send("/blnk-backup first one")
    done = session.expect(r"Backup complete and verified")
    assert any("Backup running" in line for line in done)  # progress first, then the result
    session.send("/blnk-backup second one")
    session.expect(r"Backup complete and verified")

    session.send("/blnk-backups list")
    session.expect(r"Backups, newest first")
    listing = session.expect(r"\d+ complete, 0 incomplete")
    keys = KEY.findall("\n".join(listing))
    assert len(keys) == 2 and keys[0] > keys[1]  # newest first

    session.send("/blnk-restore-test latest")
    result = session.expect(r"Restore test (passed|FAILED)")
    assert "passed" in result[-1], "\n".join(result)

    session.send(f"/blnk-backups delete {keys[1]}")
    request = session.expect(r"type /deny")
    assert any(keys[1] in line for line in request)
    session.send("/approve")  # the requester cannot approve their own request
    session.expect(r"cannot decide their own request")
    session.send("/as U2")
    session.expect(r"you are now U2")
    session.send("/approve")
    outcome = session.expect(r"Outcome:.*deleted")
    # Audited as the console: the person at the terminal acting as U2, not a Slack user U2.
    me = getpass.getuser()
    assert any(f"approved by {me} as U2" in line for line in outcome), "\n".join(outcome)

    session.send("/blnk-backups list")
    session.expect(r"Backups, newest first")
    after = KEY.findall("\n".join(session.expect(r"\d+ complete, 0 incomplete")))
    assert after == [keys[0]]

    session.send("/blnk-backups delete " + keys[0])  # never the newest complete backup
    session.expect(r"newest complete backup: it is never deleted")
    session.send("/home")
    session.expect(r"Pending approvals \(0\)")
    session.send("/quit")
    assert session.proc.wait(120) == 0
    assert SECRET_KEY not in "\n".join(session.lines)
    # Piped output is plain lines: no escape codes, the banner in words.
    assert not any("\x1b" in line for line in session.lines)
    assert any(line.startswith("Connected to (demo setup") for line in session.lines)


def test_the_echo_of_a_typed_command_shows_control_characters_instead_of_obeying_them(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(slack_operators="U1", slack_approvers="U1 U2")
    services = Services(settings)
    out = io.StringIO()
    console = Console(settings, services, out)
    try:
        console.handle("/blnk-backup \x1b[31mred\x07")
        console.handle("/blnk-backups \x1b[2J \u202eenil")
    finally:
        console.alerts.close()
        services.close()
    shown = out.getvalue()
    assert "U1> /blnk-backup \\x1b[31mred\\x07" in shown
    assert "U1> /blnk-backups \\x1b[2J \\u202eenil" in shown
    assert not has_control_characters(shown.replace("\n", "")), repr(shown)


def test_a_configured_setup_says_so_and_names_database_and_bucket_without_secrets(
    make_settings: Callable[..., Settings],
) -> None:
    from bot.console import Embedded

    settings = make_settings(
        database_url="postgresql://blnk:Db-Pa55@db.internal:6432/blnk_prod",
        s3_bucket="ledger-backups",
        s3_prefix="prod/",
        s3_endpoint_url="https://minio.internal:9000/",
        slack_operators="U1",
    )
    services = Services(settings)
    out = io.StringIO()
    console = Console(settings, services, out, Embedded())
    try:
        console.banner()
    finally:
        console.alerts.close()
        services.close()
    shown = out.getvalue()
    assert shown.startswith(
        "Connected to (CONFIGURED SETUP: commands act on the real database and bucket)"
    )
    assert "  database       db.internal:6432/blnk_prod  (configured)" in shown
    assert "s3://ledger-backups/prod/ at https://minio.internal:9000/" in shown
    for secret in ("Db-Pa55", "blnk@", "blnk:"):
        assert secret not in shown
    assert console.real and console.prompt()[0] == ("class:real", "[real] ")


def test_a_demo_setup_says_its_parts_are_the_demos_own(
    make_settings: Callable[..., Settings],
) -> None:
    from bot.console import Embedded

    settings = make_settings(slack_operators="U1")
    services = Services(settings)
    out = io.StringIO()
    console = Console(settings, services, out, Embedded(demo={"database", "bucket", "scratch"}))
    try:
        console.banner()
    finally:
        console.alerts.close()
        services.close()
    shown = out.getvalue()
    assert shown.startswith("Connected to (demo setup")
    assert "(demo database, dropped at exit)" in shown
    assert "(demo bucket, in memory until exit)" in shown
    assert not console.real and console.prompt() == [("class:user", "U1> ")]
