# blnk-backup-bot: the CLI (and, when it lands, the Slack bot) with PostgreSQL 16 client tools,
# so it can dump Blnk's PostgreSQL 16 (pg_dump must be at least the server's major version).
# Not built in this project's CI (no Docker engine there); reviewed by hand.
FROM python:3.12-slim-bookworm

ARG PG_MAJOR=16
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl gnupg; \
    install -d /usr/share/postgresql-common/pgdg; \
    curl -fsSL https://www.postgresql.org/media/keys/ACCC4CF8.asc \
        -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}"; \
    apt-get purge -y curl gnupg; apt-get autoremove -y; rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 blnk
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core ./core
COPY bot ./bot
RUN pip install --no-cache-dir .

USER blnk
ENV PG_BIN_DIR=/usr/lib/postgresql/${PG_MAJOR}/bin \
    AUDIT_DATABASE_URL=sqlite:////data/audit.sqlite3 \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
ENTRYPOINT ["blnk-backup"]
CMD ["status"]
