"""Blnk-shaped databases on the test PostgreSQL server, each with a unique name."""

from __future__ import annotations

import os
import uuid

from core.blnkgen import generate
from core.database import PgTarget

PG_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def make_database(pg_server: PgTarget, transactions: int) -> str:
    name = f"blnk_test_{uuid.uuid4().hex[:10]}"
    generate(pg_server, name, transactions)
    return name
