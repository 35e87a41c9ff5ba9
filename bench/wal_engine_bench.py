"""WAL archiving engine comparison (issue 15, item 1; not part of the test suite).

Two ways to stream WAL to the bot's host and recover to a point in time, measured on the same
PostgreSQL 15 cluster under the same Blnk-like load, both receivers streaming at once from their
own replication slot:

  A  PostgreSQL's own tools: pg_receivewal --slot --synchronous; pg_basebackup -Ft -X fetch
     --manifest-checksums=SHA256 + pg_verifybackup; recovery from the extracted tar with a
     restore_command that copies from the receiver's directory (falling back to the .partial)
  B  Barman (GPL-3, run only as a separate process from its own venv) in streaming-only mode:
     backup_method = postgres, streaming_archiver = on, a slot, `barman receive-wal`,
     `barman backup`, `barman archive-wal`, `barman recover --target-time --partial-wal`

The load is pgbench with a custom script (1 insert + 2 updates per transaction, -R rate limit),
its per-transaction log giving client-side commit times. Every round starts its own cluster
(initdb as the postgres user when run as root) on a free port and removes it at the end.

Measured per round:
  1. recovery point lag: primary's pg_current_wal_lsn() minus each receiver's flush_lsn (and
     write_lsn) in pg_stat_replication, sampled every 100 ms for --window seconds; in seconds,
     how long ago the primary's position was where the receiver's flushed position is now
     (interpolated in the sampled LSN history), and the server's own flush_lag;
  2. CPU-seconds of the receiver's process tree (psutil) per GB of WAL streamed;
  3. base backup wall time and CPU against a bare `pg_basebackup -Ft -D dir`, under the load;
  4. restore-to-time RTO, from nothing to a promoted cluster at the target, for a target in a
     completed segment and one in the still-.partial segment, with the row count checked
     against the transactions the client saw committed by then.

    .venv/bin/python bench/wal_engine_bench.py --rounds 2
    .venv/bin/python bench/wal_engine_bench.py --barman /tmp/barman-venv/bin/barman --rate 500
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import platform
import pwd
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SEGMENT = 16 * 1024 * 1024
PAGE = 8192
APP_A = "walbench_receivewal"
APP_B = "barman_receive_wal"  # Barman's default streaming_archiver_name
ENGINES = {"A": APP_A, "B": APP_B}

SOURCE_CONF = """
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
max_slot_wal_keep_size = 8GB
shared_buffers = 512MB
max_wal_size = 2GB
synchronous_commit = on
"""
HBA = "host replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n"

SCHEMA = """
CREATE TABLE balances (
    id int PRIMARY KEY, balance numeric NOT NULL DEFAULT 0, version bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()) WITH (fillfactor = 80);
INSERT INTO balances (id) SELECT generate_series(1, 10000);
CREATE TABLE ledger_tx (
    id bigserial PRIMARY KEY, reference text NOT NULL UNIQUE, source int NOT NULL,
    destination int NOT NULL, amount numeric NOT NULL, currency text NOT NULL DEFAULT 'USD',
    status text NOT NULL DEFAULT 'APPLIED', meta jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp());
INSERT INTO ledger_tx (reference, source, destination, amount, meta)
    SELECT md5(g::text), g % 10000 + 1, (g * 7) % 10000 + 1, g % 1000,
           jsonb_build_object('note', repeat('x', 150), 'n', g)
    FROM generate_series(1, %(rows)s) g;
"""

# One Blnk-like transaction: the ledger row, then both balances (in id order: no deadlocks).
PGBENCH_SCRIPT = r"""\set a random(1, 10000)
\set b random(1, 10000)
BEGIN;
INSERT INTO ledger_tx (reference, source, destination, amount, meta)
    VALUES (gen_random_uuid()::text, :a, :b, round((random() * 1000)::numeric, 2),
            jsonb_build_object('note', repeat('x', 150), 'client', :client_id));
UPDATE balances SET balance = balance - 1, version = version + 1, updated_at = now()
    WHERE id = least(:a, :b);
UPDATE balances SET balance = balance + 1, version = version + 1, updated_at = now()
    WHERE id = greatest(:a, :b);
END;
"""

SAMPLE_SQL = """
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
       (SELECT coalesce(json_object_agg(application_name, json_build_array(
                pg_wal_lsn_diff(write_lsn, '0/0')::bigint,
                pg_wal_lsn_diff(flush_lsn, '0/0')::bigint, extract(epoch FROM flush_lag))), '{}')
        FROM pg_stat_replication WHERE application_name IN (%s, %s))
"""


# --- processes: as root, everything that touches PostgreSQL files runs as postgres ----------


def _owner() -> pwd.struct_passwd | None:
    return pwd.getpwnam("postgres") if os.geteuid() == 0 else None


OWNER = _owner()


def _as_owner() -> dict[str, Any]:
    env = {**os.environ, "PATH": f"{PG_BIN}:{os.environ.get('PATH', '')}", "LC_ALL": "C.UTF-8"}
    if OWNER is None:
        return {"env": env}
    env |= {"HOME": OWNER.pw_dir, "USER": OWNER.pw_name, "LOGNAME": OWNER.pw_name}
    return {"env": env, "user": OWNER.pw_uid, "group": OWNER.pw_gid, "extra_groups": []}


@dataclass
class Timed:
    wall: float
    cpu: float
    stdout: str


def run(argv: list[str], *, check: bool = True, timeout: float = 900) -> Timed:
    """Run to completion as the cluster's owner; wall time and the CPU of the whole tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd="/", **_as_owner()
    )
    wall = time.monotonic() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}… failed ({done.returncode}): {done.stderr}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Timed(wall, cpu, done.stdout + done.stderr)


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd="/", **_as_owner())


def tree_cpu(pid: int) -> float:
    """User + system CPU of a process and its live descendants (and its reaped children)."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM a process this script started, then any of its descendants left behind."""
    if proc is None or proc.poll() is not None:
        return
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    psutil.wait_procs(children, timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if OWNER is not None:
        os.chown(path, OWNER.pw_uid, OWNER.pw_gid)
    return path


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- clusters --------------------------------------------------------------------------------


class Cluster:
    def __init__(self, data: Path, sockets: Path) -> None:
        self.data, self.sockets, self.port = data, sockets, free_port()

    def start(self, *settings: str) -> Timed:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1"
        options += "".join(f" -c {s}" for s in settings)
        log = self.data.parent / f"{self.data.name}.log"
        return run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(log),
                "-w",
                "-t",
                "600",
                "-o",
                options,
                "start",
            ]
        )

    def stop(self) -> None:
        run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"], check=False)

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def one(self, sql: str, params: Any = None) -> Any:
        with self.connect() as conn:
            row = conn.execute(sql, params).fetchone()
            return None if row is None else row[0]

    def promoted(self) -> bool:
        try:
            return bool(self.one("SELECT NOT pg_is_in_recovery()"))
        except psycopg.OperationalError:
            return False

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"


def make_source(work: Path, rows: int) -> Cluster:
    source = Cluster(work / "source", make_dir(work / "sockets"))
    run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(source.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-instructions",
        ]
    )
    with (source.data / "postgresql.conf").open("a") as conf:
        conf.write(SOURCE_CONF)
    (source.data / "pg_hba.conf").write_text(HBA + (source.data / "pg_hba.conf").read_text())
    source.start()
    with source.connect() as conn:
        conn.execute(SCHEMA.replace("%(rows)s", str(int(rows))))
        conn.execute("VACUUM ANALYZE")
    return source


# --- the load --------------------------------------------------------------------------------


@dataclass
class Load:
    proc: subprocess.Popen[bytes]
    prefix: Path | None


def start_load(
    work: Path, source: Cluster, args: argparse.Namespace, seconds: int, tag: str, log_commits: bool
) -> Load:
    script = work / "blnk_tx.sql"
    script.write_text(PGBENCH_SCRIPT)
    prefix = work / f"pgbench_{tag}" if log_commits else None
    argv = [
        str(PG_BIN / "pgbench"),
        "-n",
        "-h",
        "127.0.0.1",
        "-p",
        str(source.port),
        "-U",
        "postgres",
        "-f",
        str(script),
        "-c",
        str(args.clients),
        "-j",
        "2",
        "-R",
        str(args.rate),
        "-T",
        str(seconds),
        "postgres",
    ]
    if prefix is not None:
        argv[1:1] = ["-l", f"--log-prefix={prefix}"]
    log = (work / f"pgbench-{tag}.log").open("ab")
    # pgbench is a client: it runs as whoever runs this script, writing its log under work/.
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    return Load(proc, prefix)


def commit_windows(prefix: Path) -> list[tuple[float, float]]:
    """(sent, acknowledged) epoch times of every transaction from pgbench's -l log:
    `client tx latency_us script epoch_s epoch_us schedule_lag_us` (-R adds the lag)."""
    spans = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        for line in path.read_text().split("\n"):
            f = line.split()
            if len(f) < 7:
                continue
            acked = int(f[4]) + int(f[5]) / 1e6
            spans.append((acked - (int(f[2]) - int(f[6])) / 1e6, acked))
    return spans


# --- sampling the recovery point -------------------------------------------------------------


@dataclass
class Sampler:
    source: Cluster
    dirs: dict[str, Path]  # application_name -> the directory its .partial is written in
    interval: float = 0.1
    samples: list[tuple[float, int, dict[str, list[Any]]]] = field(default_factory=list)
    _halt: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with self.source.connect() as conn:
            tick = time.monotonic()
            while not self._halt.is_set():
                lsn, repl = conn.execute(SAMPLE_SQL, (APP_A, APP_B)).fetchone()  # type: ignore[misc]
                for app, directory in self.dirs.items():
                    if app in repl:
                        repl[app].append(written_position(directory))
                self.samples.append((time.time(), int(lsn), repl))
                tick += self.interval
                time.sleep(max(0.0, tick - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join()

    def lsn_at(self, when: float) -> int:
        """The primary's position at an epoch time, from the sampled history."""
        times = [s[0] for s in self.samples]
        return self.samples[max(0, bisect.bisect_right(times, when) - 1)][1]

    def lag(self, app: str, since: float, until: float) -> dict[str, Any]:
        times = [s[0] for s in self.samples]
        positions = [s[1] for s in self.samples]
        flush_bytes, write_bytes, disk_bytes, seconds, server_s, missing = [], [], [], [], [], 0
        for t, current, repl in self.samples:
            if not since <= t <= until:
                continue
            if app not in repl:
                missing += 1
                continue
            write, flush, flush_lag, on_disk = repl[app]
            write_bytes.append(max(0, current - write))
            if on_disk is not None:
                disk_bytes.append(max(0, current - on_disk))
            flush_bytes.append(max(0, current - flush))
            server_s.append(flush_lag or 0.0)
            seconds.append(age_of(flush, t, current, times, positions))
        return {
            "samples": len(flush_bytes),
            "missing_samples": missing,
            "flush_lag_bytes": pct(flush_bytes),
            "write_lag_bytes": pct(write_bytes),
            "partial_file_lag_bytes": pct(disk_bytes),
            "flush_lag_seconds": pct(seconds),
            "server_flush_lag_seconds": pct(server_s),
        }


def written_position(directory: Path) -> int | None:
    """The LSN up to which the receiver has written its .partial segment (not necessarily
    fsynced). pg_receivewal pads a new .partial with zeros, so its size says nothing: the
    written pages are the ones with a page header (whose magic is never zero), in order."""
    partials = sorted(directory.glob("*.partial"))
    if not partials:
        return None
    name = partials[-1].name[:24]
    base = (int(name[8:16], 16) * 0x100000000 // SEGMENT + int(name[16:24], 16)) * SEGMENT
    try:
        fd = os.open(partials[-1], os.O_RDONLY)
    except FileNotFoundError:  # renamed at the end of the segment, between glob and open
        return None
    try:
        lo, hi = 0, SEGMENT // PAGE  # pages [0, lo) are written, [hi, …) are not
        while lo < hi:
            mid = (lo + hi) // 2
            if os.pread(fd, 2, mid * PAGE) not in (b"", b"\0\0"):
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            return base
        last = os.pread(fd, PAGE, (lo - 1) * PAGE).rstrip(b"\0")
        return base + (lo - 1) * PAGE + len(last)
    finally:
        os.close(fd)


def age_of(flush: int, now: float, current: int, times: list[float], pos: list[int]) -> float:
    """Seconds since the primary's position passed `flush` (linear between 100 ms samples)."""
    if flush >= current:
        return 0.0
    j = bisect.bisect_right(pos, flush) - 1  # last sample at or before flush
    if j < 0:
        return now - times[0]  # older than the history: a lower bound
    if j + 1 >= len(pos) or pos[j + 1] == pos[j]:
        return now - times[j]
    reached = times[j] + (flush - pos[j]) / (pos[j + 1] - pos[j]) * (times[j + 1] - times[j])
    return max(0.0, now - reached)


def pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": float(ordered[-1])}


# --- engine B: Barman's configuration ----------------------------------------------------------


def barman_conf(work: Path, source: Cluster) -> Path:
    home = make_dir(work / "barman")
    conf = work / "barman.conf"
    conf.write_text(f"""[barman]
barman_home = {home}
barman_user = {OWNER.pw_name if OWNER else os.environ.get("USER", "postgres")}
log_file = {home}/barman.log
log_level = INFO

[pg]
description = walbench source
conninfo = {source.dsn}
streaming_conninfo = host=127.0.0.1 port={source.port} user=postgres
backup_method = postgres
streaming_archiver = on
slot_name = barman
path_prefix = {PG_BIN}
immediate_checkpoint = true
""")
    return conf


# --- one round -------------------------------------------------------------------------------


def wait_for(what: str, check: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def base_backups(work: Path, source: Cluster, barman: list[str], order: list[str]) -> dict:
    """The three backups one after another under the load, in the given order."""
    out: dict[str, Any] = {}
    for name in order:
        if name == "bare":
            t = run(
                [
                    str(PG_BIN / "pg_basebackup"),
                    "-d",
                    source.dsn,
                    "-Ft",
                    "-c",
                    "fast",
                    "-D",
                    str(work / "bb_bare"),
                ]
            )
            out["bare"] = {"wall": t.wall, "cpu": t.cpu, "bytes": du(work / "bb_bare")}
        elif name == "A":
            t = run(
                [
                    str(PG_BIN / "pg_basebackup"),
                    "-d",
                    source.dsn,
                    "-Ft",
                    "-X",
                    "fetch",
                    "-c",
                    "fast",
                    "--manifest-checksums=SHA256",
                    "-D",
                    str(work / "bb_a"),
                ]
            )
            # -X fetch puts the backup's WAL inside base.tar: one file to extract, to verify.
            out["A"] = {"wall": t.wall, "cpu": t.cpu, "bytes": du(work / "bb_a")}
            check = make_dir(work / "bb_a_check")
            manifest = work / "bb_a" / "backup_manifest"
            began, cpu0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
            v = [
                run(["tar", "-xf", str(work / "bb_a" / "base.tar"), "-C", str(check)]),
                run([str(PG_BIN / "pg_verifybackup"), "-q", "-m", str(manifest), str(check)]),
            ]
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            out["A_verify"] = {
                "wall": time.monotonic() - began,
                "cpu": cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime,
                "output": v[-1].stdout.strip(),
            }
            shutil.rmtree(check)
        else:
            t = run([*barman, "backup", "pg"])
            out["B"] = {"wall": t.wall, "cpu": t.cpu, "bytes": du(work / "barman" / "pg" / "base")}
            try:
                v = run([*barman, "verify-backup", "pg", "latest"])
                out["B_verify"] = {"wall": v.wall, "cpu": v.cpu, "output": v.stdout.strip()[-300:]}
            except RuntimeError as e:
                out["B_verify"] = {"error": str(e)[-500:]}
    return out


def restore(engine: str, work: Path, barman: list[str], target: float, label: str) -> dict:
    """From nothing to a promoted cluster at `target`; returns RTO and the restored row count."""
    stamp = datetime.fromtimestamp(target, UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    dest = work / f"restore_{engine}_{label}"
    cluster = Cluster(dest, work / "sockets")
    began = time.monotonic()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if engine == "A":
        make_dir(dest)
        run(["tar", "-xf", str(work / "bb_a" / "base.tar"), "-C", str(dest)])
        wal = work / "wal_a"
        with (dest / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"restore_command = 'cp {wal}/%f %p 2>/dev/null || cp {wal}/%f.partial %p'\n"
                f"recovery_target_time = '{stamp}'\nrecovery_target_action = 'promote'\n"
            )
        (dest / "recovery.signal").touch()
        if OWNER is not None:
            for p in (dest / "postgresql.auto.conf", dest / "recovery.signal"):
                os.chown(p, OWNER.pw_uid, OWNER.pw_gid)
    else:
        run(
            [
                *barman,
                "recover",
                "--target-time",
                stamp,
                "--target-action",
                "promote",
                "--partial-wal",
                "pg",
                "latest",
                str(dest),
            ]
        )
    copied = time.monotonic() - began
    try:
        cluster.start("archive_mode=off")
        wait_for("promotion", cluster.promoted, 600)
        rto = time.monotonic() - began
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        rows = cluster.one("SELECT count(*) FROM ledger_tx")
        result = {
            "rto": rto,
            "copy_phase": copied,
            "rows": rows,
            "client_cpu": cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime,
        }
    except Exception as e:
        log = dest.parent / f"{dest.name}.log"
        tail = log.read_text()[-800:] if log.exists() else ""
        result = {"error": f"{e}", "log_tail": tail}
    finally:
        cluster.stop()
        shutil.rmtree(dest, ignore_errors=True)
    result["target"] = stamp
    return result


def one_round(args: argparse.Namespace, index: int) -> dict[str, Any]:
    work = make_dir(Path(tempfile.mkdtemp(prefix="walbench-", dir="/var/tmp")))
    barman = [args.barman, "-q", "-c", str(work / "barman.conf")]
    result: dict[str, Any] = {"round": index}
    source: Cluster | None = None
    recv_a = recv_b = load = None
    sampler: Sampler | None = None
    try:
        print(f"round {index}: initdb + {args.prefill} rows in {work}", flush=True)
        source = make_source(work, args.prefill)
        result["db_bytes"] = source.one("SELECT pg_database_size('postgres')")
        barman_conf(work, source)

        # Both receivers, each with its own slot, before anything else happens.
        wal_a = make_dir(work / "wal_a")
        recv_dsn = f"{source.dsn} application_name={APP_A}"
        run(
            [
                str(PG_BIN / "pg_receivewal"),
                "-d",
                recv_dsn,
                "--slot=walbench_a",
                "--create-slot",
                "--if-not-exists",
            ]
        )
        recv_a = spawn(
            [
                str(PG_BIN / "pg_receivewal"),
                "-d",
                recv_dsn,
                "-D",
                str(wal_a),
                "--slot=walbench_a",
                "--synchronous",
                "--no-loop",
            ],
            work / "recv_a.log",
        )
        run([*barman, "receive-wal", "--create-slot", "pg"])
        recv_b = spawn([*barman, "receive-wal", "pg"], work / "recv_b.log")
        streaming = work / "barman" / "pg" / "streaming"
        sampler = Sampler(source, {APP_A: wal_a, APP_B: streaming})
        sampler.start()
        wait_for(
            "both receivers",
            lambda: (
                all(a in sampler.samples[-1][2] for a in (APP_A, APP_B))
                if sampler.samples
                else False
            ),
        )
        # Barman wants one archived segment before its first backup (its own `check`).
        run([*barman, "switch-wal", "--force", "pg"])
        wait_for(
            "a completed segment",
            lambda: any(p.suffix != ".partial" for p in streaming.iterdir()),
        )
        run([*barman, "archive-wal", "pg"])

        time.sleep(2)
        cpu_start = {"A": tree_cpu(recv_a.pid), "B": tree_cpu(recv_b.pid)}
        lsn_start = sampler.samples[-1][1]

        print(f"round {index}: base backups under load", flush=True)
        load = start_load(work, source, args, 3600, "backups", log_commits=False)
        time.sleep(5)
        order = ["bare", "A", "B"] if index % 2 else ["B", "A", "bare"]
        result["base_backup"] = base_backups(work, source, barman, order)
        result["base_backup"]["order"] = order
        stop(load.proc)
        time.sleep(1)
        baseline = source.one("SELECT count(*) FROM ledger_tx")

        print(f"round {index}: {args.window}s measured window", flush=True)
        load = start_load(work, source, args, args.window + 15, "window", log_commits=True)
        phase_start = time.time()
        load.proc.wait()
        phase_end = time.time()
        time.sleep(2)  # the receivers catch up with the last commits
        lsn_end = sampler.samples[-1][1]
        cpu_end = {"A": tree_cpu(recv_a.pid), "B": tree_cpu(recv_b.pid)}
        archive = run([*barman, "archive-wal", "pg"])  # what `barman cron` does every minute
        sampler.stop()

        since = phase_start + 10
        wal_gb = (lsn_end - lsn_start) / 1e9
        spans = commit_windows(load.prefix)  # type: ignore[arg-type]
        result |= {
            "tps": len(spans) / (phase_end - phase_start),
            "wal_bytes_streamed": lsn_end - lsn_start,
            "wal_bytes_per_s_window": (sampler.lsn_at(since + args.window) - sampler.lsn_at(since))
            / args.window,
            "lag": {e: sampler.lag(app, since, since + args.window) for e, app in ENGINES.items()},
            "cpu": {
                "A_receiver_s": cpu_end["A"] - cpu_start["A"],
                "B_receiver_s": cpu_end["B"] - cpu_start["B"],
                "B_archive_wal_s": archive.cpu,
                "A_s_per_gb": (cpu_end["A"] - cpu_start["A"]) / wal_gb,
                "B_s_per_gb": (cpu_end["B"] - cpu_start["B"]) / wal_gb,
                "B_with_archive_wal_s_per_gb": (cpu_end["B"] - cpu_start["B"] + archive.cpu)
                / wal_gb,
            },
        }

        # Targets: one in a segment both receivers completed, one in the final .partial.
        final_segment = lsn_end // SEGMENT
        done = [
            t
            for t, lsn, _ in sampler.samples
            if t >= phase_start + 5 and lsn // SEGMENT < final_segment
        ]
        early = done[len(done) // 2] if done else phase_start + 12
        targets = {"completed_segment": early, "partial_segment": phase_end - 2}
        result["restore"] = {}
        for label, target in targets.items():
            expected = (
                baseline + sum(1 for _, acked in spans if acked <= target),
                baseline + sum(1 for sent, _ in spans if sent <= target),
            )
            in_partial = sampler.lsn_at(target) // SEGMENT == final_segment
            engines = ["A", "B"] if index % 2 else ["B", "A"]
            for engine in engines:
                print(f"round {index}: restore {engine} to {label}", flush=True)
                r = restore(engine, work, barman, target, label)
                r |= {"expected_rows_between": expected, "target_in_partial": in_partial}
                r["rows_ok"] = "rows" in r and expected[0] <= r["rows"] <= expected[1]
                result["restore"][f"{engine}_{label}"] = r
    finally:
        if sampler is not None:
            sampler.stop()
        for proc in (load.proc if load else None, recv_a, recv_b):
            stop(proc)
        if source is not None:
            source.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return result


# --- report ----------------------------------------------------------------------------------


def median(rounds: list[dict], *path: str) -> float | None:
    values = []
    for r in rounds:
        node: Any = r
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, int | float) and not isinstance(node, bool):
            values.append(float(node))
    return statistics.median(values) if values else None


def table(rounds: list[dict]) -> str:
    """Medians over the rounds, A and B side by side; a path with {e} is read for each engine."""
    kib, ms = 1 / 1024, 1000.0
    spec: list[tuple[str, float, str, tuple[str, ...]]] = []  # label, scale, format, path
    for what, key, scale, unit in (
        ("flush (fsynced, reported)", "flush_lag_bytes", kib, "KiB"),
        ("flush (fsynced, reported)", "flush_lag_seconds", ms, "ms"),
        ("written to .partial", "partial_file_lag_bytes", kib, "KiB"),
        ("write (reported)", "write_lag_bytes", kib, "KiB"),
    ):
        for q in ("p50", "p90", "p99"):
            spec.append((f"lag {what} {unit} {q}", scale, "{:,.1f}", ("lag", "{e}", key, q)))
    spec += [
        ("receiver CPU s per GB of WAL", 1, "{:.2f}", ("cpu", "{e}_s_per_gb")),
        ("bare pg_basebackup -Ft wall s", 1, "{:.2f}", ("base_backup", "bare", "wall")),
        ("base backup wall s", 1, "{:.2f}", ("base_backup", "{e}", "wall")),
        ("… verify wall s", 1, "{:.2f}", ("base_backup", "{e}_verify", "wall")),
        ("bare pg_basebackup -Ft CPU s", 1, "{:.2f}", ("base_backup", "bare", "cpu")),
        ("base backup CPU s", 1, "{:.2f}", ("base_backup", "{e}", "cpu")),
        ("… verify CPU s", 1, "{:.2f}", ("base_backup", "{e}_verify", "cpu")),
        ("base backup MiB", 1 / 2**20, "{:,.0f}", ("base_backup", "{e}", "bytes")),
        ("RTO s, target in a completed segment", 1, "{:.2f}",
         ("restore", "{e}_completed_segment", "rto")),
        ("RTO s, target in the .partial segment", 1, "{:.2f}",
         ("restore", "{e}_partial_segment", "rto")),
    ]  # fmt: skip
    lines = ["| median of rounds | A pg_receivewal | B Barman | B/A |", "|---|---|---|---|"]
    for label, scale, fmt, path in spec:
        a, b = (median(rounds, *(p.format(e=e) for p in path)) for e in "AB")
        ratio = f"{b / a:.2f}" if a and b is not None else "-"
        show = [fmt.format(v * scale) if v is not None else "n/a" for v in (a, b)]
        lines.append(f"| {label} | {show[0]} | {show[1]} | {ratio} |")
    extra = median(rounds, "cpu", "B_with_archive_wal_s_per_gb")
    lines.append(f"| … B with `barman archive-wal` | | {extra or 0:.2f} | |")
    ok = {
        e: sum(bool(r["restore"].get(f"{e}_{t}", {}).get("rows_ok")) for r in rounds for t in
               ("completed_segment", "partial_segment"))
        for e in "AB"
    }  # fmt: skip
    lines.append(f"| rows at target = committed by then | {ok['A']}/{2 * len(rounds)} "
                 f"| {ok['B']}/{2 * len(rounds)} | |")  # fmt: skip
    return "\n".join(lines)


def machine(barman: str) -> dict[str, Any]:
    def out(*argv: str) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {
        "cpu": next(
            (
                ln.split(":", 1)[1].strip()
                for ln in out("lscpu").splitlines()
                if ln.startswith("Model name")
            ),
            platform.processor(),
        ),
        "cpus": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": out(str(PG_BIN / "postgres"), "--version"),
        "barman": out(barman, "--version"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=int, default=500, help="transactions/s (pgbench -R)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--window", type=int, default=60, help="seconds of lag sampling")
    parser.add_argument("--prefill", type=int, default=2_000_000, help="ledger rows at start")
    parser.add_argument("--barman", default="/tmp/barman-venv/bin/barman")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    started = datetime.now(UTC)
    rounds = [one_round(args, i + 1) for i in range(args.rounds)]
    report = {
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "machine": machine(args.barman),
        "workload": {k: v for k, v in vars(args).items() if k not in ("out", "keep")},
        "rounds": rounds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"wal_engine_{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    for r in rounds:
        print(
            f"round {r['round']}: {r['tps']:.0f} tx/s, "
            f"{r['wal_bytes_per_s_window'] / 2**20:.2f} MiB/s WAL, "
            f"{r['wal_bytes_streamed'] / 2**20:.0f} MiB streamed"
        )
    print(table(rounds))
    print(f"JSON: {path}")
    sys.exit(0 if all("error" not in v for r in rounds for v in r["restore"].values()) else 1)


if __name__ == "__main__":
    main()
