"""The database side of a backup, started first so pg_dump runs while S3 and the audit log are
being set up: the per-database lock, version checks, the exported snapshot, ``pg_dump
--snapshot`` with its output pumped into a bounded buffer and hashed as it arrives, and the
row counts, ledger totals, chain anchor (and, opted in, content digests) taken in the same
snapshot.

A pump thread reads pg_dump's pipe into at most ``buffer_bytes`` of chunks; when the uploader
falls behind (or has not started yet), the pump waits and pg_dump blocks on its full pipe —
memory stays bounded whatever the sizes involved.

pg_dump writes its output 4 KiB at a time. A reader that reads whenever something is there
wakes up for nearly every one of those writes — about 120,000 reads per GB of dump, each a
system call, a context switch and a trip through the interpreter, which cost more CPU than
hashing the bytes. So the pump lets the (1 MiB) pipe fill: after a read that found the pipe
nearly empty it naps for about as long as pg_dump takes to write a quarter of the pipe (its
rate measured from the previous nap), so reads come back in large pieces and pg_dump never
waits on a full pipe because of the nap. The pieces go straight into 1 MiB chunks (no
intermediate copies), which are hashed and handed on whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

from core.database import AdvisoryLock, PgTarget, SnapshotSession, backup_lock, server_version
from core.errors import BackupInterrupted, DumpError, PreflightError
from core.manifest import SnapshotStats
from core.processes import StreamingProcess, find_tool, tool_version

log = logging.getLogger("blnk_backup.dumpstream")

_CHUNK_SIZE = 1 << 20
_MIN_NAP = 0.0005  # seconds
_MAX_NAP = 0.02  # a slow pg_dump is looked at 50 times a second


class DumpStream:
    """pg_dump of one database in an exported snapshot, as a stream of chunks.

    ``start()`` raises PreflightError (versions, connection) or AlreadyRunningError (another
    backup holds the database's lock). Use as a context manager: leaving it kills pg_dump if it
    still runs, cancels the statistics and releases the snapshot and the lock."""

    def __init__(
        self,
        target: PgTarget,
        *,
        pg_bin_dir: str | None,
        compression_level: int,
        timeout_seconds: float | None = None,
        buffer_bytes: int = 24 << 20,
        content_digests: bool = False,
    ) -> None:
        self.target = target
        self.content_digests = content_digests
        self.pg_bin_dir = pg_bin_dir
        self.compression_level = compression_level
        self.timeout_seconds = timeout_seconds
        self._chunks: queue.Queue[memoryview | None] = queue.Queue(
            maxsize=max(2, buffer_bytes // _CHUNK_SIZE)
        )
        self._stop = threading.Event()
        self._timed_out = threading.Event()
        self._hasher = hashlib.sha256()
        self._rate: float | None = None  # pg_dump's output rate, bytes per second
        self._last_read = time.monotonic()
        self._lock: AdvisoryLock | None = None
        self._snapshot: SnapshotSession | None = None
        self._process: StreamingProcess | None = None
        self._pump: threading.Thread | None = None
        self._pump_error: BaseException | None = None
        self._stats_pool: ThreadPoolExecutor | None = None
        self._stats: Future[SnapshotStats] | None = None
        self._timer: threading.Timer | None = None
        self._interrupted: str | None = None
        self.size = 0
        self.server_version = ""
        self.pg_dump_version = ""

    # --- start --------------------------------------------------------------------------------
    def start(self) -> DumpStream:
        pg_dump = find_tool("pg_dump", self.pg_bin_dir)
        dump_major, self.pg_dump_version = tool_version(pg_dump)
        with self.target.connect(autocommit=True) as conn:
            server_major, self.server_version = server_version(conn)
        if dump_major < server_major:
            raise PreflightError(
                f"pg_dump {self.pg_dump_version} (at {pg_dump}) cannot dump a PostgreSQL "
                f"{self.server_version} server: install the PostgreSQL {server_major} client "
                "tools or point PG_BIN_DIR at them"
            )
        self._lock = backup_lock(self.target).__enter__()
        self._snapshot = SnapshotSession(self.target)
        argv = [
            pg_dump,
            "--format=custom",
            f"--compress={self.compression_level}",
            "--no-password",
            f"--snapshot={self._snapshot.snapshot_id}",
            f"--dbname={self.target.conninfo}",
        ]
        env = self.target.libpq_env(dict(os.environ))
        self._process = StreamingProcess(argv, env, secrets=[self.target.password])
        if self._interrupted is not None:  # stopped while it was starting
            self._process.kill()
        self._pump = threading.Thread(target=self._run_pump, name="pg_dump-pump", daemon=True)
        self._pump.start()
        self._stats_pool = ThreadPoolExecutor(1, thread_name_prefix="snapshot-stats")
        self._stats = self._stats_pool.submit(self._snapshot.stats, self.content_digests)
        if self.timeout_seconds:
            self._timer = threading.Timer(self.timeout_seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _expire(self) -> None:
        self._timed_out.set()
        if self._process is not None:
            self._process.kill()

    def interrupt(self, why: str) -> None:
        """Stop pg_dump now (from any thread); ``finish`` then raises BackupInterrupted."""
        self._interrupted = why
        if self._process is not None:
            self._process.kill()

    def _run_pump(self) -> None:
        assert self._process is not None
        try:
            while not self._stop.is_set():
                chunk = self._read_chunk(self._process)
                if not chunk:
                    break
                self._hasher.update(chunk)
                self.size += len(chunk)
                self._put(chunk)
                if len(chunk) < _CHUNK_SIZE:
                    break  # the end of the stream
        except BaseException as exc:  # a broken pipe or a read error ends the stream
            self._pump_error = exc
        finally:
            self._put(None)

    def _read_chunk(self, process: StreamingProcess) -> memoryview:
        """Fill a new chunk from the pipe; return it (shorter only at the end of the stream).

        A read that finds less than a quarter of the pipe means the pump is ahead of pg_dump:
        it naps for as long as pg_dump, at the rate measured over the last reads, takes to
        write that quarter — instead of waking up for every 4 KiB pg_dump writes."""
        chunk = memoryview(bytearray(_CHUNK_SIZE))
        filled = 0
        low_water = max(4096, process.pipe_size // 4)
        while filled < _CHUNK_SIZE and not self._stop.is_set():
            room = _CHUNK_SIZE - filled
            got = process.readinto(chunk[filled:])
            if not got:
                break
            filled += got
            now = time.monotonic()
            if got < room:  # the pipe was emptied: this is what pg_dump wrote since the
                sample = got / max(now - self._last_read, 1e-6)  # previous read ended
                self._rate = sample if self._rate is None else 0.7 * self._rate + 0.3 * sample
            self._last_read = now
            if got < low_water and got < room and self._rate:
                time.sleep(min(_MAX_NAP, max(_MIN_NAP, low_water / self._rate)))
        return chunk[:filled]

    def _put(self, chunk: memoryview | None) -> None:
        while not self._stop.is_set():
            try:
                self._chunks.put(chunk, timeout=0.1)
                return
            except queue.Full:
                continue

    # --- reading ------------------------------------------------------------------------------
    def chunks(self) -> Iterator[memoryview]:
        """Yield pg_dump's output as it comes, in chunks of 1 MiB (the last one shorter),
        until it ends. Then call ``finish``. Each chunk is new: keeping it is safe."""
        while True:
            chunk = self._chunks.get()
            if not chunk:
                return
            yield chunk

    def finish(self) -> str:
        """Wait for pg_dump to exit; return the SHA-256 of everything it wrote.

        Raise DumpError if it exited non-zero, was killed, or ran past the timeout — or, if the
        row counts in its snapshot failed, with that failure as the root cause."""
        assert self._process is not None and self._pump is not None
        self._pump.join()
        returncode = self._process.wait()
        if self._timer is not None:
            self._timer.cancel()
        if self._interrupted is not None and returncode != 0:
            raise BackupInterrupted(
                f"the backup was stopped before pg_dump finished: {self._interrupted}"
            )
        if self._timed_out.is_set():
            raise DumpError(
                f"pg_dump did not finish within BACKUP_TIMEOUT_MINUTES "
                f"({self.timeout_seconds or 0:g} s) and was stopped"
            )
        if returncode != 0 or self._pump_error is not None:
            self._raise_stats_failure()  # the counts' failure, if any, is the root cause
            tail = self._process.stderr_tail() or "(no error output)"
            how = (
                f"was killed by signal {-returncode}"
                if returncode < 0
                else f"exited with status {returncode}"
                if returncode
                else f"output could not be read ({type(self._pump_error).__name__})"
            )
            raise DumpError(f"pg_dump {how}: {tail}", cause=f"pg_dump {how}: {tail}")
        return self._hasher.hexdigest()

    def stats(self) -> SnapshotStats:
        """Wait for and return the statistics taken in the dump's snapshot (DumpError if
        they failed)."""
        assert self._stats is not None
        return self._stats.result()

    def _raise_stats_failure(self) -> None:
        if self._stats is not None and self._stats.done():
            error = self._stats.exception()
            if isinstance(error, DumpError):
                raise error

    # --- clean-up -----------------------------------------------------------------------------
    def close(self) -> None:
        """Kill pg_dump if it runs, stop the pump, end the snapshot and release the lock."""
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._process is not None:
            self._process.close()
        if self._pump is not None:
            self._pump.join(timeout=10)
        if self._stats is not None and not self._stats.done() and self._snapshot is not None:
            self._snapshot.cancel()  # do not wait for row counts of a backup that failed
        if self._stats_pool is not None:
            self._stats_pool.shutdown(wait=True)
        if self._snapshot is not None:
            self._snapshot.close()
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def __enter__(self) -> DumpStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
