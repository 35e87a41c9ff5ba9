"""Shared fixtures: the real PostgreSQL on 127.0.0.1:5432, a real S3 server process on
loopback, Blnk-shaped databases that each test module creates and drops, and settings."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from core.blnkgen import generate
from core.config import Settings, load_settings
from core.database import PgTarget, drop_database
from core.services import Services
from tests.support.faultproxy import FaultProxy
from tests.support.s3server import S3ServerProcess

PG_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ACCESS_KEY = "AKIATESTTESTTEST"
SECRET_KEY = "s3cr3t-w1ll-n3v3r-b3-pr1nt3d"


@pytest.fixture(scope="session")
def pg_server() -> PgTarget:
    return PgTarget.from_url(PG_URL)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3ServerProcess]:
    server = S3ServerProcess()
    server.start()
    yield server
    server.stop()


def raw_s3(endpoint: str) -> Any:
    """A plain boto3 client, as an operator's `aws s3` would be."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture
def s3(s3_server: S3ServerProcess) -> Any:
    return raw_s3(s3_server.endpoint)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"bkt-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def make_database(pg_server: PgTarget, transactions: int) -> str:
    name = f"blnk_test_{uuid.uuid4().hex[:10]}"
    generate(pg_server, name, transactions)
    return name


@pytest.fixture(scope="module")
def blnk_db(pg_server: PgTarget) -> Iterator[PgTarget]:
    """A small Blnk-shaped database, shared by the tests of one module (they only read it)."""
    name = make_database(pg_server, 2_000)
    yield pg_server.with_dbname(name)
    drop_database(pg_server, name)


@pytest.fixture
def proxy(s3_server: S3ServerProcess) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(s3_server.port)
    fault_proxy.start()
    yield fault_proxy
    fault_proxy.stop()


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(
    tmp_path: Path, s3_server: S3ServerProcess, bucket: str, blnk_db: PgTarget
) -> SettingsFactory:
    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": f"postgresql://postgres@127.0.0.1:5432/{blnk_db.dbname}",
            "s3_bucket": bucket,
            "s3_endpoint_url": s3_server.endpoint,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "audit_database_url": f"sqlite:///{tmp_path / 'audit.sqlite3'}",
            "s3_max_attempts": 2,
            "backup_local_dir": tmp_path / "local",
        }
        values.update(overrides)
        return load_settings(**values)

    return factory


@pytest.fixture
def services(make_settings: SettingsFactory) -> Iterator[Services]:
    built = Services(make_settings())
    yield built
    built.close()


def bucket_keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def incomplete_uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    return list(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment variables that give a CLI run (in-process or a child) these settings."""
    secret = settings.aws_secret_access_key
    env = {
        "S3_BACKUP_BUCKET": settings.s3_bucket or "",
        "S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "S3_BACKUP_PREFIX": settings.s3_prefix,
        "AWS_ACCESS_KEY_ID": settings.aws_access_key_id or "",
        "AWS_SECRET_ACCESS_KEY": secret.get_secret_value() if secret else "",
        "AWS_REGION": settings.aws_region,
        "AUDIT_DATABASE_URL": settings.audit_database_url,
        "S3_MAX_ATTEMPTS": str(settings.s3_max_attempts),
        "S3_CHECKSUM": settings.s3_checksum,
        "BACKUP_COMPRESSION_LEVEL": str(settings.backup_compression_level),
        "BACKUP_PART_SIZE_MIB": str(settings.backup_part_size_mib),
        "BACKUP_UPLOAD_CONCURRENCY": str(settings.backup_upload_concurrency),
    }
    if settings.database_url is not None:
        env["BLNK_DATABASE_URL"] = settings.database_url.get_secret_value()
    if settings.restore_test_database_url is not None:
        env["RESTORE_TEST_DATABASE_URL"] = settings.restore_test_database_url.get_secret_value()
    return env | extra


@pytest.fixture
def use_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Put settings into this process's environment for an in-process CLI call."""

    def apply(settings: Settings, **extra: str) -> None:
        for name, value in settings_env(settings, **extra).items():
            monkeypatch.setenv(name, value)

    return apply
