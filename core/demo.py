"""The demo behind the README's run command: a Blnk-shaped database on the local PostgreSQL,
a real S3 server on loopback (moto's server mode, from the ``demo`` extra), then
backup → list → restore-test → status → audit, printed as an operator would see them."""

from __future__ import annotations

import logging
import socket
import sys
import tempfile
from pathlib import Path

from core import render
from core.audit import Actor
from core.blnkgen import generate
from core.config import load_settings
from core.database import PgTarget, drop_database
from core.errors import ConfigError
from core.s3store import make_client
from core.services import Services

DEMO_DATABASE = "blnk_backup_demo"
DEMO_BUCKET = "blnk-demo-backups"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_demo(transactions: int, server_url: str) -> int:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise ConfigError(
            ["the demo needs the demo extra: pip install 'blnk-backup-bot[demo]'"]
        ) from None

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = PgTarget.from_url(server_url)
    port = _free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    workdir = Path(tempfile.mkdtemp(prefix="blnk-backup-demo-"))
    try:
        _say(f"1. generating {DEMO_DATABASE} ({transactions} transactions) on {server.display}")
        made = generate(server, DEMO_DATABASE, transactions, replace=True)
        _say(f"   {render.human_size(made.size_bytes)} in {render.human_duration(made.seconds)}")
        settings = load_settings(
            database_url=server.with_dbname(DEMO_DATABASE).secret_conninfo(),
            s3_bucket=DEMO_BUCKET,
            s3_endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="demo",
            aws_secret_access_key="demo-secret",  # noqa: S106 - moto accepts anything
            audit_database_url=f"sqlite:///{workdir / 'audit.sqlite3'}",
            s3_prefix="demo/",
            restore_test_database_url=server.secret_conninfo(),
        )
        make_client(settings).create_bucket(Bucket=DEMO_BUCKET)
        _say(f"2. local S3 server on http://127.0.0.1:{port}, bucket {DEMO_BUCKET}")
        services = Services(settings)
        try:
            _say("3. blnk-backup backup --reason 'demo'")
            result = services.backups.run(Actor("demo", "cli"), reason="demo")
            _say(_indent(render.backup_text(result.manifest, DEMO_BUCKET)))
            _say("4. blnk-backup list")
            _say(_indent(render.list_text(services.catalog.list())))
            _say("5. blnk-backup restore-test latest")
            report = services.restores.test(Actor("demo", "cli"), "latest")
            _say(_indent(render.restore_text(report)))
            _say("6. blnk-backup status")
            status = services.catalog.status(settings.stale_after_hours)
            _say(_indent(render.status_text(status)))
            _say("7. blnk-backup audit")
            _say(_indent(render.audit_text(services.audit.events(limit=10))))
        finally:
            services.close()
        _say(
            "\nThe dump is a stock pg_dump custom-format file: "
            "`pg_restore -d NEWDB blnk_backup_….dump` restores it."
        )
        return 0
    finally:
        s3.stop()
        drop_database(server, DEMO_DATABASE)


def _indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())
