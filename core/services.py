"""The composition root of the engine: settings → adapters → use cases.

Front ends (CLI, HTTP API, Slack bot, scheduler) build one ``Services`` and call its use cases;
adapters are created lazily so a command only needs the configuration it uses.
"""

from __future__ import annotations

from functools import cached_property

from core.audit import AuditLog
from core.backup import BackupService
from core.catalog import BackupCatalog
from core.config import Settings
from core.database import PgTarget
from core.prune import PruneService
from core.restore import RestoreService
from core.s3store import S3Store


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.settings.audit_database_url)

    @cached_property
    def store(self) -> S3Store:
        return S3Store.from_settings(self.settings)

    @cached_property
    def target(self) -> PgTarget:
        self.settings.require("database_url")
        assert self.settings.database_url is not None
        return PgTarget.from_url(self.settings.database_url.get_secret_value())

    @cached_property
    def backups(self) -> BackupService:
        self.settings.require("database_url", "s3_bucket")
        return BackupService(
            self.settings, self.target, self.store, self.audit, replica=self.replica
        )

    @cached_property
    def restores(self) -> RestoreService:
        self.settings.require("s3_bucket")
        source = self.target if self.settings.database_url is not None else None
        url = self.settings.restore_test_database_url
        scratch = PgTarget.from_url(url.get_secret_value()) if url is not None else None
        return RestoreService(self.settings, self.store, self.audit, source, scratch)

    @cached_property
    def replica(self) -> S3Store | None:
        return S3Store.replica_from_settings(self.settings)

    @cached_property
    def pruner(self) -> PruneService:
        stores = [self.store] + ([self.replica] if self.replica is not None else [])
        return PruneService(self.settings, stores, self.audit)

    @cached_property
    def catalog(self) -> BackupCatalog:
        return BackupCatalog(self.store)

    def close(self) -> None:
        if "audit" in self.__dict__:
            self.audit.close()
