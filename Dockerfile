# blnk-backup-bot: the Slack bot, scheduler and Blnk-compatible HTTP API (and the blnk-backup
# CLI), with the PostgreSQL client tools and server of a chosen major version. pg_dump must be at
# least as new as the server it dumps (the preflight refuses an older one, naming both versions),
# and a recovery to a time replays WAL in a scratch cluster of exactly the source's major, so
# build with the major of your Blnk database: docker build --build-arg PG_MAJOR=16 -t blnk-backup-bot .
# Not built in this project's CI (no Docker engine there); linted and reviewed by hand.
FROM python:3.12-slim-bookworm

ARG PG_MAJOR=16
# The client tools (pg_dump, pg_restore, pg_receivewal, pg_basebackup, pg_verifybackup) and the
# server of PG_MAJOR (postgres, pg_ctl: restore-to-time clusters, started by the bot as its own
# user in TMPDIR and removed after; never a cluster of the image's own: postgresql-common is told
# not to create one). The en_US.UTF-8 locale is the one the stock postgres image initialises its
# clusters with: a recovered cluster's databases refuse connections where it does not exist.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl gnupg; \
    install -d /usr/share/postgresql-common/pgdg; \
    curl -fsSL https://www.postgresql.org/media/keys/ACCC4CF8.asc \
        -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends postgresql-common; \
    sed -ri 's/^#?\s*(create_main_cluster)\s*=.*$/\1 = false/' /etc/postgresql-common/createcluster.conf; \
    apt-get install -y --no-install-recommends locales \
        "postgresql-client-${PG_MAJOR}" "postgresql-${PG_MAJOR}"; \
    localedef -i en_US -c -f UTF-8 en_US.UTF-8; \
    apt-get purge -y gnupg; apt-get autoremove -y; rm -rf /var/lib/apt/lists/*

# An unprivileged user owns the data directory (the SQLite audit log lives there by default),
# created before VOLUME so a new named volume starts out owned by that user.
RUN set -eux; \
    useradd --create-home --uid 10001 --user-group blnk; \
    install -d -o blnk -g blnk -m 0750 /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY core ./core
COPY bot ./bot
# Not editable: the wheel carries core/sql/*.sql (tests/test_wheel.py builds and runs the same).
RUN pip install --no-cache-dir .

ENV PG_BIN_DIR=/usr/lib/postgresql/${PG_MAJOR}/bin \
    AUDIT_DATABASE_URL=sqlite:////data/audit.sqlite3 \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080 \
    PYTHONUNBUFFERED=1
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
# Readiness: the process answers, the audit database is reachable and (in Socket Mode) Slack is
# connected. Backup freshness is for monitoring (/healthz?check=backups), not for restarts.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "curl -fsS \"http://127.0.0.1:${HTTP_PORT}/healthz?check=ready\" >/dev/null || exit 1"]
ENTRYPOINT ["blnk-backup-bot"]
