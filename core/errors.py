"""The exception tree of the backup engine.

Every error carries a short machine-readable ``code`` (used in HTTP error bodies, JSON output
and the audit log) and a message a person can act on. Third-party errors are translated at the
boundary (``raise StorageError(...) from exc``) so front ends only ever see this tree.

    BackupError
    ├── ConfigError            invalid or missing configuration (CLI exit 2, HTTP 400)
    ├── UsageError             a bad argument from the caller (CLI exit 2, HTTP 400)
    ├── PlanChangedError       an approved plan is no longer what would happen: nothing done
    ├── AlreadyRunningError    a backup of this database is already running (HTTP 409)
    ├── PreflightError         database/server/bucket not usable; nothing was started
    ├── DumpError              pg_dump failed; carries the tail of its stderr
    │   └── BackupInterrupted      the service stopped the backup (SIGTERM) and cleaned up
    ├── StorageError           S3 refused or failed; carries the S3 error code
    ├── VerificationError      what the store holds differs from what was streamed
    ├── LocalCopyError         the optional local copy (BACKUP_KEEP_LOCAL_COPY) failed
    └── RestoreCheckError      a backup is corrupt or did not restore
"""

from __future__ import annotations


class BackupError(Exception):
    """Base of every error the engine raises on purpose."""

    code = "backup_failed"

    def __init__(self, message: str, *, cause: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The short cause recorded in the audit log (pg_dump stderr tail, S3 error code, ...).
        self.cause = cause or message

    def __str__(self) -> str:
        return self.message


class ConfigError(BackupError):
    """Configuration is invalid; ``problems`` names each offending variable."""

    code = "config_error"

    def __init__(self, problems: list[str], *, cause: str | None = None) -> None:
        self.problems = problems
        if len(problems) == 1:
            message = f"configuration error: {problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            message = f"invalid configuration ({len(problems)} problems):\n{lines}"
        super().__init__(message, cause=cause)


class UsageError(BackupError):
    code = "usage_error"


class PlanChangedError(BackupError):
    """What an approval was given for is no longer what would happen (the bucket or the
    settings changed since): nothing was done, and the message says what changed."""

    code = "plan_changed"


class AlreadyRunningError(BackupError):
    code = "already_running"

    def __init__(self, message: str, *, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder  # who started the run in progress, when this process knows


class PreflightError(BackupError):
    code = "preflight_failed"


class DumpError(BackupError):
    code = "dump_failed"


class BackupInterrupted(DumpError):
    """The service stopped a running backup (SIGTERM): pg_dump killed, nothing left behind."""

    code = "interrupted"


class StorageError(BackupError):
    code = "storage_error"

    def __init__(self, message: str, *, s3_code: str | None = None) -> None:
        super().__init__(message, cause=f"S3 {s3_code}: {message}" if s3_code else message)
        self.s3_code = s3_code


class VerificationError(BackupError):
    code = "verification_failed"


class LocalCopyError(BackupError):
    code = "local_copy_failed"


class RestoreCheckError(BackupError):
    code = "restore_failed"


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """Given any exception, return the (code, cause) the audit log records for it."""
    if isinstance(exc, BackupError):
        return exc.code, exc.cause
    if isinstance(exc, Exception):
        return "internal_error", f"{type(exc).__name__}: {exc}"
    return "interrupted", f"interrupted ({type(exc).__name__})"  # Ctrl-C, SIGTERM
