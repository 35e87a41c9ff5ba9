"""The ``blnk-backup`` command line: one front end of the engine, for cron, Kubernetes
CronJobs and humans.

Exit status: 0 ok, 1 the operation failed (or ``status`` found a breach), 2 configuration or
usage error. Errors are one clear line on stderr; tracebacks only go to the log (``-v``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from core import __version__, render
from core.audit import Actor
from core.backup import BackupProgress
from core.config import Settings, load_settings
from core.database import PgTarget
from core.errors import BackupError, ConfigError, UsageError
from core.services import Services

log = logging.getLogger("blnk_backup.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _emit_json(body: Any) -> None:
    _out(json.dumps(body, indent=2, default=str))


def _show(args: argparse.Namespace, as_json: Callable[[], Any], as_text: Callable[[], str]) -> None:
    """Print a result as JSON with --json, as text otherwise."""
    if getattr(args, "json", False):
        _emit_json(as_json())
    else:
        _out(as_text())


class _ProgressPrinter:
    """Prints stage changes and, at most every 2 s, the bytes uploaded so far (to stderr)."""

    def __init__(self) -> None:
        self._stage = ""
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: BackupProgress) -> None:
        with self._lock:
            now = time.monotonic()
            if event.stage != self._stage:
                self._stage = event.stage
                self._last = now
                _err(f"… {event.stage.replace('_', ' ')}" + (f" {event.key}" if event.key else ""))
            elif now - self._last >= 2:
                self._last = now
                pct = ""
                if event.expected_bytes:
                    pct = f" (~{min(99, 100 * event.bytes_uploaded // event.expected_bytes)}%)"
                _err(f"  uploaded {render.human_size(event.bytes_uploaded)}{pct}")


# --- commands -----------------------------------------------------------------------------------
def cmd_backup(services: Services, args: argparse.Namespace) -> int:
    result = services.backups.run(
        _actor(args), reason=args.reason, on_progress=None if args.json else _ProgressPrinter()
    )
    bucket = services.store.bucket
    _show(
        args,
        lambda: render.backup_json(result.manifest, bucket),
        lambda: render.backup_text(result.manifest, bucket),
    )
    return EXIT_OK


def cmd_list(services: Services, args: argparse.Namespace) -> int:
    entries = services.catalog.list(limit=args.limit, include_incomplete=args.all)
    _show(args, lambda: [render.entry_json(e) for e in entries], lambda: render.list_text(entries))
    return EXIT_OK


def cmd_status(services: Services, args: argparse.Namespace) -> int:
    status = services.catalog.status(
        services.settings.stale_after_hours,
        restore_test_max_age_days=services.settings.restore_test_max_age_days,
    )
    _show(args, lambda: render.status_json(status), lambda: render.status_text(status))
    return EXIT_OK if status.healthy else EXIT_FAILED


def cmd_restore_test(services: Services, args: argparse.Namespace) -> int:
    report = services.restores.test(_actor(args), args.key, on_stage=None if args.json else _stage)
    _show(args, lambda: render.restore_json(report), lambda: render.restore_text(report))
    return EXIT_OK if report.passed else EXIT_FAILED


def cmd_restore(services: Services, args: argparse.Namespace) -> int:
    if not args.yes:
        raise UsageError(
            f"restoring creates database {args.into!r} from {args.key}; add --yes to go ahead"
        )
    server = PgTarget.from_url(args.server_url) if args.server_url else services.target
    report = services.restores.restore(
        _actor(args), args.key, args.into, server, on_stage=None if args.json else _stage
    )
    if args.json:
        _emit_json(render.restore_json(report))
        return EXIT_OK if report.passed else EXIT_FAILED
    _out(render.restore_text(report))
    new = server.with_dbname(args.into)
    _out(
        "\nTo switch Blnk over: stop Blnk, point BLNK_DATA_SOURCE_DNS (or data_source.dns in "
        f"blnk.json) at\n  {new.display}\nkeeping your user and password, then start Blnk. "
        "Or swap names while Blnk is stopped:\n"
        f'  ALTER DATABASE "{services.target.dbname}" RENAME TO '
        f'"{services.target.dbname}_before_restore";\n'
        f'  ALTER DATABASE "{args.into}" RENAME TO "{services.target.dbname}";'
    )
    return EXIT_OK if report.passed else EXIT_FAILED


def _stage(stage: str) -> None:
    _err(f"… {stage}")


def cmd_prune(services: Services, args: argparse.Namespace) -> int:
    reports = services.pruner.prune(_actor(args), apply=args.apply)
    _show(args, lambda: render.prune_json(reports), lambda: render.prune_text(reports))
    return EXIT_FAILED if any(r.errors for r in reports) else EXIT_OK


def cmd_bucket(services: Services, args: argparse.Namespace) -> int:
    from core.bucket_policy import BucketPolicies

    if args.action == "apply" and not args.yes:
        raise UsageError("bucket apply changes bucket settings; add --yes to go ahead")
    stores = [services.store] + ([services.replica] if services.replica is not None else [])
    results = {}
    for store in stores:
        policies = BucketPolicies(store, services.settings)
        results[store.location] = policies.apply() if args.action == "apply" else policies.check()
    if args.action == "apply":
        services.audit.record(
            action="bucket_apply",
            outcome="succeeded",
            actor=_actor(args),
            details={loc: [i.name for i in items if i.ok] for loc, items in results.items()},
        )
    _show(
        args,
        lambda: {loc: [render.policy_json(i) for i in items] for loc, items in results.items()},
        lambda: render.policy_text(results, applied=args.action == "apply"),
    )
    return EXIT_OK if all(i.ok for items in results.values() for i in items) else EXIT_FAILED


def cmd_audit(services: Services, args: argparse.Namespace) -> int:
    events = services.audit.events(limit=args.limit, action=args.action)
    _show(args, lambda: [render.audit_json(e) for e in events], lambda: render.audit_text(events))
    return EXIT_OK


def cmd_generate_db(settings: Settings, args: argparse.Namespace) -> int:
    from core.blnkgen import generate

    server = PgTarget.from_url(args.server_url or _server_url(settings))
    _err(f"… generating {args.name} with {args.transactions} transactions on {server.display}")
    made = generate(server, args.name, args.transactions, replace=args.replace)
    body = {
        "database": made.name,
        "transactions": made.transactions,
        "size": made.size_bytes,
        "seconds": round(made.seconds, 2),
    }
    _show(
        args,
        lambda: body,
        lambda: (
            f"✓ created {made.name}: {made.transactions} transactions, "
            f"{render.human_size(made.size_bytes)} in {render.human_duration(made.seconds)}"
        ),
    )
    return EXIT_OK


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from core.demo import run_demo

    return run_demo(args.transactions, server_url=args.server_url or _LOCAL_SERVER)


def _server_url(settings: Settings) -> str:
    if settings.database_url is None:
        return _LOCAL_SERVER
    return settings.database_url.get_secret_value()


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

    backup = commands.add_parser("backup", help="back up the database to S3 now")
    backup.add_argument("--reason", help='why, e.g. "before migration 42" (audited)')
    backup.add_argument("--json", action="store_true", help="print the result as JSON")
    backup.set_defaults(handler=cmd_backup)

    listing = commands.add_parser("list", help="list recent complete backups, newest first")
    listing.add_argument("--limit", type=_positive, default=20)
    listing.add_argument("--all", action="store_true", help="include dumps without manifest")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_list)

    status = commands.add_parser(
        "status", help="age of the newest backup against STALE_AFTER_HOURS (exit 1 if stale)"
    )
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    restore_test = commands.add_parser(
        "restore-test", help="prove a backup restorable: restore into a scratch database, check"
    )
    restore_test.add_argument("key", nargs="?", default="latest", help="KEY or latest")
    restore_test.add_argument("--json", action="store_true")
    restore_test.set_defaults(handler=cmd_restore_test)

    restore = commands.add_parser(
        "restore", help="restore a backup into a NEW database, verified and checked"
    )
    restore.add_argument("key", help="KEY or latest")
    restore.add_argument("--into", required=True, metavar="NEWDB", help="database to create")
    restore.add_argument("--server-url", help="server to create it on (default: Blnk's)")
    restore.add_argument("--yes", action="store_true", help="confirm: this creates a database")
    restore.add_argument("--json", action="store_true")
    restore.set_defaults(handler=cmd_restore)

    prune = commands.add_parser(
        "prune", help="apply the retention policy (a dry run unless --apply)"
    )
    prune.add_argument("--apply", action="store_true", help="really delete what the plan says")
    prune.add_argument("--json", action="store_true")
    prune.set_defaults(handler=cmd_prune)

    bucket = commands.add_parser(
        "bucket", help="check or apply versioning, encryption, public access block, lifecycle"
    )
    bucket.add_argument("action", choices=["check", "apply"])
    bucket.add_argument("--yes", action="store_true", help="confirm apply")
    bucket.add_argument("--json", action="store_true")
    bucket.set_defaults(handler=cmd_bucket)

    audit = commands.add_parser("audit", help="show the audit log, newest first")
    audit.add_argument("--limit", type=_positive, default=50)
    audit.add_argument("--action", help="only this action (e.g. backup)")
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(handler=cmd_audit)

    generate = commands.add_parser(
        "generate-db", help="create a realistic Blnk-shaped database (demos, tests, benchmarks)"
    )
    generate.add_argument("name", help="name of the database to create")
    generate.add_argument("--transactions", type=_positive, default=10_000)
    generate.add_argument("--server-url", help="server to create it on (default: local)")
    generate.add_argument("--replace", action="store_true", help="drop it first if it exists")
    generate.add_argument("--json", action="store_true")
    generate.set_defaults(settings_handler=cmd_generate_db)

    demo = commands.add_parser(
        "demo", help="generate a database, start a local S3 server, back up, list and status"
    )
    demo.add_argument("--transactions", type=_positive, default=20_000)
    demo.add_argument("--server-url", help=f"PostgreSQL server to use (default: {_LOCAL_SERVER})")
    demo.set_defaults(settings_handler=cmd_demo)
    return parser


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


class Terminated(BaseException):
    """SIGTERM (a Kubernetes pod stopping, `kill`): unwind so clean-up runs, then exit 143."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("botocore").setLevel(logging.ERROR)
    return run_with_error_boundary(lambda: _dispatch(args))


def _dispatch(args: argparse.Namespace) -> int:
    settings = load_settings(args.env_file)
    if getattr(args, "settings_handler", None):
        handler: Callable[[Settings, argparse.Namespace], int] = args.settings_handler
        return handler(settings, args)
    services = Services(settings)
    try:
        code: int = args.handler(services, args)
        return code
    finally:
        services.close()


def run_with_error_boundary(action: Callable[[], int]) -> int:
    """Run a command; map engine errors to exit codes and one clear line on stderr."""
    try:
        return action()
    except (ConfigError, UsageError) as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except BackupError as exc:
        _err(f"✗ {exc.code}: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _err("interrupted: clean-up done")
        return 130
    except Terminated:
        _err("terminated: clean-up done")
        return 143
    except Exception as exc:
        log.debug("internal error", exc_info=True)
        _err(f"✗ internal error ({type(exc).__name__}): run again with -v for details")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
