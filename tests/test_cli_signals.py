"""Stopping the CLI (Kubernetes SIGTERM) mid-backup still cleans up and audits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from core.audit import AuditLog
from core.database import PgTarget, drop_database
from tests.support.faultproxy import FaultProxy, Request
from tests.support.helpers import (
    SECRET_KEY,
    bucket_keys,
    incomplete_uploads,
    make_database,
    settings_env,
)


def test_sigterm_during_upload_aborts_the_upload_and_exits_143(
    pg_server: PgTarget,
    make_settings: Any,
    s3: Any,
    bucket: str,
    proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    proxy.faults.delay = lambda r: 0.5 if "partNumber" in r.path else 0.0  # a slow store
    name = make_database(pg_server, 5_000)
    settings = make_settings(
        database_url=f"postgresql://postgres@127.0.0.1:5432/{name}",
        s3_endpoint_url=proxy.endpoint,
        backup_compression_level=0,
        backup_part_size_mib=5,
        backup_upload_concurrency=1,
    )
    env = settings_env(settings, PATH=os.environ["PATH"], HOME=str(tmp_path))
    try:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "blnk-backup"), "backup"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        for line in proc.stderr:
            if "dumping" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        drop_database(pg_server, name)
    assert proc.returncode == 143, err
    assert "terminated" in err and SECRET_KEY not in err
    assert bucket_keys(s3, bucket) == []
    assert incomplete_uploads(s3, bucket) == []
    failure = AuditLog(settings.audit_database_url).events(action="backup")[0]
    assert failure.outcome == "failed" and failure.error_code == "interrupted"
    assert any(isinstance(r, Request) and "uploads" in r.path for r in proxy.faults.log)
