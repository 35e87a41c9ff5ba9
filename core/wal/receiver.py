"""The WAL receiver: ``pg_receivewal`` on a replication slot, run from the bot's host, and the
shipping of what it writes into the bucket.

pg_receivewal writes each segment into the spool directory as ``NAME.partial`` and renames it
``NAME`` when it is full. Finished segments (and timelines' ``.history`` files) are shipped —
uploaded, read back, then removed from the spool. The segment being written is shipped as
``NAME.partial`` on a timer, only when it changed, so the recovery point in the store stays
within ``WAL_SHIP_PARTIAL_SECONDS`` of the database while WAL flows; after each, the position
it holds is written to ``wal/position.json``. With ``--synchronous`` the receiver flushes
each write at once and tells the server, so the slot only lets go of WAL that is on this host.

The store may be down: files stay in the spool and are shipped when it is back, in order.
pg_receivewal may stop (the database restarts, the network drops): it is started again with a
growing pause, and resumes from the slot with no gap.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from core.database import PgTarget
from core.errors import EngineError, PreflightError
from core.processes import StreamingProcess, find_tool, run
from core.wal.archive import WalArchive
from core.wal.names import (
    PARTIAL_SUFFIX,
    SEGMENT_SIZE,
    WAL_DIR,
    Segment,
    format_lsn,
    is_history,
    parse_lsn,
)

log = logging.getLogger("blnk_backup.wal")

POSITION = "position.json"  # wal/position.json: what the newest shipped WAL holds
_TICK = 1.0
_RESTART_PAUSES = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass
class ReceiverState:
    """What the receiver has done, for status and tests."""

    shipped_segments: int = 0
    shipped_bytes: int = 0
    last_shipped: str | None = None
    partial_shipped_at: datetime | None = None
    position: int | None = None  # LSN the newest shipped WAL holds
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.archive = archive
        self.spool = spool
        self.slot = slot
        self.binary = find_tool("pg_receivewal", bin_dir)
        self.ship_partial_every = ship_partial_every
        self.clock = clock
        self.state = ReceiverState()
        self._partial_seen: tuple[str, int, int] | None = None  # name, size, mtime_ns shipped
        self._partial_due = 0.0

    # --- the slot -----------------------------------------------------------------------------
    def ensure_slot(self) -> None:
        """Create the physical replication slot if it does not exist yet. Raise
        PreflightError with the server's reason (no REPLICATION role, no pg_hba line, ...)."""
        done = run(
            [
                self.binary,
                "--create-slot",
                "--if-not-exists",
                f"--slot={self.slot}",
                f"--dbname={self.source.conninfo}",
                "--no-password",
            ],
            env=self.source.libpq_env(dict(os.environ)),
            timeout=60,
        )
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
            raise PreflightError(
                f"the replication slot {self.slot} could not be made on "
                f"{self.source.display}: {said}"
            )

    # --- running ------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Receive and ship until ``stop`` is set; then stop pg_receivewal (it flushes) and
        ship what it wrote. Never returns early: a receiver that stops is started again."""
        self.spool.mkdir(parents=True, exist_ok=True)
        self.ensure_slot()
        pauses = 0
        while not stop.is_set():
            began = self.clock()
            process = self._start()
            try:
                while process.poll() is None and not stop.wait(_TICK):
                    self.ship()
                if stop.is_set():
                    process.interrupt()
                    self.ship(final=True)
                    return
                code = process.poll()
                tail = process.stderr_tail(3) or "no reason given"
            finally:
                process.close()
            self.ship()
            self.state.restarts += 1
            if self.clock() - began > 60:
                pauses = 0  # it ran a while: a fresh failure, not a loop
            pause = _RESTART_PAUSES[min(pauses, len(_RESTART_PAUSES) - 1)]
            pauses += 1
            self._note(f"pg_receivewal exited ({code}): {' | '.join(tail.splitlines())}")
            log.warning("pg_receivewal exited (%s), starting again in %.0f s", code, pause)
            stop.wait(pause)

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
            size = path.stat().st_size
            if 0 < size < SEGMENT_SIZE:
                log.warning(
                    "%s was cut short (%s bytes): padded to a full segment", path.name, size
                )
                os.truncate(path, SEGMENT_SIZE)

    # --- shipping -----------------------------------------------------------------------------
    def ship(self, *, final: bool = False) -> None:
        """Ship finished segments and history files (then drop them from the spool), and the
        segment being written when it is due (always when ``final``). A store that fails
        leaves everything in the spool for the next call."""
        try:
            for path in self._finished():
                size = self.archive.ship(path)
                path.unlink()
                self.state.shipped_segments += 1
                self.state.shipped_bytes += size
                self.state.last_shipped = path.name
                segment = Segment.parse(path.name)
                if segment is not None:
                    self._record_position(segment.timeline, segment.end_lsn)
            self._ship_partial(final)
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

    def _ship_partial(self, final: bool) -> None:
        partials = sorted(self.spool.glob("*" + PARTIAL_SUFFIX))
        if not partials:
            return
        path = partials[-1]
        now = self.clock()
        if not final and now < self._partial_due:
            return
        position = self._flushed_position()  # before the file is read: it holds at least this
        stat = path.stat()
        seen = (path.name, stat.st_size, stat.st_mtime_ns)
        if seen == self._partial_seen:
            # No WAL since the last one: the store is as current as the database. Say so (a
            # recovery point that is now, not the time of the last write), once a period.
            self._partial_due = now + self.ship_partial_every
            shipped = self.state.position
            if shipped is not None and position is not None and position <= shipped:
                self._record_position(_timeline_of(path), shipped, refresh=True)
            return
        self.archive.ship(path)
        self._partial_seen = seen
        self._partial_due = now + self.ship_partial_every
        self.state.partial_shipped_at = datetime.now(UTC)
        segment = Segment.parse(path.name.removesuffix(PARTIAL_SUFFIX))
        if segment is not None and position is not None:
            self._record_position(segment.timeline, min(position, segment.end_lsn))

    def _flushed_position(self) -> int | None:
        """How far the receiver has flushed, as the server saw it acknowledged: the slot's
        restart_lsn (a physical slot moves on with each flush the receiver reports; readable
        by any role)."""
        try:
            with self.source.connect(autocommit=True) as conn:
                row = conn.execute(
                    "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                    (self.slot,),
                ).fetchone()
        except EngineError:
            return None
        return parse_lsn(row[0]) if row and row[0] else None

    def _record_position(self, timeline: int, lsn: int, *, refresh: bool = False) -> None:
        if self.state.position is not None and lsn <= self.state.position and not refresh:
            return
        self.state.position = lsn
        store = self.archive.store
        store.put_json(
            f"{store.prefix}{WAL_DIR}{POSITION}",
            {
                "timeline": timeline,
                "lsn": format_lsn(lsn),
                "shipped_at": datetime.now(UTC).isoformat(),
            },
        )

    def _note(self, error: str) -> None:
        self.state.errors = [*self.state.errors[-9:], error]


def _timeline_of(path: Path) -> int:
    segment = Segment.parse(path.name.removesuffix(PARTIAL_SUFFIX))
    return segment.timeline if segment is not None else 1


def _segment_order(name: str) -> tuple[int, int]:
    segment = Segment.parse(name)
    assert segment is not None
    return segment.timeline, segment.number


class ReceiverThread:
    """The receiver in a thread of its own, as the service runs it while it leads."""

    def __init__(self, build: Callable[[], WalReceiver]) -> None:
        self._build = build
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.receiver: WalReceiver | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-receiver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pause = 5.0
        while not self._stop.is_set():
            try:
                self.receiver = self._build()
                self.receiver.run(self._stop)
            except EngineError as exc:  # no slot could be made, no pg_receivewal, ...
                log.error("the WAL receiver cannot run: %s (trying again in %.0f s)", exc, pause)
                self._stop.wait(pause)
                pause = min(pause * 2, 300.0)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
