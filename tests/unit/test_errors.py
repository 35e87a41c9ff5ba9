"""The error taxonomy (core/errors.py): one tree for every front end, each class with its code,
the CLI's exit status and the HTTP status; refusals apart from failures; and what the audit log
records for any exception at all."""

from __future__ import annotations

import inspect

import pytest

from core import errors
from core.errors import (
    EXIT_FAILED,
    EXIT_USAGE,
    REFUSALS,
    AlreadyRunningError,
    ConfigError,
    EngineError,
    Refused,
    StorageError,
    UsageError,
    describe_failure,
)

# class name: (parent, code, exit status, HTTP status), as the module's docstring draws the tree.
TAXONOMY: dict[str, tuple[str | None, str, int, int]] = {
    "EngineError": (None, "backup_failed", 1, 500),
    "Refused": ("EngineError", "refused", 2, 400),
    "UsageError": ("Refused", "usage_error", 2, 400),
    "AlreadyRunningError": ("Refused", "already_running", 1, 409),
    "ApprovalRefused": ("Refused", "approval_refused", 2, 409),
    "NotPermitted": ("Refused", "not_authorized", 2, 403),
    "PlanChangedError": ("Refused", "plan_changed", 1, 409),
    "ConfigError": ("EngineError", "config_error", 2, 400),
    "PreflightError": ("EngineError", "preflight_failed", 1, 500),
    "DumpError": ("EngineError", "dump_failed", 1, 500),
    "BackupInterrupted": ("DumpError", "interrupted", 1, 500),
    "StorageError": ("EngineError", "storage_error", 1, 500),
    "VerificationError": ("EngineError", "verification_failed", 1, 500),
    "LocalCopyError": ("EngineError", "local_copy_failed", 1, 500),
    "RestoreCheckError": ("EngineError", "restore_failed", 1, 500),
    "RestoreTestFailed": ("EngineError", "restore_test_failed", 1, 500),
    "RetentionError": ("EngineError", "retention_failed", 1, 500),
    "InternalError": ("EngineError", "internal_error", 1, 500),
}


def _classes() -> dict[str, type[EngineError]]:
    return {
        name: kind
        for name, kind in inspect.getmembers(errors, inspect.isclass)
        if issubclass(kind, EngineError) and kind.__module__ == errors.__name__
    }


def test_the_table_names_every_error_class_of_the_module() -> None:
    assert set(_classes()) == set(TAXONOMY)


@pytest.mark.parametrize("name", list(TAXONOMY))
def test_each_class_has_its_place_code_exit_status_and_http_status(name: str) -> None:
    parent, code, exit_status, http_status = TAXONOMY[name]
    kind = _classes()[name]
    assert (kind.__bases__[0].__name__ if parent else None) == parent
    assert (kind.code, kind.exit_status, kind.http_status) == (code, exit_status, http_status)


def test_no_two_classes_share_a_code() -> None:
    codes = [kind.code for kind in _classes().values()]
    assert len(codes) == len(set(codes))


def test_the_refusals_are_exactly_the_codes_of_the_refused_family() -> None:
    family = {kind.code for kind in _classes().values() if issubclass(kind, Refused)}
    assert set(REFUSALS) == family - {Refused.code}  # Refused itself is never raised
    assert set(REFUSALS) == {
        "usage_error",
        "already_running",
        "approval_refused",
        "not_authorized",
        "plan_changed",
    }
    failures = {kind.code for kind in _classes().values() if not issubclass(kind, Refused)}
    assert not failures & set(REFUSALS)
    assert ConfigError.code not in REFUSALS  # inside a run, a broken safety net is a failure


def test_a_message_is_what_the_error_says_and_the_cause_defaults_to_it() -> None:
    error = UsageError("pick a key")
    assert (str(error), error.message, error.cause) == ("pick a key", "pick a key", "pick a key")
    error = EngineError("backup failed", cause="pg_dump: connection refused")
    assert str(error) == "backup failed" and error.cause == "pg_dump: connection refused"


def test_a_storage_error_carries_the_s3_code_in_its_cause() -> None:
    error = StorageError("the bucket refused the upload", s3_code="AccessDenied")
    assert error.s3_code == "AccessDenied"
    assert error.cause == "S3 AccessDenied: the bucket refused the upload"
    assert StorageError("no code").cause == "no code"


def test_a_config_error_names_one_problem_or_lists_them_all() -> None:
    one = ConfigError(["S3_BACKUP_BUCKET: not set"])
    assert str(one) == "configuration error: S3_BACKUP_BUCKET: not set"
    many = ConfigError(["A: bad", "B: worse"])
    assert many.problems == ["A: bad", "B: worse"]
    assert str(many) == "invalid configuration (2 problems):\n  - A: bad\n  - B: worse"


def test_a_run_already_going_may_name_who_started_it() -> None:
    assert AlreadyRunningError("busy", holder="U012ABC").holder == "U012ABC"
    assert AlreadyRunningError("busy").holder is None


@pytest.mark.parametrize("name", list(TAXONOMY))
def test_the_audit_log_records_an_engine_errors_own_code_and_cause(name: str) -> None:
    kind = _classes()[name]
    cause = "the cause"
    if kind is ConfigError:
        error: EngineError = ConfigError(["X: bad"], cause=cause)
    elif kind is StorageError:
        error, cause = StorageError("the message", s3_code="SlowDown"), "S3 SlowDown: the message"
    elif kind is AlreadyRunningError:
        error, cause = AlreadyRunningError("the message"), "the message"
    else:
        error = kind("the message", cause=cause)
    assert describe_failure(error) == (TAXONOMY[name][1], cause)


def test_any_other_exception_is_an_internal_error_and_an_interruption_is_not() -> None:
    assert describe_failure(ValueError("boom")) == ("internal_error", "ValueError: boom")
    assert describe_failure(KeyboardInterrupt()) == (
        "interrupted",
        "interrupted (KeyboardInterrupt)",
    )
    assert describe_failure(SystemExit(143)) == ("interrupted", "interrupted (SystemExit)")


def test_exit_statuses_are_the_clis_own() -> None:
    statuses = {kind.exit_status for kind in _classes().values()}
    assert statuses == {EXIT_FAILED, EXIT_USAGE} == {1, 2}
