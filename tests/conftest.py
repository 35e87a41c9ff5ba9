"""Shared fixtures: the real PostgreSQL on 127.0.0.1:5432, a real S3 server process on
loopback, Blnk-shaped databases that each test module creates and drops, and settings."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings, load_settings
from core.database import PgTarget, drop_database
from core.services import Services
from tests.support.databases import PG_URL, make_database
from tests.support.faultproxy import FaultProxy
from tests.support.s3server import S3ServerProcess
from tests.support.settings import settings_env
from tests.support.stores import ACCESS_KEY, SECRET_KEY, raw_s3


@pytest.fixture(scope="session")
def pg_server() -> PgTarget:
    return PgTarget.from_url(PG_URL)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3ServerProcess]:
    server = S3ServerProcess()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3ServerProcess) -> Any:
    return raw_s3(s3_server.endpoint)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"bkt-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
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


@pytest.fixture
def use_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Put settings into this process's environment for an in-process CLI call."""

    def apply(settings: Settings, **extra: str) -> None:
        for name, value in settings_env(settings, **extra).items():
            monkeypatch.setenv(name, value)

    return apply
