"""Settings for tests, and the environment that gives a CLI run the same settings."""

from __future__ import annotations

from core.config import Settings


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
    if settings.pg_bin_dir is not None:
        env["PG_BIN_DIR"] = settings.pg_bin_dir
    if settings.database_url is not None:
        env["BLNK_DATABASE_URL"] = settings.database_url.get_secret_value()
    if settings.restore_test_database_url is not None:
        env["RESTORE_TEST_DATABASE_URL"] = settings.restore_test_database_url.get_secret_value()
    if settings.wal_archive:
        env["WAL_ARCHIVE"] = "true"
        env["WAL_SLOT_NAME"] = settings.wal_slot_name
        env["WAL_MAX_LAG_SECONDS"] = str(settings.wal_max_lag_seconds)
        env["WAL_SHIP_PARTIAL_SECONDS"] = str(settings.wal_ship_partial_seconds)
        env["WAL_SLOT_ALERT_SHARE"] = str(settings.wal_slot_alert_share)
        env["WAL_SLOT_ALERT_BYTES"] = str(settings.wal_slot_alert_bytes)
        env["WAL_RECEIVER_DOWN_MINUTES"] = str(settings.wal_receiver_down_minutes)
        if settings.wal_spool_dir is not None:
            env["WAL_SPOOL_DIR"] = settings.wal_spool_dir
        if settings.replication_database_url is not None:
            env["REPLICATION_DATABASE_URL"] = settings.replication_database_url.get_secret_value()
    if settings.replication_database_url is not None:
        env["REPLICATION_DATABASE_URL"] = settings.replication_database_url.get_secret_value()
    return env | extra
