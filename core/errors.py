"""The exception tree of the backup engine, one taxonomy for every front end.

Every error carries a short machine-readable ``code`` (used in HTTP error bodies, JSON output
and the audit log), a message a person can act on, and what a front end answers with it: the
CLI's ``exit_status`` and the HTTP API's ``http_status``. Third-party errors are translated at
the boundary (``raise StorageError(...) from exc``) so front ends only ever see this tree.

    EngineError                    a failure (exit 1, HTTP 500)
    ├── Refused                    nothing was started or changed; the caller can act on why
    │   ├── UsageError             a bad argument (exit 2, HTTP 400)
    │   ├── AlreadyRunningError    a run of this kind is already going (exit 1, HTTP 409)
    │   ├── ApprovalRefused        a decision that cannot be made (exit 2, HTTP 409)
    │   ├── NotPermitted           the caller may not do this (exit 2, HTTP 403)
    │   └── PlanChangedError       an approved plan is no longer what would happen (HTTP 409)
    ├── ConfigError                invalid or missing configuration (exit 2, HTTP 400)
    ├── PreflightError             database/server/bucket not usable; nothing was started
    ├── DumpError                  pg_dump failed; carries the tail of its stderr
    │   └── BackupInterrupted          the service stopped the backup (SIGTERM), cleaned up
    ├── StorageError               S3 refused or failed; carries the S3 error code
    ├── VerificationError          what the store holds differs from what was streamed
    ├── LocalCopyError             the optional local copy (BACKUP_KEEP_LOCAL_COPY) failed
    ├── RestoreCheckError          a backup is corrupt or did not restore
    ├── RestoreTestFailed          a restore test ran and some of its checks failed
    ├── RetentionError             a retention run could not delete all it planned
    └── InternalError              a bug: anything else, shown without its details

A ``ConfigError`` is not a refusal: inside a run it means the safety net itself is broken (S3
refused the credentials, the bucket is gone), and counts as a failure.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    code = "backup_failed"
    exit_status = EXIT_FAILED
    http_status = 500

    def __init__(self, message: str, *, cause: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The short cause recorded in the audit log (pg_dump stderr tail, S3 error code, ...).
        self.cause = cause or message

    def __str__(self) -> str:
        return self.message


class Refused(EngineError):
    """Nothing was started or changed, and the message says why: the caller can act on it.
    Refusals are not failures: they are not alerted, counted as failed runs or taken for a
    restore test's result."""

    code = "refused"
    exit_status = EXIT_USAGE
    http_status = 400


class UsageError(Refused):
    code = "usage_error"


class AlreadyRunningError(Refused):
    code = "already_running"
    exit_status = EXIT_FAILED
    http_status = 409

    def __init__(self, message: str, *, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder  # who started the run in progress, when this process knows


class ApprovalRefused(Refused):
    """A decision that cannot be made: own request, already decided, expired, unknown."""

    code = "approval_refused"
    http_status = 409


class NotPermitted(Refused):
    """The caller is not among those allowed (SLACK_OPERATORS, SLACK_APPROVERS)."""

    code = "not_authorized"
    http_status = 403


class PlanChangedError(Refused):
    """What an approval was given for is no longer what would happen (the bucket or the
    settings changed since): nothing was done, and the message says what changed."""

    code = "plan_changed"
    exit_status = EXIT_FAILED
    http_status = 409


class ConfigError(EngineError):
    """Configuration is invalid; ``problems`` names each offending variable."""

    code = "config_error"
    exit_status = EXIT_USAGE
    http_status = 400

    def __init__(self, problems: list[str], *, cause: str | None = None) -> None:
        self.problems = problems
        if len(problems) == 1:
            message = f"configuration error: {problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            message = f"invalid configuration ({len(problems)} problems):\n{lines}"
        super().__init__(message, cause=cause)


class PreflightError(EngineError):
    code = "preflight_failed"


class DumpError(EngineError):
    code = "dump_failed"


class BackupInterrupted(DumpError):
    """The service stopped a running backup (SIGTERM): pg_dump killed, nothing left behind."""

    code = "interrupted"


class StorageError(EngineError):
    code = "storage_error"

    def __init__(self, message: str, *, s3_code: str | None = None) -> None:
        super().__init__(message, cause=f"S3 {s3_code}: {message}" if s3_code else message)
        self.s3_code = s3_code


class VerificationError(EngineError):
    code = "verification_failed"


class LocalCopyError(EngineError):
    code = "local_copy_failed"


class RestoreCheckError(EngineError):
    code = "restore_failed"


class RestoreTestFailed(EngineError):
    """A restore test ran to its end and some of its checks failed."""

    code = "restore_test_failed"


class RetentionError(EngineError):
    """A retention run could not delete all it planned (the rest stays for the next run)."""

    code = "retention_failed"


class InternalError(EngineError):
    """Anything that is not an EngineError: a bug. Shown without its details (they are in
    the log at debug level)."""

    code = "internal_error"


def _refusal_codes(kind: type[EngineError]) -> tuple[str, ...]:
    found = []
    for sub in kind.__subclasses__():
        found += [sub.code, *_refusal_codes(sub)]
    return tuple(found)


# The codes of refusals, as the audit log records them: never a failed run.
REFUSALS = _refusal_codes(Refused)


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """Given any exception, return the (code, cause) the audit log records for it."""
    if isinstance(exc, EngineError):
        return exc.code, exc.cause
    if isinstance(exc, Exception):
        return InternalError.code, f"{type(exc).__name__}: {exc}"
    return "interrupted", f"interrupted ({type(exc).__name__})"  # Ctrl-C, SIGTERM
