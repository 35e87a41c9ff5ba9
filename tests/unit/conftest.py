"""The fast layer: pure logic, without PostgreSQL or an S3 server (``./scripts/test --unit``).

The session's autouse ``_template_databases`` (tests/conftest.py) needs a PostgreSQL server;
here it is a no-op, and asking for the server or the S3 server process fails the test, so
nothing in this directory can quietly start or touch either."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _template_databases() -> Iterator[None]:
    yield


@pytest.fixture(scope="session")
def pg_server() -> None:
    pytest.fail("unit tests must not use PostgreSQL: put this test beside tests/unit, not in it")


@pytest.fixture(scope="session")
def s3_server() -> None:
    pytest.fail("unit tests must not use the S3 server: put this test beside tests/unit")
