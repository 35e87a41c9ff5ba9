"""``blnk-backup-bot``: the composition root of the long-running service.

Settings → Services → front ends. With ``SLACK_APP_TOKEN`` set the bot connects in Socket Mode;
with ``SLACK_SIGNING_SECRET`` it serves Slack's HTTP requests on ``/slack/events``; with neither
it runs the local console. Either Slack mode also serves the HTTP API (``/backup-s3``,
``/healthz``, ``/metrics``) on ``HTTP_HOST``:``HTTP_PORT`` and runs the scheduler — on exactly
one replica when the audit database is shared (PostgreSQL).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bot.logs import configure as configure_logging
from bot.render.text import error_line
from core import __version__
from core.config import Settings, load_settings
from core.errors import EXIT_OK, ConfigError, EngineError

if TYPE_CHECKING:
    from bot.slack.parts import SlackBot

log = logging.getLogger("blnk_backup.bot")


HOUSEKEEPING_EVERY = 30.0  # outbox delivery, approval expiry
STOPPING = "the service is shutting down (SIGTERM)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blnk-backup-bot",
        description="The blnk-backup Slack bot, scheduler and HTTP API. With no Slack tokens: "
        "the HTTP API and scheduler alone when BLNK_API_KEY is set, else a local console.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--env-file", help="read settings from this env file too")
    parser.add_argument(
        "--console", action="store_true", help="run the console even if Slack tokens are set"
    )
    parser.add_argument("--no-scheduler", action="store_true", help="do not run scheduled jobs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose)
    try:
        settings = load_settings(args.env_file)
        slack = settings.slack_app_token or settings.slack_signing_secret
        if args.console or not (slack or settings.blnk_api_key):
            from bot.console import run_console

            logging.getLogger().setLevel(logging.WARNING if not args.verbose else logging.DEBUG)
            return run_console(settings, with_scheduler=not args.no_scheduler)
        return run_service(settings, with_scheduler=not args.no_scheduler)
    except EngineError as exc:
        sys.stderr.write(error_line(exc) + "\n")
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


def run_service(settings: Settings, *, with_scheduler: bool = True) -> int:
    """Serve Slack (Socket Mode or HTTP), the HTTP API and the scheduler until SIGTERM; with no
    Slack tokens (an operator who only wants Blnk's /backup-s3), the HTTP API and the scheduler
    alone."""
    from bot.http import (
        BACKUP_NEEDS,
        DRAIN_SECONDS,
        OVERDUE_SECONDS,
        HttpApi,
        Probes,
        run_until,
        serve,
    )
    from bot.metrics import EngineCollector
    from bot.scheduler import Scheduler
    from bot.slack.app import build_slack
    from core.leadership import Leadership
    from core.outbox import Outbox
    from core.services import Services

    with_slack = bool(settings.slack_app_token or settings.slack_signing_secret)
    if with_slack and settings.slack_bot_token is None:  # before anything starts
        mode = "SLACK_APP_TOKEN" if settings.slack_app_token else "SLACK_SIGNING_SECRET"
        raise ConfigError([f"SLACK_BOT_TOKEN is not set (needed with {mode})"])
    services = Services(settings)
    # Tables are set up now (replicas starting at once take turns, core/audit.py); an unusable
    # AUDIT_DATABASE_URL stops start-up here, clearly.
    services.audit  # noqa: B018
    services.approvals  # noqa: B018
    outbox = Outbox(services.audit)
    scheduler = Scheduler(services)
    slack = build_slack(settings, services, next_runs=scheduler.next_runs) if with_slack else None
    if slack is not None:
        _check_token(slack.client)
    socket_mode = settings.slack_app_token is not None
    handler: Any = None
    watchdog: Any = None
    probes = Probes()
    if slack is not None and socket_mode:
        handler, watchdog = _connect_socket_mode(slack.app, settings)
        probes.socket_connected = lambda: bool(handler.client.is_connected())
    api = HttpApi(
        services,
        slack_app=slack.app if slack is not None and not socket_mode else None,
        collector=EngineCollector(services, scheduler.next_runs, outbox.waiting),
        probes=probes,
    )
    server = serve(
        api, settings.http_host, settings.http_port, trusted_proxy=settings.http_trusted_proxy
    )
    wal = watch = None
    if settings.wal_archive:
        from core.wal.receiver import ReceiverThread
        from core.wal.watch import WatchThread

        wal = ReceiverThread(services.wal_receiver)
        services.receiver_thread = wal  # paused around the slot commands
        watch = WatchThread(lambda: services.wal_watch)  # problems → audit → alerts

    def lead() -> None:
        scheduler.start()
        if wal is not None and watch is not None:
            wal.start()  # one receiver per slot: the leader's
            watch.start()

    def step_down() -> None:
        if wal is not None and watch is not None:
            watch.stop()
            wal.stop()
        scheduler.stop()

    leadership = Leadership(settings.audit_database_url, lead, step_down)
    if with_scheduler:
        leadership.start()
    stop = threading.Event()
    if slack is not None:
        threading.Thread(
            target=_housekeeping, args=(slack, stop), name="housekeeping", daemon=True
        ).start()

    stopping_since: list[float] = []

    def shut_down(_signum: int, _frame: object) -> None:
        if stopping_since:  # a second signal: already stopping (the server may be closed)
            log.warning("already shutting down")
            return
        stopping_since.append(time.monotonic())
        log.info(
            "shutting down (%s): no new requests; those in flight get %.0f s to finish",
            signal.Signals(_signum).name,
            DRAIN_SECONDS,
        )
        stop.set()  # run_until drains the requests in flight, then closes the server
        server.pull_trigger()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    if slack is None:
        mode = "not configured (HTTP API and scheduler only; failures are logged and audited)"
    else:
        mode = "in Socket Mode" if socket_mode else "in HTTP mode (/slack/events)"
    if missing := settings.missing(*BACKUP_NEEDS):
        log.warning(
            "not ready: %s not set; backups (scheduled or asked for) fail until it is",
            " and ".join(missing),
        )
    log.info(
        "blnk-backup-bot %s: Slack %s; HTTP on %s:%s",
        __version__,
        mode,
        settings.http_host,
        settings.http_port,
    )
    try:
        run_until(server, stop, on_overdue=lambda: services.stop_backup(STOPPING, 0))
    finally:
        stop.set()
        # A backup running for Slack or the scheduler (not an HTTP request) gets what is left
        # of the drain, then is stopped too, so it fails as interrupted — cleaned up, audited
        # and alerted — instead of vanishing with the process. Before the scheduler stops: it
        # waits for a catch-up run, which may be that backup.
        left = DRAIN_SECONDS - (time.monotonic() - stopping_since[0]) if stopping_since else 0.0
        if not services.stop_backup(STOPPING, OVERDUE_SECONDS, grace_seconds=max(0.0, left)):
            log.warning("a backup is still cleaning up; the next backup finishes that")
        leadership.stop()
        if watchdog is not None:
            watchdog.stop()  # first: a check under way must not reconnect a closed client
        if handler is not None:
            handler.close()
        if slack is not None:
            slack.close()
        services.close()
        log.info("stopped")
    return EXIT_OK


def _check_token(client: Any) -> None:
    from slack_sdk.errors import SlackApiError

    try:
        client.auth_test()
    except SlackApiError as exc:
        raise ConfigError(
            [f"SLACK_BOT_TOKEN was refused by Slack ({exc.response.get('error')})"]
        ) from None


def _connect_socket_mode(app: Any, settings: Settings) -> tuple[Any, Any]:
    """Connect Socket Mode, retrying with backoff when ``apps.connections.open`` fails at
    start-up (slack_sdk raises then instead of retrying). A failed WebSocket handshake does not
    raise: slack_sdk's own session check reconnects it within its ping interval (5 s), and
    readiness reports 503 meanwhile. A connection that dies later is replaced within seconds by
    the watchdog (bot/slack/socket_watchdog.py; tests/test_socket_mode.py)."""
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    from bot.slack.socket_watchdog import PING_INTERVAL, SocketWatchdog

    assert settings.slack_app_token is not None
    handler = SocketModeHandler(
        app, settings.slack_app_token.get_secret_value(), ping_interval=PING_INTERVAL
    )
    delay = 1.0
    for attempt in range(8):
        try:
            handler.connect()  # type: ignore[no-untyped-call]
            return handler, SocketWatchdog(handler.client, PING_INTERVAL).start()
        except Exception as exc:
            log.warning("Socket Mode connection failed (%s); retrying in %.0f s", exc, delay)
            if attempt == 7:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 60)
    raise AssertionError("unreachable: the last attempt raises")


def _housekeeping(slack: SlackBot, stop: threading.Event) -> None:
    while not stop.wait(HOUSEKEEPING_EVERY):
        try:
            slack.housekeeping()
        except Exception:
            log.exception("housekeeping (outbox, approval expiry) failed")


if __name__ == "__main__":
    sys.exit(main())
