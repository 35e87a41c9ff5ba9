"""Configuration from the environment, validated once, with every problem reported together.

Variable names are a fixed contract (README, "Configuration"). Blnk's own names are accepted
as fallbacks so the bot can share Blnk's env file. Secrets are held as ``SecretStr`` and never
printed: error messages name the variable, never its value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import ConfigError

StorageClass = Literal[
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "REDUCED_REDUNDANCY",
]
SseMode = Literal["none", "AES256", "aws:kms"]
ChecksumMode = Literal["crc32", "sha256", "md5"]
AddressingStyle = Literal["auto", "path", "virtual"]

_BYTE_SIZE = re.compile(r"(\d{1,16})\s*([kKMGT]i?B|B)?")
_BYTE_UNITS = {"": 1, "b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?LW#]+$")
_DEFAULT_SCHEDULES = {"0 3 * * *", "0 4 * * 0", "0 */6 * * *", "0 5 1 * *"}


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def state_dir() -> Path:
    """Where the program keeps its state by default ($XDG_STATE_HOME/blnk-backup)."""
    return (
        Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "blnk-backup"
    )


def _default_audit_url() -> str:
    return f"sqlite:///{state_dir() / 'audit.sqlite3'}"


MIN_API_KEY_LENGTH = 16  # anyone who reaches the port may guess: a key must be a real secret


class Settings(BaseSettings):
    """Every setting of the program. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", frozen=True, populate_by_name=True
    )

    # --- database -------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        None, validation_alias=_env("BLNK_DATABASE_URL", "BLNK_DATA_SOURCE_DNS")
    )
    restore_test_database_url: SecretStr | None = Field(
        None, validation_alias=_env("RESTORE_TEST_DATABASE_URL")
    )
    pg_bin_dir: str | None = Field(None, validation_alias=_env("PG_BIN_DIR"))
    # --- continuous protection: WAL streamed off the database host -------------------------
    wal_archive: bool = Field(False, validation_alias=_env("WAL_ARCHIVE"))
    # The replication connection (a role with REPLICATION): BLNK_DATABASE_URL's host and
    # credentials unless set.
    replication_database_url: SecretStr | None = Field(
        None, validation_alias=_env("REPLICATION_DATABASE_URL")
    )
    wal_slot_name: str = Field(
        "blnk_backup", pattern=r"^[a-z0-9_]{1,63}$", validation_alias=_env("WAL_SLOT_NAME")
    )
    # Where the receiver writes WAL before it is in the bucket (the segment being written, and
    # finished ones not shipped yet).
    wal_spool_dir: str | None = Field(None, validation_alias=_env("WAL_SPOOL_DIR"))
    # The segment being written is shipped this often when WAL advanced: the recovery point in
    # the store is at most this old (plus the upload).
    wal_ship_partial_seconds: float = Field(
        10.0, ge=1, le=3600, validation_alias=_env("WAL_SHIP_PARTIAL_SECONDS")
    )
    wal_max_lag_seconds: float = Field(
        60.0, ge=1, le=86400, validation_alias=_env("WAL_MAX_LAG_SECONDS")
    )
    # Off: the receiver is never meant to be a synchronous standby (the primary would wait for
    # the bot on every commit, and block every commit while the bot is down). On: the operator
    # chose that, naming WAL_SLOT_NAME in synchronous_standby_names, for a zero recovery point.
    wal_synchronous_standby: bool = Field(False, validation_alias=_env("WAL_SYNCHRONOUS_STANDBY"))
    # The slot's retained WAL is a problem (slot_retention) from this share of
    # max_slot_wal_keep_size on, or, when the database sets no cap, from this many bytes (its
    # free disk space cannot be read over a connection without superuser).
    wal_slot_alert_share: float = Field(
        0.8, gt=0, le=1, allow_inf_nan=False, validation_alias=_env("WAL_SLOT_ALERT_SHARE")
    )
    wal_slot_alert_bytes: int = Field(
        8 << 30, ge=16 << 20, validation_alias=_env("WAL_SLOT_ALERT_BYTES")
    )
    # The receiver is down (receiver_down) when wal/position.json, refreshed every
    # WAL_SHIP_PARTIAL_SECONDS, is older than this and the slot is not active.
    wal_receiver_down_minutes: float = Field(
        5.0, gt=0, le=10080, allow_inf_nan=False, validation_alias=_env("WAL_RECEIVER_DOWN_MINUTES")
    )
    restore_jobs: int = Field(
        default_factory=lambda: min(4, os.cpu_count() or 1),
        ge=1,
        le=64,
        validation_alias=_env("RESTORE_JOBS"),
    )

    # --- S3 -------------------------------------------------------------------------------
    aws_access_key_id: str | None = Field(
        None, validation_alias=_env("AWS_ACCESS_KEY_ID", "BLNK_AWS_ACCESS_KEY_ID")
    )
    aws_secret_access_key: SecretStr | None = Field(
        None, validation_alias=_env("AWS_SECRET_ACCESS_KEY", "BLNK_AWS_SECRET_ACCESS_KEY")
    )
    aws_region: str = Field(
        "us-east-1", validation_alias=_env("AWS_REGION", "BLNK_S3_REGION", "AWS_DEFAULT_REGION")
    )
    s3_bucket: str | None = Field(
        None, validation_alias=_env("S3_BACKUP_BUCKET", "BLNK_S3_BUCKET_NAME")
    )
    s3_endpoint_url: str | None = Field(
        None, validation_alias=_env("S3_ENDPOINT_URL", "BLNK_S3_ENDPOINT")
    )
    s3_prefix: str = Field("", validation_alias=_env("S3_BACKUP_PREFIX"))
    s3_storage_class: StorageClass = Field("STANDARD", validation_alias=_env("S3_STORAGE_CLASS"))
    s3_sse: SseMode = Field("none", validation_alias=_env("S3_SSE"))
    s3_sse_kms_key_id: str | None = Field(None, validation_alias=_env("S3_SSE_KMS_KEY_ID"))
    s3_addressing_style: AddressingStyle | None = Field(
        None, validation_alias=_env("S3_ADDRESSING_STYLE")
    )
    # crc32: S3 additional checksums, CRC32 per part and the FULL_OBJECT CRC32 verified (the
    # cheapest in CPU, botocore's own default algorithm). sha256: SHA-256 per part, the
    # composite verified. md5: Content-MD5 per part, for S3-compatible stores that reject the
    # newer checksum headers. The whole-stream SHA-256 in the manifest is computed in each.
    s3_checksum: ChecksumMode = Field("crc32", validation_alias=_env("S3_CHECKSUM"))
    s3_max_attempts: int = Field(8, ge=1, le=20, validation_alias=_env("S3_MAX_ATTEMPTS"))
    # Days before the lifecycle rule moves backups to GLACIER_IR; 0: no archive rule (for
    # stores that do not implement lifecycle transitions).
    s3_archive_after_days: int = Field(
        30, ge=0, le=3650, validation_alias=_env("S3_ARCHIVE_AFTER_DAYS")
    )
    s3_replica_bucket: str | None = Field(None, validation_alias=_env("S3_REPLICA_BUCKET"))
    s3_replica_region: str | None = Field(None, validation_alias=_env("S3_REPLICA_REGION"))
    s3_replica_endpoint_url: str | None = Field(
        None, validation_alias=_env("S3_REPLICA_ENDPOINT_URL")
    )
    # For a replica another provider or account keeps (default: the primary's credentials).
    s3_replica_access_key_id: str | None = Field(
        None, validation_alias=_env("S3_REPLICA_ACCESS_KEY_ID")
    )
    s3_replica_secret_access_key: SecretStr | None = Field(
        None, validation_alias=_env("S3_REPLICA_SECRET_ACCESS_KEY")
    )

    # --- backup ---------------------------------------------------------------------------
    backup_compression_level: int = Field(
        1, ge=0, le=9, validation_alias=_env("BACKUP_COMPRESSION_LEVEL")
    )
    backup_keep_local_copy: bool = Field(False, validation_alias=_env("BACKUP_KEEP_LOCAL_COPY"))
    backup_local_dir: Path = Field(Path("backups"), validation_alias=_env("BACKUP_LOCAL_DIR"))
    backup_part_size_mib: int = Field(
        8, ge=5, le=5120, validation_alias=_env("BACKUP_PART_SIZE_MIB")
    )
    backup_upload_concurrency: int = Field(
        3, ge=1, le=16, validation_alias=_env("BACKUP_UPLOAD_CONCURRENCY")
    )
    backup_timeout_minutes: int = Field(0, ge=0, validation_alias=_env("BACKUP_TIMEOUT_MINUTES"))
    # A SHA-256 of every table's ordered rows, taken in the dump's snapshot and recomputed by
    # restore tests: exact content proof, for one more read of every row during the backup.
    backup_content_digest: bool = Field(False, validation_alias=_env("BACKUP_CONTENT_DIGEST"))
    # pg_dump's output held in memory while the upload catches up (or has not started yet).
    backup_read_ahead_mib: int = Field(
        24, ge=1, le=1024, validation_alias=_env("BACKUP_READ_AHEAD_MIB")
    )

    # --- retention, freshness, schedules ----------------------------------------------------
    retention_daily_days: int = Field(7, ge=0, validation_alias=_env("RETENTION_DAILY_DAYS"))
    retention_weekly_days: int = Field(30, ge=0, validation_alias=_env("RETENTION_WEEKLY_DAYS"))
    retention_monthly_days: int = Field(365, ge=0, validation_alias=_env("RETENTION_MONTHLY_DAYS"))
    retention_min_keep: int = Field(3, ge=1, validation_alias=_env("RETENTION_MIN_KEEP"))
    stale_after_hours: float = Field(
        24, gt=0, allow_inf_nan=False, validation_alias=_env("STALE_AFTER_HOURS")
    )
    restore_test_max_age_days: float = Field(
        35, gt=0, allow_inf_nan=False, validation_alias=_env("RESTORE_TEST_MAX_AGE_DAYS")
    )
    backup_schedule: str = Field("0 3 * * *", validation_alias=_env("BACKUP_SCHEDULE"))
    retention_schedule: str = Field("0 4 * * 0", validation_alias=_env("RETENTION_SCHEDULE"))
    monitor_schedule: str = Field("0 */6 * * *", validation_alias=_env("MONITOR_SCHEDULE"))
    restore_test_schedule: str = Field("0 5 1 * *", validation_alias=_env("RESTORE_TEST_SCHEDULE"))
    # Base backups for point-in-time recovery (with WAL_ARCHIVE=true): daily by default.
    base_backup_schedule: str = Field("0 2 * * *", validation_alias=_env("BASE_BACKUP_SCHEDULE"))
    # the point-in-time restore test (with WAL_ARCHIVE): Sundays 06:00, after the base backup
    pitr_test_schedule: str = Field("0 6 * * 0", validation_alias=_env("PITR_TEST_SCHEDULE"))
    schedule_timezone: str = Field("UTC", validation_alias=_env("SCHEDULE_TIMEZONE"))
    # A run missed while the service was down still runs, late, within this many minutes.
    schedule_grace_minutes: int = Field(
        120, ge=1, le=10080, validation_alias=_env("SCHEDULE_GRACE_MINUTES")
    )

    # --- audit, HTTP API, Slack -------------------------------------------------------------
    audit_database_url: str = Field(
        default_factory=_default_audit_url, validation_alias=_env("AUDIT_DATABASE_URL")
    )
    blnk_api_key: SecretStr | None = Field(None, validation_alias=_env("BLNK_API_KEY"))
    http_host: str = Field("127.0.0.1", validation_alias=_env("HTTP_HOST"))
    http_port: int = Field(8080, ge=1, le=65535, validation_alias=_env("HTTP_PORT"))
    # The address of the proxy in front of the service (an ingress, a load balancer): only
    # its X-Forwarded-For is believed, so wrong API keys are counted per real client.
    http_trusted_proxy: str | None = Field(None, validation_alias=_env("HTTP_TRUSTED_PROXY"))
    slack_bot_token: SecretStr | None = Field(None, validation_alias=_env("SLACK_BOT_TOKEN"))
    slack_app_token: SecretStr | None = Field(None, validation_alias=_env("SLACK_APP_TOKEN"))
    slack_signing_secret: SecretStr | None = Field(
        None, validation_alias=_env("SLACK_SIGNING_SECRET")
    )
    slack_api_base_url: str = Field(
        "https://slack.com/api/", validation_alias=_env("SLACK_API_BASE_URL")
    )
    slack_alert_channel: str | None = Field(None, validation_alias=_env("SLACK_ALERT_CHANNEL"))
    slack_operators: str = Field("", validation_alias=_env("SLACK_OPERATORS"))
    slack_approvers: str = Field("", validation_alias=_env("SLACK_APPROVERS"))
    approval_ttl_minutes: int = Field(30, ge=1, validation_alias=_env("APPROVAL_TTL_MINUTES"))

    # --- validators -----------------------------------------------------------------------
    @field_validator(
        "database_url",
        "restore_test_database_url",
        "pg_bin_dir",
        "replication_database_url",
        "wal_spool_dir",
        "aws_access_key_id",
        "aws_secret_access_key",
        "s3_bucket",
        "s3_endpoint_url",
        "s3_sse_kms_key_id",
        "s3_addressing_style",
        "s3_replica_bucket",
        "s3_replica_region",
        "s3_replica_endpoint_url",
        "s3_replica_access_key_id",
        "s3_replica_secret_access_key",
        "blnk_api_key",
        "http_trusted_proxy",
        "slack_bot_token",
        "slack_app_token",
        "slack_signing_secret",
        "slack_alert_channel",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("database_url", "restore_test_database_url", "replication_database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value().strip()
        if "://" in raw and not raw.startswith(("postgres://", "postgresql://")):
            raise ValueError("must be a postgres:// or postgresql:// URL or a libpq conninfo")
        if "://" in raw and unencoded_userinfo(raw):
            # libpq would read part of the password as the host or the database name, and
            # every message naming them would show it.
            raise ValueError(
                "has a '/' or '@' in its user or password that is not percent-encoded: "
                "write / as %2F and @ as %40"
            )
        try:
            params = conninfo_to_dict(raw)
        except psycopg.ProgrammingError:
            raise ValueError("cannot be parsed as a postgres URL or libpq conninfo") from None
        for port in str(params.get("port") or "5432").split(","):
            if port and (not port.isdigit() or not 0 < int(port) < 65536):  # empty: default
                raise ValueError("has a port that is not a number from 1 to 65535")
        if info.field_name == "database_url" and not params.get("dbname"):
            # libpq would fall back to the user's name, usually the empty "postgres" database:
            # backing that up and calling it healthy is worse than refusing.
            raise ValueError("names no database: add it, e.g. postgresql://user@host:5432/blnk")
        return SecretStr(raw)

    @field_validator("wal_slot_alert_bytes", mode="before")
    @classmethod
    def _byte_size(cls, value: Any) -> Any:
        """A number of bytes, or with PostgreSQL's units (kB, MB, GB, TB: powers of 1024, as
        in max_slot_wal_keep_size) or KiB, MiB, GiB, TiB."""
        if not isinstance(value, str):
            return value
        match = _BYTE_SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError("must be a size in bytes, or with a unit: 8GB, 512MB, 8GiB")
        number, unit = match[1], (match[2] or "").lower().replace("ib", "b")
        return int(number) * _BYTE_UNITS[unit]

    @field_validator("wal_receiver_down_minutes")
    @classmethod
    def _longer_than_refresh(cls, value: float, info: ValidationInfo) -> float:
        every = info.data.get("wal_ship_partial_seconds")
        if isinstance(every, float | int) and value * 60 < 2 * every:
            raise ValueError(
                "must be at least twice WAL_SHIP_PARTIAL_SECONDS (the receiver refreshes "
                "wal/position.json that often)"
            )
        return value

    @field_validator("blnk_api_key")
    @classmethod
    def _long_enough_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_API_KEY_LENGTH:
            raise ValueError(
                f"is shorter than {MIN_API_KEY_LENGTH} characters: use a random key "
                "(e.g. openssl rand -hex 24)"
            )
        return value

    @field_validator("s3_bucket", "s3_replica_bucket")
    @classmethod
    def _bucket_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", value):
            raise ValueError("is not a valid S3 bucket name (3-63 lowercase letters, digits, . -)")
        return value

    @field_validator("s3_endpoint_url", "s3_replica_endpoint_url", "slack_api_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        if value is not None and "@" in value.split("://", 1)[1].split("/", 1)[0]:
            # Credentials there would be shown wherever the URL is (errors, logs).
            raise ValueError("must not carry a user or password: use the credential variables")
        return value

    @field_validator("s3_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
            raise ValueError("must not contain control characters")
        if value.startswith("/"):
            raise ValueError("must not start with '/'")
        if "//" in value:
            raise ValueError("must not contain empty segments ('//')")
        if any(segment in {".", ".."} for segment in value.split("/")):
            raise ValueError("must not contain '.' or '..' segments")
        if len(value.encode()) > 512:
            raise ValueError("is longer than 512 bytes")
        if value and not value.endswith("/") and not value.endswith("_"):
            # A bare "prod" would make keys like "prodblnk_backup_...": almost never intended.
            raise ValueError("should end with '/' (for example 'blnk/prod/')")
        return value

    @field_validator(
        "backup_schedule",
        "retention_schedule",
        "monitor_schedule",
        "restore_test_schedule",
        "base_backup_schedule",
        "pitr_test_schedule",
    )
    @classmethod
    def _cron(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return ""  # empty schedule = disabled
        fields = value.split()
        if len(fields) not in (5, 6) or not all(_CRON_FIELD.match(f) for f in fields):
            raise ValueError(
                "must be a 5-field cron expression like '0 3 * * *' (or 6 fields, seconds "
                "first) or empty"
            )
        value = " ".join(fields)
        if value not in _DEFAULT_SCHEDULES:  # the defaults are known good: skip the import
            from core.schedule import cron_trigger

            try:
                cron_trigger(value, "UTC")
            except ValueError as exc:
                raise ValueError(f"is not a valid cron expression ({exc})") from None
        return value

    @field_validator("schedule_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("is not a known time zone (for example UTC, Europe/Berlin)") from None
        return value

    # --- derived --------------------------------------------------------------------------
    @property
    def operators(self) -> list[str]:
        return _split_ids(self.slack_operators)

    @property
    def approvers(self) -> list[str]:
        return _split_ids(self.slack_approvers)

    @property
    def addressing_style(self) -> AddressingStyle:
        if self.s3_addressing_style:
            return self.s3_addressing_style
        # S3-compatible stores (MinIO, Ceph, moto) rarely serve virtual-hosted buckets.
        return "path" if self.s3_endpoint_url else "auto"

    def missing(self, *needs: str) -> list[str]:
        """The variables (by their names) of ``needs`` that are not set."""
        return [
            _ENV_NAMES.get(need) or _variable_for(need)
            for need in needs
            if getattr(self, need) is None
        ]

    def require(self, *needs: str) -> None:
        """Raise ConfigError naming every variable a use case needs but is not set."""
        problems = [f"{name} is not set (needed for this command)" for name in self.missing(*needs)]
        if problems:
            raise ConfigError(problems)


_ENV_NAMES: dict[str, str] = {
    "database_url": "BLNK_DATABASE_URL (or BLNK_DATA_SOURCE_DNS)",
    "restore_test_database_url": "RESTORE_TEST_DATABASE_URL",
    "replication_database_url": "REPLICATION_DATABASE_URL",
    "s3_bucket": "S3_BACKUP_BUCKET (or BLNK_S3_BUCKET_NAME)",
    "blnk_api_key": "BLNK_API_KEY",
    "s3_replica_bucket": "S3_REPLICA_BUCKET",
}


def _split_ids(raw: str) -> list[str]:
    return [part for part in re.split(r"[\s,]+", raw) if part]


def _variable_for(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        names = [str(choice) for choice in alias.choices]
        return names[0] + (f" (or {', '.join(names[1:])})" if len(names) > 1 else "")
    return field.upper()


def _problems(exc: ValidationError) -> Iterable[str]:
    by_alias = {
        str(choice).lower(): name
        for name, info in Settings.model_fields.items()
        if isinstance(info.validation_alias, AliasChoices)
        for choice in info.validation_alias.choices
    }
    for error in exc.errors(include_input=False, include_url=False):
        loc = str(error["loc"][0]) if error["loc"] else "?"
        field = by_alias.get(loc.lower(), loc)
        message = str(error["msg"]).removeprefix("Value error, ")
        yield f"{_variable_for(field)}: {message}"


def unencoded_userinfo(url: str) -> bool:
    """True if a postgres URL's user or password holds a raw ``@`` or ``/``: its authority
    (up to the first ``/``) has two ``@``, or an ``@`` after the first ``/`` is followed by
    another ``/`` (``user:pa/ss@host:5432/db``: libpq would read ``user`` as the host and the
    rest of the password as the database name). An ``@`` in the database name alone
    (``host/ledger@2024``) is fine."""
    rest = url.split("://", 1)[1].split("?", 1)[0]
    authority, slash, path = rest.partition("/")
    return authority.count("@") > 1 or (bool(slash) and re.search(r"@[^/]*/", path) is not None)


def load_settings(env_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the environment (and optionally an env file) into Settings.

    Raise ConfigError listing every invalid variable by name; values are never echoed.
    """
    if env_file is not None:
        path = Path(env_file)
        if not path.is_file():
            raise ConfigError([f"--env-file: {env_file} does not exist or is not a file"])
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                [f"--env-file: {env_file} is not UTF-8 text (byte {exc.start})"]
            ) from None
        except OSError as exc:
            raise ConfigError([f"--env-file: {env_file} cannot be read ({exc.strerror})"]) from None
    try:
        return Settings(
            _env_file=env_file,  # type: ignore[call-arg]
            _env_file_encoding="utf-8",
            **overrides,
        )
    except ValidationError as exc:
        raise ConfigError(sorted(set(_problems(exc)))) from None
