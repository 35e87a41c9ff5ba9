"""The demo behind the README's run command: a Blnk-shaped database on the local PostgreSQL,
a real S3 server on loopback (moto's server mode, from the ``demo`` extra), then
backup → list → restore-test → status → audit, printed as an operator would see them."""

from __future__ import annotations

import logging
import secrets
import socket
import sys
import tempfile
from pathlib import Path

from bot.render import text as render_text
from core.actor import Actor
from core.blnkgen import generate
from core.config import load_settings
from core.database import PgTarget, drop_database
from core.errors import ConfigError
from core.services import Services

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
    database = f"blnk_backup_demo_{secrets.token_hex(4)}"  # never collides with another run
    port = _free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    try:
        with tempfile.TemporaryDirectory(prefix="blnk-backup-demo-") as workdir:
            _demo(server, database, port, Path(workdir), transactions)
        return 0
    finally:
        s3.stop()
        drop_database(server, database)


def _demo(server: PgTarget, database: str, port: int, workdir: Path, transactions: int) -> None:
    _say(f"1. generating {database} ({transactions} transactions) on {server.display}")
    made = generate(server, database, transactions)
    _say(
        f"   {render_text.human_size(made.size_bytes)} "
        f"in {render_text.human_duration(made.seconds)}"
    )
    settings = load_settings(
        database_url=server.with_dbname(database).secret_conninfo(),
        s3_bucket=DEMO_BUCKET,
        s3_endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="demo",
        aws_secret_access_key="demo-secret",  # noqa: S106 - moto accepts anything
        audit_database_url=f"sqlite:///{workdir / 'audit.sqlite3'}",
        s3_prefix="demo/",
        restore_test_database_url=server.secret_conninfo(),
    )
    services = Services(settings)
    try:
        services.store.create_bucket()
        _say(f"2. local S3 server on http://127.0.0.1:{port}, bucket {DEMO_BUCKET}")
        actor = Actor("demo", "cli")
        _say("3. blnk-backup backup --reason 'demo'")
        result = services.backups.run(actor, reason="demo")
        _say(_indent(render_text.backup(result.manifest, DEMO_BUCKET)))
        _say("4. blnk-backup list")
        _say(_indent(render_text.entries(services.catalog.list())))
        _say("5. blnk-backup restore-test latest")
        _say(_indent(render_text.restore(services.restores.test(actor, "latest"))))
        _say("6. blnk-backup status")
        _say(_indent(render_text.status(services.catalog.status())))
        _say("7. blnk-backup audit")
        _say(_indent(render_text.audit(services.audit.events(limit=10))))
    finally:
        services.close()
    _say(
        "\nThe dump is a stock pg_dump custom-format file: "
        "`pg_restore -d NEWDB blnk_backup_….dump` restores it."
    )


def _indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())
