"""Restore tests and restores: prove a backup restorable and the ledger inside it intact.

A restore test downloads a backup (checking its SHA-256 against the manifest before anything
else), restores it with ``pg_restore -j N`` into a scratch database on the server of
``RESTORE_TEST_DATABASE_URL``, compares what it finds with what the manifest recorded in the
dump's snapshot, proves the Blnk ledger inside it (ledger_proof.py: balances add up, the
hash chain holds link by link, its head is the manifest's chain anchor and the anchors of the
older backups still in the bucket lie on it), runs ``amcheck`` on the B-tree indexes, and
always drops the scratch database.
The source database is never touched (invariant 5). A restore test killed outright leaves
its scratch database and downloaded dump behind; the next restore test on that server, holding
its lock, removes both and closes the dead run's audit record as ``abandoned``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.audit import ENDED, Actor, AuditLog, AuditRun
from core.catalog import resolve
from core.config import Settings
from core.database import (
    RESTORE_INTO_LOCK_ID,
    RESTORE_LOCK_ID,
    AdvisoryLock,
    PgTarget,
    check_database_name,
    comment_on_database,
    create_database,
    database_exists,
    databases_commented,
    databases_like,
    drop_database,
    server_version,
)
from core.errors import (
    AlreadyRunningError,
    EngineError,
    PlanChangedError,
    RestoreCheckError,
    UsageError,
)
from core.keys import BackupKey
from core.manifest import LedgerAnchor, Manifest
from core.processes import find_tool, run_tool, tool_version
from core.redact import MAX_REASON_LENGTH, check_plain_text
from core.restore.check import Check
from core.restore.checks import run_restore_checks
from core.store.listing import StoredBackup
from core.store.s3 import S3Store

log = logging.getLogger("blnk_backup.restore")

SCRATCH_PREFIX = "blnk_restore_test_"
_UNKNOWN_SETTING = re.compile(r'unrecognized configuration parameter "([a-z_]+)"')
# The comment a database restored with ``restore`` carries until pg_restore has finished: a
# restore killed outright leaves it, and the next restore on that server drops the database.
INCOMPLETE_RESTORE = "blnk-backup: INCOMPLETE restore, run "
_RUN_IN_COMMENT = re.compile(r"run ([0-9a-f]{32})\b")


class _ParallelRestoreDeadlock(Exception):
    """A parallel pg_restore lost a deadlock to one of its own workers."""

    def __init__(self, statement: str) -> None:
        super().__init__(statement)
        self.statement = statement


def _failed_statement(stderr_lines: list[str], error: str, limit: int = 160) -> str:
    """The ``Command was:`` line pg_restore printed after the first error containing
    ``error``, shortened to ``limit`` characters."""
    found = False
    for line in stderr_lines:
        if not found:
            found = line.startswith("pg_restore: error:") and error in line
        elif line.startswith("Command was: "):
            statement = line.removeprefix("Command was: ").strip()
            return statement if len(statement) <= limit else statement[: limit - 1] + "…"
        elif line.startswith("pg_restore: "):
            break
    return "statement not shown"


@dataclass(frozen=True)
class RestoreReport:
    key: str
    database: str  # the scratch database (dropped) or the restore target (kept)
    checks: list[Check]
    durations: dict[str, float]  # download, restore, checks, total (seconds)
    finished_at: datetime
    amcheck: str  # "ran" or why not
    kept: bool = False  # True for `restore --into`
    notes: list[str] = field(default_factory=list)  # what a person should know, e.g. skips
    # LedgerProof.summary(): {ran, passed, headline, balances, transactions, chain_seq,
    # blnk_version, failed, skipped, warnings, info}; only {ran: False, headline, skipped}
    # when the database is not a Blnk ledger; None from code that did not run the proof.
    ledger_proof: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> dict[str, Any]:
        """The record kept next to the backup and shown by `status`."""
        return {
            "key": self.key,
            "passed": self.passed,
            "finished_at": self.finished_at.isoformat(),
            "durations": self.durations,
            "checks": len(self.checks),
            "failed_checks": [asdict(c) for c in self.failed_checks],
            "amcheck": self.amcheck,
            "notes": self.notes,
            "ledger_proof": self.ledger_proof,
        }


Progress = Callable[[str], None]


class RestoreService:
    def __init__(
        self,
        settings: Settings,
        store: S3Store,
        audit: AuditLog,
        source: PgTarget | None,
        scratch_server: PgTarget | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.audit = audit
        self.source = source
        self._scratch_server = scratch_server

    @property
    def scratch_server(self) -> PgTarget:
        if self._scratch_server is None:
            self.settings.require("restore_test_database_url")
        assert self._scratch_server is not None
        return self._scratch_server

    # --- use cases ----------------------------------------------------------------------------
    def test(
        self, actor: Actor, which: str = "latest", on_stage: Progress | None = None
    ) -> RestoreReport:
        """Restore-test the named backup (or the newest complete one) into a scratch database.

        Return the report (``passed`` False if a check failed). Raise UsageError for a key that
        is not a complete backup, RestoreCheckError if the backup is corrupt or does not
        restore. The scratch database and the downloaded dump are always removed (by the next
        restore test if this one is killed outright). Every outcome is audited and recorded
        next to the backup.
        """
        stage = on_stage or (lambda _s: None)
        scratch_server = self.scratch_server  # a ConfigError before anything is recorded
        scope = {"scratch_server": scratch_server.display}
        with self.audit.run("restore_test", actor, key=which, details=scope) as run:
            key: BackupKey | None = None
            try:
                key, manifest, listed = self._resolve(which)
                run.note(key=key.key)
                with AdvisoryLock(
                    scratch_server, RESTORE_LOCK_ID, "a restore test is already running"
                ):
                    self.audit.close_abandoned("restore_test", actor, scope=scope)
                    self._drop_leftovers()
                    workdir = self._workdir_root() / run.run_id
                    workdir.mkdir(parents=True)
                    try:
                        name = f"{SCRATCH_PREFIX}{run.run_id}"  # a leftover names its run
                        report = self._restore_and_check(
                            key, manifest, scratch_server, name, workdir, stage, False, listed
                        )
                    finally:
                        shutil.rmtree(workdir, ignore_errors=True)
            except RestoreCheckError as exc:
                if key is not None:
                    self._record_failed_test(key, exc)
                raise
            self._record_report(run, report)
        return report

    def restore(
        self,
        actor: Actor,
        which: str,
        into: str,
        server: PgTarget,
        on_stage: Progress | None = None,
        *,
        reason: str | None = None,
        expected_sha256: str | None = None,
    ) -> RestoreReport:
        """Restore a backup into a new database ``into`` on ``server`` and check it.

        Raise UsageError if ``into`` is not a usable new name, exists, or is the source
        database, or if ``reason`` (audited) is not one line of plain text. With
        ``expected_sha256`` (what an approver was shown), raise PlanChangedError unless the
        backup's manifest still names exactly that content (the download is then verified
        against it). The new database is kept once restored (also when a check fails, so a
        person can look at it); a restore that fails or is interrupted drops it again.
        """
        reason = check_plain_text("reason", reason, MAX_REASON_LENGTH)
        stage = on_stage or (lambda _s: None)
        check_database_name(into)
        with self.audit.run(
            "restore",
            actor,
            reason=reason,
            key=which,
            details={"into": into, "server": server.display},
        ) as run:
            self.check_target(into, server)
            self._sweep_killed_restores(actor, server)
            if database_exists(server, into):
                raise UsageError(f"database {into!r} already exists; choose a new name")
            key, manifest, listed = self._resolve(which)
            run.note(key=key.key)
            if expected_sha256 is not None and manifest.sha256 != expected_sha256:
                raise PlanChangedError(
                    f"{key} is no longer the backup that was approved: its SHA-256 is now "
                    f"{manifest.sha256}, the approval was for {expected_sha256}; nothing was "
                    "restored"
                )
            with _held_workdir(_RESTORE_WORKDIRS / run.run_id) as workdir:
                report = self._restore_and_check(
                    key, manifest, server, into, workdir, stage, True, listed, run.run_id
                )
            self._record_report(run, report)
        return report

    def restore_file(self, dump: Path, server: PgTarget, into: str, origin: str) -> list[str]:
        """Restore a local custom-format dump (a point-in-time recovery's copy of the Blnk
        database) into the new database ``into`` on ``server``, keeping owners and privileges;
        marked incomplete while pg_restore runs, then commented with ``origin``. Return the
        notes (a parallel restore that had to run again serially). Raise UsageError for a
        name the restore never creates or one that exists."""
        self.check_target(into, server)
        if database_exists(server, into):
            raise UsageError(f"database {into!r} already exists; choose a new name")
        notes: list[str] = []
        pg_restore = find_tool("pg_restore", self.settings.pg_bin_dir)
        self._restore_into(
            pg_restore, dump, server, into, False, notes, f"{INCOMPLETE_RESTORE}{origin}"
        )
        comment_on_database(server, into, f"blnk-backup: {origin}")
        return notes

    def check_target(self, into: str, server: PgTarget) -> None:
        """Raise UsageError if ``restore`` would never create ``into`` on ``server``: not a
        valid name, the source database, or a restore test's scratch name (restore tests drop
        those as leftovers). Reads nothing; whether the name is taken is checked when the
        restore runs, after what a killed restore left is swept."""
        check_database_name(into)
        if self.source is not None and _same_database(server.with_dbname(into), self.source):
            raise UsageError(f"refusing to restore into the source database {into!r}")
        if into.startswith(SCRATCH_PREFIX):
            raise UsageError(f"names starting with {SCRATCH_PREFIX} are for restore tests")

    # --- steps --------------------------------------------------------------------------------
    def _resolve(self, which: str) -> tuple[BackupKey, Manifest, list[StoredBackup] | None]:
        """Return the key and validated manifest of a complete backup, and the bucket's
        listing if it was read to find it (catalog.resolve says why a key is not one)."""
        chosen, listed = resolve(self.store, which)
        assert chosen.manifest is not None  # complete
        return chosen.key, chosen.manifest, listed

    def _older_anchors(
        self, key: BackupKey, manifest: Manifest, listed: list[StoredBackup] | None
    ) -> tuple[list[tuple[str, LedgerAnchor]], list[str]]:
        """The chain anchors of the complete backups of the same database older than ``key``
        still in the bucket, oldest first, as (key, anchor); and why none could be read, if
        the bucket could not be listed (a note, not a failure)."""
        try:
            backups = listed if listed is not None else self.store.listing.backups()
        except EngineError as exc:
            return [], [f"chain anchors of older backups: the bucket could not be listed ({exc})"]
        older = [
            (b.key.key, b.manifest.stats.ledger_anchor)
            for b in backups
            if b.complete
            and b.manifest is not None
            and b.manifest.stats.ledger_anchor is not None
            and b.manifest.database == manifest.database
            and b.key.started_at < key.started_at
        ]
        return [(k, a) for k, a in older if a is not None], []

    def _workdir_root(self) -> Path:
        """Where restore tests against this scratch server download dumps: one directory per
        server, so the next restore test (holding that server's lock) can empty it."""
        tag = hashlib.sha256(self.scratch_server.display.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"blnk-restore-test-{tag}"

    def _drop_leftovers(self) -> None:
        """Remove what a restore test killed outright left: its downloaded dump and its
        scratch database (we hold the server's lock, so no restore test is using them). A
        scratch database is named after its run; only one of a restore test of this audit log
        on this server that has ended (a killed one is closed as abandoned first) is dropped,
        never a database someone else named alike."""
        root = self._workdir_root()
        if root.is_dir():
            for leftover in root.iterdir():
                log.warning("removing %s, left behind by an earlier restore test", leftover)
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
        for name in databases_like(self.scratch_server, SCRATCH_PREFIX):
            if self.source is not None and _same_database(
                self.scratch_server.with_dbname(name), self.source
            ):
                continue  # never, whatever its name
            run_id = name.removeprefix(SCRATCH_PREFIX)
            events = self.audit.events(run_id=run_id, limit=20) if run_id.isalnum() else []
            ours = any(
                e.action == "restore_test"
                and e.outcome == "started"
                and e.details_dict().get("scratch_server") == self.scratch_server.display
                for e in events
            )
            if not ours or not any(e.outcome in ENDED for e in events):
                continue
            log.warning("dropping %s, left behind by an earlier restore test", name)
            drop_database(self.scratch_server, name)

    def _sweep_killed_restores(self, actor: Actor, server: PgTarget) -> None:
        """Remove what restores killed outright left: their downloaded dumps (a work directory
        whose file lock nobody holds) and their half-restored databases on ``server``, and
        close their audit runs as ``abandoned``. A database is dropped only if its
        incomplete-restore comment names a ``restore`` run of this audit log into exactly that
        database on exactly this server, that run is dead (its run lock is free: closed as
        abandoned now or before), nobody holds the database's own restore lock, and it is not
        the source database: a comment anyone else wrote never gets a database dropped."""
        self.audit.close_abandoned("restore", actor, scope={})
        if _RESTORE_WORKDIRS.is_dir():
            for workdir in _RESTORE_WORKDIRS.iterdir():
                if workdir.name.startswith("."):
                    continue  # being set up (see _held_workdir)
                try:
                    if _remove_if_unlocked(workdir):
                        log.warning("removed %s, left behind by a killed restore", workdir)
                except OSError as exc:  # best effort: never in the way of this restore
                    log.warning("could not remove %s: %s", workdir, exc)
        for name, comment in databases_commented(server, INCOMPLETE_RESTORE):
            try:
                if self._killed_restore_of_ours(server, name, comment):
                    self._drop_if_abandoned(server, name, comment)
            except Exception as exc:  # best effort, e.g. another role's database
                log.warning("could not drop %s, left by a killed restore: %s", name, exc)

    def _killed_restore_of_ours(
        self, server: PgTarget, name: str, comment: str, *, closed: bool = True
    ) -> bool:
        """True if database ``name`` was being restored by a run of ours that is dead: closed
        as abandoned, or (with ``closed`` False) with its run lock free; see
        ``_sweep_killed_restores``."""
        if self.source is not None and _same_database(server.with_dbname(name), self.source):
            return False  # never, whatever its comment says
        found = _RUN_IN_COMMENT.search(comment)
        if found is None:
            return False
        events = self.audit.events(run_id=found[1], limit=20)
        started = [e for e in events if e.outcome == "started" and e.action == "restore"]
        details = started[0].details_dict() if started else {}
        if details.get("into") != name or not _same_server(details.get("server"), server):
            return False  # not a restore this audit log knows into this database
        if any(e.outcome == "abandoned" for e in events):
            return True
        return not closed and self.audit.is_dead(found[1])

    def check_target_free(self, into: str, server: PgTarget) -> None:
        """Raise UsageError if database ``into`` exists on ``server`` and the restore would
        not drop it first (only a half-restored database a killed restore of ours left)."""
        if not database_exists(server, into):
            return
        for name, comment in databases_commented(server, INCOMPLETE_RESTORE):
            if name == into and self._killed_restore_of_ours(server, name, comment, closed=False):
                return
        raise UsageError(f"database {into!r} already exists; choose a new name")

    @staticmethod
    def _drop_if_abandoned(server: PgTarget, name: str, comment: str) -> bool:
        """Drop database ``name`` if nobody holds its restore lock and it still carries the
        incomplete-restore ``comment`` (re-read under the lock: a restore that finished since
        the listing changed it while holding the lock); return True if dropped."""
        try:
            with AdvisoryLock(server.with_dbname(name), RESTORE_INTO_LOCK_ID, "restoring"):
                if (name, comment) not in databases_commented(server, INCOMPLETE_RESTORE):
                    return False  # finished (or failed and being dropped) meanwhile
                log.warning("dropping %s, a half-restored database left by a killed restore", name)
                drop_database(server, name)  # under the lock (FORCE ends its session too)
                return True
        except AlreadyRunningError:
            return False  # a restore into it is running

    def _restore_and_check(
        self,
        key: BackupKey,
        manifest: Manifest,
        server: PgTarget,
        name: str,
        workdir: Path,
        stage: Progress,
        keep: bool,
        listed: list[StoredBackup] | None,
        run_id: str | None = None,
    ) -> RestoreReport:
        """Download, verify and restore into a new database ``name``, then check it. With
        ``keep`` False (a restore test) the database is a scratch copy: restored without owners
        and privileges, and dropped at the end. With ``keep`` the database says in its comment
        that it is incomplete (naming the audit run ``run_id``) until pg_restore has finished,
        and then what it was restored from. ``listed`` is the bucket's listing if it was read
        already (for the older backups' chain anchors)."""
        began = time.monotonic()
        durations: dict[str, float] = {}
        notes: list[str] = []
        target = server.with_dbname(name)
        pg_restore = find_tool("pg_restore", self.settings.pg_bin_dir)
        dump = workdir / key.name
        stage("downloading")
        with _timed(durations, "download"):
            self._download_verified(key, manifest, dump)
        stage("restoring")
        with _timed(durations, "restore"):
            self._check_archive(pg_restore, dump, key)
            incomplete = f"{INCOMPLETE_RESTORE}{run_id} of {key.key}" if keep else None
            try:
                self._restore_into(pg_restore, dump, server, name, not keep, notes, incomplete)
            finally:
                dump.unlink(missing_ok=True)
        try:
            stage("checking")
            with _timed(durations, "checks"):
                older, listing_problems = self._older_anchors(key, manifest, listed)
                done = run_restore_checks(target, manifest, older, listing_problems)
        finally:
            if not keep:
                drop_database(server, name)
        if keep:
            failed = sum(1 for c in done.checks if not c.passed)
            comment_on_database(
                server,
                name,
                f"blnk-backup: restored from {key.key} on {datetime.now(UTC):%Y-%m-%d %H:%M} "
                f"UTC; {len(done.checks)} checks, "
                + (f"{failed} FAILED" if failed else "all passed"),
            )
        durations["total"] = round(time.monotonic() - began, 3)
        return RestoreReport(
            key=key.key,
            database=name,
            checks=done.checks,
            durations=durations,
            finished_at=datetime.now(UTC),
            amcheck=done.amcheck,
            kept=keep,
            notes=notes,
            ledger_proof=done.ledger_proof.summary(),
        )

    def _download_verified(self, key: BackupKey, manifest: Manifest, dump: Path) -> None:
        with dump.open("wb") as out:
            size, sha256 = self.store.download(key.key, out)
        if sha256 != manifest.sha256 or size != manifest.size:
            raise RestoreCheckError(
                f"backup is corrupt: s3://{self.store.bucket}/{key} has SHA-256 {sha256} "
                f"({size} bytes) but its manifest says {manifest.sha256} ({manifest.size} bytes)",
                cause=f"corrupt: sha256 {sha256} != manifest {manifest.sha256}",
            )

    def _check_archive(self, pg_restore: str, dump: Path, key: BackupKey) -> None:
        done = run_tool([pg_restore, "--list", str(dump)], dict(os.environ))
        entries = [ln for ln in done.stdout.splitlines() if ln and not ln.startswith(";")]
        if done.status != 0 or not entries:
            raise RestoreCheckError(
                f"{key} is not a readable pg_dump archive: {done.tail or 'empty table of contents'}"
            )

    def _restore_into(
        self,
        pg_restore: str,
        dump: Path,
        server: PgTarget,
        name: str,
        no_owner: bool,
        notes: list[str],
        incomplete: str | None = None,
    ) -> None:
        """Create database ``name`` on ``server`` and restore ``dump`` into it. With
        ``incomplete``, the database carries that comment, and its own advisory lock is held,
        while pg_restore runs (see ``_sweep_killed_restores``).

        A parallel pg_restore can deadlock against itself: two workers attaching partitioned
        indexes, or an index attach racing a constraint on the same partition, each wait for
        the other's lock and the server kills one. That is a race in pg_restore's scheduling,
        not a fault of the backup, so the half-restored database is dropped and the restore
        runs once more with one job, which cannot deadlock with itself; a note says so. Any
        other failure drops the database and is raised."""
        jobs = self.settings.restore_jobs
        while True:
            create_database(server, name)
            try:
                with _marked_while_restoring(server, name, incomplete):
                    self._pg_restore(
                        pg_restore, dump, server.with_dbname(name), no_owner, notes, jobs
                    )
                return
            except _ParallelRestoreDeadlock as deadlock:
                drop_database(server, name)
                notes.append(
                    f"pg_restore --jobs={jobs} deadlocked against itself ({deadlock.statement}); "
                    "restored again with --jobs=1"
                )
                jobs = 1
            except BaseException:
                drop_database(server, name)  # a half-restored database helps nobody
                raise

    def _pg_restore(
        self,
        pg_restore: str,
        dump: Path,
        target: PgTarget,
        no_owner: bool,
        notes: list[str],
        jobs: int,
    ) -> None:
        """Run pg_restore -j N into target; stop at the first error.

        A pg_restore newer than the server (say 18 into 15, needed for a dump made by
        pg_dump 18) sends session settings the older server does not know, such as
        ``SET transaction_timeout``. Then it runs to the end and every error must be one of
        those refused settings; anything else fails the restore as usual."""
        restore_major, restore_version = tool_version(pg_restore)
        with target.connect(autocommit=True) as conn:
            server_major, server_text = server_version(conn)
        newer_tool = restore_major > server_major
        argv = [
            pg_restore,
            f"--jobs={jobs}",
            "--no-password",
            f"--dbname={target.conninfo}",
        ]
        if not newer_tool:
            argv.append("--exit-on-error")
        if no_owner:  # a scratch copy: the roles of the source need not exist here
            argv += ["--no-owner", "--no-privileges"]
        done = run_tool([*argv, str(dump)], target.libpq_env(dict(os.environ)), [target.password])
        if done.status == 0:
            return
        errors = [ln for ln in done.stderr_lines if ln.startswith("pg_restore: error:")]
        if jobs > 1 and any("deadlock detected" in e for e in errors):
            raise _ParallelRestoreDeadlock(_failed_statement(done.stderr_lines, "deadlock"))
        refused = [e for e in errors if _UNKNOWN_SETTING.search(e)]
        if newer_tool and errors and len(refused) == len(errors):
            names = sorted({m[1] for e in refused if (m := _UNKNOWN_SETTING.search(e))})
            notes.append(
                f"pg_restore {restore_version} into PostgreSQL {server_text}: the server does "
                f"not know {', '.join(names)}; those SET commands were skipped"
            )
            return
        raise RestoreCheckError(
            f"pg_restore into {target.dbname} failed (exit {done.status}): {done.tail}",
            cause=f"pg_restore exit {done.status}: {done.tail}",
        )

    # --- records ------------------------------------------------------------------------------
    def _record_report(self, run: AuditRun, report: RestoreReport) -> None:
        """Close the audited run with the report; a restore test's summary is also kept next
        to the backup, where ``status`` finds it."""
        summary = report.summary()
        if not report.kept:
            key = BackupKey.parse_or_raise(report.key, self.store.prefix)
            self.store.put_json(key.restore_test_key, summary)
        run.note(duration_seconds=report.durations.get("total"), details=summary)
        if not report.passed:
            run.end(
                "failed",
                error_code="check_failed",
                error_cause="; ".join(
                    f"{c.name}: expected {c.expected}, found {c.found}"
                    for c in report.failed_checks
                ),
            )

    def _record_failed_test(self, key: BackupKey, exc: RestoreCheckError) -> None:
        """Keep a failed restore test (corrupt, did not restore) next to the backup too."""
        try:
            self.store.put_json(
                key.restore_test_key,
                {
                    "key": key.key,
                    "passed": False,
                    "error": exc.message,
                    "finished_at": datetime.now(UTC).isoformat(),
                },
            )
        except EngineError:
            log.exception("could not record the failed restore test next to %s", key)


_RESTORE_WORKDIRS = Path(tempfile.gettempdir()) / "blnk-restore-into"


@contextmanager
def _held_workdir(path: Path) -> Iterator[Path]:
    """A work directory locked (flock) for as long as this process uses it, then removed; a
    killed process's lock goes with it, so ``_remove_if_unlocked`` can tell a leftover. It is
    made and locked under a hidden name first, so a sweep never sees it unlocked."""
    setting_up = path.with_name(f".{path.name}")
    setting_up.mkdir(parents=True)
    with (setting_up / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        setting_up.rename(path)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


def _remove_if_unlocked(path: Path) -> bool:
    """Remove work directory ``path`` if no process holds its lock; True if removed."""
    lock_path = path / ".lock"
    try:
        with lock_path.open("r") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(lock.fileno()).st_ino != lock_path.stat().st_ino:
                return False  # its owner finished and removed it while we opened it
            shutil.rmtree(path, ignore_errors=True)
            return True
    except BlockingIOError:
        return False  # in use
    except OSError:  # gone meanwhile, or no lock file: not one of ours; leave it
        return False


@contextmanager
def _marked_while_restoring(server: PgTarget, name: str, comment: str | None) -> Iterator[None]:
    """While the body runs, hold database ``name``'s own advisory lock and give it the
    ``comment`` saying it is incomplete; afterwards say that pg_restore has finished."""
    if comment is None:
        yield
        return
    with AdvisoryLock(server.with_dbname(name), RESTORE_INTO_LOCK_ID, f"{name} is being restored"):
        comment_on_database(server, name, comment)
        try:
            yield
        except BaseException:
            # Unmarked before the lock goes: the caller drops it, not a sweep that would call
            # this live run abandoned.
            with contextlib.suppress(Exception):
                comment_on_database(server, name, "blnk-backup: failed restore, being dropped")
            raise
        comment_on_database(server, name, "blnk-backup: restored; checks running")


@contextmanager
def _timed(durations: dict[str, float], name: str) -> Iterator[None]:
    began = time.monotonic()
    try:
        yield
    finally:
        durations[name] = round(time.monotonic() - began, 3)


def _where(target: PgTarget) -> tuple[str, str, str]:
    host = target.params.get("host", "localhost")
    host = "localhost" if host in {"127.0.0.1", "::1", "", "/var/run/postgresql"} else host
    return host, target.params.get("port", "5432"), target.dbname


def _same_database(a: PgTarget, b: PgTarget) -> bool:
    return _where(a) == _where(b)


def _same_server(recorded: object, server: PgTarget) -> bool:
    """True if ``recorded`` (a server's display URL in an audit record) names ``server``."""
    try:
        return _where(PgTarget.from_url(str(recorded)))[:2] == _where(server)[:2]
    except Exception:
        return False
