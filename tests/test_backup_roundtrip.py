"""A backup restores with stock tools into a database that matches the source exactly."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import zlib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from core.audit import Actor
from core.database import PgTarget, create_database, drop_database
from core.dbstats import ledger_totals, object_counts
from core.services import Services
from core.store.multipart import crc32_b64
from tests.support.faultproxy import FaultProxy, Request
from tests.support.helpers import bucket_keys, incomplete_uploads

pytestmark = [pytest.mark.stores, pytest.mark.pg_versions]

ACTOR = Actor("alice", "cli")


def _row_counts(target: PgTarget, tables: list[str]) -> dict[str, int]:
    with target.connect() as conn:
        counts = {}
        for table in tables:
            schema, name = table.split(".")
            row = conn.execute(f'SELECT count(*) FROM "{schema}"."{name}"').fetchone()
            counts[table] = row[0]
        return counts


READS = {"HeadBucket", "HeadObject", "GetObject", "ListObjectsV2", "ListMultipartUploads"}


def s3_calls(log: list[Request], bucket: str) -> list[tuple[str, str]]:
    """The S3 operations the proxy forwarded, in order of arrival, each with its key."""

    def operation(method: str, key: str, query: dict[str, list[str]]) -> str:
        if method == "POST":
            if "uploads" in query:
                return "CreateMultipartUpload"
            return "CompleteMultipartUpload" if "uploadId" in query else "DeleteObjects"
        if method == "PUT":
            return "UploadPart" if "partNumber" in query else "PutObject"
        if method == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
        if method == "HEAD":
            return "HeadObject" if key else "HeadBucket"
        if "uploads" in query:
            return "ListMultipartUploads"
        return "GetObject" if key else "ListObjectsV2"

    calls = []
    for request in log:
        url = urlsplit(request.path)
        key = unquote(url.path).removeprefix(f"/{bucket}").removeprefix("/")
        query = parse_qs(url.query, keep_blank_values=True)
        calls.append((operation(request.method, key, query), key))
    return calls


@pytest.fixture
def restored(pg_server: PgTarget, pg_bin_dir: str | None) -> Any:
    """Restore with the stock pg_restore of this run's client tools (the machine's, or the
    PostgreSQL 18 ones with --pg/--pg-client embedded18) into a new database, as
    docs/operations.md tells an operator to: with --exit-on-error, except that a pg_restore newer
    than the server may only report the settings that server does not know."""
    names: list[str] = []
    pg_restore = str(Path(pg_bin_dir) / "pg_restore") if pg_bin_dir else "pg_restore"
    version = subprocess.run([pg_restore, "--version"], capture_output=True, text=True, check=True)
    tool_major = int(version.stdout.split()[2].split(".")[0])  # "pg_restore (PostgreSQL) 18.1"
    with pg_server.connect() as conn:
        newer_tool = tool_major > conn.info.server_version // 10000

    def restore(dump: Path, jobs: int = 1) -> PgTarget:
        name = f"blnk_restored_{len(names)}_{hashlib.sha256(str(dump).encode()).hexdigest()[:8]}"
        drop_database(pg_server, name)
        create_database(pg_server, name)
        names.append(name)
        done = subprocess.run(
            [
                pg_restore,
                *([] if newer_tool else ["--exit-on-error"]),
                f"--jobs={jobs}",
                "-d",
                pg_server.with_dbname(name).conninfo,
                str(dump),
            ],
            capture_output=True,
            text=True,
        )
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("pg_restore: error:")]
        if newer_tool:
            assert all("unrecognized configuration parameter" in e for e in errors), errors
        else:
            assert done.returncode == 0 and not errors, done.stderr
        return pg_server.with_dbname(name)

    yield restore
    for name in names:
        drop_database(pg_server, name)


def test_backup_restores_with_stock_tools_and_matches_source_and_manifest(
    services: Services, s3: Any, bucket: str, blnk_db: PgTarget, tmp_path: Path, restored: Any
) -> None:
    result = services.backups.run(ACTOR, reason="before migration 42")
    manifest = result.manifest

    # The seed's recovery recipe: download with a plain client, pg_restore it.
    dump = tmp_path / "backup.dump"
    s3.download_file(bucket, manifest.key, str(dump))
    data = dump.read_bytes()
    assert len(data) == manifest.size
    assert hashlib.sha256(data).hexdigest() == manifest.sha256
    assert data[:5] == b"PGDMP"  # a stock custom-format archive, no wrapping

    source_tables = sorted(manifest.stats.row_counts)
    assert "blnk.transactions" in source_tables and "blnk.transaction_journal" in source_tables
    for jobs in (1, 2):
        target = restored(dump, jobs)
        assert _row_counts(target, source_tables) == manifest.stats.row_counts
        assert _row_counts(blnk_db, source_tables) == manifest.stats.row_counts
        with target.connect() as conn, blnk_db.connect() as source:
            assert ledger_totals(conn) == ledger_totals(source)
            assert ledger_totals(conn) == manifest.stats.ledger
            assert object_counts(conn) == object_counts(source) == manifest.stats.objects
            # Double entry still holds after the round trip.
            assert conn.execute("SELECT count(*) FROM blnk.ledger_imbalance()").fetchone()[0] == 0

    for totals in manifest.stats.ledger.values():
        assert Decimal(totals.balance_sum) == 0
        assert totals.transaction_count > 0
    assert manifest.stats.objects["functions"] >= 2 and manifest.stats.objects["triggers"] >= 1


def test_manifest_is_written_last_next_to_the_dump(
    make_settings: Any, s3: Any, bucket: str, proxy: FaultProxy
) -> None:
    services = Services(make_settings(s3_endpoint_url=proxy.endpoint))
    try:
        key = services.backups.run(ACTOR).manifest.key
    finally:
        services.close()
    assert sorted(bucket_keys(s3, bucket)) == [key, key + ".manifest.json"]
    # The store's requests in the order they arrived: the manifest is written once, after the
    # upload was completed and the dump's size and checksum were read back, and nothing after.
    calls = s3_calls(proxy.faults.log, bucket)
    [manifest_put] = [i for i, c in enumerate(calls) if c == ("PutObject", key + ".manifest.json")]
    [completion] = [i for i, c in enumerate(calls) if c == ("CompleteMultipartUpload", key)]
    verification = [i for i, c in enumerate(calls) if c == ("HeadObject", key) and i > completion]
    assert verification and completion < verification[0] < manifest_put, calls
    writes = [i for i, (operation, _key) in enumerate(calls) if operation not in READS]
    assert writes[-1] == manifest_put, calls
    body = json.loads(s3.get_object(Bucket=bucket, Key=key + ".manifest.json")["Body"].read())
    for field in (
        "key",
        "status",
        "sha256",
        "size",
        "started_at",
        "finished_at",
        "duration_seconds",
        "pg_dump_version",
        "server_version",
        "database",
        "compression_level",
        "stats",
    ):
        assert field in body, field
    assert body["status"] == "verified"
    assert body["stats"]["row_counts"]["blnk.transactions"] == 2_000
    assert incomplete_uploads(s3, bucket) == []


def test_key_follows_the_pattern_in_utc_and_two_backups_never_share_a_key(
    services: Services, s3: Any, bucket: str
) -> None:
    first = services.backups.run(ACTOR).manifest
    second = services.backups.run(ACTOR).manifest
    pattern = re.compile(r"^blnk_backup_\d{8}_\d{6}\.dump$")
    assert pattern.match(first.key) and pattern.match(second.key)
    assert first.key != second.key
    assert first.started_at.utcoffset().total_seconds() == 0
    assert first.key == f"blnk_backup_{first.started_at:%Y%m%d_%H%M%S}.dump"
    assert len([k for k in bucket_keys(s3, bucket) if k.endswith(".dump")]) == 2


def test_backup_in_the_same_second_waits_for_a_free_key(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    from datetime import UTC, datetime

    frozen = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    ticks = iter([frozen] * 5 + [frozen.replace(second=6)] * 20)
    services = Services(make_settings())
    services.backups.clock = lambda: next(ticks)
    try:
        first = services.backups.run(ACTOR).manifest
        second = services.backups.run(ACTOR).manifest
    finally:
        services.close()
    assert first.key == "blnk_backup_20260102_030405.dump"
    assert second.key == "blnk_backup_20260102_030406.dump"


def test_the_duration_is_measured_from_the_start_not_from_the_keys_whole_second(
    make_settings: Any,
) -> None:
    from datetime import UTC, datetime, timedelta

    began = datetime(2026, 1, 2, 3, 4, 5, 900_000, tzinfo=UTC)  # the key says 03:04:05
    ticks = iter([began] + [began + timedelta(seconds=0.25)] * 20)
    services = Services(make_settings())
    services.backups.clock = lambda: next(ticks)
    try:
        manifest = services.backups.run(ACTOR).manifest
    finally:
        services.close()
    assert manifest.key == "blnk_backup_20260102_030405.dump"
    assert manifest.duration_seconds == 0.25  # not 1.15 (from 03:04:05.000)


def test_unrelated_objects_in_the_bucket_are_never_touched_or_listed(
    services: Services, s3: Any, bucket: str
) -> None:
    unrelated = {
        "notes.txt": b"keep me",
        "blnk_backup_latest.dump": b"not ours",
        "other/blnk_backup_20240101_000000.dump": b"another prefix",
        "blnk_backup_20240101_000000.dump.bak": b"near miss",
    }
    for key, body in unrelated.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    services.backups.run(ACTOR)
    listed = [e.key.key for e in services.catalog.list(include_incomplete=True)]
    assert not set(listed) & set(unrelated)
    for key, body in unrelated.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body


def test_prefix_storage_class_and_encryption_are_applied(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    services = Services(
        make_settings(s3_prefix="ledger/prod/", s3_storage_class="STANDARD_IA", s3_sse="AES256")
    )
    try:
        manifest = services.backups.run(ACTOR).manifest
    finally:
        services.close()
    assert manifest.key.startswith("ledger/prod/blnk_backup_")
    head = s3.head_object(Bucket=bucket, Key=manifest.key)
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["ServerSideEncryption"] == "AES256"


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class _CopyingReader:
    """Stands in for a request handler's rfile and keeps a copy of what is read."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.copy = bytearray()

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.raw.read(size)
        self.copy += data
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class RecordingProxy(FaultProxy):
    """The fault proxy, also keeping each request's headers and body (``faults.log`` holds only
    method and path)."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.seen: list[SeenRequest] = []

    def start(self) -> None:
        super().start()
        assert self._server is not None
        handler: Any = self._server.RequestHandlerClass
        seen = self.seen

        class Recording(handler):
            def _handle_and_record(self) -> None:
                raw = self.rfile
                self.rfile = reader = _CopyingReader(raw)
                try:
                    handler._handle(self)
                finally:
                    self.rfile = raw
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    seen.append(SeenRequest(self.command, self.path, headers, bytes(reader.copy)))

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle_and_record

        self._server.RequestHandlerClass = Recording


def test_md5_mode_sends_content_md5_with_every_part_and_no_newer_checksum_header(
    make_settings: Any, s3: Any, bucket: str, big_db: str, s3_server: Any
) -> None:
    proxy = RecordingProxy(s3_server.port)
    proxy.start()
    try:
        services = Services(
            make_settings(
                database=big_db,
                s3_endpoint_url=proxy.endpoint,
                s3_checksum="md5",
                backup_compression_level=0,
                backup_part_size_mib=5,
            )
        )
        try:
            manifest = services.backups.run(ACTOR).manifest
        finally:
            services.close()
    finally:
        proxy.stop()
    assert manifest.verification == "size+content-md5-parts"
    assert manifest.store_checksum is None
    assert s3.head_object(Bucket=bucket, Key=manifest.key)["ContentLength"] == manifest.size
    parts = [r for r in proxy.seen if r.method == "PUT" and "partNumber=" in r.path]
    assert len(parts) == manifest.part_count >= 2
    for part in parts:
        digest = base64.b64encode(hashlib.md5(part.body, usedforsecurity=False).digest()).decode()
        assert part.headers.get("content-md5") == digest, part.path
        assert int(part.headers["content-length"]) == len(part.body)
    assert sum(len(p.body) for p in parts) == manifest.size
    # A store that rejects the newer checksum headers is sent none, with writes or reads.
    for request in proxy.seen:
        newer = [
            h for h in request.headers if h.startswith(("x-amz-checksum", "x-amz-sdk-checksum"))
        ]
        assert newer == [], request.path


def test_local_copy_is_kept_when_asked_and_matches_the_upload(
    make_settings: Any, tmp_path: Path
) -> None:
    services = Services(make_settings(backup_keep_local_copy=True))
    try:
        manifest = services.backups.run(ACTOR).manifest
    finally:
        services.close()
    local = tmp_path / "local" / manifest.key
    assert hashlib.sha256(local.read_bytes()).hexdigest() == manifest.sha256
    assert list((tmp_path / "local").iterdir()) == [local]


@pytest.mark.parametrize("mode", ["crc32", "sha256"])
def test_multipart_backup_with_many_parts_verifies(
    make_settings: Any, s3: Any, bucket: str, big_db: str, mode: str
) -> None:
    services = Services(
        make_settings(
            database=big_db,
            backup_compression_level=0,
            backup_part_size_mib=5,
            s3_checksum=mode,
        )
    )
    try:
        manifest = services.backups.run(ACTOR).manifest
    finally:
        services.close()
    assert manifest.part_count >= 3
    body = s3.get_object(Bucket=bucket, Key=manifest.key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == manifest.sha256
    assert manifest.store_checksum is not None
    if mode == "sha256":
        assert manifest.verification == "size+sha256-composite"
        assert manifest.store_checksum.endswith(f"-{manifest.part_count}")
    else:  # the CRC32 of the whole object, as the store computed it from what it received
        assert manifest.verification == "size+crc32-full-object"
        assert manifest.store_checksum == crc32_b64(zlib.crc32(body))
        head = s3.head_object(Bucket=bucket, Key=manifest.key, ChecksumMode="ENABLED")
        assert head["ChecksumCRC32"] == manifest.store_checksum


def test_crc32_mode_sends_each_parts_crc32_and_the_whole_streams_at_completion_unsigned(
    make_settings: Any, s3: Any, bucket: str, big_db: str, s3_server: Any
) -> None:
    """The default mode: a CRC32 per part (checked by the store on receipt), the FULL_OBJECT
    CRC32 of the whole stream at completion, and no SHA-256 over the parts' bodies anywhere
    (the payload is not signed: the signed checksum header covers it)."""
    proxy = RecordingProxy(s3_server.port)
    proxy.start()
    try:
        services = Services(
            make_settings(
                database=big_db,
                s3_endpoint_url=proxy.endpoint,
                backup_compression_level=0,
                backup_part_size_mib=5,
            )
        )
        try:
            manifest = services.backups.run(ACTOR).manifest
        finally:
            services.close()
    finally:
        proxy.stop()
    body = s3.get_object(Bucket=bucket, Key=manifest.key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == manifest.sha256
    assert manifest.store_checksum == crc32_b64(zlib.crc32(body))
    [create] = [r for r in proxy.seen if r.method == "POST" and r.path.endswith("?uploads")]
    assert create.headers["x-amz-checksum-algorithm"] == "CRC32"
    assert create.headers["x-amz-checksum-type"] == "FULL_OBJECT"
    parts = [r for r in proxy.seen if r.method == "PUT" and "partNumber=" in r.path]
    assert len(parts) == manifest.part_count >= 2
    for part in parts:
        assert part.headers["x-amz-checksum-crc32"] == crc32_b64(zlib.crc32(part.body))
        assert part.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    [complete] = [r for r in proxy.seen if r.method == "POST" and "uploadId=" in r.path]
    assert complete.headers["x-amz-checksum-crc32"] == manifest.store_checksum
    assert complete.headers["x-amz-checksum-type"] == "FULL_OBJECT"


def test_a_store_that_makes_the_upload_composite_is_verified_by_the_composite_crc32(
    make_settings: Any, s3: Any, bucket: str, big_db: str
) -> None:
    """A store that does not know the FULL_OBJECT checksum type ignores it and makes a CRC32
    upload COMPOSITE: completion then names no full CRC32, and verification compares the
    composite of the parts' CRC32s. (The header is dropped before signing, as such a store
    would ignore it: a proxy dropping it would break the signature.)"""
    services = Services(
        make_settings(database=big_db, backup_compression_level=0, backup_part_size_mib=5)
    )
    client = services.store.client
    create = client.create_multipart_upload

    def create_without_type(**kwargs: Any) -> Any:
        assert kwargs.pop("ChecksumType") == "FULL_OBJECT"
        return create(**kwargs)

    client.create_multipart_upload = create_without_type
    try:
        manifest = services.backups.run(ACTOR).manifest
    finally:
        services.close()
    body = s3.get_object(Bucket=bucket, Key=manifest.key)["Body"].read()
    size = 5 * 1024 * 1024
    crcs = [zlib.crc32(body[i : i + size]).to_bytes(4, "big") for i in range(0, len(body), size)]
    assert manifest.verification == "size+crc32-composite"
    assert manifest.store_checksum == f"{crc32_b64(zlib.crc32(b''.join(crcs)))}-{len(crcs)}"
    assert hashlib.sha256(body).hexdigest() == manifest.sha256


def test_the_manifest_records_the_encryption_the_store_applied(
    make_settings: Any, s3: Any, bucket: str
) -> None:
    # The bucket encrypts by default though S3_SSE asks for nothing: the manifest says what
    # the store did, not what was asked.
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    services = Services(make_settings(s3_sse="none"))
    try:
        manifest = services.backups.run(ACTOR).manifest
    finally:
        services.close()
    applied = s3.head_object(Bucket=bucket, Key=manifest.key).get("ServerSideEncryption")
    assert applied == "AES256"
    assert manifest.sse == applied
