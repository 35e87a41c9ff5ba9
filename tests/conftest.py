"""Shared fixtures: a real PostgreSQL server, a real S3 server process on loopback, Blnk-shaped
databases that each test module creates and drops, and settings.

The same tests run against other real parts, chosen on the command line (scripts/test runs
each pass):

- ``--s3-server seaweedfs``: SeaweedFS (a second, independent S3 implementation) instead of
  moto; tests marked ``stores`` are the ones that matter there;
- ``--pg embedded18``: a PostgreSQL 18 server with its own 18 client tools (tests marked
  ``pg_versions``);
- ``--pg-client embedded18``: the machine's server with the PostgreSQL 18 client tools
  (``PG_BIN_DIR``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings, load_settings
from core.database import PgTarget, drop_database
from core.services import Services
from tests.support.databases import PG_URL, drop_templates, make_database
from tests.support.embedded_pg import EmbeddedPostgres, embedded_bin_dir, postgres_answers
from tests.support.faultproxy import FaultProxy
from tests.support.s3server import S3ServerProcess
from tests.support.s3server_alt import SeaweedS3ServerProcess
from tests.support.settings import settings_env
from tests.support.stores import ACCESS_KEY, SECRET_KEY, drop_bucket, raw_s3

pytest_plugins = ["tests.support.slack_fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--s3-server", choices=["moto", "seaweedfs"], default="moto", help="S3 implementation"
    )
    parser.addoption(
        "--pg", choices=["local", "embedded18"], default="local", help="PostgreSQL server"
    )
    parser.addoption(
        "--pg-client",
        choices=["default", "embedded18"],
        default="default",
        help="pg_dump/pg_restore to use (PG_BIN_DIR)",
    )


@pytest.fixture(scope="session", autouse=True)
def _template_databases(pg_server: PgTarget) -> Iterator[None]:
    yield
    drop_templates(pg_server)


_EMBEDDED_STARTED = pytest.StashKey[bool]()


def _local_pg_missing() -> bool:
    return PG_URL.startswith("postgresql://postgres@127.0.0.1:5432/") and not postgres_answers()


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> Iterator[PgTarget]:
    """The PostgreSQL server of this run. With --pg local and nothing answering on
    127.0.0.1:5432, the embedded one is started there (a machine with only Python)."""
    embedded = request.config.getoption("--pg") == "embedded18"
    if not embedded and not _local_pg_missing():
        yield PgTarget.from_url(PG_URL)
        return
    server = EmbeddedPostgres(port=None if embedded else 5432)
    server.start()
    request.config.stash[_EMBEDDED_STARTED] = True
    try:
        yield PgTarget.from_url(server.url)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_bin_dir(request: pytest.FixtureRequest, pg_server: PgTarget) -> str | None:
    """PG_BIN_DIR for this run: the 18 client tools with --pg embedded18, --pg-client
    embedded18 or an embedded server (the machine's client tools may be older), else None (the
    newest pg_dump on the machine)."""
    options = (request.config.getoption("--pg"), request.config.getoption("--pg-client"))
    embedded = request.config.stash.get(_EMBEDDED_STARTED, False)
    if (
        "embedded18" in options
        or embedded
        or pg_server.params.get("port") != "5432"
        or _embedded_local()
    ):
        return str(embedded_bin_dir())
    return None


def _embedded_local() -> bool:
    from core.processes import find_tool

    try:
        find_tool("pg_dump", None)
    except Exception:
        return True  # no client tools on this machine: use the wheel's
    return False


@pytest.fixture(scope="session")
def s3_server(request: pytest.FixtureRequest) -> Iterator[S3ServerProcess | SeaweedS3ServerProcess]:
    server: S3ServerProcess | SeaweedS3ServerProcess
    if request.config.getoption("--s3-server") == "seaweedfs":
        server = SeaweedS3ServerProcess()
    else:
        server = S3ServerProcess()
    server.start()
    yield server
    server.stop()


def url_of(target: PgTarget) -> str:
    """A connection string for settings (BLNK_DATABASE_URL, RESTORE_TEST_DATABASE_URL)."""
    return target.secret_conninfo()


@pytest.fixture
def s3(s3_server: S3ServerProcess) -> Any:
    return raw_s3(s3_server.endpoint)


@pytest.fixture
def bucket(s3: Any) -> Iterator[str]:
    name = f"bkt-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    yield name
    drop_bucket(s3, name)


@pytest.fixture(scope="module")
def blnk_db(pg_server: PgTarget) -> Iterator[PgTarget]:
    """A small Blnk-shaped database, shared by the tests of one module (they only read it)."""
    name = make_database(pg_server, 2_000)
    yield pg_server.with_dbname(name)
    drop_database(pg_server, name)


@pytest.fixture(scope="module")
def big_db(pg_server: PgTarget) -> Iterator[str]:
    """The name of a database big enough that an uncompressed dump spans several 5 MiB parts,
    shared by the tests of one module."""
    name = make_database(pg_server, 20_000)
    yield name
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
    tmp_path: Path,
    s3_server: S3ServerProcess,
    bucket: str,
    blnk_db: PgTarget,
    pg_server: PgTarget,
    pg_bin_dir: str | None,
) -> SettingsFactory:
    def factory(
        *, database: str | None = None, restore_tests: bool = False, **overrides: Any
    ) -> Settings:
        """Settings for the test bucket and database. ``database`` names another database on
        the test server; ``restore_tests`` sets RESTORE_TEST_DATABASE_URL to the test server;
        any other keyword overrides that setting."""
        target = pg_server.with_dbname(database) if database else blnk_db
        values: dict[str, Any] = {
            "database_url": url_of(target),
            "pg_bin_dir": pg_bin_dir,
            "s3_bucket": bucket,
            "s3_endpoint_url": s3_server.endpoint,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "audit_database_url": f"sqlite:///{tmp_path / 'audit.sqlite3'}",
            "s3_max_attempts": 2,
            "backup_local_dir": tmp_path / "local",
        }
        if restore_tests:
            values["restore_test_database_url"] = url_of(pg_server)
        values.update(overrides)
        return load_settings(**values)

    return factory


@pytest.fixture
def services(make_settings: SettingsFactory) -> Iterator[Services]:
    built = Services(make_settings())
    yield built
    built.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No configuration from this machine's environment: the test sets what it needs."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "S3_", "BLNK_", "BACKUP_", "RETENTION_", "SLACK_")):
            monkeypatch.delenv(name)


@pytest.fixture
def use_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Put settings into this process's environment for an in-process CLI call."""

    def apply(settings: Settings, **extra: str) -> None:
        for name, value in settings_env(settings, **extra).items():
            monkeypatch.setenv(name, value)

    return apply
