"""The bot's own WAL pipeline under a steady Blnk-like load (issue 15, item 10; not part of the
test suite).

Everything runs against one PostgreSQL 15 source cluster of its own (scram, a role with
REPLICATION and nothing else, the Blnk 0.15 ledger of ``core.blnkgen``) and one S3 server process
(SeaweedFS by default, as the other benchmarks), the candidates taking turns:

  1. Recovery point. ``blnk-backup wal-stream`` (the product's WalReceiver: pg_receivewal
     --synchronous on a slot, finished segments and the ``.partial`` shipped on a timer, then
     ``wal/position.json``) runs beside a bare ``pg_receivewal --synchronous`` on a slot of its
     own, under pgbench at a fixed rate (per transaction one ``blnk.transactions`` insert and the
     two ``blnk.balances`` updates, as Blnk posts a payment). Per phase, for one
     WAL_SHIP_PARTIAL_SECONDS (10, the default, and a shorter one, alternating):
       a. on the bot's host: the primary's pg_current_wal_lsn() minus each receiver's
          write/flush position (pg_stat_replication, joined to its slot), sampled every 100 ms,
          in bytes and in ms (how long ago the primary was where the receiver has flushed);
       b. in the store: ``wal/position.json`` polled every 100 ms; for every 100 ms sample of
          the primary's position, the seconds until the store said it held WAL up to there
          (commit → in the store), and at every poll the age of the store's recovery point
          (what is lost if the database host and the bot's host are both lost at that moment)
          next to the lag the product itself reports (now - ``shipped_at``, what
          ``/healthz?check=backups`` compares with WAL_MAX_LAG_SECONDS); at the end the newest
          ``.partial`` in the store (shipped without its trailing zeros, cut at a WAL page) is
          read back, given its 16 MiB again, and checked to hold what position.json says;
          and what wal/ holds per finished segment (a ``.partial`` left beside one).
  2. CPU of the bot's host per GB of WAL: the product's process tree (the Python receiver and
     its pg_receivewal child, psutil) against the bare pg_receivewal streaming the same WAL at the
     same time; the S3 server's CPU apart (co-located here, another host in production); bytes
     uploaded per byte of WAL.
  3. Base backups, idle database, rounds alternating: ``blnk-backup base-backup``
     (BaseBackupService.run: pg_basebackup -Ft -X none to a verified multipart upload) against
     the same pg_basebackup command to /dev/null, to a local file, and piped into a naive
     ``boto3 upload_fileobj(stdin)`` script. Wall time and client CPU (pg_basebackup included).
  4. Restore to a time: a target inside a minute of load after the newest base backup;
     ``PointInTimeRecovery.recover(cluster=DIR)`` (with the ledger proof, and with the proof
     stubbed out in this process) against a bare manual restore of the same base backup and WAL
     (boto3 downloads, ``truncate -s 16M`` of the ``.partial``, ``tar -x``, ``restore_command``
     cp with the ``.partial`` fallback, ``recovery_target_time``, pg_ctl start, wait for
     promotion). RTO, phases, and the rows each restored cluster holds against what pgbench saw
     committed by the target. Then once each the newest point (``recover(actor, None)``) and
     the window's newest time given as a time, against every payment committed.

    .venv/bin/python bench/wal_pipeline_bench.py --rounds 5            # ~11 min
    .venv/bin/python bench/wal_pipeline_bench.py --quick               # a smoke run, ~3 min

Measured the same way as the other benchmarks: the candidates of each part take turns (the
order rotates every round) and the report gives medians; the machine is shared, so run it
twice and compare before believing a difference of less than ~20 %.

JSON goes to bench/results/ (not committed).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.actor import Actor  # noqa: E402
from core.blnkgen import generate  # noqa: E402
from core.config import load_settings  # noqa: E402
from core.database import PgTarget  # noqa: E402
from core.localserver import free_port, run_base, server_user  # noqa: E402
from core.services import Services  # noqa: E402
from core.wal.names import SEGMENT_SIZE, Segment, parse_lsn  # noqa: E402
from tests.support.pgcluster import PasswordCluster  # noqa: E402
from tests.support.s3server import S3ServerProcess  # noqa: E402
from tests.support.s3server_alt import SeaweedS3ServerProcess  # noqa: E402
from tests.support.stores import ACCESS_KEY, SECRET_KEY, raw_s3  # noqa: E402

PAGE = 8192
GB = 1e9
BUCKET = "blnk-wal-bench"
REPLICATOR, REPLICATOR_PASSWORD = "replicator", "replicator-password-123"
ACTOR = Actor("wal-bench", "cli")
OWNER = server_user()  # as root, PostgreSQL (and the manual restore) runs as postgres

SOURCE_CONF = {
    "wal_level": "replica",
    "max_wal_senders": "16",
    "max_replication_slots": "16",
    "max_slot_wal_keep_size": "8GB",
    "shared_buffers": "512MB",
    "max_wal_size": "2GB",
    "synchronous_commit": "on",
}

# One Blnk payment: the APPLIED transaction and the two balances it moves, in one transaction,
# within one currency (balances.id % 4 is the currency in the generated ledger), the balances
# updated in id order (no deadlocks). Amounts in minor units, as Blnk keeps balances.
PGBENCH_SCRIPT = r"""\set k random(0, :per_currency - 1)
\set d random(1, :per_currency - 1)
\set c random(1, 4)
\set amt random(1, 100000)
\set src 4 * :k + :c
\set dst 4 * ((:k + :d) % :per_currency) + :c
\set lo least(:src, :dst)
\set hi greatest(:src, :dst)
BEGIN;
INSERT INTO blnk.transactions (transaction_id, source, destination, reference, amount,
    precise_amount, precision, currency, status, hash, created_at)
  SELECT 'txn_' || gen_random_uuid(), s.balance_id, t.balance_id, 'ref_' || gen_random_uuid(),
         :amt / 100.0, :amt, 100, s.currency, 'APPLIED',
         md5(random()::text) || md5(random()::text), now()
  FROM blnk.balances s, blnk.balances t WHERE s.id = :src AND t.id = :dst;
UPDATE blnk.balances SET
    debit_balance = debit_balance + CASE WHEN id = :src THEN :amt ELSE 0 END,
    credit_balance = credit_balance + CASE WHEN id = :dst THEN :amt ELSE 0 END,
    balance = balance + CASE WHEN id = :dst THEN :amt ELSE -:amt END
  WHERE id = :lo;
UPDATE blnk.balances SET
    debit_balance = debit_balance + CASE WHEN id = :src THEN :amt ELSE 0 END,
    credit_balance = credit_balance + CASE WHEN id = :dst THEN :amt ELSE 0 END,
    balance = balance + CASE WHEN id = :dst THEN :amt ELSE -:amt END
  WHERE id = :hi;
END;
"""

SAMPLE_SQL = """
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
       (SELECT coalesce(json_object_agg(s.slot_name, json_build_array(
                pg_wal_lsn_diff(r.write_lsn, '0/0')::bigint,
                pg_wal_lsn_diff(r.flush_lsn, '0/0')::bigint,
                extract(epoch FROM r.flush_lag),
                pg_wal_lsn_diff(s.restart_lsn, '0/0')::bigint)), '{}')
        FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
        WHERE s.slot_name::text = ANY(%s)),
       (SELECT xact_commit FROM pg_stat_database WHERE datname = 'blnk')
"""

# The product's receiver as `blnk-backup wal-stream` runs it, with each shipped file and each
# position.json written logged to BENCH_EVENTS (time, bytes, the main thread's CPU for it).
_RECEIVER = r"""
import json, os, sys, time
from core.wal import archive as _archive, receiver as _receiver
_log = open(os.environ["BENCH_EVENTS"], "a", buffering=1)
def _emit(**event):
    _log.write(json.dumps(event) + "\n")
_ship = _archive.WalArchive.ship
def _timed_ship(self, path):
    began, cpu = time.time(), time.thread_time()
    size = _ship(self, path)
    _emit(e="ship", name=path.name, bytes=size, t0=began, t1=time.time(),
          cpu=time.thread_time() - cpu)
    return size
_archive.WalArchive.ship = _timed_ship
_record = _receiver.WalReceiver._record_position
def _timed_record(self, timeline, lsn, at):
    before = (self.state.position, self.state.position_at)
    _record(self, timeline, lsn, at)
    if (self.state.position, self.state.position_at) != before:
        _emit(e="position", lsn=lsn, at=self.state.position_at.timestamp(), t=time.time())
_receiver.WalReceiver._record_position = _timed_record
_forget = _archive.WalArchive.forget_partial
def _timed_forget(self, name):
    began = time.time()
    _forget(self, name)
    _emit(e="forget", name=name, t0=began, t1=time.time())
_archive.WalArchive.forget_partial = _timed_forget
from bot.cli import run
sys.argv = ["blnk-backup", "wal-stream"]
sys.exit(run())
"""

# `blnk-backup ARGS` as its console script runs it; at exit, the CPU of its children
# (pg_basebackup, --version probes) so the parent can split it from the Python process's own.
_PROGRAM = r"""
import atexit, json, os, resource, sys
def _report():
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.environ["BENCH_RUSAGE_OUT"], "w") as out:
        json.dump({"children_cpu": c.ru_utime + c.ru_stime}, out)
atexit.register(_report)
from bot.cli import run
sys.exit(run())
"""


# --- small helpers ---------------------------------------------------------------------------


def pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])

    return {
        "n": len(ordered),
        "p50": at(0.5),
        "p90": at(0.9),
        "p99": at(0.99),
        "max": float(ordered[-1]),
    }


def tree_cpu(pid: int) -> float:
    """User + system CPU of a process, its live descendants and its reaped children."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def machine_busy() -> float:
    """CPU-seconds the whole machine spent busy so far (every process, both vCPUs)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 30) -> None:
    """SIGTERM a process this script started (and wait); SIGKILL only if it will not stop."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(what: str, check: Any, timeout: float = 120, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every)


def owned_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    if OWNER is not None:
        os.chown(path, OWNER.uid, OWNER.gid)
    return path


def as_server(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a server-side command (tar into a data directory, pg_ctl) as PostgreSQL's OS user."""
    kwargs: dict[str, Any] = {}
    if OWNER is not None:
        kwargs = {"user": OWNER.uid, "group": OWNER.gid, "extra_groups": []}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd="/", **kwargs
    )


def wait4(proc: subprocess.Popen[Any]) -> tuple[int, float]:
    """Wait for a child; its exit code and the CPU it (and its waited-for children) used."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def written_end(body: bytes, segment_start: int) -> int:
    """The LSN up to which a (.partial) segment's bytes hold WAL: pg_receivewal pads it with
    zeros, so the written pages are those with a page header (never zero), in order."""
    lo, hi = 0, len(body) // PAGE
    while lo < hi:
        mid = (lo + hi) // 2
        if body[mid * PAGE : mid * PAGE + 2] != b"\0\0":
            lo = mid + 1
        else:
            hi = mid
    if lo == 0:
        return segment_start
    last = body[(lo - 1) * PAGE : lo * PAGE].rstrip(b"\0")
    return segment_start + (lo - 1) * PAGE + len(last)


# --- the source and the load ----------------------------------------------------------------


class Source:
    def __init__(self, pg_bin: Path) -> None:
        self.per_currency = 0
        self.cluster = PasswordCluster()
        self.bin = pg_bin
        self.cluster.bin = pg_bin

    def start(self, transactions: int) -> dict[str, Any]:
        self.cluster.start(
            conf=SOURCE_CONF,
            hba=[f"host replication {REPLICATOR} 127.0.0.1/32 scram-sha-256"],
        )
        with self.admin.connect(autocommit=True) as conn:
            conn.execute(
                f"CREATE ROLE {REPLICATOR} LOGIN REPLICATION PASSWORD '{REPLICATOR_PASSWORD}'"
            )
        made = generate(self.admin, "blnk", transactions)
        with self.ledger.connect(autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")
            # The generated balances: ids 1..4K, the currency by id % 4 (the load relies on it).
            row = conn.execute(
                "SELECT count(*), count(DISTINCT currency), max(id), "
                "count(DISTINCT (id % 4, currency)) FROM blnk.balances"
            ).fetchone()
        assert row is not None and row[1] == 4 and row[2] == row[0] and row[3] == 4, row
        self.per_currency = int(row[0]) // 4
        return {
            "transactions": transactions,
            "db_bytes": made.size_bytes,
            "generate_s": round(made.seconds, 1),
        }

    @property
    def admin(self) -> PgTarget:
        return PgTarget.from_url(self.cluster.url())

    @property
    def ledger(self) -> PgTarget:
        return PgTarget.from_url(self.cluster.url(dbname="blnk"))

    @property
    def port(self) -> int:
        return self.cluster.port

    def replication_conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={REPLICATOR} dbname=postgres"

    def replication_env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": REPLICATOR_PASSWORD}

    def one(self, sql: str, params: Any = None) -> Any:
        with self.admin.connect(autocommit=True) as conn:
            row = conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def execute(self, sql: str) -> None:
        with self.admin.connect(autocommit=True) as conn:
            conn.execute(sql)

    def count(self) -> int:
        with self.ledger.connect(autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM blnk.transactions").fetchone()
        return int(row[0]) if row else 0

    def current_lsn(self) -> int:
        return int(self.one("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"))

    def drop_slot(self, slot: str) -> None:
        def gone() -> bool:
            active = self.one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            )
            if active is None:
                return True
            if not active:
                self.one("SELECT pg_drop_replication_slot(%s)::text", (slot,))
            return False

        wait_for(f"slot {slot} to be dropped", gone, timeout=60, every=0.2)

    def create_slot(self, slot: str) -> None:
        done = subprocess.run(
            [
                str(self.bin / "pg_receivewal"),
                f"--dbname={self.replication_conninfo()}",
                f"--slot={slot}",
                "--create-slot",
                "--if-not-exists",
                "--no-password",
            ],
            env=self.replication_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"creating slot {slot}: {done.stderr}")

    def stop(self) -> None:
        self.cluster.stop()


@dataclass
class Load:
    proc: subprocess.Popen[bytes]
    prefix: Path | None
    started: float


def start_load(
    work: Path, source: Source, rate: int, clients: int, seconds: int, tag: str, log: bool
) -> Load:
    script = work / "blnk_payment.sql"
    script.write_text(PGBENCH_SCRIPT)
    prefix = work / f"pgbench_{tag}" if log else None
    argv = [
        str(source.bin / "pgbench"),
        "-n",
        "-h",
        "127.0.0.1",
        "-p",
        str(source.port),
        "-U",
        PasswordCluster.user,
        "-f",
        str(script),
        "-c",
        str(clients),
        "-j",
        "2",
        "-R",
        str(rate),
        "-T",
        str(seconds),
        "blnk",
    ]
    if prefix is not None:
        argv[1:1] = ["-l", f"--log-prefix={prefix}"]
    argv[1:1] = ["-D", f"per_currency={source.per_currency}"]
    out = (work / f"pgbench-out-{tag}.txt").open("ab")
    env = {**os.environ, "PGPASSWORD": PasswordCluster.password}
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=work, env=env)
    return Load(proc, prefix, time.time())


def commit_windows(prefix: Path) -> list[tuple[float, float]]:
    """(sent, acknowledged) epoch times of every transaction from pgbench's -l log:
    ``client tx latency_us script epoch_s epoch_us schedule_lag_us`` (-R adds the lag)."""
    spans = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        for line in path.read_text().split("\n"):
            f = line.split()
            if len(f) < 7:
                continue
            acked = int(f[4]) + int(f[5]) / 1e6
            spans.append((acked - (int(f[2]) - int(f[6])) / 1e6, acked))
    return spans


# --- sampling --------------------------------------------------------------------------------


@dataclass
class DbSampler:
    """Every 100 ms: the primary's position, and write/flush/restart of the watched slots."""

    source: Source
    slots: list[str] = field(default_factory=list)
    interval: float = 0.1
    samples: list[tuple[float, int, dict[str, list[Any]], int]] = field(default_factory=list)
    _halt: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _cached: tuple[int, list[float], list[int]] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with self.source.admin.connect(autocommit=True) as conn:
            tick = time.monotonic()
            while not self._halt.is_set():
                row = conn.execute(SAMPLE_SQL, (list(self.slots),)).fetchone()
                assert row is not None
                self.samples.append((time.time(), int(row[0]), row[1] or {}, int(row[2] or 0)))
                tick += self.interval
                time.sleep(max(0.0, tick - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join()

    def active(self, *slots: str) -> bool:
        return bool(self.samples) and all(s in self.samples[-1][2] for s in slots)

    def between(self, since: float, until: float) -> list[tuple[float, int, dict, int]]:
        return [s for s in self.samples if since <= s[0] <= until]

    def _history(self) -> tuple[list[float], list[int]]:
        if self._cached is None or self._cached[0] != len(self.samples):
            samples = self.samples[:]
            self._cached = (len(samples), [s[0] for s in samples], [s[1] for s in samples])
        return self._cached[1], self._cached[2]

    def reached(self, lsn: int) -> float:
        """When the primary's position passed ``lsn`` (linear between samples)."""
        times, pos = self._history()
        j = bisect.bisect_left(pos, lsn)  # first sample at or past lsn
        if j == 0:
            return times[0]
        if j >= len(pos):
            return times[-1]
        lo, hi = pos[j - 1], pos[j]
        return times[j - 1] + (lsn - lo) / (hi - lo) * (times[j] - times[j - 1])

    def lsn_at(self, when: float) -> int:
        times, pos = self._history()
        return pos[max(0, bisect.bisect_right(times, when) - 1)]


@dataclass
class StorePoller:
    """Every 100 ms: GET wal/position.json under ``prefix`` (what the store says it holds)."""

    client: Any
    prefix: str
    interval: float = 0.1
    polls: list[tuple[float, int | None, float | None]] = field(default_factory=list)
    errors: int = 0
    _halt: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        key = f"{self.prefix}wal/position.json"
        tick = time.monotonic()
        while not self._halt.is_set():
            try:
                body = json.loads(self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
                shipped = datetime.fromisoformat(body["shipped_at"]).timestamp()
                self.polls.append((time.time(), parse_lsn(body["lsn"]), shipped))
            except self.client.exceptions.NoSuchKey:
                self.polls.append((time.time(), None, None))
            except Exception:
                self.errors += 1
            tick += self.interval
            time.sleep(max(0.0, tick - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join()

    def position(self) -> int | None:
        return self.polls[-1][1] if self.polls else None


# --- context ---------------------------------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    work: Path
    source: Source
    s3: Any  # SeaweedS3ServerProcess | S3ServerProcess
    client: Any
    sampler: DbSampler

    def settings_env(self, prefix: str, **extra: str) -> dict[str, str]:
        """The environment of a `blnk-backup` child with WAL_ARCHIVE on, under ``prefix``."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "S3_", "BLNK_", "WAL_", "BACKUP_", "SLACK_", "PG"))
        }
        return env | {
            "PYTHONPATH": str(ROOT),
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "S3_ENDPOINT_URL": self.s3.endpoint,
            "S3_BACKUP_BUCKET": BUCKET,
            "S3_BACKUP_PREFIX": prefix,
            "AUDIT_DATABASE_URL": f"sqlite:///{self.work / 'audit.sqlite3'}",
            "BLNK_DATABASE_URL": self.source.cluster.url(dbname="blnk"),
            "REPLICATION_DATABASE_URL": self.source.cluster.url(
                REPLICATOR_PASSWORD, user=REPLICATOR
            ),
            "WAL_ARCHIVE": "true",
            "WAL_MAX_LAG_SECONDS": "60",
            "WAL_SPOOL_DIR": str(self.work / "spool"),
            "PG_BIN_DIR": str(self.source.bin),
            **extra,
        }

    def services(self, prefix: str, **extra: Any) -> Services:
        return Services(
            load_settings(
                **extra,
                database_url=self.source.cluster.url(dbname="blnk"),
                replication_database_url=self.source.cluster.url(
                    REPLICATOR_PASSWORD, user=REPLICATOR
                ),
                s3_bucket=BUCKET,
                s3_endpoint_url=self.s3.endpoint,
                s3_prefix=prefix,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                aws_region="us-east-1",
                audit_database_url=f"sqlite:///{self.work / 'audit.sqlite3'}",
                wal_archive=True,
                pg_bin_dir=str(self.source.bin),
            )
        )

    def start_product_receiver(
        self, prefix: str, slot: str, ship_seconds: float, events: Path
    ) -> subprocess.Popen[bytes]:
        env = self.settings_env(
            prefix,
            WAL_SLOT_NAME=slot,
            WAL_SHIP_PARTIAL_SECONDS=str(ship_seconds),
            BENCH_EVENTS=str(events),
        )
        out = (self.work / f"receiver_{slot}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-c", _RECEIVER],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def start_bare_receiver(self, slot: str) -> subprocess.Popen[bytes]:
        self.source.create_slot(slot)
        directory = self.work / f"bare_{slot}"
        directory.mkdir()
        out = (self.work / f"bare_{slot}.log").open("ab")
        return subprocess.Popen(
            [
                str(self.source.bin / "pg_receivewal"),
                f"--dbname={self.source.replication_conninfo()}",
                f"--directory={directory}",
                f"--slot={slot}",
                "--synchronous",
                "--no-loop",
                "--no-password",
            ],
            env=self.source.replication_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def s3_cpu(self) -> float:
        return tree_cpu(self.s3.pid)


# --- 1 + 2: recovery point and CPU per GB ----------------------------------------------------


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stream_phase(ctx: Ctx, ship_seconds: float, tag: str) -> dict[str, Any]:
    args, source, sampler = ctx.args, ctx.source, ctx.sampler
    prefix = f"{tag}/"
    slot_p, slot_b = f"prod_{tag}", f"bare_{tag}"
    events = ctx.work / f"events_{tag}.jsonl"
    bare = product = None
    poller = StorePoller(raw_s3(ctx.s3.endpoint), prefix)
    result: dict[str, Any] = {"ship_partial_seconds": ship_seconds, "prefix": prefix}
    try:
        bare = ctx.start_bare_receiver(slot_b)
        product = ctx.start_product_receiver(prefix, slot_p, ship_seconds, events)
        sampler.slots = [slot_p, slot_b]
        poller.start()
        wait_for("both receivers streaming", lambda: sampler.active(slot_p, slot_b), 90)
        # The product's slot reserves WAL from the last checkpoint's redo point when it is made
        # (pg_create_physical_replication_slot(name, true)), and pg_receivewal starts from
        # there: it first catches up a backlog the bare receiver (its slot made by
        # pg_receivewal, reserving nothing) never streams. Measure only once the store holds
        # the WAL the primary had when both streamed; what position.json claimed meanwhile is
        # kept apart (catch_up).
        began, primary_then = time.time(), source.current_lsn()
        wait_for(
            "the product's backlog in the store",
            lambda: (poller.position() or 0) >= primary_then,
            timeout=180,
        )
        caught_up = time.time()
        time.sleep(args.warmup)
        load0 = os.getloadavg()
        busy0 = machine_busy()
        t0, cpu_p0, cpu_b0, cpu_s0 = (
            time.time(),
            tree_cpu(product.pid),
            tree_cpu(bare.pid),
            ctx.s3_cpu(),
        )
        time.sleep(args.window)
        busy1 = machine_busy()
        t1, cpu_p1, cpu_b1, cpu_s1 = (
            time.time(),
            tree_cpu(product.pid),
            tree_cpu(bare.pid),
            ctx.s3_cpu(),
        )
        # Keep streaming (and polling) a little longer, so the last commits of the window are
        # seen arriving in the store.
        time.sleep(ship_seconds + 5)
        poller.stop()
        result["partial_check"] = check_newest_partial(ctx, prefix, ctx.work / f"bare_{slot_b}")
        result["store_objects"] = store_objects(ctx, prefix)
    finally:
        poller.stop()
        stop_process(product)
        stop_process(bare)
    for slot in (slot_p, slot_b):
        source.drop_slot(slot)
    # --- figures ----------------------------------------------------------------------------
    window_all = sampler.between(began - 30, t1)
    window = sampler.between(t0, t1)
    wal = window[-1][1] - window[0][1]
    seconds = window[-1][0] - window[0][0]
    result |= {
        "window_s": seconds,
        "wal_bytes": wal,
        "wal_mib_per_s": wal / seconds / 2**20,
        "tps": (window[-1][3] - window[0][3]) / seconds,
    }
    host: dict[str, Any] = {}
    for name, slot in (("product", slot_p), ("bare", slot_b)):
        flush_b, write_b, flush_ms, server_ms, restart_b, missing = [], [], [], [], [], 0
        for t, current, repl, _ in window:
            if slot not in repl:
                missing += 1
                continue
            write, flush, lag, restart = repl[slot]
            flush_b.append(max(0, current - flush))
            write_b.append(max(0, current - write))
            restart_b.append(max(0, current - restart))
            flush_ms.append(1000 * max(0.0, t - sampler.reached(flush)) if flush < current else 0.0)
            server_ms.append(1000 * (lag or 0.0))
        host[name] = {
            "missing_samples": missing,
            "flush_lag_bytes": pct(flush_b),
            "flush_lag_ms": pct(flush_ms),
            "write_lag_bytes": pct(write_b),
            "slot_restart_lag_bytes": pct(restart_b),
            "server_flush_lag_ms": pct(server_ms),
        }
    result["host"] = host
    # In the store, from the outside (polls) and from the product's own log (position events).
    polls = [(t, lsn, shipped) for t, lsn, shipped in poller.polls if lsn is not None]
    logged = [(e["t"], e["lsn"]) for e in read_events(events) if e["e"] == "position"]
    early = [(t, lsn, s) for t, lsn, s in polls if t <= caught_up and s]
    result["catch_up"] = {
        "seconds": caught_up - began,
        "first_restart_lsn_behind_primary_bytes": first_restart_lsn_behind_primary(
            window_all, slot_p
        ),
        "claim_ahead_of_position_s": pct([s - sampler.reached(lsn) for _, lsn, s in early]),
        "reported_lag_s": pct([max(0.0, t - s) for t, _, s in early]),
        "recovery_point_age_s": pct([max(0.0, t - sampler.reached(lsn)) for t, lsn, _ in early]),
    }
    result["store"] = {
        "commit_to_store_s": commit_to_store(window, [(t, lsn) for t, lsn, _ in polls]),
        "commit_to_store_s_logged": commit_to_store(window, logged),
        "recovery_point_age_s": pct(
            [max(0.0, t - sampler.reached(lsn)) for t, lsn, _ in polls if t0 <= t <= t1]
        ),
        "reported_lag_s": pct([max(0.0, t - s) for t, _, s in polls if t0 <= t <= t1 and s]),
        # shipped_at minus when the primary passed the position it comes with: > 0 is a claim
        # that commits up to shipped_at are in the store while those made in between are not
        # (the receiver's flush lag when the server was asked; 100 ms sampling, interpolated)
        "claim_ahead_of_position_s": pct(
            [s - sampler.reached(lsn) for t, lsn, s in polls if t0 <= t <= t1 and s]
        ),
        "polls": len([p for p in poller.polls if t0 <= p[0] <= t1]),
        "poll_errors": poller.errors,
    }
    ships = [e for e in read_events(events) if e["e"] == "ship" and t0 <= e["t0"] <= t1]
    partial = [e for e in ships if e["name"].endswith(".partial")]
    forgets = [e for e in read_events(events) if e["e"] == "forget" and t0 <= e["t0"] <= t1]
    result["shipping"] = {
        "files": len(ships),
        "partials": len(partial),
        "partial_bytes": pct([e["bytes"] for e in partial]),
        "forget_partial_calls": len(forgets),
        "forget_partial_s": pct([e["t1"] - e["t0"] for e in forgets]),
        "bytes": sum(e["bytes"] for e in ships),
        "upload_bytes_per_wal_byte": sum(e["bytes"] for e in ships) / wal if wal else None,
        "ship_s": pct([e["t1"] - e["t0"] for e in ships]),
        "ship_cpu_s_total": sum(e["cpu"] for e in ships),
    }
    cpu_p, cpu_b, cpu_s = cpu_p1 - cpu_p0, cpu_b1 - cpu_b0, cpu_s1 - cpu_s0
    result["cpu"] = {
        "product_s": cpu_p,
        "bare_s": cpu_b,
        "s3_server_s": cpu_s,
        "product_s_per_gb": cpu_p / (wal / GB),
        "bare_s_per_gb": cpu_b / (wal / GB),
        "s3_server_s_per_gb": cpu_s / (wal / GB),
        "product_over_bare": cpu_p / cpu_b if cpu_b else None,
        "machine_busy_s": busy1 - busy0,
        "machine_busy_fraction": (busy1 - busy0) / (t1 - t0) / (os.cpu_count() or 1),
        "loadavg_at_start": load0,
        "loadavg_1m_at_end": os.getloadavg()[0],
    }
    return result


def first_restart_lsn_behind_primary(
    samples: list[tuple[float, int, dict[str, Any], int]], slot: str
) -> int | None:
    """How far behind the primary the slot's restart_lsn was at its first sample (the backlog
    its receiver begins with)."""
    for _, current, repl, _ in samples:
        if slot in repl and repl[slot][3] is not None:
            return current - int(repl[slot][3])
    return None


def commit_to_store(
    window: list[tuple[float, int, dict, int]], seen: list[tuple[float, int]]
) -> dict[str, Any]:
    """For each sample of the primary's position in the window (the commits acknowledged by
    then), the seconds until ``seen`` (time, position the store holds) first covers it."""
    seen = sorted(seen)
    times = [t for t, _ in seen]
    best: list[int] = []  # running max of the positions, for a monotone search
    for _, lsn in seen:
        best.append(max(lsn, best[-1]) if best else lsn)
    delays, uncovered = [], 0
    for t, lsn, _, _ in window:
        j = bisect.bisect_left(best, lsn)
        while j < len(times) and times[j] < t:  # a poll older than the commit says nothing
            j += 1
        if j >= len(times):
            uncovered += 1
            continue
        delays.append(times[j] - t)
    return pct(delays) | {"uncovered": uncovered}


def check_newest_partial(ctx: Ctx, prefix: str, bare_dir: Path) -> dict[str, Any]:
    """Read position.json, then the .partial of its segment: does the store hold WAL up to
    the position it claims? The stored object is cut after its last written page (the
    receiver ships it without the zeros pg_receivewal pads it with): it is given back its
    16 MiB as the product's fetch does, and its bytes up to the claimed position are compared
    with the bare receiver's copy of the same segment (the same stream, flushed further by
    then). A finished segment holds its whole range by definition."""
    body = json.loads(
        ctx.client.get_object(Bucket=BUCKET, Key=f"{prefix}wal/position.json")["Body"].read()
    )
    claimed = parse_lsn(body["lsn"])
    segment = Segment.of(int(body["timeline"]), claimed - 1)
    names = [
        o["Key"].rsplit("/", 1)[1]
        for page in ctx.client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"{prefix}wal/"
        )
        for o in page.get("Contents", [])
    ]
    if segment.name in names:
        return {"claimed": body["lsn"], "in": segment.name, "holds": True, "finished": True}
    key = f"{prefix}wal/{segment.name}.partial"
    data = ctx.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    stored = len(data)
    data = data.ljust(SEGMENT_SIZE, b"\0")  # as WalArchive.fetch gives it back
    end = written_end(data, segment.start_lsn)
    upto = claimed - segment.start_lsn
    bare = next(
        (
            bare_dir / n
            for n in (segment.name, segment.name + ".partial")
            if (bare_dir / n).exists()
        ),
        None,
    )
    same = None
    if bare is not None:
        with bare.open("rb") as f:
            same = f.read(upto) == data[:upto]
    return {
        "claimed": body["lsn"],
        "in": segment.name + ".partial",
        "stored_bytes": stored,
        "stored_at_page_boundary": stored % PAGE == 0,
        "covers_claim": stored >= upto,
        "written_end_nonzero": end,
        "holds": same,
        "finished": False,
    }


def store_objects(ctx: Ctx, prefix: str) -> dict[str, Any]:
    """What wal/ holds: finished segments, .partial objects, and those of them whose segment is
    also there finished (kept, though recovery never reads them)."""
    objects = [
        (o["Key"].rsplit("/", 1)[1], o["Size"])
        for page in ctx.client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"{prefix}wal/"
        )
        for o in page.get("Contents", [])
    ]
    finished = {n for n, _ in objects if Segment.parse(n) is not None}
    partials = [(n, size) for n, size in objects if n.endswith(".partial")]
    stale = [(n, size) for n, size in partials if n.removesuffix(".partial") in finished]
    live = [(n, size) for n, size in partials if n.removesuffix(".partial") not in finished]
    segment_bytes = sum(size for n, size in objects if n in finished)
    wal_bytes = sum(size for n, size in objects if n in finished or n.endswith(".partial"))
    return {
        "segments": len(finished),
        "segment_bytes": segment_bytes,
        "partials": len(partials),
        "partial_sizes": [size for _, size in partials],
        "stale_partials": len(stale),
        "stale_partial_bytes": sum(size for _, size in stale),
        "live_partial_bytes": sum(size for _, size in live),
        # bytes under wal/ (segments and .partial) per byte of the finished segments
        "storage_per_segment_byte": wal_bytes / segment_bytes if segment_bytes else None,
        "storage_per_segment_byte_without_live": (wal_bytes - sum(s for _, s in live))
        / segment_bytes
        if segment_bytes
        else None,
    }


# --- 3: base backups -------------------------------------------------------------------------


def basebackup_argv(source: Source) -> list[str]:
    """The pg_basebackup command BaseBackupService runs (core/wal/basebackup.py)."""
    return [
        str(source.bin / "pg_basebackup"),
        "--pgdata=-",
        "--format=tar",
        "--wal-method=none",
        "--checkpoint=fast",
        "--manifest-checksums=SHA256",
        "--label=wal-bench",
        f"--dbname={source.replication_conninfo()}",
        "--no-password",
    ]


def bb_product(ctx: Ctx, prefix: str) -> dict[str, Any]:
    rusage = ctx.work / "rusage.json"
    rusage.unlink(missing_ok=True)
    env = ctx.settings_env(prefix, BENCH_RUSAGE_OUT=str(rusage), WAL_SLOT_NAME="pitr")
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _PROGRAM, "base-backup", "--json", "--reason", "wal bench"],
        env=env,
        cwd=ROOT,
        stdout=(ctx.work / "bb.out").open("wb"),
        stderr=(ctx.work / "bb.err").open("wb"),
    )
    code, total = wait4(proc)
    wall = time.monotonic() - began
    if code != 0:
        raise RuntimeError(f"blnk-backup base-backup failed: {(ctx.work / 'bb.err').read_text()}")
    children = json.loads(rusage.read_text())["children_cpu"]
    made = json.loads((ctx.work / "bb.out").read_text())
    return {
        "wall": wall,
        "client_cpu": total,
        "pg_basebackup_cpu": children,
        "python_cpu": total - children,
        "bytes": made["size"],
        "key": made["key"],
    }


def bb_bare(ctx: Ctx, to: str) -> dict[str, Any]:
    target = ctx.work / "bare_base.tar"
    began = time.monotonic()
    with open(os.devnull if to == "null" else target, "wb") as out:
        proc = subprocess.Popen(
            basebackup_argv(ctx.source),
            stdout=out,
            stderr=subprocess.PIPE,
            env=ctx.source.replication_env(),
        )
        assert proc.stderr is not None
        said = proc.stderr.read()
        code, cpu = wait4(proc)
    wall = time.monotonic() - began
    if code != 0:
        raise RuntimeError(f"pg_basebackup failed: {said.decode()[-500:]}")
    size = target.stat().st_size if to == "file" else None
    target.unlink(missing_ok=True)
    return {"wall": wall, "client_cpu": cpu, "pg_basebackup_cpu": cpu, "bytes": size}


def bb_naive(ctx: Ctx, round_no: int) -> dict[str, Any]:
    key = f"naive/base-{round_no}.tar"
    env = ctx.settings_env("naive/")
    began = time.monotonic()
    dump = subprocess.Popen(
        basebackup_argv(ctx.source),
        stdout=subprocess.PIPE,
        stderr=(ctx.work / "naive.err").open("ab"),
        env=ctx.source.replication_env(),
    )
    upload = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "naive_upload.py"), key], stdin=dump.stdout, env=env
    )
    assert dump.stdout is not None
    dump.stdout.close()
    up_code, up_cpu = wait4(upload)
    dump_code, dump_cpu = wait4(dump)
    wall = time.monotonic() - began
    if up_code or dump_code:
        raise RuntimeError(f"naive pipeline failed ({dump_code}, {up_code})")
    size = ctx.client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    ctx.client.delete_object(Bucket=BUCKET, Key=key)
    return {
        "wall": wall,
        "client_cpu": up_cpu + dump_cpu,
        "pg_basebackup_cpu": dump_cpu,
        "python_cpu": up_cpu,
        "bytes": size,
    }


def base_backups(ctx: Ctx) -> dict[str, Any]:
    candidates = [
        ("product", lambda i: bb_product(ctx, "pitr/")),
        ("bare_null", lambda i: bb_bare(ctx, "null")),
        ("bare_file", lambda i: bb_bare(ctx, "file")),
        ("naive_boto3", lambda i: bb_naive(ctx, i)),
    ]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in candidates}
    for i in range(ctx.args.rounds):
        order = candidates[i % len(candidates) :] + candidates[: i % len(candidates)]
        for name, run in order:
            ctx.source.execute("CHECKPOINT")  # nobody pays for the load's dirty buffers
            time.sleep(1)
            s3_before = ctx.s3_cpu()
            r = run(i)
            r["s3_server_cpu"] = ctx.s3_cpu() - s3_before
            runs[name].append(r)
            print(
                f"  base backup round {i + 1} {name:>11}: {r['wall']:6.2f} s, "
                f"client {r['client_cpu']:5.2f} CPU-s",
                flush=True,
            )
    return runs


# --- 4: restore to a time --------------------------------------------------------------------


class PhaseTimer:
    """Wraps methods of the product's recovery (in this process only) to time its phases."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*a: Any, **k: Any) -> Any:
            began = time.monotonic()
            try:
                return original(*a, **k)
            finally:
                self.spent[label] = self.spent.get(label, 0.0) + time.monotonic() - began

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def undo(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()


def restore_product(
    ctx: Ctx, services: Services, target: datetime | None, label: str, proof: bool
) -> dict[str, Any]:
    import tarfile

    from core.store.s3 import S3Store
    from core.wal import recovery

    cluster = ctx.work / f"handed_{label}"
    timer = PhaseTimer()
    timer.wrap(recovery.PointInTimeRecovery, "_choose_base", "window + choose base")
    original_download = S3Store.download

    def download(self: Any, key: str, *a: Any, **k: Any) -> Any:  # base.tar apart from WAL
        began = time.monotonic()
        try:
            return original_download(self, key, *a, **k)
        finally:
            label = "download base.tar" if key.endswith("base.tar") else "download WAL"
            timer.spent[label] = timer.spent.get(label, 0.0) + time.monotonic() - began

    S3Store.download = download  # type: ignore[method-assign]
    timer._undo.append((S3Store, "download", original_download))
    timer.wrap(tarfile.TarFile, "extractall", "extract (tarfile)")
    timer.wrap(recovery._Scratch, "_own", "chown walk")
    timer.wrap(recovery._Scratch, "verify", "pg_verifybackup")
    timer.wrap(recovery.PointInTimeRecovery, "_fetch_wal", "fetch WAL (list, HEAD + GET each)")
    timer.wrap(recovery._Scratch, "start", "start + replay + promote")
    if proof:
        timer.wrap(recovery.PointInTimeRecovery, "_prove", "ledger proof")
    else:  # the stub, undone with the timers
        timer._undo.append(
            (recovery.PointInTimeRecovery, "_prove", recovery.PointInTimeRecovery._prove)
        )
        recovery.PointInTimeRecovery._prove = lambda self, scratch, target: None  # type: ignore[assignment,method-assign]
    timer.wrap(recovery._Scratch, "stop", "stop (shutdown checkpoint)")
    timer.wrap(recovery._Scratch, "hand_over", "hand over (move)")
    cpu0 = psutil.Process().cpu_times()
    began = time.monotonic()
    try:
        result = services.pitr.recover(ACTOR, target, cluster=cluster, reason="wal bench")
    finally:
        timer.undo()
    wall = time.monotonic() - began
    cpu1 = psutil.Process().cpu_times()
    cpu = sum(
        getattr(cpu1, f) - getattr(cpu0, f)
        for f in ("user", "system", "children_user", "children_system")
    )
    rows = count_in_cluster(ctx, cluster)
    shutil.rmtree(cluster, ignore_errors=True)
    phases = timer.spent
    # Time to a promoted cluster, comparable with the manual restore's end.
    to_promoted = wall - sum(
        phases.get(k, 0.0)
        for k in ("ledger proof", "stop (shutdown checkpoint)", "hand over (move)")
    )
    return {
        "rto": wall,
        "rto_reported": result.seconds,
        "to_promoted": to_promoted,
        "client_cpu": cpu,
        "rows": rows,
        "stopped": result.stopped,
        "lsn": result.lsn,
        "reached_target": result.target.isoformat(),
        "last_transaction_at": result.last_transaction_at.isoformat()
        if result.last_transaction_at
        else None,
        "notes": result.notes,
        "proof_passed": None if result.proof is None else result.proof.passed,
        "phases": phases,
    }


def count_in_cluster(ctx: Ctx, data: Path) -> int | None:
    """Start a handed-over (stopped) cluster on a port and socket of its own, count."""
    sockets = owned_dir(ctx.work / f"sock_{data.name}", 0o755)
    port = free_port()
    started = as_server(
        [
            str(ctx.source.bin / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(ctx.work / f"{data.name}.log"),
            "-w",
            "-o",
            f"-p {port} -k {sockets} -c listen_addresses=''",
            "start",
        ]
    )
    try:
        if started.returncode != 0:
            return None
        with psycopg.connect(
            host=str(sockets),
            port=port,
            user=PasswordCluster.user,
            dbname="blnk",
            password=PasswordCluster.password,
        ) as conn:
            row = conn.execute("SELECT count(*) FROM blnk.transactions").fetchone()
            return int(row[0]) if row else None
    finally:
        as_server([str(ctx.source.bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(sockets, ignore_errors=True)


def restore_manual(ctx: Ctx, base: Any, target: datetime, label: str) -> dict[str, Any]:
    """The bare manual restore: boto3 downloads (as `aws s3 cp`, --recursive for wal/), tar -x,
    restore_command cp with the .partial fallback, recovery_target_time, pg_ctl start, wait."""
    import boto3
    from botocore.config import Config

    root = owned_dir(ctx.work / f"manual_{label}", 0o755)
    data, wal = root / "pgdata", root / "wal"
    port = free_port()
    phases: dict[str, float] = {}
    cpu0 = psutil.Process().cpu_times()
    began = mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name] = now - mark
        mark = now

    client = boto3.client(
        "s3",
        endpoint_url=ctx.s3.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    client.download_file(BUCKET, base.key, str(root / "base.tar"))
    lap("download base.tar")
    wal.mkdir()
    keys = wal_to_fetch(client, base)
    with ThreadPoolExecutor(10) as pool:  # aws s3 cp --recursive: 10 requests at once
        list(
            pool.map(
                lambda k: client.download_file(BUCKET, k, str(wal / k.rsplit("/", 1)[1])), keys
            )
        )
    for partial in wal.glob("*.partial"):  # stored without zeros: `truncate -s 16M`
        os.truncate(partial, SEGMENT_SIZE)
    lap("download wal/")
    owned_dir(data)
    done = as_server(["tar", "-xf", str(root / "base.tar"), "-C", str(data)])
    if done.returncode != 0:
        raise RuntimeError(f"tar: {done.stderr}")
    lap("tar -x")
    stamp = target.astimezone(UTC).isoformat(sep=" ")
    with (data / "postgresql.auto.conf").open("a") as conf:
        conf.write(
            f"restore_command = 'cp {wal}/%f %p 2>/dev/null || cp {wal}/%f.partial %p'\n"
            f"recovery_target_time = '{stamp}'\nrecovery_target_action = 'promote'\n"
        )
    (data / "recovery.signal").touch()
    if OWNER is not None:
        for p in (data / "postgresql.auto.conf", data / "recovery.signal"):
            os.chown(p, OWNER.uid, OWNER.gid)
    started = as_server(
        [
            str(ctx.source.bin / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "recovery.log"),
            "-w",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=''",
            "start",
        ]
    )
    if started.returncode != 0:
        raise RuntimeError(f"pg_ctl start: {(root / 'recovery.log').read_text()[-800:]}")
    lap("pg_ctl start -w")

    def promoted() -> bool:
        try:
            with psycopg.connect(
                host=str(root),
                port=port,
                user=PasswordCluster.user,
                dbname="postgres",
                password=PasswordCluster.password,
                connect_timeout=5,
            ) as conn:
                row = conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()
                return bool(row and row[0])
        except psycopg.OperationalError:
            return False

    try:
        wait_for("the manual restore's promotion", promoted, timeout=900, every=0.1)
        lap("replay + promote")
        rto = time.monotonic() - began
        cpu1 = psutil.Process().cpu_times()
        with psycopg.connect(
            host=str(root),
            port=port,
            user=PasswordCluster.user,
            dbname="blnk",
            password=PasswordCluster.password,
        ) as conn:
            row = conn.execute("SELECT count(*) FROM blnk.transactions").fetchone()
        log = (root / "recovery.log").read_text()
        stopped = next(
            (
                ln.split("recovery stopping ", 1)[1]
                for ln in log.splitlines()
                if "recovery stopping " in ln
            ),
            None,
        )
    finally:
        as_server([str(ctx.source.bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)
    cpu = sum(
        getattr(cpu1, f) - getattr(cpu0, f)
        for f in ("user", "system", "children_user", "children_system")
    )
    return {
        "rto": rto,
        "to_promoted": rto,
        "client_cpu": cpu,
        "rows": int(row[0]) if row else None,
        "stopped": stopped,
        "phases": phases,
    }


def wal_to_fetch(client: Any, base: Any) -> list[str]:
    """What the product's recovery fetches, found by a person reading base.json: the history
    files, the segments from the base backup's start on, the .partial of a segment not
    finished (any .partial left beside a finished segment is skipped)."""
    names = [
        o["Key"].rsplit("/", 1)[1]
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix="pitr/wal/"
        )
        for o in page.get("Contents", [])
    ]
    first = Segment.of(base.timeline, base.start)
    segments = {Segment.parse(n) for n in names} - {None}
    wanted = []
    for name in names:
        if name.endswith(".history") or ((seg := Segment.parse(name)) is not None and seg >= first):
            wanted.append(name)
        elif name.endswith(".partial"):
            seg = Segment.parse(name.removesuffix(".partial"))
            if seg is not None and seg >= first and seg not in segments:
                wanted.append(name)
    return [f"pitr/wal/{n}" for n in wanted]


def restores(ctx: Ctx) -> dict[str, Any]:
    """Stream into pitr/ (its slot made before the base backups), load, then restore."""
    args, source = ctx.args, ctx.source
    events = ctx.work / "events_pitr.jsonl"
    receiver = ctx.start_product_receiver("pitr/", "pitr", 10, events)
    poller = StorePoller(raw_s3(ctx.s3.endpoint), "pitr/")
    poller.start()
    out: dict[str, Any] = {}
    try:
        ctx.sampler.slots = ["pitr"]
        wait_for("the pitr receiver", lambda: ctx.sampler.active("pitr"), 90)
        before = source.count()
        load = start_load(
            ctx.work, source, args.rate, args.clients, args.restore_load, "pitr", log=True
        )
        load.proc.wait()
        end_lsn = source.current_lsn()
        rows_at_end = source.count()  # every payment committed: what the newest point holds
        spans = commit_windows(load.prefix)  # type: ignore[arg-type]
        target_epoch = load.started + args.restore_load * 0.75
        target = datetime.fromtimestamp(target_epoch, UTC)
        caught_up = time.monotonic()
        wait_for(
            "the store to hold the end of the load",
            lambda: (poller.position() or 0) >= end_lsn,
            timeout=60,
        )
        out["store_caught_up_after_load_s"] = time.monotonic() - caught_up
    finally:
        poller.stop()
        stop_process(receiver)
    source.drop_slot("pitr")
    expected = (
        before + sum(1 for _, acked in spans if acked <= target_epoch),
        before + sum(1 for sent, _ in spans if sent <= target_epoch),
    )
    services = ctx.services("pitr/")
    window = services.pitr.window()
    try:
        base = services.pitr.check_target(target)
    except Exception:  # say what the store held, for whoever reads the traceback
        from core.wal.basebackup import BaseBackupService

        print(
            f"window {window}\nbases {BaseBackupService.list_in(services.store)}\n"
            f"WAL {services.pitr.archive.listing()}",
            file=sys.stderr,
        )
        raise
    first = Segment.of(base.timeline, base.start)
    listing = services.pitr.archive.listing()
    segments = [s for s in listing.segments if s >= first]
    target_segment = Segment.of(base.timeline, ctx.sampler.lsn_at(target_epoch))
    out |= {
        "target": target.isoformat(),
        "expected_rows_between": expected,
        "base_backup": base.key,
        "base_bytes": base.size,
        "wal_segments_after_base": len(segments) + (listing.partial is not None),
        "wal_segments_past_target": len([s for s in segments if s > target_segment])
        + (listing.partial is not None and listing.partial > target_segment),
        "store_objects": store_objects(ctx, "pitr/"),
        "window": window.as_dict(),
        "load_seconds": args.restore_load,
        "runs": {},
    }
    candidates = [
        ("product_proof", lambda i: restore_product(ctx, services, target, f"p{i}", True)),
        ("product_no_proof", lambda i: restore_product(ctx, services, target, f"n{i}", False)),
        ("manual", lambda i: restore_manual(ctx, base, target, f"m{i}")),
    ]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in candidates}
    try:
        for i in range(args.rounds):
            order = candidates[i % len(candidates) :] + candidates[: i % len(candidates)]
            for name, run in order:
                r = run(i)
                r["rows_ok"] = r["rows"] is not None and expected[0] <= r["rows"] <= expected[1]
                runs[name].append(r)
                print(
                    f"  restore round {i + 1} {name:>16}: RTO {r['rto']:6.2f} s "
                    f"(to promoted {r['to_promoted']:6.2f} s), rows {r['rows']} "
                    f"{'ok' if r['rows_ok'] else 'NOT in ' + str(expected)}",
                    flush=True,
                )
        # Once each: the newest recoverable point — recover(actor, None), what `restore
        # latest --at latest` and `restore-test pitr` ask for, and what a person recovering
        # after losing both hosts wants — and the window's newest time given as a time (what
        # failed before: a target after the newest commit in the store). Both must hold every
        # payment committed (the store held the end of the load before the receiver stopped).
        latest = window.latest
        assert latest is not None
        targets: list[tuple[str, datetime | None]] = [("newest", None), ("latest_as_time", latest)]
        for key, point in targets:
            try:
                got = restore_product(ctx, services, point, key, True)
            except Exception as exc:  # recorded: the figure is whether it works
                got = {"error": f"{type(exc).__name__}: {exc}"}
            got["target"] = point.isoformat() if point else "latest (None)"
            got["rows_committed_by_end_of_load"] = rows_at_end
            got["rows_acked_by_pgbench"] = before + len(spans)
            got["rows_ok"] = got.get("rows") == rows_at_end
            out[key] = got
            said = got.get("error") or (
                f"RTO {got['rto']:.2f} s, rows {got['rows']} of {rows_at_end} "
                f"({'exact' if got['rows_ok'] else 'NOT exact'}), {got['stopped']}"
            )
            print(f"  restore to {got['target']}: {said}", flush=True)
    finally:
        services.close()
    out["runs"] = runs
    return out


def make_slot_as_product(ctx: Ctx, slot: str) -> dict[str, Any]:
    """Make ``slot`` with the product's WalReceiver.ensure_slot; what the server then says of
    it (restart_lsn set: it keeps WAL from now on)."""
    services = ctx.services("pitr/", wal_slot_name=slot, wal_spool_dir=str(ctx.work / "spool"))
    try:
        services.wal_receiver().ensure_slot()
    finally:
        services.close()
    with ctx.source.admin.connect(autocommit=True) as conn:
        row = conn.execute(
            "SELECT restart_lsn::text, active FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    assert row is not None, f"no slot {slot}"
    return {
        "slot": slot,
        "restart_lsn": row[0],
        "active": row[1],
        "reserves_wal": row[0] is not None,
    }


# --- report ----------------------------------------------------------------------------------


def med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summary(report: dict[str, Any]) -> str:
    lines = []
    phases = report.get("stream", [])
    for setting in sorted({p["ship_partial_seconds"] for p in phases}, reverse=True):
        mine = [p for p in phases if p["ship_partial_seconds"] == setting]

        def m(*path: str, mine: list[dict[str, Any]] = mine) -> float | None:
            got = []
            for p in mine:
                node: Any = p
                for k in path:
                    node = node.get(k) if isinstance(node, dict) else None
                got.append(node)
            return med(got)

        lines.append(
            f"WAL_SHIP_PARTIAL_SECONDS={setting:g} ({len(mine)} phases, medians): "
            f"{m('tps'):.0f} tx/s, {m('wal_mib_per_s'):.2f} MiB/s of WAL"
        )
        for who in ("product", "bare"):
            lines.append(
                f"  host {who:>7}: flush lag p50 {m('host', who, 'flush_lag_bytes', 'p50'):,.0f} B"
                f" / p99 {m('host', who, 'flush_lag_bytes', 'p99'):,.0f} B; "
                f"{m('host', who, 'flush_lag_ms', 'p50'):.1f} / "
                f"{m('host', who, 'flush_lag_ms', 'p99'):.1f} ms"
            )
        for key in ("commit_to_store_s", "recovery_point_age_s", "reported_lag_s"):
            lines.append(
                f"  store {key}: p50 {m('store', key, 'p50'):.2f} s, p99 "
                f"{m('store', key, 'p99'):.2f} s, max {m('store', key, 'max'):.2f} s"
            )
        lines.append(
            f"  CPU s/GB of WAL: product {m('cpu', 'product_s_per_gb'):.1f}, bare "
            f"{m('cpu', 'bare_s_per_gb'):.1f} (x{m('cpu', 'product_over_bare'):.2f}); S3 server "
            f"{m('cpu', 's3_server_s_per_gb'):.1f}; uploaded "
            f"{m('shipping', 'upload_bytes_per_wal_byte'):.2f} B per WAL byte"
        )
        lines.append(
            f"  store: wal/ bytes per finished-segment byte "
            f"{m('store_objects', 'storage_per_segment_byte'):.2f} "
            f"({m('store_objects', 'storage_per_segment_byte_without_live'):.2f} without the "
            f"live .partial); .partial shipped p50 "
            f"{m('shipping', 'partial_bytes', 'p50') or 0:,.0f} B; shipped_at ahead of its "
            f"position p50 {m('store', 'claim_ahead_of_position_s', 'p50'):.3f} s, max "
            f"{m('store', 'claim_ahead_of_position_s', 'max'):.3f} s; newest .partial holds "
            f"its claim: {[p['partial_check'].get('holds') for p in mine]}"
        )
        lines.append(
            f"  catch-up before measuring: {m('catch_up', 'seconds'):.1f} s, backlog "
            f"{(m('catch_up', 'first_restart_lsn_behind_primary_bytes') or 0) / 2**20:.0f} MiB; "
            f"meanwhile shipped_at ahead of its position max "
            f"{m('catch_up', 'claim_ahead_of_position_s', 'max') or 0:.1f} s, reported lag max "
            f"{m('catch_up', 'reported_lag_s', 'max') or 0:.1f} s against a true age max "
            f"{m('catch_up', 'recovery_point_age_s', 'max') or 0:.1f} s"
        )
    bb = report.get("base_backup")
    if bb:
        ref = med([r["wall"] for r in bb["bare_null"]])
        for name, runs in bb.items():
            wall, cpu = med([r["wall"] for r in runs]), med([r["client_cpu"] for r in runs])
            lines.append(
                f"base backup {name:>11}: wall {wall:6.2f} s (x{wall / ref:.2f} of "
                f"bare /dev/null), client CPU {cpu:5.2f} s"
            )
    rs = report.get("restore")
    if rs:
        ref = med([r["rto"] for r in rs["runs"]["manual"]])
        for name, runs in rs["runs"].items():
            rto, prom = med([r["rto"] for r in runs]), med([r["to_promoted"] for r in runs])
            ok = sum(r["rows_ok"] for r in runs)
            lines.append(
                f"restore {name:>16}: RTO {rto:6.2f} s (x{rto / ref:.2f} of manual), "
                f"to promoted {prom:6.2f} s, rows ok {ok}/{len(runs)}"
            )
        for key in ("newest", "latest_as_time", "latest"):
            got = rs.get(key, {})
            if got:
                said = got.get("error") or (
                    f"RTO {got['rto']:.2f} s, rows {got['rows']} "
                    f"(committed {got.get('rows_committed_by_end_of_load')})"
                )
                lines.append(f"restore to {got.get('target')} ({key}): {said}")
    return "\n".join(lines)


def machine(pg_bin: Path, s3: str) -> dict[str, Any]:
    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()

    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in out("lscpu").splitlines()
            if ln.startswith("Model name")
        ),
        platform.processor(),
    )
    version = ""
    if s3 == "seaweedfs":
        from tests.support.s3server_alt import weed_binary

        version = (
            out(weed_binary(), "version").splitlines()[0] if out(weed_binary(), "version") else ""
        )
    else:
        import moto

        version = f"moto {moto.__version__}"
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": out(str(pg_bin / "postgres"), "--version"),
        "s3": f"{s3}: {version}",
        "loadavg_at_start": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transactions", type=int, default=300_000, help="ledger size")
    parser.add_argument("--rate", type=int, default=500, help="transactions/s (pgbench -R)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--ship", type=float, nargs="+", default=[10.0, 2.0], help="WAL_SHIP_PARTIAL_SECONDS values"
    )
    parser.add_argument("--stream-rounds", type=int, default=2)
    parser.add_argument("--window", type=int, default=60, help="seconds measured per phase")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="base backup and restore rounds")
    parser.add_argument(
        "--restore-load",
        type=int,
        default=60,
        help="seconds of load after the last base backup; the target is at 3/4 of it",
    )
    parser.add_argument("--s3", choices=["seaweedfs", "moto"], default="seaweedfs")
    parser.add_argument("--pg-bin", type=Path, default=Path("/usr/lib/postgresql/15/bin"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["stream", "base", "restore"])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small and short")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.quick:
        args.transactions, args.window, args.stream_rounds, args.rounds = 20_000, 15, 1, 1
        args.restore_load = 15

    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(args.pg_bin, args.s3),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    print(json.dumps(report["machine"]), flush=True)
    work = owned_dir(Path(tempfile.mkdtemp(prefix="walpipe-", dir=run_base(OWNER))), 0o755)
    s3 = SeaweedS3ServerProcess() if args.s3 == "seaweedfs" else S3ServerProcess()
    source = Source(args.pg_bin)
    sampler: DbSampler | None = None
    load: Load | None = None
    try:
        s3.start()
        client = raw_s3(s3.endpoint)
        client.create_bucket(Bucket=BUCKET)
        print(f"source: initdb + {args.transactions:,} Blnk transactions", flush=True)
        report["source"] = source.start(args.transactions)
        sampler = DbSampler(source)
        sampler.start()
        ctx = Ctx(args, work, source, s3, client, sampler)

        if "stream" not in args.skip:
            load = start_load(work, source, args.rate, args.clients, 24 * 3600, "stream", False)
            time.sleep(5)
            report["stream"] = []
            for r in range(args.stream_rounds):
                settings = args.ship if r % 2 == 0 else list(reversed(args.ship))
                for s in settings:
                    tag = f"s{r + 1}_{str(s).replace('.', '_')}"
                    print(f"stream round {r + 1}: WAL_SHIP_PARTIAL_SECONDS={s:g}", flush=True)
                    phase = stream_phase(ctx, s, tag)
                    phase["round"] = r + 1
                    report["stream"].append(phase)
                    print(summary({"stream": [phase]}), flush=True)
            stop_process(load.proc)
            load = None

        if "base" not in args.skip or "restore" not in args.skip:
            # Before the base backups, by the product (WalReceiver.ensure_slot, as wal-stream
            # and `wal-slot recreate` make it): it must reserve WAL at once, before any
            # receiver streams from it, or the base backups' first WAL may be gone.
            report["pitr_slot"] = make_slot_as_product(ctx, "pitr")
            print(f"pitr slot made by the product: {report['pitr_slot']}", flush=True)
            time.sleep(2)
        if "base" not in args.skip:
            print("base backups (idle database)", flush=True)
            report["base_backup"] = base_backups(ctx)
        elif "restore" not in args.skip:
            bb_product(ctx, "pitr/")
        if "restore" not in args.skip:
            print("restore to a time", flush=True)
            report["restore"] = restores(ctx)
    finally:
        if load is not None:
            stop_process(load.proc)
        if sampler is not None:
            sampler.stop()
        source.stop()
        s3.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"wal_pipeline_{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(summary(report))
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
