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
from tests.conftest import ACCESS_KEY, SECRET_KEY, bucket_keys, incomplete_uploads, make_database
from tests.support.faultproxy import FaultProxy, Request


def test_sigterm_during_upload_aborts_the_upload_and_exits_143(
    pg_server: PgTarget, s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.faults.delay = lambda r: 0.5 if "partNumber" in r.path else 0.0  # a slow store
    name = make_database(pg_server, 5_000)
    audit_url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "BLNK_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
        "S3_BACKUP_BUCKET": bucket,
        "S3_ENDPOINT_URL": proxy.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AUDIT_DATABASE_URL": audit_url,
        "BACKUP_COMPRESSION_LEVEL": "0",
        "BACKUP_PART_SIZE_MIB": "5",
        "BACKUP_UPLOAD_CONCURRENCY": "1",
    }
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
    failure = AuditLog(audit_url).events(action="backup")[0]
    assert failure.outcome == "failed" and failure.error_code == "interrupted"
    assert any(isinstance(r, Request) and "uploads" in r.path for r in proxy.faults.log)
