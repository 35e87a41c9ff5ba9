"""Stopping the CLI (Kubernetes SIGTERM) mid-backup still cleans up and audits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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

ROOT = Path(__file__).resolve().parents[1]  # the child runs the code under test


def _is_part(request: Request) -> bool:
    return request.method == "PUT" and "partNumber=" in request.path


def test_sigterm_while_a_part_is_uploading_aborts_the_upload_and_exits_143(
    pg_server: PgTarget,
    make_settings: Any,
    s3: Any,
    bucket: str,
    proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    # Every request's arrival and end, in order; parts are slow, so one is in flight for a while.
    events: list[tuple[str, Request]] = []

    def arrived(request: Request) -> None:
        events.append(("arrived", request))

    proxy.faults.fail = arrived
    proxy.faults.after = lambda request: events.append(("ended", request))
    proxy.faults.delay = lambda request: 1.0 if _is_part(request) else 0.0
    name = make_database(pg_server, 5_000)
    settings = make_settings(
        database=name,
        s3_endpoint_url=proxy.endpoint,
        backup_compression_level=0,
        backup_part_size_mib=5,
        backup_upload_concurrency=1,
    )
    env = settings_env(settings, PATH=os.environ["PATH"], HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    try:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "blnk-backup"), "backup"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not any(_is_part(r) for r in proxy.faults.log):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no part was ever sent"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        drop_database(pg_server, name)
    assert proc.returncode == 143, err
    assert "terminated" in err and SECRET_KEY not in err

    created = [r for r in proxy.faults.log if r.method == "POST" and r.path.endswith("?uploads")]
    assert len(created) == 1  # the upload existed, with a part on its way
    [abort] = [r for r in proxy.faults.log if r.method == "DELETE" and "uploadId=" in r.path]
    assert abort.path.split("?")[0] == created[0].path.split("?")[0]
    # The abort went out only after every part had ended: a part that lands after the abort
    # may be stored and billed (S3's documentation says to abort again then).
    abort_sent = events.index(("arrived", abort))
    for request in [r for r in proxy.faults.log if _is_part(r)]:
        assert events.index(("ended", request)) < abort_sent, request
    assert not [r for r in proxy.faults.log if r.method == "POST" and "uploadId=" in r.path]

    assert bucket_keys(s3, bucket) == []
    assert incomplete_uploads(s3, bucket) == []
    audit = AuditLog(settings.audit_database_url)
    failure = audit.events(action="backup")[0]
    audit.close()
    assert failure.outcome == "failed" and failure.error_code == "interrupted"
