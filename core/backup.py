"""The backup use case: snapshot → pg_dump → streamed multipart upload → verify → manifest.

Invariants kept here (1-3 and 8 of docs/architecture.md's table):
- success is reported only after pg_dump exited 0, the upload completed and the store's size
  and checksum matched what was streamed; the manifest is written last;
- any failure kills pg_dump, aborts the multipart upload (or, when the store is unreachable,
  leaves it for the next run, which finds it in the store's own listing), deletes an
  unverified object and records the cause in the audit log;
- one backup per database at a time (an in-process lock plus a PostgreSQL advisory lock);
- a run killed outright leaves nothing that lasts: holding the lock, the next backup aborts
  every incomplete upload of a backup key that started before it (primary and replica) and
  closes the dead run's audit record as ``abandoned``.

Speed: the database side (core/dumpstream.py) starts first — lock, snapshot, pg_dump — while
the S3 client and the audit log are built on another thread, so pg_dump is already dumping
(into a bounded buffer) while the rest of the program gets ready.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from core import __version__
from core.actor import Actor
from core.config import Settings
from core.database import PgTarget
from core.dumpstream import DumpStream
from core.errors import (
    AlreadyRunningError,
    BackupInterrupted,
    ConfigError,
    EngineError,
    LocalCopyError,
    StorageError,
    VerificationError,
)
from core.keys import BackupKey
from core.manifest import COMPLETE_STATUS, Manifest
from core.redact import MAX_REASON_LENGTH, check_plain_text
from core.store.multipart import CompletedUpload, MiB, MultipartUpload

if TYPE_CHECKING:  # the heavy adapters are built on another thread while pg_dump starts
    from core.audit import AuditLog, AuditRun
    from core.store.replication import ReplicaRecord
    from core.store.s3 import S3Store

log = logging.getLogger("blnk_backup.backup")


class BackupParts(Protocol):
    """Where a backup's adapters come from: built on first use (core.services.Services)."""

    @property
    def store(self) -> S3Store: ...

    @property
    def replica(self) -> S3Store | None: ...

    @property
    def audit(self) -> AuditLog: ...


@dataclass(frozen=True)
class BackupProgress:
    """A progress event. ``expected_bytes`` is the previous backup's size (for a percentage)."""

    stage: str  # preflight, dumping, verifying, replicating, writing_manifest, done
    key: str | None = None
    bytes_uploaded: int = 0
    expected_bytes: int | None = None


ProgressCallback = Callable[[BackupProgress], None]


@dataclass(frozen=True)
class BackupResult:
    run_id: str
    manifest: Manifest

    @property
    def key(self) -> str:
        return self.manifest.key


class BackupService:
    """Runs backups of one database into one store, one at a time."""

    def __init__(
        self,
        settings: Settings,
        target: PgTarget,
        parts: BackupParts,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.target = target
        self.parts = parts
        self.clock = clock
        self._running = threading.Lock()
        self._holder: str | None = None
        self._stream: DumpStream | None = None  # the running backup's, for ``interrupt``
        self._refusing: str | None = None  # why new backups are refused (shutting down)

    @property
    def store(self) -> S3Store:
        return self.parts.store

    @property
    def replica(self) -> S3Store | None:
        return self.parts.replica

    @property
    def audit(self) -> AuditLog:
        return self.parts.audit

    @property
    def running(self) -> bool:
        return self._running.locked()

    @property
    def holder(self) -> str | None:
        """Who started the backup running in this process, if one runs."""
        return self._holder

    def run(
        self, actor: Actor, reason: str | None = None, on_progress: ProgressCallback | None = None
    ) -> BackupResult:
        """Run one backup and return its verified manifest.

        Raise UsageError for a bad reason, AlreadyRunningError if a backup of this database
        runs, PreflightError/ConfigError if nothing could start, DumpError/StorageError/
        VerificationError/LocalCopyError if it failed. Every outcome is in the audit log.
        """
        reason = check_plain_text("reason", reason, MAX_REASON_LENGTH)
        if self._refusing is not None:  # the service is shutting down
            with self.audit.run("backup", actor, reason=reason):
                raise BackupInterrupted(f"the backup was not started: {self._refusing}")
        started = self.clock()
        warm_up = threading.Thread(target=self._build_adapters, name="backup-setup", daemon=True)
        warm_up.start()
        stream = DumpStream(
            self.target,
            pg_bin_dir=self.settings.pg_bin_dir,
            compression_level=self.settings.backup_compression_level,
            timeout_seconds=self.settings.backup_timeout_minutes * 60 or None,
            buffer_bytes=self.settings.backup_read_ahead_mib * MiB,
            content_digests=self.settings.backup_content_digest,
        )
        acquired = self._running.acquire(blocking=False)
        if acquired:
            self._stream = stream
        early: BaseException | None = None
        try:
            if not acquired:
                holder = self._holder
                early = AlreadyRunningError(
                    f"a backup of {self.target.dbname} is already running"
                    + (f" (started by {holder})" if holder else "")
                    + "; try again when it ends",
                    holder=holder,
                )
            else:
                self._holder = f"{actor.trigger}:{actor.name}"
                try:
                    self._check_local_dir()
                    stream.start()
                except BaseException as exc:  # audited below, once the audit log is ready
                    early = exc
            warm_up.join()
            if isinstance(early, AlreadyRunningError) and early.holder is None:
                early = self._name_the_holder(early)
            with self.audit.run(
                "backup", actor, reason=reason, details={"database": self.target.display}
            ) as run:
                if early is not None:
                    raise early
                janitor = self._recover_from_crashes(actor, run)
                if janitor:  # a failed backup carries them in its own (one) failure
                    run.note(details={"database": self.target.display, "orphan_cleanup": janitor})
                attempt = _BackupRun(self, run, actor, reason, on_progress, stream, started)
                manifest = attempt.execute()
                run.note(
                    key=manifest.key,
                    size=manifest.size,
                    sha256=manifest.sha256,
                    duration_seconds=manifest.duration_seconds,
                )
                self._record_janitor_failures(actor, run, janitor)
        finally:
            stream.close()
            if acquired:
                self._holder = None
                self._stream = None
                self._running.release()
        return BackupResult(run.run_id, manifest)

    def _name_the_holder(self, refused: AlreadyRunningError) -> AlreadyRunningError:
        """The backup holding the database's lock runs in another process (a replica, a
        CLI run): name who started it, from the newest open backup run in the audit log
        (when that log is shared with it)."""
        try:
            runs = self.audit.open_runs("backup", before=self.clock())
        except Exception:  # naming the holder is a courtesy; the refusal stands without it
            return refused
        mine = self.target.display
        runs = [r for r in runs if r.details_dict().get("database") == mine]
        if not runs:
            return refused
        holder = f"{runs[-1].trigger}:{runs[-1].actor}"
        return AlreadyRunningError(
            f"a backup of {self.target.dbname} is already running (started by {holder}); "
            "try again when it ends",
            holder=holder,
        )

    def refuse_new(self, why: str) -> None:
        """From now on, refuse to start backups (a service shutting down: one started now
        would die with the process): each is recorded as failed, ``interrupted``."""
        self._refusing = why

    def interrupt(self, why: str) -> bool:
        """Stop the backup running in this process, if pg_dump is still dumping (a service
        shutting down): it then fails as ``interrupted``, cleaned up and audited like any
        failure. A backup past its dump (completing, verifying, replicating) is left to end.
        Return True if a backup was running."""
        stream = self._stream
        if stream is None:
            return False
        stream.interrupt(why)
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the backup running in this process to end;
        return True if none runs."""
        if not self._running.acquire(timeout=timeout):
            return False
        self._running.release()
        return True

    def _build_adapters(self) -> None:
        """Build the S3 clients and the audit log (imports included) off the critical path;
        a failure here shows up again, and is reported, where the part is first used."""
        with contextlib.suppress(Exception):
            self.parts.audit  # noqa: B018 - built for its side effect
        with contextlib.suppress(Exception):
            self.parts.store  # noqa: B018
            self.parts.replica  # noqa: B018

    def _check_local_dir(self) -> None:
        """With BACKUP_KEEP_LOCAL_COPY, prove BACKUP_LOCAL_DIR writable before anything starts."""
        if not self.settings.backup_keep_local_copy:
            return
        directory = self.settings.backup_local_dir
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".blnk-write-test-"):
                pass
        except OSError as exc:
            raise ConfigError(
                [f"BACKUP_LOCAL_DIR: {directory} is not a writable directory ({exc.strerror})"]
            ) from None

    def _recover_from_crashes(self, actor: Actor, run: AuditRun) -> list[dict[str, str]]:
        """Holding the per-database lock, clean up after runs that were killed outright: abort
        the incomplete uploads of backup keys that began before this run (from the store's own
        listing, so a lost audit file does not matter) and close their audit records (a run
        whose own lock is free is dead, core/liveness.py). Never stops the backup: return
        what could not be cleaned up (key, code, cause), for the backup to report."""
        self.audit.close_abandoned("backup", actor, scope={"database": self.target.display})
        problems: list[dict[str, str]] = []
        for store in [self.store] + ([self.replica] if self.replica is not None else []):
            try:
                uploads = store.incomplete_uploads()
            except EngineError as exc:
                problems.append(
                    {
                        "key": "",
                        "code": exc.code,
                        "cause": f"listing incomplete uploads in {store.location}: {exc.cause}",
                    }
                )
                continue
            for upload in uploads:
                if upload.initiated is not None and upload.initiated >= run.started_at:
                    continue  # not from before this run
                try:
                    store.abort_upload(upload.key, upload.upload_id)
                except EngineError as exc:
                    problems.append(
                        {
                            "key": upload.key,
                            "code": exc.code,
                            "cause": f"aborting an incomplete upload: {exc.cause}",
                        }
                    )
                    continue
                self.audit.record(
                    action="orphan_aborted",
                    outcome="recorded",
                    actor=actor,
                    run_id=run.run_id,
                    key=upload.key,
                    details={
                        "store": store.location,
                        "upload_id": upload.upload_id,
                        "initiated": upload.initiated,
                    },
                )
                log.warning("aborted an incomplete upload of %s in %s", upload.key, store.location)
        return problems

    def _record_janitor_failures(
        self, actor: Actor, run: AuditRun, problems: list[dict[str, str]]
    ) -> None:
        """After a successful backup, what the clean-up could not do is a failure of its own
        (alerted): the store answered the backup, so something else is wrong. When the backup
        fails too (the store unreachable), its one failure carries these in its details."""
        for problem in problems:
            self.audit.record(
                action="orphan_cleanup",
                outcome="failed",
                actor=actor,
                run_id=run.run_id,
                key=problem["key"] or None,
                error_code=problem["code"],
                error_cause=problem["cause"],
            )


class _BackupRun:
    """One backup attempt on the S3 side; holds what must be cleaned up if it fails."""

    def __init__(
        self,
        service: BackupService,
        run: AuditRun,
        actor: Actor,
        reason: str | None,
        on_progress: ProgressCallback | None,
        stream: DumpStream,
        started: datetime,
    ) -> None:
        self.s = service
        self.settings = service.settings
        self.store = service.store
        self.run = run
        self.run_id = run.run_id
        self.actor = actor
        self.reason = reason
        self.stream = stream
        self.started = started
        self._progress = on_progress or (lambda _event: None)
        self.key: BackupKey | None = None
        self.upload: MultipartUpload | None = None
        self.completed = False
        self.replicated = False
        self.local_path: Path | None = None
        self.expected_bytes: int | None = None

    def emit(self, stage: str, uploaded: int = 0) -> None:
        key = self.key.key if self.key else None
        try:
            self._progress(BackupProgress(stage, key, uploaded, self.expected_bytes))
        except Exception:  # a broken progress display must never break a backup
            log.exception("progress callback failed")

    # --- the pipeline -------------------------------------------------------------------------
    def execute(self) -> Manifest:
        self.emit("preflight")
        self.store.check_bucket()
        previous = self.store.listing.inventory(read_manifests=False).backups
        self.expected_bytes = previous[-1].size if previous else None
        try:
            return self._upload_verify_and_record()
        except BaseException:
            self._clean_up()
            raise

    def _free_key(self) -> BackupKey:
        """Return a key nobody has used: this run's start time, or if that second's key is
        taken, the next free second (waiting for it)."""
        when = self.started
        for _attempt in range(5):
            key = BackupKey.at(when, self.store.prefix)
            if not self.store.exists(key.key) and not self.store.exists(key.manifest_key):
                return key
            time.sleep(max(0.0, 1.0 - (time.time() % 1.0)) + 0.01)
            when = self.s.clock()
        raise StorageError("could not find a free backup key: the same keys keep appearing")

    def _upload_verify_and_record(self) -> Manifest:
        self.key = self._free_key()
        self.upload = self.store.start_upload(
            self.key.key,
            first_part_size=self.settings.backup_part_size_mib * MiB,
            concurrency=self.settings.backup_upload_concurrency,
            on_part=lambda _n, uploaded: self.emit("dumping", uploaded),
        )
        self.emit("dumping")
        self._stream_into_upload()
        sha256 = self.stream.finish()
        stats = self.stream.stats()  # counts failed → fail before anything is completed
        completed = self.upload.complete()
        self.completed = True
        self.emit("verifying", completed.size)
        reported, applied_sse = self._verify(completed)
        self._keep_local_copy()
        replicas = self._replicate(completed, sha256)
        finished = self.s.clock()
        manifest = Manifest(
            key=self.key.key,
            status=COMPLETE_STATUS,
            sha256=sha256,
            size=completed.size,
            started_at=self.key.started_at,
            finished_at=finished,
            duration_seconds=round((finished - self.started).total_seconds(), 3),
            database=self.s.target.dbname,
            server_version=self.stream.server_version,
            pg_dump_version=self.stream.pg_dump_version,
            compression_level=self.settings.backup_compression_level,
            storage_class=self.store.storage_class,
            sse=applied_sse,  # what the store applied (a bucket default too), not what was asked
            store_checksum=reported,
            verification=completed.verification(reported),
            part_count=completed.part_count,
            stats=stats,
            trigger=self.actor.trigger,
            actor=self.actor.name,
            reason=self.reason,
            tool_version=__version__,
            replicas=[r.as_dict() for r in replicas],
            first_part_size=self.settings.backup_part_size_mib * MiB,
        )
        self.emit("writing_manifest", completed.size)
        self.store.listing.put_manifest(manifest)
        replica = self.s.replica
        if replica is not None and all(r.status == "verified" for r in replicas):
            try:  # the replica becomes a complete, listable backup of its own
                replica.listing.put_manifest(manifest)
            except EngineError as exc:
                self._replication_failed(f"writing the replica's manifest failed: {exc.cause}")
        self.emit("done", completed.size)
        return manifest

    def _stream_into_upload(self) -> None:
        """Copy pg_dump's output into the upload (and the local copy, if kept)."""
        assert self.upload is not None
        local = self._open_local_copy()
        try:
            for chunk in self.stream.chunks():
                self.upload.write(chunk)
                if local is not None:
                    local.write(chunk)
            if local is not None:
                local.close()
        except OSError as exc:  # only the local copy does file I/O here
            raise LocalCopyError(
                f"writing the local copy {self.local_path} failed: {exc.strerror}"
            ) from None
        finally:
            if local is not None and not local.closed:
                with contextlib.suppress(OSError):
                    local.close()

    def _replicate(self, completed: CompletedUpload, sha256: str) -> list[ReplicaRecord]:
        """Copy the verified dump to the second region; a failure is recorded, not raised."""
        from core.store.replication import Replicator

        replica = self.s.replica
        if replica is None:
            return []
        assert self.key is not None
        self.emit("replicating", completed.size)
        # A server-side copy runs with the replica's credentials reading the primary bucket:
        # only when both are on one endpoint under the same credentials (a replica in another
        # account has its own, which usually may not read the primary: streamed instead).
        same = (
            self.settings.s3_replica_endpoint_url in (None, self.settings.s3_endpoint_url)
            and self.settings.s3_replica_access_key_id is None
        )
        record = Replicator(
            self.store,
            replica,
            same_endpoint=same,
            concurrency=self.settings.backup_upload_concurrency,
        ).replicate(
            self.key.key,
            completed.size,
            sha256,
            completed.store_checksum,
            self.settings.backup_part_size_mib * MiB,
        )
        if record.status != "verified":
            self._replication_failed(record.error or "unknown error")
        else:
            self.replicated = True
        return [record]

    def _replication_failed(self, cause: str) -> None:
        assert self.key is not None
        replica = self.s.replica
        self.s.audit.record(
            action="replication_failed",
            outcome="recorded",
            actor=self.actor,
            run_id=self.run_id,
            key=self.key.key,
            error_code="replication_failed",
            error_cause=cause,
            details={"replica": replica.location if replica else None},
        )

    def _verify(self, completed: CompletedUpload) -> tuple[str | None, str]:
        """Check the object's size and checksum as the store reports them against what was
        streamed; return the checksum to record (None in md5 mode) and the encryption the
        store says it applied ("none" if it says none)."""
        assert self.key is not None
        info = self.store.head(self.key.key)
        if info is None:
            raise VerificationError(f"{self.key} is missing from the store after the upload")
        if info.size != completed.size:
            raise VerificationError(
                f"{self.key}: streamed {completed.size} bytes but the store holds {info.size}"
            )
        problem = completed.checksum_problem(info.checksum_sha256, info.checksum_crc32)
        if problem is not None:
            hint = "" if "mismatch" in problem else "; for such a store set S3_CHECKSUM=md5"
            raise VerificationError(f"{self.key}: {problem}{hint}")
        return completed.verified_checksum(info.checksum_crc32), info.sse or "none"

    # --- local copy ---------------------------------------------------------------------------
    def _open_local_copy(self) -> IO[bytes] | None:
        if not self.settings.backup_keep_local_copy:
            return None
        assert self.key is not None
        path = self.settings.backup_local_dir / (self.key.name + ".partial")
        try:
            handle = path.open("xb")
        except OSError as exc:
            raise LocalCopyError(f"cannot write the local copy {path}: {exc.strerror}") from None
        self.local_path = path
        return handle

    def _keep_local_copy(self) -> None:
        if self.local_path is not None:
            final = self.local_path.with_suffix("")  # drop ".partial"
            try:
                self.local_path.rename(final)
            except OSError as exc:
                raise LocalCopyError(
                    f"cannot finish the local copy {final}: {exc.strerror}"
                ) from None
            self.local_path = None

    # --- failure ------------------------------------------------------------------------------
    def _clean_up(self) -> None:
        """Leave nothing behind: stop pg_dump, abort the upload or delete the unverified
        object, remove a replica copy and the partial local copy. Each step runs even if
        another one fails."""
        self.stream.close()
        if self.upload is not None and self.key is not None:
            replica = self.s.replica
            if self.replicated and replica is not None:
                try:  # a copy of a backup that failed afterwards must not linger there either
                    replica.delete(self.key.key)
                except EngineError as exc:
                    log.error("could not remove the replica of %s: %s", self.key, exc)
            try:
                if self.completed:
                    self.store.delete(self.key.key)
                else:
                    self.upload.abort()
            except EngineError as exc:
                log.error("could not clean up %s: %s", self.key, exc)
                # Part of this backup's one failure (and its one alert), and recorded on its
                # own for the record: the next backup removes it.
                self.run.note(
                    details={
                        "left_behind": f"{self.key.key}: {exc.cause} (the next backup removes it)"
                    }
                )
                self.s.audit.record(
                    action="orphaned_upload",
                    outcome="recorded",
                    actor=self.actor,
                    run_id=self.run_id,
                    key=self.key.key,
                    error_code=exc.code,
                    error_cause=f"{exc.cause} (the next backup removes it)",
                    details={"upload_id": self.upload.upload_id, "completed": self.completed},
                )
        if self.local_path is not None:
            try:
                self.local_path.unlink(missing_ok=True)
            except OSError as exc:
                log.error("could not remove the partial local copy %s: %s", self.local_path, exc)
