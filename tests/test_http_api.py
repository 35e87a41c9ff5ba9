"""The HTTP API, served for real by waitress on loopback: Blnk's documented ``GET /backup-s3``
with every status it promises (200 with a verified backup, 400, 401, 403, 409, 500 — never a
secret or a traceback in a body), a cron script written against Blnk's documentation (curl)
working unchanged, ``/healthz`` (liveness, readiness, freshness) and ``/metrics`` parsed with
prometheus-client's own parser."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.http import HttpApi, Probes, run_until, serve
from bot.metrics import EngineCollector
from bot.scheduler import Scheduler
from core.actor import Actor
from core.config import Settings
from core.database import (
    RESTORE_LOCK_ID,
    AdvisoryLock,
    PgTarget,
    backup_lock,
    create_database,
    drop_database,
)
from core.errors import AlreadyRunningError, UsageError
from core.manifest import COMPLETE_STATUS
from core.services import Services
from tests.support.s3server import free_port
from tests.support.stores import SECRET_KEY, bucket_keys, incomplete_uploads

API_KEY = "blnk-api-key-0123456789abcdef"
DB_PASSWORD = "Db-Passw0rd-never-shown"
SettingsFactory = Callable[..., Settings]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


class Client:
    services: Services  # what the served API uses (set by the ``start`` fixture)

    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            found = {k.lower(): v for k, v in response.getheaders()}
            return Reply(response.status, found, response.read().decode())
        finally:
            conn.close()

    def backup(self, key: str | None = API_KEY) -> Reply:
        return self.get("/backup-s3", {"Authorization": f"Bearer {key}"} if key else {})


@contextmanager
def served(api: HttpApi) -> Iterator[Client]:
    """Serve api with the bot's own waitress server on a free loopback port."""
    port = free_port()
    server = serve(api, "127.0.0.1", port)
    stop = threading.Event()
    thread = threading.Thread(target=run_until, args=(server, stop), name="http-api", daemon=True)
    thread.start()
    try:
        yield Client(port)
    finally:
        stop.set()  # what SIGTERM does in run_service
        server.pull_trigger()
        thread.join(30)
        assert not thread.is_alive()


@pytest.fixture
def start(make_settings: SettingsFactory) -> Iterator[Callable[..., Client]]:
    """Start the API for settings (``blnk_api_key=API_KEY`` unless overridden)."""
    stack: list[Any] = []

    def factory(
        probes: Probes | None = None, health_cache_seconds: float = 0.0, **overrides: Any
    ) -> Client:
        services = Services(make_settings(**({"blnk_api_key": API_KEY} | overrides)))
        scheduler = Scheduler(services)
        api = HttpApi(
            services,
            collector=EngineCollector(services, scheduler.next_runs),
            probes=probes,
            health_cache_seconds=health_cache_seconds,
        )
        context = served(api)
        client = context.__enter__()
        stack.append((context, services))
        client.services = services
        return client

    yield factory
    for context, services in reversed(stack):
        context.__exit__(None, None, None)
        services.close()


def _pg_url(server: PgTarget, dbname: str, password: str | None = None) -> str:
    params = server.params
    user = params.get("user", "postgres") + (f":{password}" if password else "")
    where = f"{params.get('host', '127.0.0.1')}:{params.get('port', '5432')}"
    return f"postgresql://{user}@{where}/{dbname}"


def assert_no_secret(reply: Reply, *secrets: str) -> None:
    for secret in (SECRET_KEY, API_KEY, DB_PASSWORD, *secrets):
        assert secret not in reply.text
    assert "Traceback" not in reply.text and 'File "' not in reply.text


# --- /backup-s3 ----------------------------------------------------------------------------


def test_a_request_with_the_key_gets_200_and_a_backup_that_is_in_the_bucket_and_verified(
    start: Callable[..., Client], s3: Any, bucket: str
) -> None:
    client = start()
    reply = client.backup()
    assert reply.status == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json
    key = body["key"]
    assert body["message"] == f"backup uploaded to s3://{bucket}/{key} and verified"
    assert body["duration_seconds"] > 0 and body["verification"]
    assert sorted(bucket_keys(s3, bucket)) == [key, key + ".manifest.json"]
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body["size"] == len(data) and data[:5] == b"PGDMP"  # pg_dump's custom format
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key + ".manifest.json")["Body"].read())
    assert (manifest["status"], manifest["sha256"]) == (COMPLETE_STATUS, body["sha256"])
    services = client.services
    run = services.audit.events(action="backup", run_id=body["run_id"])
    assert [(e.outcome, e.trigger) for e in run] == [("succeeded", "api"), ("started", "api")]
    assert_no_secret(reply)


def test_the_key_is_also_accepted_in_an_x_blnk_key_header(
    start: Callable[..., Client], s3: Any, bucket: str
) -> None:
    reply = start().get("/backup-s3?reason=before%20deploy", {"X-Blnk-Key": API_KEY})
    assert reply.status == 200, reply.text
    assert reply.json["key"] in bucket_keys(s3, bucket)


def _one_character_off(key: str, where: int) -> str:
    return key[:where] + ("X" if key[where] != "X" else "Y") + key[where + 1 :]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {_one_character_off(API_KEY, len(API_KEY) - 1)}"},
        {"Authorization": f"Bearer {_one_character_off(API_KEY, 0)}"},
        {"Authorization": f"Bearer {API_KEY}x"},
        {"Authorization": f"Bearer {API_KEY[:-1]}"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": "Basic " + base64.b64encode(f"blnk:{API_KEY}".encode()).decode()},
        {"X-Blnk-Key": _one_character_off(API_KEY, 7)},
    ],
    ids=[
        "no key",
        "empty bearer",
        "last character differs",
        "first character differs",
        "one character longer",
        "one character shorter",
        "wrong scheme",
        "basic auth",
        "x-blnk-key one character off",
    ],
)
def test_a_missing_or_wrong_key_gets_401_and_starts_nothing(
    start: Callable[..., Client], s3: Any, bucket: str, headers: dict[str, str]
) -> None:
    client = start()
    reply = client.get("/backup-s3", headers)
    assert reply.status == 401
    assert reply.json["error"]["code"] == "unauthorized"
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert bucket_keys(s3, bucket) == []
    assert client.services.audit.events(action="backup") == []
    assert_no_secret(reply)


def test_without_an_api_key_configured_the_endpoint_is_off_not_open(
    start: Callable[..., Client], s3: Any, bucket: str
) -> None:
    client = start(blnk_api_key=None)
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
        reply = client.get("/backup-s3", headers)
        assert reply.status == 403
        assert reply.json["error"]["code"] == "api_disabled"
        assert "BLNK_API_KEY" in reply.json["error"]["message"]
    assert bucket_keys(s3, bucket) == []


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"s3_bucket": "no-such-bucket-for-blnk"}, "S3_BACKUP_BUCKET"),
        ({"s3_bucket": None}, "S3_BACKUP_BUCKET"),
        ({"database_url": None}, "BLNK_DATABASE_URL"),
    ],
    ids=["bucket does not exist", "bucket not set", "database not set"],
)
def test_a_configuration_error_gets_400_naming_the_variable(
    start: Callable[..., Client],
    s3: Any,
    bucket: str,
    overrides: dict[str, Any],
    named: str,
) -> None:
    reply = start(**overrides).backup()
    assert reply.status == 400, reply.text
    error = reply.json["error"]
    assert error["code"] == "config_error"
    assert named in error["message"] and any(named in p for p in error["problems"])
    assert_no_secret(reply)
    assert bucket_keys(s3, bucket) == [] and incomplete_uploads(s3, bucket) == []


def test_two_concurrent_requests_get_one_200_and_one_409_and_make_one_backup(
    start: Callable[..., Client], s3: Any, bucket: str
) -> None:
    client = start()
    barrier = threading.Barrier(2)
    replies: list[Reply] = []

    def request() -> None:
        barrier.wait()
        replies.append(client.backup())

    threads = [threading.Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(r.status for r in replies) == [200, 409], [r.text for r in replies]
    conflict = next(r for r in replies if r.status == 409).json["error"]
    assert conflict["code"] == "already_running"
    assert "already running" in conflict["message"] and "api:api" in conflict["message"]
    assert len([k for k in bucket_keys(s3, bucket) if k.endswith(".dump")]) == 1


def test_a_database_that_cannot_be_reached_gets_500_with_a_code_and_no_password(
    start: Callable[..., Client], pg_server: PgTarget, s3: Any, bucket: str
) -> None:
    reply = start(database_url=_pg_url(pg_server, "no_such_ledger", DB_PASSWORD)).backup()
    assert reply.status == 500, reply.text
    error = reply.json["error"]
    assert error["code"] == "preflight_failed"
    assert "no_such_ledger" in error["message"] and "does not exist" in error["message"]
    assert_no_secret(reply)
    assert bucket_keys(s3, bucket) == []


def test_a_failing_pg_dump_gets_500_with_its_error_and_leaves_nothing(
    start: Callable[..., Client], tmp_path: Path, s3: Any, bucket: str
) -> None:
    fake = tmp_path / "bin" / "pg_dump"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) 18.1"; exit 0; fi\n'
        'echo "pg_dump: error: query failed: could not read block 7 in file" >&2\n'
        "exit 1\n"
    )
    fake.chmod(0o755)
    reply = start(pg_bin_dir=str(fake.parent)).backup()
    assert reply.status == 500, reply.text
    error = reply.json["error"]
    assert error["code"] == "dump_failed"
    assert "could not read block 7" in error["message"]
    assert_no_secret(reply)
    assert bucket_keys(s3, bucket) == [] and incomplete_uploads(s3, bucket) == []


def test_an_unexpected_error_gets_500_with_an_error_id_and_never_its_text(
    start: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = start()
    services = client.services

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"boom with {SECRET_KEY} inside")

    monkeypatch.setattr(services.backups, "run", broken)
    reply = client.backup()
    assert reply.status == 500
    error = reply.json["error"]
    assert error["code"] == "internal_error" and "error id" in error["message"]
    assert "boom" not in reply.text
    assert_no_secret(reply)


def test_a_cron_script_written_against_blnks_documentation_works_unchanged(
    start: Callable[..., Client], s3: Any, bucket: str
) -> None:
    client = start()
    url = f"{client.base}/backup-s3"
    done = subprocess.run(
        ["curl", "-sf", "-H", f"Authorization: Bearer {API_KEY}", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert "verified" in body["message"] and body["key"] in bucket_keys(s3, bucket)
    # The same line with a wrong key fails the cron job (curl -f: exit 22), as it should.
    wrong = subprocess.run(
        ["curl", "-sf", "-H", "Authorization: Bearer not-the-key", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert wrong.returncode == 22 and wrong.stdout == ""


def test_other_paths_and_methods_are_refused_plainly(start: Callable[..., Client]) -> None:
    client = start()
    assert client.get("/nope").status == 404
    assert client.get("/backup-s3", method="DELETE").status == 405
    assert client.get("/metrics", method="POST").status == 404


# --- /healthz ------------------------------------------------------------------------------


def test_liveness_is_200_while_the_process_serves_even_when_it_is_not_ready(
    start: Callable[..., Client],
) -> None:
    reply = start(probes=Probes(socket_connected=lambda: False)).get("/healthz")
    assert reply.status == 200
    assert reply.json["alive"] is True and reply.json["ready"] is False


def test_readiness_follows_the_socket_mode_connection(start: Callable[..., Client]) -> None:
    connected = [True]
    client = start(probes=Probes(socket_connected=lambda: connected[0]))
    assert client.get("/healthz?check=ready").status == 200
    connected[0] = False
    reply = client.get("/healthz?check=ready")
    assert reply.status == 503
    assert reply.json["socket_mode"] is False and reply.json["audit_database"] is True


def test_readiness_is_503_naming_what_is_missing_when_backups_cannot_run(
    start: Callable[..., Client],
) -> None:
    # Started with neither a database nor a bucket, the service said ready while every
    # scheduled backup would fail (found by a stranger's trial).
    client = start(s3_bucket=None, database_url=None)
    reply = client.get("/healthz?check=ready")
    assert reply.status == 503 and reply.json["configured"] is False
    assert reply.json["missing"] == [
        "BLNK_DATABASE_URL (or BLNK_DATA_SOURCE_DNS)",
        "S3_BACKUP_BUCKET (or BLNK_S3_BUCKET_NAME)",
    ]
    assert client.get("/healthz").status == 200  # alive: a restart would not help
    # Blnk's endpoint itself still answers as Blnk documents it: 400, a configuration error.
    assert client.get("/backup-s3", headers={"Authorization": f"Bearer {API_KEY}"}).status == 400
    ready = start().get("/healthz?check=ready")
    assert ready.status == 200 and ready.json["configured"] is True and "missing" not in ready.json


def test_readiness_is_503_when_the_audit_database_cannot_be_reached(
    start: Callable[..., Client], pg_server: PgTarget
) -> None:
    name = f"blnk_audit_{uuid.uuid4().hex[:10]}"
    create_database(pg_server, name)
    try:
        client = start(audit_database_url=_pg_url(pg_server, name))
        ready = client.get("/healthz?check=ready")
        assert ready.status == 200 and ready.json["audit_database"] is True
    finally:
        drop_database(pg_server, name)  # the audit database is gone
    reply = client.get("/healthz?check=ready")
    assert reply.status == 503
    assert reply.json["audit_database"] is False and reply.json["ready"] is False
    assert client.get("/healthz").status == 200  # alive all the same: do not restart it


def test_the_backups_check_is_503_until_a_fresh_backup_exists_and_when_it_is_stale(
    start: Callable[..., Client],
) -> None:
    client = start()
    empty = client.get("/healthz?check=backups")
    assert empty.status == 503, empty.text
    assert empty.json["breaches"] == ["no_backups"]
    assert client.backup().status == 200
    fresh = client.get("/healthz?check=backups")
    assert fresh.status == 200 and fresh.json["backups_fresh"] is True
    strict = start(stale_after_hours=0.0001)  # 0.36 s; same bucket: that backup is too old
    time.sleep(0.4)
    stale = strict.get("/healthz?check=backups")
    assert stale.status == 503, stale.text
    assert stale.json["breaches"] == ["stale"]


# --- /metrics ------------------------------------------------------------------------------


def _restore_test(services: Services) -> Any:
    """A restore test of the newest backup; one runs per server at a time, and other test
    runs may share this server: wait for theirs."""
    deadline = time.monotonic() + 180
    while True:
        try:
            return services.restores.test(Actor("ops", "cli"), "latest")
        except AlreadyRunningError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _metrics(client: Client) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    reply = client.get("/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[labels] = sample.value
    return found


def test_metrics_parse_and_report_backups_failures_restore_tests_approvals_and_next_runs(
    start: Callable[..., Client], pg_server: PgTarget
) -> None:
    client = start(restore_tests=True, backup_schedule="0 3 * * *")
    services = client.services
    before = _metrics(client)
    assert before["blnk_backup_last_success_timestamp_seconds"][()] == 0
    assert "blnk_restore_test_last_passed" not in before

    ok = client.backup().json
    broken = start(database="no_such_ledger_db").backup()  # same audit log, same bucket
    assert broken.status == 500
    report = _restore_test(services)
    assert report.passed
    services.approvals.request(
        "delete", Actor("U1", "slack"), {"key": ok["key"]}, ["delete a backup"]
    )

    metrics = _metrics(client)
    now = datetime.now(UTC).timestamp()
    assert now - 120 < metrics["blnk_backup_last_success_timestamp_seconds"][()] <= now
    assert metrics["blnk_backup_last_duration_seconds"][()] == pytest.approx(
        ok["duration_seconds"], abs=0.01
    )
    assert metrics["blnk_backup_last_size_bytes"][()] == ok["size"]
    assert metrics["blnk_backup_failures_total"] == {(("code", "preflight_failed"),): 1.0}
    assert metrics["blnk_restore_test_last_passed"][()] == 1.0
    assert now - 120 < metrics["blnk_restore_test_last_timestamp_seconds"][()] <= now
    assert metrics["blnk_approvals_pending"][()] == 1.0
    assert metrics["blnk_backup_running"][()] == 0.0
    next_backup = metrics["blnk_scheduler_next_run_timestamp_seconds"][(("job", "backup"),)]
    assert next_backup > now and datetime.fromtimestamp(next_backup, UTC).hour == 3


@contextmanager
def _holding(lock: AdvisoryLock) -> Iterator[None]:
    """Hold lock as a run in progress would; other test runs may share this server and hold it
    for a while: wait for theirs."""
    deadline = time.monotonic() + 180
    while True:
        try:
            lock.__enter__()
            break
        except AlreadyRunningError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def test_refused_restore_tests_and_backups_are_neither_results_nor_failures_in_the_metrics(
    start: Callable[..., Client],
) -> None:
    """Refused before they ran (a key that does not exist, another run already going), a restore
    test and a backup say nothing about the backups: the last restore test still passed and
    proved the ledger, and the failures count only the backup that really failed."""
    client = start(restore_tests=True)
    services = client.services
    assert client.backup().status == 200
    assert _restore_test(services).passed
    passed = _metrics(client)
    assert passed["blnk_restore_test_last_passed"][()] == 1.0
    assert passed["blnk_ledger_proof_last_passed"][()] == 1.0

    actor = Actor("ops", "cli")
    with pytest.raises(UsageError, match="does not exist"):
        services.restores.test(actor, "blnk_backup_20300101_000000.dump")
    scratch = services.restores.scratch_server
    held = _holding(AdvisoryLock(scratch, RESTORE_LOCK_ID, "a restore test is already running"))
    with held, pytest.raises(AlreadyRunningError):
        services.restores.test(actor, "latest")
    with _holding(backup_lock(services.target)):
        assert client.backup().status == 409
    assert start(database="no_such_ledger_db").backup().status == 500  # a real failure
    refused = [e.error_code for e in services.audit.events(limit=20) if e.outcome == "failed"]
    assert sorted(refused) == [
        "already_running",
        "already_running",
        "preflight_failed",
        "usage_error",
    ]

    metrics = _metrics(client)
    for name in (
        "blnk_restore_test_last_passed",
        "blnk_restore_test_last_timestamp_seconds",
        "blnk_ledger_proof_last_passed",
    ):
        assert metrics[name] == passed[name], name
    assert metrics["blnk_backup_failures_total"] == {(("code", "preflight_failed"),): 1.0}
