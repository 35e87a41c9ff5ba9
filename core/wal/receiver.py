"""The WAL receiver: ``pg_receivewal`` on a replication slot, run from the bot's host, and the
shipping of what it writes into the bucket.

pg_receivewal writes each segment into the spool directory as ``NAME.partial`` and renames it
``NAME`` when it is full. Finished segments (and timelines' ``.history`` files) are shipped —
uploaded, read back, then removed from the spool. The segment being written is shipped as
``NAME.partial`` on a timer, only when it changed, so the recovery point in the store stays
within ``WAL_SHIP_PARTIAL_SECONDS`` of the database while WAL flows; after each, the position
it holds is written to ``wal/position.json`` with the time before which every commit is in the
store: when the server reported that position (the segment being written), or when the file
was last written (a finished segment; the segment being written when pg_receivewal has stopped
and the server cannot be asked — it is down). With ``--synchronous`` the receiver flushes each
write at once and tells the server, so the slot only lets go of WAL that is on this host.
When pg_receivewal stops (the database went away), what it wrote is shipped at once.

The store may be down: files stay in the spool and are shipped when it is back, in order.
pg_receivewal may stop (the database restarts, the network drops): it is started again with a
growing pause, and resumes from the slot with no gap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from core.database import PgTarget
from core.errors import EngineError, PreflightError
from core.processes import StreamingProcess, find_tool, run
from core.wal.archive import WalArchive
from core.wal.names import (
    PARTIAL_SUFFIX,
    SEGMENT_SIZE,
    SLOT_DROPPED,
    WAL_DIR,
    Segment,
    format_lsn,
    is_history,
    parse_lsn,
)

log = logging.getLogger("blnk_backup.wal")

# wal/position.json: the newest shipped WAL's timeline and position (``lsn``), and the time
# before which every commit is in the store (``shipped_at``: the newest recoverable point).
POSITION = "position.json"
_TICK = 1.0
# The receiver is caught up when the primary is at most this far ahead of what it flushed (at
# ~1 MiB/s of WAL, some 60 ms): only then does the store's recovery point move to "now".
CAUGHT_UP = 64 * 1024
# The server's words for WAL it does not have to give: removed (the slot is new), or not on its
# timeline (the primary was restored to an earlier point and branched off before it).
_GONE = ("has already been removed", "is not in this server's history")
_FILE_TIME_SLACK = timedelta(milliseconds=10)  # a kernel tick at HZ=100, the coarsest
_RESTART_PAUSES = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class SlotDropped(PreflightError):
    """The slot was dropped on purpose; only ``wal-slot recreate`` makes it again."""

    code = "slot_dropped"


@dataclass
class ReceiverState:
    """What the receiver has done, for status and tests."""

    shipped_segments: int = 0
    shipped_bytes: int = 0
    last_shipped: str | None = None
    partial_shipped_at: datetime | None = None
    position: int | None = None  # LSN the newest shipped WAL holds
    position_at: datetime | None = None  # every commit before it is in the store
    caught_up: bool = False  # at the last look, the primary was within CAUGHT_UP of it
    restarts: int = 0
    store_failures: int = 0
    errors: list[str] = field(default_factory=list)


class WalReceiver:
    """Streams the WAL of ``source`` into ``archive`` through ``spool``."""

    def __init__(
        self,
        source: PgTarget,
        archive: WalArchive,
        spool: Path,
        *,
        slot: str,
        bin_dir: str | None = None,
        ship_partial_every: float = 10.0,
        synchronous_standby: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The receiver's application_name is the slot's name: what synchronous_standby_names
        # would have to list, and what pg_stat_replication shows.
        self.source = source.with_params(application_name=slot)
        self.synchronous_standby = synchronous_standby
        self.archive = archive
        self.spool = spool
        self.slot = slot
        self.binary = find_tool("pg_receivewal", bin_dir)
        self.ship_partial_every = ship_partial_every
        self.clock = clock
        self.state = ReceiverState()
        # the segment being written as last shipped: its name and how many bytes of WAL
        self._partial_shipped: tuple[str, int] | None = None
        self._partial_due = 0.0

    # --- the slot -----------------------------------------------------------------------------
    def ensure_slot(self) -> None:
        """Create the physical replication slot if it does not exist yet, keeping WAL from
        the moment it is made (``pg_create_physical_replication_slot(name, true)``: a slot
        made by ``pg_receivewal --create-slot`` keeps nothing until a stream first connects,
        so a base backup begun in between could lose its first WAL). Over a replication
        connection alone (no normal one allowed) it falls back to pg_receivewal. Raise
        PreflightError with the server's reason (no REPLICATION role, no pg_hba line, ...)."""
        try:
            with self.source.connect(autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS "
                    "(SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
                    (self.slot, self.slot),
                )
            return
        except EngineError:
            pass  # no normal connection for this role: pg_receivewal's own way
        except psycopg.Error as exc:
            if "already exists" in str(exc):  # made in between by another receiver
                return
            log.info("making the slot over SQL failed (%s): with pg_receivewal", type(exc).__name__)
        done, said = self._slot_command("--create-slot", "--if-not-exists")
        if done != 0:
            raise PreflightError(
                f"the replication slot {self.slot} could not be made on "
                f"{self.source.display}: {said}"
            )

    def refuse_if_dropped(self) -> None:
        """Raise SlotDropped when the slot was dropped on purpose (``wal-slot drop``): making
        it again would have the primary keep WAL for the bot once more, unasked."""
        store = self.archive.store
        marker = store.get_json(f"{store.prefix}{WAL_DIR}{SLOT_DROPPED}")
        if isinstance(marker, dict):
            raise SlotDropped(
                f"the slot {self.slot} was dropped on purpose at {marker.get('dropped_at')}: "
                "WAL streaming stays stopped until `wal-slot recreate`"
            )

    def _slot_command(self, *flags: str) -> tuple[int, str]:
        """Run pg_receivewal with ``flags`` on the slot; its exit status and its last word."""
        done = run(
            [
                self.binary,
                *flags,
                f"--slot={self.slot}",
                f"--dbname={self.source.conninfo}",
                "--no-password",
            ],
            env=self.source.libpq_env(dict(os.environ)),
            timeout=60,
        )
        return done.returncode, (done.stderr.strip().splitlines() or ["no reason given"])[-1]

    def check_synchronous(self) -> str | None:
        """Warn (and return the warning) when the primary would treat this receiver as a
        synchronous standby without WAL_SYNCHRONOUS_STANDBY: its synchronous_standby_names
        lists ``*`` or the slot's name, so while the bot is down every commit may wait."""
        try:
            with self.source.connect(autocommit=True) as conn:
                row = conn.execute("SHOW synchronous_standby_names").fetchone()
        except EngineError:
            return None
        if not names_standby(str(row[0] if row else ""), self.slot):
            if self.synchronous_standby:
                log.warning(
                    "WAL_SYNCHRONOUS_STANDBY is on but the primary's synchronous_standby_names "
                    "does not name %s: it is an ordinary (asynchronous) receiver",
                    self.slot,
                )
            return None
        if self.synchronous_standby:
            log.warning(
                "this receiver is a synchronous standby (WAL_SYNCHRONOUS_STANDBY): every "
                "commit on the primary waits for it, and blocks while the bot is down"
            )
            return None
        warning = (
            f"the primary's synchronous_standby_names ({row[0] if row else ''}) matches this "
            f"receiver ({self.slot}): every commit may wait for the bot and block while it is "
            "down. Name only your replicas there, or set WAL_SYNCHRONOUS_STANDBY=true to "
            "accept it"
        )
        log.error("%s", warning)
        self._note(warning)
        return warning

    def drop_slot(self) -> bool:
        """Drop the slot (the primary then keeps no WAL for it); False if there was none.
        Raise PreflightError when it is in use (a receiver streams from it) or the server
        refuses."""
        done, said = self._slot_command("--drop-slot")
        if done == 0:
            return True
        if "does not exist" in said:
            return False
        raise PreflightError(
            f"the replication slot {self.slot} could not be dropped on "
            f"{self.source.display}: {said}"
        )

    def discard_partials(self) -> None:
        """Ship the spool's ``.partial`` files one last time, then remove them: after the slot
        was lost (or made again) they name WAL the server no longer has, and pg_receivewal,
        which resumes from the newest file in its directory, would ask for it at every start
        and be refused. It then starts from the slot."""
        for path in sorted(self.spool.glob("*" + PARTIAL_SUFFIX)):
            try:
                body = path.read_bytes()
                if not self.archive.holds_partial(path.name, body):
                    self.archive.ship_partial(path.name, body)
            except (EngineError, OSError) as exc:
                log.warning("%s could not be shipped before it goes: %s", path.name, exc)
            log.warning("%s names WAL the server no longer has: removed from the spool", path.name)
            path.unlink()

    # --- running ------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Receive and ship until ``stop`` is set; then stop pg_receivewal (it flushes) and
        ship what it wrote. Never returns early: a receiver that stops is started again."""
        self.spool.mkdir(parents=True, exist_ok=True)
        self.refuse_if_dropped()
        self.ensure_slot()
        self.check_synchronous()
        pauses = 0
        while not stop.is_set():
            began = self.clock()
            process = self._start()
            try:
                while process.poll() is None and not stop.wait(_TICK):
                    self.ship()
                if stop.is_set():
                    process.interrupt()
                    break
                code = process.poll()
                tail = process.stderr_tail(3) or "no reason given"
            finally:
                process.close()
            # It stopped (the database went away, the network dropped): what it wrote is all
            # there is until it runs again, and may be all there ever is. Ship it now.
            self.ship(final=True, stopped=True)
            if any(word in tail for word in _GONE):  # it resumed from WAL the server lacks
                self.discard_partials()
            self.state.restarts += 1
            if self.clock() - began > 60:
                pauses = 0  # it ran a while: a fresh failure, not a loop
            pause = _RESTART_PAUSES[min(pauses, len(_RESTART_PAUSES) - 1)]
            pauses += 1
            self._note(f"pg_receivewal exited ({code}): {' | '.join(tail.splitlines())}")
            log.warning("pg_receivewal exited (%s), starting again in %.0f s", code, pause)
            stop.wait(pause)
        self.ship(final=True, stopped=True)

    def _start(self) -> StreamingProcess:
        self._mend_torn_partials()
        argv = [
            self.binary,
            f"--directory={self.spool}",
            f"--slot={self.slot}",
            "--synchronous",
            "--no-loop",
            f"--dbname={self.source.conninfo}",
            "--no-password",
        ]
        return StreamingProcess(
            argv,
            self.source.libpq_env(dict(os.environ)),
            [self.source.password],
            die_with_parent=True,
        )

    def _mend_torn_partials(self) -> None:
        """pg_receivewal makes each new segment file full size (zeros) before it writes into
        it; killed in between, it leaves a shorter ``.partial`` that it then refuses ("should
        be 0 or 16777216 bytes") at every start. Such a file holds nothing that was flushed
        past what it holds: padding it with the zeros pg_receivewal was writing makes it what
        pg_receivewal expects, and it resumes from that segment's start."""
        for path in self.spool.glob("*" + PARTIAL_SUFFIX):
            stat = path.stat()
            if 0 < stat.st_size < SEGMENT_SIZE:
                log.warning(
                    "%s was cut short (%s bytes): padded to a full segment", path.name, stat.st_size
                )
                os.truncate(path, SEGMENT_SIZE)
                # Its time stays when its WAL came in (what a stopped receiver's position says).
                os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    # --- shipping -----------------------------------------------------------------------------
    def ship(self, *, final: bool = False, stopped: bool = False) -> None:
        """Ship finished segments and history files (then drop them from the spool), and the
        segment being written when it is due (always when ``final``; ``stopped``: pg_receivewal
        is not running, so that file is complete as it is). A store that fails leaves
        everything in the spool for the next call."""
        try:
            for path in self._finished():
                size = self.archive.ship(path)
                path.unlink()
                self.state.shipped_segments += 1
                self.state.shipped_bytes += size
                self.state.last_shipped = path.name
                segment = Segment.parse(path.name)
                if segment is not None:
                    # Its WAL may be minutes old (a backlog after an outage): the time moves
                    # on only where the receiver is known to be caught up (below).
                    self._record_position(segment.timeline, segment.end_lsn, None)
                    # its partial copies, shipped while it was written, are no longer needed
                    self.archive.forget_partial(path.name)
            self._ship_partial(final, stopped)
        except (EngineError, OSError) as exc:
            self.state.store_failures += 1
            self._note(f"shipping WAL failed: {exc}")
            log.warning("shipping WAL failed (kept in the spool, tried again): %s", exc)

    def _finished(self) -> list[Path]:
        """History files first (a new timeline's segments need them), then finished segments
        in order."""
        names = sorted(p.name for p in self.spool.iterdir() if p.is_file())
        histories = [n for n in names if is_history(n)]
        segments = [n for n in names if Segment.parse(n) is not None]
        return [self.spool / n for n in histories + sorted(segments, key=_segment_order)]

    def _ship_partial(self, final: bool, stopped: bool) -> None:
        """Ship the segment being written when it is due and holds WAL the store does not
        have yet, and record the position the store now holds — never more than the bytes
        it was sent (a write landing just after a shipment is in the next one)."""
        partials = sorted(self.spool.glob("*" + PARTIAL_SUFFIX))
        if not partials:
            return
        path = partials[-1]
        now = self.clock()
        if not final and now < self._partial_due:
            return
        segment = Segment.parse(path.name.removesuffix(PARTIAL_SUFFIX))
        asked_at = datetime.now(UTC)
        # Asked before the file is read: the file holds at least what the server saw flushed.
        asked = None if stopped else self._flushed_position()
        written_at = _written_at(path)
        body = path.read_bytes()
        written = len(body.rstrip(b"\0"))  # WAL only grows: more WAL, a later last byte
        shipped = self._partial_shipped
        if shipped is None and self.archive.holds_partial(path.name, body, written):
            shipped = (path.name, written)  # shipped as it is before this receiver started
        if shipped != (path.name, written):
            self.archive.ship_partial(path.name, body, written)
            self.state.partial_shipped_at = datetime.now(UTC)
        self._partial_shipped = (path.name, written)
        self._partial_due = now + self.ship_partial_every
        if segment is None:
            return
        if stopped:
            # pg_receivewal is not running: what was shipped is all there is of this WAL for
            # now, everything up to its last byte, and every commit made before that byte
            # came in — known without the server, which may be down or out of reach.
            # Its last write is when that WAL came in only if the stream was live, not a
            # backlog being caught up.
            at = written_at if self.state.caught_up else None
            self._record_position(segment.timeline, segment.start_lsn + written, at)
        elif asked is not None:
            flushed, current = asked
            # Caught up: the primary was at most CAUGHT_UP bytes ahead when asked, so every
            # commit before that moment is in what was just shipped (within milliseconds).
            self.state.caught_up = current - flushed <= CAUGHT_UP
            at = asked_at if self.state.caught_up else None
            self._record_position(segment.timeline, min(flushed, segment.end_lsn), at)

    def _flushed_position(self) -> tuple[int, int] | None:
        """How far the receiver has flushed, as the server saw it acknowledged — the slot's
        restart_lsn (a physical slot moves on with each flush the receiver reports; readable
        by any role) — and the server's own position at that moment; None when it cannot be
        asked."""
        try:
            with self.source.connect(autocommit=True, connect_timeout=10) as conn:
                row = conn.execute(
                    "SELECT restart_lsn::text, (CASE WHEN pg_is_in_recovery() "
                    "THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END)::text "
                    "FROM pg_replication_slots WHERE slot_name = %s",
                    (self.slot,),
                ).fetchone()
        except EngineError:
            return None
        if not row or not row[0]:
            return None
        flushed = parse_lsn(row[0])
        return flushed, parse_lsn(row[1]) if row[1] else flushed

    def _record_position(self, timeline: int, lsn: int, at: datetime | None) -> None:
        """Record that the store holds WAL up to ``lsn`` and every commit made before ``at``
        (None: no later moment is known than the one recorded before — WAL shipped from a
        backlog is older than its shipment); never a position or a time older than one
        recorded before (the store only grows)."""
        state = self.state
        if at is None:
            if state.position_at is None:
                return  # no moment known yet: nothing is claimed
            at = state.position_at
        if state.position is not None and state.position_at is not None:
            if lsn < state.position or (lsn == state.position and at <= state.position_at):
                return
            at = max(at, state.position_at)
        store = self.archive.store
        store.put_json(
            f"{store.prefix}{WAL_DIR}{POSITION}",
            {"timeline": timeline, "lsn": format_lsn(lsn), "shipped_at": at.isoformat()},
        )
        state.position, state.position_at = lsn, at

    def _note(self, error: str) -> None:
        self.state.errors = [*self.state.errors[-9:], error]


def names_standby(synchronous_standby_names: str, application_name: str) -> bool:
    """True when a primary's ``synchronous_standby_names`` (``s1, s2``, ``FIRST 2 (s1, *)``,
    ``ANY 1 ("a b")``) lists ``application_name`` or ``*``: a standby of that name may be
    made synchronous."""
    quoted = re.findall(r'"((?:[^"]|"")*)"', synchronous_standby_names)
    bare = re.sub(r'"(?:[^"]|"")*"', " ", synchronous_standby_names)
    words = [w.lower() for w in re.split(r"[\s,()]+", bare) if w]
    names = {q.replace('""', '"') for q in quoted} | {
        w for w in words if not w.isdigit() and w not in ("first", "any")
    }
    return bool(names & {"*", application_name.lower(), application_name})


def _written_at(path: Path) -> datetime:
    """When ``path`` was last written, at the latest: for a WAL file pg_receivewal wrote (and
    flushed at once, --synchronous), when the last of its WAL had come in. A file's time comes
    from the kernel's coarse clock, up to a tick behind (seen here: a commit stamped after the
    time of the file it was in)."""
    return datetime.fromtimestamp(path.stat().st_mtime_ns / 1e9, UTC) + _FILE_TIME_SLACK


def _timeline_of(path: Path) -> int:
    segment = Segment.parse(path.name.removesuffix(PARTIAL_SUFFIX))
    return segment.timeline if segment is not None else 1


def _segment_order(name: str) -> tuple[int, int]:
    segment = Segment.parse(name)
    assert segment is not None
    return segment.timeline, segment.number


class ReceiverThread:
    """The receiver in a thread of its own, as the service runs it while it leads. It can be
    paused around an operation on its slot, and held stopped (the slot dropped) until the slot
    is made again."""

    def __init__(self, build: Callable[[], WalReceiver]) -> None:
        self._build = build
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._wanted = False  # this process leads: the receiver should run
        self.held: str | None = None  # why it is kept stopped, if it is
        self.receiver: WalReceiver | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._lock:
            self._wanted = True
            if self.held:
                log.warning("the WAL receiver stays stopped: %s", self.held)
                return
            self._launch()

    def _launch(self) -> None:
        if self.running:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="wal-receiver", daemon=True
        )
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        """Run receivers until ``stop`` — this thread's own event: a thread that outlived its
        halt never picks up a newer thread's event and runs beside it."""
        pause = 5.0
        while not stop.is_set():
            try:
                self.receiver = self._build()
                self.receiver.run(stop)
            except EngineError as exc:  # no slot could be made, no pg_receivewal, ...
                log.error("the WAL receiver cannot run: %s (trying again in %.0f s)", exc, pause)
                stop.wait(pause)
                pause = min(pause * 2, 300.0)

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._wanted = False
            try:
                self._halt(timeout)
            except EngineError as exc:  # it ends on its own; never a second beside it
                log.warning("%s", exc)

    def _halt(self, timeout: float = 30.0) -> None:
        """Stop the thread and wait for it; raise EngineError if it is still busy (a slow
        last shipment): it is not forgotten, so none is started beside it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise EngineError(
                    "the WAL receiver is still shipping what it received; try again in a moment"
                )
            self._thread = None

    @contextlib.contextmanager
    def paused(self, hold: str | None = None, timeout: float = 30.0) -> Iterator[None]:
        """Stop the receiver (pg_receivewal flushes, the spool is shipped) for the duration;
        then start it again if this process leads — unless ``hold`` says why it must stay
        stopped (the slot was dropped), until a later pause without one."""
        with self._lock:
            self._halt(timeout)
            done = False
            try:
                yield
                done = True
            finally:
                if done:
                    self.held = hold
                if self._wanted and not self.held:
                    self._launch()
