"""The ``blnk-backup`` command line: one door into the engine, for cron, Kubernetes CronJobs
and humans. Each command parses its arguments, builds an Actor, calls one use case on the
shared Services and renders the result (text, or JSON with ``--json``).

Exit status: 0 ok, 1 the operation failed (or ``status`` found a breach), 2 configuration or
usage error. Errors are one clear line on stderr — with ``--json`` also a JSON error object on
stdout; tracebacks only go to the log (``-v``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import getpass
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Protocol

from bot.logs import configure as configure_logging
from bot.render import json as render_json
from bot.render import text as render_text
from core import __version__
from core.actor import Actor
from core.audit import ACTIONS
from core.backup import BackupProgress
from core.blnkgen import BLNK_VERSIONS
from core.config import Settings, load_settings
from core.database import PgTarget
from core.errors import EXIT_FAILED, EXIT_OK, EngineError, InternalError, UsageError
from core.services import Services

log = logging.getLogger("blnk_backup.cli")


LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
MAX_LIMIT = 10_000  # rows of a listing or the audit log: more is not read by a person
MAX_TRANSACTIONS = 100_000_000  # a generated database of tens of GB; benchmarks use 1-2 million
# Every action the audit log records (tests/test_cli.py checks the code records no other).
AUDIT_ACTIONS = ACTIONS  # what --action accepts: every action the audit log records


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _show(args: argparse.Namespace, body: Callable[[], Any], text: Callable[[], str]) -> None:
    """Print a result as JSON with --json, as text otherwise."""
    _out(json.dumps(body(), indent=2, default=str) if args.json else text())


class _Progress(Protocol):
    def stage(self, stage: str) -> None: ...

    def backup_event(self, event: BackupProgress) -> None: ...


@contextmanager
def _progress(args: argparse.Namespace, what: str) -> Iterator[_Progress | None]:
    """Progress on stderr while a long command runs: drawn live on a terminal (phase, bytes,
    rate, time left, elapsed ticking), plain lines otherwise, nothing with --json."""
    if args.json:
        yield None
    elif sys.stderr.isatty():
        from rich.console import Console

        from bot.terminal import LiveProgress

        with LiveProgress(Console(stderr=True, highlight=False), what) as live:
            yield live
    else:
        from bot.terminal import PlainProgress

        yield PlainProgress(sys.stderr)


# --- commands -----------------------------------------------------------------------------------
def cmd_backup(services: Services, args: argparse.Namespace) -> int:
    actor = _actor(args)
    with _progress(args, "backup") as progress:
        result = services.backups.run(
            actor, reason=args.reason, on_progress=progress.backup_event if progress else None
        )
    bucket = services.store.bucket
    _show(
        args,
        lambda: render_json.backup(result.manifest, bucket),
        lambda: render_text.backup(result.manifest, bucket),
    )
    return EXIT_OK


def cmd_list(services: Services, args: argparse.Namespace) -> int:
    entries = services.catalog.list(limit=args.limit, include_incomplete=args.all)
    _show(args, lambda: render_json.entries(entries), lambda: render_text.entries(entries))
    return EXIT_OK


def cmd_status(services: Services, args: argparse.Namespace) -> int:
    status = services.catalog.status()
    runs = _next_runs(services)
    wal = services.wal_health.check() if services.settings.wal_archive else None
    problems = wal.problems() if wal is not None else []

    def as_json() -> dict[str, Any]:
        body = render_json.status(status, runs)
        if wal is not None:
            body |= render_json.wal(wal)
        return body

    def as_text() -> str:
        text = render_text.status(status, runs)
        if wal is not None:
            text += "\n" + render_text.wal(wal)
        return text

    _show(args, as_json, as_text)
    return EXIT_OK if status.healthy and not problems else EXIT_FAILED


def cmd_wal_stream(services: Services, args: argparse.Namespace) -> int:
    """Stream WAL into the bucket until SIGTERM or Ctrl-C (the receiver runs in the
    foreground; the service runs the same one in a thread)."""
    receiver = services.wal_receiver()
    stop = threading.Event()
    _err(
        f"streaming WAL from {receiver.source.display} (slot {receiver.slot}) into "
        f"{services.store.location}wal/; Ctrl-C or SIGTERM stops"
    )
    try:
        receiver.run(stop)
    except (KeyboardInterrupt, Terminated):
        stop.set()
        receiver.ship(final=True)
    state = receiver.state
    _err(f"stopped: {state.shipped_segments:,} segments shipped ({state.shipped_bytes:,} bytes)")
    return EXIT_OK


def cmd_base_backup(services: Services, args: argparse.Namespace) -> int:
    backup = services.base_backups.run(_actor(args), reason=args.reason)
    where = f"s3://{services.store.bucket}/{backup.key}"
    _show(
        args,
        lambda: dataclasses.asdict(backup),
        lambda: (
            f"✓ base backup {where}"
            f"\n  {backup.size:,} bytes, SHA-256 {backup.sha256}\n"
            f"  WAL {backup.start_lsn} .. {backup.end_lsn} on timeline {backup.timeline}; "
            f"recoverable from {backup.finished_at}"
        ),
    )
    return EXIT_OK


def _next_runs(services: Services) -> dict[str, datetime]:
    """When the bot's scheduler runs each configured job next (computed from the *_SCHEDULE
    settings exactly as the scheduler computes them; nothing is started)."""
    from bot.scheduler import Scheduler

    return Scheduler(services).next_runs()


def cmd_restore_test(services: Services, args: argparse.Namespace) -> int:
    actor = _actor(args)
    if args.key.lower() == "pitr":
        result = services.pitr.test(actor, _parse_time(args.at) if args.at else None)
        _show(args, result.summary, lambda: render_text.recovery(result))
        return EXIT_OK if result.passed else EXIT_FAILED
    if args.at is not None:
        raise UsageError("--at goes with pitr: restore-test pitr --at TIME")
    with _progress(args, "restore test") as progress:
        report = services.restores.test(
            actor, args.key, on_stage=progress.stage if progress else None
        )
    _show(args, lambda: render_json.restore(report), lambda: render_text.restore(report))
    return EXIT_OK if report.passed else EXIT_FAILED


def cmd_restore(services: Services, args: argparse.Namespace) -> int:
    actor = _actor(args)
    if args.at is not None:
        return _restore_to_time(services, args, actor)
    if args.cluster is not None:
        raise UsageError("--cluster goes with --at (a point-in-time recovery)")
    if args.into is None:
        raise UsageError("restore needs --into NEWDB")
    if not args.yes:
        raise UsageError(
            f"restoring creates database {args.into!r} from {args.key}; add --yes to go ahead"
        )
    server = PgTarget.from_url(args.server_url) if args.server_url else services.target
    with _progress(args, "restore") as progress:
        report = services.restores.restore(
            actor,
            args.key,
            args.into,
            server,
            on_stage=progress.stage if progress else None,
            reason=args.reason,
        )
    _show(
        args,
        lambda: render_json.restore(report),
        lambda: (
            render_text.restore(report)
            + "\n\n"
            + render_text.switch_over(server.with_dbname(args.into), services.target.dbname)
        ),
    )
    return EXIT_OK if report.passed else EXIT_FAILED


def _restore_to_time(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    if args.key.lower() != "latest":
        raise UsageError("a point-in-time recovery starts from the base backups: use latest --at")
    if (args.into is None) == (args.cluster is None):
        raise UsageError("--at needs exactly one of --into NEWDB or --cluster DIR")
    target = _parse_time(args.at)
    if not args.yes:
        what = f"database {args.into!r}" if args.into else f"a cluster in {args.cluster}"
        raise UsageError(f"recovering to {args.at} creates {what}; add --yes to go ahead")
    server = PgTarget.from_url(args.server_url) if args.server_url else services.target
    result = services.pitr.recover(
        actor,
        target,
        into=args.into,
        server=server if args.into else None,
        cluster=Path(args.cluster) if args.cluster else None,
        reason=args.reason,
    )
    _show(args, result.summary, lambda: render_text.recovery(result))
    return EXIT_OK if result.passed else EXIT_FAILED


def _parse_time(text: str) -> datetime | None:
    from core.wal.recovery import parse_target

    return parse_target(text)


def cmd_prune(services: Services, args: argparse.Namespace) -> int:
    reports = services.pruner.prune(_actor(args), apply=args.apply, reason=args.reason)
    _show(args, lambda: render_json.prune(reports), lambda: render_text.prune(reports))
    return EXIT_FAILED if any(r.errors for r in reports) else EXIT_OK


def cmd_wal_slot(services: Services, args: argparse.Namespace) -> int:
    """Drop the receiver's replication slot, or make it again and take a base backup."""
    from core.wal.slot import DROP

    if not services.settings.wal_archive:
        raise UsageError("the replication slot is WAL_ARCHIVE's: it is off")
    plan = services.wal_slots.plan(args.action)
    if not args.yes:
        lines = "\n  ".join(plan)
        raise UsageError(f"wal-slot {args.action} would:\n  {lines}\nadd --yes to go ahead")
    actor = _actor(args)
    if args.action == DROP:
        dropped = services.wal_slots.drop(actor, reason=args.reason)
        said = "dropped" if dropped else "there was no such slot"
        _show(
            args,
            lambda: {"dropped": dropped},
            lambda: f"✓ slot {services.settings.wal_slot_name}: {said}",
        )
        return EXIT_OK
    base = services.wal_slots.recreate(actor, reason=args.reason)
    _show(
        args,
        lambda: {"recreated": True, "base_backup": dataclasses.asdict(base)},
        lambda: (
            f"✓ slot {services.settings.wal_slot_name} made again; base backup {base.key}: "
            f"recoverable from {base.finished_at}"
        ),
    )
    return EXIT_OK


def cmd_bucket(services: Services, args: argparse.Namespace) -> int:
    if args.action == "apply":
        actor = _actor(args)
        if not args.yes:
            raise UsageError("bucket apply changes bucket settings; add --yes to go ahead")
        results = services.bucket_policies.apply(actor, reason=args.reason)
    else:
        results = services.bucket_policies.check()
    _show(
        args,
        lambda: render_json.policies(results),
        lambda: render_text.policies(results, applied=args.action == "apply"),
    )
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def cmd_audit(services: Services, args: argparse.Namespace) -> int:
    if args.action is not None and args.action not in AUDIT_ACTIONS:
        near = get_close_matches(args.action, AUDIT_ACTIONS, n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        raise UsageError(
            f"{args.action!r} is not an action the audit log records; {hint}"
            f"actions: {', '.join(AUDIT_ACTIONS)}"
        )
    events = services.audit.events(limit=args.limit, action=args.action)
    _show(
        args,
        lambda: render_json.audit(events),
        lambda: render_text.audit(events, action=args.action),
    )
    return EXIT_OK


def cmd_generate_db(_settings: Settings, args: argparse.Namespace) -> int:
    from core.blnkgen import generate

    server = PgTarget.from_url(args.server_url or LOCAL_SERVER)
    _err(f"… generating {args.name} with {args.transactions} transactions on {server.display}")
    made = generate(
        server,
        args.name,
        args.transactions,
        replace=args.replace,
        edge_objects=args.edge_objects,
        blnk_version=args.blnk_version,
    )
    body = {
        "database": made.name,
        "server": server.display,
        "transactions": made.transactions,
        "size": made.size_bytes,
        "seconds": round(made.seconds, 2),
    }
    _show(
        args,
        lambda: body,
        lambda: (
            f"✓ created {made.name} on {server.display}: {made.transactions} transactions, "
            f"{render_text.human_size(made.size_bytes)} in "
            f"{render_text.human_duration(made.seconds)}"
        ),
    )
    return EXIT_OK


def _actor(args: argparse.Namespace) -> Actor:
    return Actor(args.actor or os.environ.get("USER") or getpass.getuser(), "cli")


# --- parsing ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blnk-backup",
        description="Verified backups of a Blnk ledger's PostgreSQL database to Amazon S3.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--env-file", help="read settings from this env file too")
    parser.add_argument("--actor", help="who is acting, for the audit log (default: $USER)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, **kwargs)
        sub.add_argument("--json", action="store_true", help="print the result as JSON")
        return sub

    backup = command("backup", "back up the database to S3 now")
    backup.add_argument("--reason", help='why, e.g. "before migration 42" (audited)')
    backup.set_defaults(handler=cmd_backup)

    listing = command("list", "list recent complete backups, newest first")
    listing.add_argument("--limit", type=_up_to(MAX_LIMIT), default=20)
    listing.add_argument("--all", action="store_true", help="include incomplete backups")
    listing.set_defaults(handler=cmd_list)

    status = command(
        "status", "age of the newest backup against STALE_AFTER_HOURS (exit 1 on a breach)"
    )
    status.set_defaults(handler=cmd_status)

    restore_test = command(
        "restore-test", "prove a backup restorable: restore into a scratch database, check"
    )
    restore_test.add_argument(
        "key", nargs="?", default="latest", help="KEY, latest, or pitr (a point-in-time restore)"
    )
    restore_test.add_argument("--at", metavar="TIME", help="with pitr: the time to recover to")
    restore_test.set_defaults(handler=cmd_restore_test)

    restore = command("restore", "restore a backup into a NEW database, verified and checked")
    restore.add_argument("key", help="KEY or latest")
    restore.add_argument("--into", metavar="NEWDB", help="database to create")
    restore.add_argument(
        "--at", metavar="TIME", help='recover to this time (RFC 3339, "2026-12-02 14:02:59Z")'
    )
    restore.add_argument(
        "--cluster", metavar="DIR", help="with --at: leave the recovered cluster in DIR"
    )
    restore.add_argument("--server-url", help="server to create it on (default: Blnk's)")
    restore.add_argument("--yes", action="store_true", help="confirm: this creates a database")
    restore.add_argument("--reason", help="why (audited)")
    restore.set_defaults(handler=cmd_restore)

    wal_stream = command("wal-stream", "stream WAL into the bucket until SIGTERM (WAL_ARCHIVE)")
    wal_stream.set_defaults(handler=cmd_wal_stream)

    base_backup = command("base-backup", "take a base backup for point-in-time recovery now")
    base_backup.add_argument("--reason", help="why (audited)")
    base_backup.set_defaults(handler=cmd_base_backup)

    wal_slot = command("wal-slot", "drop the WAL slot, or make it again and take a base backup")
    wal_slot.add_argument("action", choices=["recreate", "drop"])
    wal_slot.add_argument("--yes", action="store_true", help="confirm")
    wal_slot.add_argument("--reason", help="why (audited)")
    wal_slot.set_defaults(handler=cmd_wal_slot)

    prune = command("prune", "apply the retention policy (a dry run unless --apply)")
    prune.add_argument("--apply", action="store_true", help="really delete what the plan says")
    prune.add_argument("--reason", help="why (audited)")
    prune.set_defaults(handler=cmd_prune)

    bucket = command(
        "bucket", "check or apply versioning, encryption, public access block, lifecycle"
    )
    bucket.add_argument("action", choices=["check", "apply"])
    bucket.add_argument("--yes", action="store_true", help="confirm apply")
    bucket.add_argument("--reason", help="why apply (audited)")
    bucket.set_defaults(handler=cmd_bucket)

    audit = command("audit", "show the audit log, newest first")
    audit.add_argument("--limit", type=_up_to(MAX_LIMIT), default=50)
    audit.add_argument(
        "--action", help=f"only this action: {', '.join(AUDIT_ACTIONS)}", metavar="ACTION"
    )
    audit.set_defaults(handler=cmd_audit)

    generate = command(
        "generate-db", "create a realistic Blnk-shaped database (demos, tests, benchmarks)"
    )
    generate.add_argument("name", help="name of the database to create")
    generate.add_argument("--transactions", type=_up_to(MAX_TRANSACTIONS), default=10_000)
    generate.add_argument(
        "--server-url",
        help=f"server to create it on (default: {LOCAL_SERVER}; BLNK_DATABASE_URL is not used)",
    )
    generate.add_argument("--replace", action="store_true", help="drop it first if it exists")
    generate.add_argument(
        "--edge-objects",
        action="store_true",
        help="add partitioned, unlogged, quoted-name, large-object and other unusual objects",
    )
    generate.add_argument(
        "--blnk-version",
        choices=list(BLNK_VERSIONS),
        default="0.15",
        help="schema of this Blnk release (0.15: with the transaction hash chain; 0.12: before)",
    )
    generate.set_defaults(settings_handler=cmd_generate_db)

    return parser


def _up_to(maximum: int) -> Callable[[str], int]:
    """A whole number from 1 to maximum. The upper bound is what makes a typo like
    ``--limit 99999999999999999999`` a usage error (exit 2) instead of an overflow deep in the
    audit database's driver or a generator that would run for days."""

    def whole_number(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
        if value < 1:
            raise argparse.ArgumentTypeError("must be at least 1")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}")
        return value

    return whole_number


class Terminated(BaseException):
    """SIGTERM (a Kubernetes pod stopping, `kill`): unwind so clean-up runs, then exit 143."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated


def run() -> int:
    """The ``blnk-backup`` command: ``main`` with the cyclic garbage collector told that
    everything imported so far lives for the whole run (``gc.freeze``), and again at the end
    so that the interpreter's exit does not walk every object of boto3, SQLAlchemy and the rest:
    a backup's client CPU is mostly start-up and shutdown (docs/benchmarks.md)."""
    gc.freeze()
    args = build_parser().parse_args()
    configure_logging(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return _main(args)
    finally:
        gc.freeze()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line, for a caller that has set up logging (``run`` does)."""
    return _main(build_parser().parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    if not args.verbose:
        logging.getLogger("botocore").setLevel(logging.ERROR)
    return run_with_error_boundary(lambda: _dispatch(args), as_json=bool(args.json))


def _dispatch(args: argparse.Namespace) -> int:
    settings = load_settings(args.env_file)
    log.debug(
        "blnk-backup %s %s: database %s, bucket %s",
        __version__,
        args.command,
        "configured" if settings.database_url else "not configured",
        settings.s3_bucket or "not configured",
    )
    if getattr(args, "settings_handler", None):
        handler: Callable[[Settings, argparse.Namespace], int] = args.settings_handler
        return handler(settings, args)
    services = Services(settings)
    try:
        code: int = args.handler(services, args)
        return code
    finally:
        services.close()


def run_with_error_boundary(action: Callable[[], int], *, as_json: bool = False) -> int:
    """Run a command; map engine errors to exit codes and one clear line on stderr (and, with
    --json, a JSON error object on stdout)."""
    try:
        return action()
    except EngineError as exc:
        _fail(exc, as_json)
        return exc.exit_status
    except KeyboardInterrupt:
        _err("interrupted: clean-up done")
        return 130
    except Terminated:
        _err("terminated: clean-up done")
        return 143
    except Exception as exc:
        log.debug("internal error", exc_info=True)
        internal = InternalError(
            f"internal error ({type(exc).__name__}): run again with -v for details"
        )
        _fail(internal, as_json)
        return internal.exit_status


def _fail(exc: EngineError, as_json: bool) -> None:
    if as_json:
        _out(json.dumps(render_json.error(exc), indent=2))
    _err(render_text.error_line(exc))


if __name__ == "__main__":
    sys.exit(main())
