"""The composition root of the engine: settings → adapters → use cases.

Every front end (CLI, Slack, HTTP API, scheduler, console) builds one ``Services`` and calls its
use cases. Parts are built on first use, so a command needs only the configuration it uses (and
only the libraries it uses: modules are imported inside the builders), and exactly once even
when several threads ask at the same moment (a lock per part; a bare
``functools.cached_property`` has no lock since Python 3.12, and two ``BackupService`` objects
would each have their own in-process lock).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from core.config import Settings
from core.database import PgTarget

if TYPE_CHECKING:
    from core.approvals import ApprovalBook
    from core.audit import AuditLog
    from core.backup import BackupService
    from core.bucket_policy import BucketPolicyService
    from core.catalog import BackupCatalog
    from core.operations import RiskyOperations
    from core.prune import PruneService
    from core.redact import EndpointScrubber
    from core.restore.service import RestoreService
    from core.store.s3 import S3Store
    from core.wal.basebackup import BaseBackupService
    from core.wal.health import WalHealth
    from core.wal.receiver import ReceiverThread, WalReceiver
    from core.wal.recovery import PointInTimeRecovery
    from core.wal.slot import SlotOperations
    from core.wal.watch import WalWatch

T = TypeVar("T")
log = logging.getLogger("blnk_backup.services")


class _built_once(Generic[T]):
    """Like functools.cached_property, but built under a lock of its own: once per instance.
    Parts build in parallel with each other (the S3 client while the audit log opens)."""

    def __init__(self, build: Callable[[Services], T]) -> None:
        self._build = build
        self._name = build.__name__

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> _built_once[T]: ...

    @overload
    def __get__(self, instance: Services, owner: type[Any]) -> T: ...

    def __get__(self, instance: Services | None, owner: type[Any]) -> T | _built_once[T]:
        if instance is None:
            return self
        parts = instance._parts
        if self._name not in parts:
            with instance._lock:
                lock = instance._locks.setdefault(self._name, threading.RLock())
            with lock:
                if self._name not in parts:
                    parts[self._name] = self._build(instance)
        value: T = parts[self._name]
        return value


class Services:
    """The engine's use cases, shared by every front end. Safe to share between threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._parts: dict[str, Any] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._lock = threading.Lock()
        # the WAL receiver this process runs (the service's leader), if it runs one
        self.receiver_thread: ReceiverThread | None = None

    @_built_once
    def audit(self) -> AuditLog:
        from core.audit import AuditLog

        s = self.settings
        secrets = [
            v.get_secret_value() if v is not None else None
            for v in (
                s.aws_secret_access_key,
                s.s3_replica_secret_access_key,
                s.blnk_api_key,
                s.slack_bot_token,
                s.slack_app_token,
                s.slack_signing_secret,
            )
        ]
        for url in (s.database_url, s.restore_test_database_url, s.replication_database_url):
            if url is not None:
                secrets.append(PgTarget.from_url(url.get_secret_value()).password)
        return AuditLog(s.audit_database_url, secrets=secrets)

    @_built_once
    def scrub(self) -> EndpointScrubber:
        """Removes the configured databases' hosts and users (and libpq's phrasings of any)
        from text for shared places: Slack channels, App Home, alerts."""
        from core.redact import EndpointScrubber

        targets = [
            PgTarget.from_url(url.get_secret_value())
            for url in (
                self.settings.database_url,
                self.settings.restore_test_database_url,
                self.settings.replication_database_url,
            )
            if url is not None
        ]
        return EndpointScrubber([t.params.get("host") for t in targets])

    @_built_once
    def store(self) -> S3Store:
        from core.store.s3 import S3Store

        return S3Store.from_settings(self.settings)

    @_built_once
    def replica(self) -> S3Store | None:
        from core.store.s3 import S3Store

        return S3Store.replica_from_settings(self.settings)

    @property
    def stores(self) -> list[S3Store]:
        """The primary store, then the replica when one is configured."""
        return [self.store] + ([self.replica] if self.replica is not None else [])

    @_built_once
    def target(self) -> PgTarget:
        self.settings.require("database_url")
        assert self.settings.database_url is not None
        return PgTarget.from_url(self.settings.database_url.get_secret_value())

    @_built_once
    def backups(self) -> BackupService:
        from core.backup import BackupService

        self.settings.require("database_url", "s3_bucket")
        return BackupService(self.settings, self.target, self)

    @_built_once
    def restores(self) -> RestoreService:
        from core.restore.service import RestoreService

        self.settings.require("s3_bucket")
        source = self.target if self.settings.database_url is not None else None
        url = self.settings.restore_test_database_url
        scratch = PgTarget.from_url(url.get_secret_value()) if url is not None else None
        return RestoreService(self.settings, self.store, self.audit, source, scratch)

    @_built_once
    def pruner(self) -> PruneService:
        from core.prune import PruneService

        return PruneService(self.settings, self.stores, self.audit)

    @_built_once
    def bucket_policies(self) -> BucketPolicyService:
        from core.bucket_policy import BucketPolicyService

        return BucketPolicyService(self.settings, self.stores, self.audit)

    @_built_once
    def approvals(self) -> ApprovalBook:
        from datetime import timedelta

        from core.approvals import ApprovalBook

        return ApprovalBook(self.audit, timedelta(minutes=self.settings.approval_ttl_minutes))

    @_built_once
    def catalog(self) -> BackupCatalog:
        from core.catalog import BackupCatalog

        return BackupCatalog(
            self.store,
            stale_after_hours=self.settings.stale_after_hours,
            restore_test_max_age_days=self.settings.restore_test_max_age_days,
            audit=self.audit,
        )

    @_built_once
    def risky(self) -> RiskyOperations:
        """The operations behind an approval: planned, then executed as approved."""
        from core.operations import RiskyOperations

        return RiskyOperations(self)

    # --- continuous protection (WAL_ARCHIVE) ---------------------------------------------------
    @property
    def replication_source(self) -> PgTarget:
        """The replication connection: REPLICATION_DATABASE_URL, else BLNK_DATABASE_URL."""
        url = self.settings.replication_database_url
        return PgTarget.from_url(url.get_secret_value()) if url is not None else self.target

    @_built_once
    def base_backups(self) -> BaseBackupService:
        from core.wal.basebackup import BaseBackupService

        self.settings.require("database_url", "s3_bucket")
        return BaseBackupService(
            self.replication_source,
            self.store,
            self.audit,
            bin_dir=self.settings.pg_bin_dir,
            concurrency=self.settings.backup_upload_concurrency,
        )

    def wal_receiver(self) -> WalReceiver:
        """A receiver for ``blnk-backup wal-stream`` or the service (one per process)."""
        from pathlib import Path

        from core.wal.archive import WalArchive
        from core.wal.receiver import WalReceiver

        self.settings.require("database_url", "s3_bucket")
        spool = self.settings.wal_spool_dir or str(
            Path(self.settings.audit_database_url.removeprefix("sqlite:///")).parent / "wal-spool"
            if self.settings.audit_database_url.startswith("sqlite:///")
            else Path.home() / ".local" / "state" / "blnk-backup" / "wal-spool"
        )
        return WalReceiver(
            self.replication_source,
            WalArchive(self.store),
            Path(spool) / self.settings.wal_slot_name,
            slot=self.settings.wal_slot_name,
            bin_dir=self.settings.pg_bin_dir,
            ship_partial_every=self.settings.wal_ship_partial_seconds,
            synchronous_standby=self.settings.wal_synchronous_standby,
        )

    @_built_once
    def wal_slots(self) -> SlotOperations:
        from core.wal.slot import SlotOperations

        self.settings.require("database_url", "s3_bucket")
        return SlotOperations(
            self.audit,
            self.wal_receiver,
            lambda: self.base_backups,
            lambda: self.receiver_thread,
            lambda: self.wal_health.read_slot(),
        )

    @_built_once
    def pitr(self) -> PointInTimeRecovery:
        from core.wal.recovery import PointInTimeRecovery, server_bin_dir

        self.settings.require("database_url", "s3_bucket")
        return PointInTimeRecovery(
            self.store,
            self.audit,
            self.target,
            bin_dir_for=lambda major: server_bin_dir(major, self.settings.pg_bin_dir),
            restore_file=self.restores.restore_file,
        )

    @_built_once
    def wal_health(self) -> WalHealth:
        """Continuous protection's health: the window, the slot, the receiver, the chain."""
        from core.wal.health import WalHealth, WalLimits

        self.settings.require("database_url", "s3_bucket")
        return WalHealth(
            self.store,
            self.replication_source,
            slot=self.settings.wal_slot_name,
            window=lambda max_age: self.pitr.window(max_age),
            limits=WalLimits.from_settings(self.settings),
        )

    @_built_once
    def wal_watch(self) -> WalWatch:
        from core.wal.watch import WalWatch

        return WalWatch(lambda: self.wal_health.problems(), self.audit)

    def stop_backup(self, why: str, wait_seconds: float, grace_seconds: float = 0.0) -> bool:
        """Let the backup running in this process, if any, end within ``grace_seconds``; then
        stop it (the service shutting down) and wait up to ``wait_seconds`` for it to clean up.
        Return False if one still runs."""
        from core.errors import ConfigError

        try:
            backups = self.backups
        except ConfigError:
            return True  # not configured: none can run
        backups.refuse_new(why)
        if grace_seconds > 0 and backups.wait_idle(grace_seconds):
            return True
        if backups.interrupt(why):
            log.warning("stopping the running backup: %s", why)
        return backups.wait_idle(wait_seconds)

    def close(self) -> None:
        audit = self._parts.get("audit")
        if audit is not None:
            audit.close()
