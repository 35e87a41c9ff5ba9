"""The backups a bucket holds: which dumps it has, their manifests (read, validated and cached),
which backups are complete and why the others are not, and the side files an interrupted
prune leaves. The catalog side of the store, on top of the S3 transport (core/store/s3.py).

S3 lists keys in ascending order and keys sort by their UTC start time: listings are oldest
first. A listing is complete or raises StorageError: callers that delete rely on it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from core.keys import MANIFEST_SUFFIX, RESTORE_TEST_SUFFIX, BackupKey
from core.manifest import Manifest, ManifestError, completeness_problem, parse_manifest
from core.store.errors import s3_errors

if TYPE_CHECKING:
    from core.store.s3 import S3Store

NO_MANIFEST = "no manifest: the backup did not finish (or is still running)"
_MANIFEST_READERS = 8
_MANIFEST_CACHE_LIMIT = 4096
_KEY_START = "blnk_backup_"


@dataclass(frozen=True)
class StoredBackup:
    """A dump found in the bucket. It is ``complete`` only if its manifest exists, parses and
    matches it; otherwise ``problem`` says why not."""

    key: BackupKey
    size: int
    last_modified: datetime
    manifest: Manifest | None = None
    problem: str | None = NO_MANIFEST
    restore_tested_at: datetime | None = None  # when its restore-test record was written

    @property
    def complete(self) -> bool:
        return self.manifest is not None and self.problem is None


@dataclass(frozen=True)
class Inventory:
    backups: list[StoredBackup]  # oldest first
    orphan_side_files: list[str]  # manifests and records whose dump is gone

    @property
    def complete(self) -> list[StoredBackup]:
        return [b for b in self.backups if b.complete]


class BackupListing:
    """The backups of one store. Safe to share between threads."""

    def __init__(self, store: S3Store) -> None:
        self.store = store
        # Manifests never change once written: parsed ones are cached by (key, ETag).
        self._manifests: dict[tuple[str, str], Manifest | ManifestError] = {}
        self._cache_lock = threading.Lock()

    def manifest(self, key: BackupKey) -> Manifest | None:
        """Return the manifest of a backup, or None if it has none. Raise ManifestError if it
        exists but is not a valid manifest."""
        raw = self.store.read_small(key.manifest_key)
        return parse_manifest(raw) if raw is not None else None

    def find(self, key: BackupKey) -> StoredBackup | None:
        """Return one backup as listing would show it (complete or why not), or None if no
        dump exists at key."""
        info = self.store.head(key.key)
        if info is None:
            return None
        modified = info.last_modified or key.started_at
        try:
            manifest = self.manifest(key)
        except ManifestError as exc:
            return StoredBackup(key, info.size, modified, None, f"unreadable {exc}")
        if manifest is None:
            return StoredBackup(key, info.size, modified)
        problem = completeness_problem(manifest, key.key, info.size)
        return StoredBackup(key, info.size, modified, manifest, problem)

    def backups(self) -> list[StoredBackup]:
        """Return every dump matching the naming pattern, oldest first, each with its
        validated manifest or the reason it is incomplete. Complete or StorageError."""
        return self.inventory().backups

    def inventory(self, *, read_manifests: bool = True) -> Inventory:
        """List the prefix once: the dumps (with manifests read and validated, unless
        ``read_manifests`` is False) and the side files (manifests, restore-test records) whose
        dump is gone — what an interrupted prune leaves. Complete or StorageError."""
        prefix = self.store.prefix
        dumps: dict[str, tuple[int, datetime]] = {}
        manifests: dict[str, str] = {}  # dump key -> manifest ETag
        restore_tests: dict[str, datetime] = {}
        for obj in self.store.list_objects(_KEY_START):
            if obj.key.endswith(MANIFEST_SUFFIX):
                manifests[obj.key.removesuffix(MANIFEST_SUFFIX)] = obj.etag
            elif obj.key.endswith(RESTORE_TEST_SUFFIX):
                restore_tests[obj.key.removesuffix(RESTORE_TEST_SUFFIX)] = obj.last_modified
            elif BackupKey.parse(obj.key, prefix):
                dumps[obj.key] = (obj.size, obj.last_modified)
        parsed = self._read_manifests(
            {k: manifests[k] for k in dumps if k in manifests} if read_manifests else {}
        )
        found = []
        for key, (size, modified) in dumps.items():
            backup_key = BackupKey.parse(key, prefix)
            assert backup_key is not None
            manifest: Manifest | None = None
            problem: str | None = NO_MANIFEST
            outcome = parsed.get(key)
            if key in manifests and not read_manifests:
                problem = "manifest not read"
            elif isinstance(outcome, ManifestError):
                problem = f"unreadable {outcome}"
            elif outcome is not None:
                manifest, problem = outcome, completeness_problem(outcome, key, size)
            found.append(
                StoredBackup(backup_key, size, modified, manifest, problem, restore_tests.get(key))
            )
        orphans = sorted(
            [k + MANIFEST_SUFFIX for k in set(manifests) - set(dumps) if BackupKey.parse(k, prefix)]
            + [
                k + RESTORE_TEST_SUFFIX
                for k in set(restore_tests) - set(dumps)
                if BackupKey.parse(k, prefix)
            ]
        )
        return Inventory(sorted(found, key=lambda b: b.key), orphans)

    def put_manifest(self, manifest: Manifest) -> None:
        """Write a backup's manifest: the last object of a backup, which makes it complete."""
        key = manifest.key + MANIFEST_SUFFIX
        store = self.store
        with s3_errors(f"writing the manifest {key}", store.bucket):
            store.client.put_object(
                Bucket=store.bucket,
                Key=key,
                Body=manifest.to_json(),
                ContentType="application/json",
                **store.write_args(),
            )

    def _read_manifests(self, wanted: dict[str, str]) -> dict[str, Manifest | ManifestError | None]:
        """Given dump keys and their manifests' ETags, return each parsed manifest (or why it
        is unreadable), reading the ones not cached yet a few at a time."""
        results: dict[str, Manifest | ManifestError | None] = {}
        missing = []
        with self._cache_lock:
            for key, etag in wanted.items():
                cached = self._manifests.get((key, etag)) if etag else None
                if cached is not None:
                    results[key] = cached
                else:
                    missing.append(key)

        def read(key: str) -> Manifest | ManifestError | None:
            raw = self.store.read_small(key + MANIFEST_SUFFIX)
            if raw is None:
                return None  # deleted between the listing and now
            try:
                return parse_manifest(raw)
            except ManifestError as exc:
                return exc

        if missing:
            with ThreadPoolExecutor(min(_MANIFEST_READERS, len(missing))) as pool:
                for key, outcome in zip(missing, pool.map(read, missing), strict=True):
                    results[key] = outcome
            with self._cache_lock:
                if len(self._manifests) > _MANIFEST_CACHE_LIMIT:
                    self._manifests.clear()
                for key in missing:
                    outcome = results[key]
                    if outcome is not None and wanted[key]:
                        self._manifests[(key, wanted[key])] = outcome
        return results
