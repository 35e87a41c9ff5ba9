"""The recipes the README gives a person for a bad day, run as written: Blnk's recovery of a
dump with stock tools (download, compare the SHA-256, create the database, pg_restore)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

from core.actor import Actor
from core.database import PgTarget, drop_database
from core.services import Services
from tests.support.helpers import shell_block_after

README = Path(__file__).resolve().parents[1] / "README.md"


def _recovery_recipe() -> list[str]:
    """The shell lines of the README's block after "Blnk's recovery recipe works unchanged"."""
    return shell_block_after(README, "Blnk's recovery recipe works unchanged")


def test_the_readme_recovery_recipe_restores_a_backup_as_written(
    services: Services,
    s3: Any,
    bucket: str,
    pg_server: PgTarget,
    pg_bin_dir: str | None,
    tmp_path: Path,
) -> None:
    manifest = services.backups.run(Actor("ops", "cli")).manifest
    lines = _recovery_recipe()
    download, rest = lines[0], lines[1:]
    assert download.startswith("aws s3 cp s3://") and download.endswith(" ./backup.dump")
    s3.download_file(bucket, manifest.key, str(tmp_path / "backup.dump"))  # what aws s3 cp does
    name = f"blnk_recipe_{uuid.uuid4().hex[:8]}"
    script = "set -e\n" + "\n".join(line.replace("blnk_database", name) for line in rest)
    env = {
        **os.environ,
        "PGHOST": pg_server.params.get("host", "127.0.0.1"),
        "PGPORT": pg_server.params.get("port", "5432"),
        "PGUSER": pg_server.params.get("user", "postgres"),
    }
    if pg_bin_dir is not None:  # the client tools that match the test server come first
        env["PATH"] = f"{pg_bin_dir}:{env['PATH']}"
    try:
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert hashlib.sha256((tmp_path / "backup.dump").read_bytes()).hexdigest() in done.stdout
        assert manifest.sha256 in done.stdout  # what the person compares with the manifest
        with pg_server.with_dbname(name).connect() as conn:
            row = conn.execute("SELECT count(*) FROM blnk.transactions").fetchone()
        assert row is not None and row[0] == manifest.stats.row_counts["blnk.transactions"]
    finally:
        drop_database(pg_server, name)
