"""Blnk-shaped databases on the test PostgreSQL server, each with a unique name.

Generating one (with Blnk's hash chain) takes seconds; copying one takes milliseconds. So each
shape is generated once per test session as a template and every test database is a copy
(``CREATE DATABASE … TEMPLATE``); ``drop_templates`` removes the templates at the end.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg import sql

from core.blnkgen import generate
from core.database import PgTarget, create_database, drop_database

PG_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

_templates: dict[tuple[str, int, tuple[tuple[str, Any], ...]], str] = {}
_lock = threading.Lock()


def make_database(pg_server: PgTarget, transactions: int, **options: Any) -> str:
    """Create a fresh database of ``transactions`` Blnk transactions (``options`` as for
    core.blnkgen.generate: edge_objects, blnk_version) and return its name."""
    key = (pg_server.display, transactions, tuple(sorted(options.items())))
    with _lock:
        template = _templates.get(key)
        if template is None:
            template = f"blnk_tpl_{uuid.uuid4().hex[:10]}"
            generate(pg_server, template, transactions, **options)
            _templates[key] = template
        name = f"blnk_test_{uuid.uuid4().hex[:10]}"
        with pg_server.connect(autocommit=True) as conn:  # one copy at a time per template
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
    return name


def drop_templates(pg_server: PgTarget) -> None:
    """Drop the templates made on this server."""
    with _lock:
        for key, template in list(_templates.items()):
            if key[0] == pg_server.display:
                drop_database(pg_server, template)
                del _templates[key]


@contextmanager
def audit_database(pg_server: PgTarget) -> Iterator[str]:
    """A new, empty database on the test server for an audit log: yield its
    AUDIT_DATABASE_URL (trust authentication, so no password in it), drop it afterwards."""
    name = f"blnk_audit_{uuid.uuid4().hex[:10]}"
    create_database(pg_server, name)
    params = pg_server.params
    where = f"{params.get('host', '127.0.0.1')}:{params.get('port', '5432')}"
    try:
        yield f"postgresql://{params.get('user', 'postgres')}@{where}/{name}"
    finally:
        drop_database(pg_server, name)
