"""Backup throughput, CPU and memory benchmark (not part of the test suite).

For each database size, measured in the same run against the same S3 server process:
  (a) pg_dump -Fc -Z{level} to /dev/null            — dumping alone
  (f) pg_dump -Fc -Z{level} | sha256sum             — the floor for anything reading the pipe
  (b) pg_dump -Fc -Z{level} | boto3 upload_fileobj   — the naive pipeline
  (c) blnk-backup backup                            — this program, with verification
  (d) upload of the same dump file, already on disk  — the store's own floor (no pg_dump)
and prints the wall-time ratios c/f and c/b, the CPU this program adds beyond pg_dump's own
(machine-wide busy time of c minus that of f, without the S3 server's), its peak RSS, and where
c's time goes: process start until pg_dump runs, streaming, verifying, manifest (from the
progress lines on stderr and the moment pg_dump appears). With --levels it also compares
compression levels (time and size of pg_dump alone).

    .venv/bin/python bench/backup_bench.py --transactions 1000000 --s3 seaweedfs moto

Databases are generated once as blnk_bench_<transactions> and reused (--fresh to rebuild).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.blnkgen import generate  # noqa: E402
from core.database import PgTarget  # noqa: E402
from tests.support.s3server import S3ServerProcess  # noqa: E402
from tests.support.s3server_alt import SeaweedS3ServerProcess  # noqa: E402
from tests.support.stores import ACCESS_KEY, SECRET_KEY, raw_s3  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
BIN = Path(sys.executable).parent


def ensure_database(transactions: int, fresh: bool) -> tuple[str, int]:
    server = PgTarget.from_url(SERVER)
    name = f"blnk_bench_{transactions}"
    with server.connect(autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if fresh or not exists:
        print(f"generating {name} …", flush=True)
        generate(server, name, transactions, replace=True)
    with server.with_dbname(name).connect() as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return name, int(size)


# The test servers' fixed credentials (SeaweedFS checks them; moto accepts any).


def bench_env(endpoint: str, bucket: str, audit: Path, **extra: str) -> dict[str, str]:
    """The environment of a `blnk-backup` run against the benchmark's S3 server."""
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "S3_ENDPOINT_URL": endpoint,
        "S3_BACKUP_BUCKET": bucket,
        "AUDIT_DATABASE_URL": f"sqlite:///{audit}",
        **extra,
    }


class RssSampler:
    """Samples the peak RSS of one process (not its children) every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.peak = 0
        self._proc = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def cpu_busy() -> float:
    """Seconds of CPU the whole machine has spent busy so far (all cores)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


def run_a(db: str, level: int) -> tuple[float, int]:
    """pg_dump alone; returns (seconds, output bytes)."""
    began = time.monotonic()
    proc = subprocess.Popen(
        ["pg_dump", "-Fc", f"-Z{level}", "-h", "127.0.0.1", "-U", "postgres", "-d", db],
        stdout=subprocess.PIPE,
    )
    size = 0
    assert proc.stdout is not None
    while chunk := os.read(proc.stdout.fileno(), 1 << 20):
        size += len(chunk)
    assert proc.wait() == 0
    return time.monotonic() - began, size


def run_a_devnull(db: str, level: int) -> float:
    began = time.monotonic()
    with open(os.devnull, "wb") as sink:
        subprocess.run(
            ["pg_dump", "-Fc", f"-Z{level}", "-h", "127.0.0.1", "-U", "postgres", "-d", db],
            stdout=sink,
            check=True,
        )
    return time.monotonic() - began


def run_f(db: str, level: int) -> float:
    """The floor: pg_dump into a pipe read by sha256sum (C, one copy per byte)."""
    began = time.monotonic()
    dump = subprocess.Popen(
        ["pg_dump", "-Fc", f"-Z{level}", "-h", "127.0.0.1", "-U", "postgres", "-d", db],
        stdout=subprocess.PIPE,
    )
    hasher = subprocess.Popen(["sha256sum"], stdin=dump.stdout, stdout=subprocess.DEVNULL)
    assert dump.stdout is not None
    dump.stdout.close()
    assert hasher.wait() == 0 and dump.wait() == 0
    return time.monotonic() - began


def run_b(db: str, level: int, env: dict[str, str], key: str) -> float:
    began = time.monotonic()
    dump = subprocess.Popen(
        ["pg_dump", "-Fc", f"-Z{level}", "-h", "127.0.0.1", "-U", "postgres", "-d", db],
        stdout=subprocess.PIPE,
    )
    upload = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "naive_upload.py"), key],
        stdin=dump.stdout,
        env=env,
    )
    assert dump.stdout is not None
    dump.stdout.close()
    assert upload.wait() == 0 and dump.wait() == 0
    return time.monotonic() - began


def run_d(db: str, level: int, client: Any, bucket: str, workdir: Path) -> float:
    """Upload an already-made dump with boto3's managed transfer: how fast the store ingests."""
    from boto3.s3.transfer import TransferConfig

    path = workdir / "store-floor.dump"
    with path.open("wb") as sink:
        subprocess.run(
            ["pg_dump", "-Fc", f"-Z{level}", "-h", "127.0.0.1", "-U", "postgres", "-d", db],
            stdout=sink,
            check=True,
        )
    config = TransferConfig(multipart_chunksize=8 << 20, max_concurrency=3)
    began = time.monotonic()
    client.upload_file(str(path), bucket, "floor/store-floor.dump", Config=config)
    elapsed = time.monotonic() - began
    path.unlink()
    return elapsed


def run_c(env: dict[str, str]) -> dict[str, Any]:
    """Run `blnk-backup backup`; return wall time, peak RSS, CPU and its phase timeline."""
    began = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "blnk-backup"), "backup", "--reason", "benchmark"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = RssSampler(proc.pid)
    phases: dict[str, float] = {}
    pg_dump_seen = threading.Event()

    def watch_children() -> None:
        parent = psutil.Process(proc.pid)
        while not pg_dump_seen.is_set() and proc.poll() is None:
            try:
                if any(c.name() == "pg_dump" for c in parent.children()):
                    phases.setdefault("pg_dump_started", time.monotonic() - began)
                    pg_dump_seen.set()
            except psutil.Error:
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch_children, daemon=True)
    watcher.start()
    assert proc.stderr is not None
    for line in proc.stderr:  # "… preflight", "… dumping KEY", "… verifying", ...
        if line.startswith("… "):
            phases.setdefault(line[2:].split()[0], time.monotonic() - began)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - began
    pg_dump_seen.set()
    peak = sampler.stop()
    assert proc.stdout is not None
    out = proc.stdout.read()
    assert os.waitstatus_to_exitcode(status) == 0, out
    return {
        "seconds": elapsed,
        "peak_rss": peak,
        "own_and_pg_dump_cpu": usage.ru_utime + usage.ru_stime,
        "phases": phases,
        "size": int(out.split("(")[1].split(" bytes")[0]) if "bytes" in out else 0,
    }


def s3_cpu_of(pid: int) -> float:
    """CPU seconds of the S3 server process and its children (SeaweedFS runs one process)."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def bench_store(args: argparse.Namespace, kind: str, report: dict[str, Any]) -> None:
    s3_server = SeaweedS3ServerProcess() if kind == "seaweedfs" else S3ServerProcess()
    s3_server.start()
    bucket = "blnk-bench"
    env = bench_env(
        s3_server.endpoint,
        bucket,
        args.out / f"bench-audit-{kind}.sqlite3",
        BACKUP_COMPRESSION_LEVEL=str(args.level),
    )
    client = raw_s3(s3_server.endpoint)
    client.create_bucket(Bucket=bucket)

    def s3_cpu() -> float:
        return s3_cpu_of(s3_server.pid)

    def empty_bucket() -> None:  # free the store between runs
        for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])

    try:
        for transactions in args.transactions:
            db, db_size = ensure_database(transactions, args.fresh)
            env["BLNK_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{db}"
            runs: dict[str, list[float]] = {
                k: []
                for k in (
                    "a",
                    "f",
                    "b",
                    "c",
                    "a_cpu",
                    "f_cpu",
                    "c_cpu",
                    "c_s3_cpu",
                    "b_s3_cpu",
                    "c_tree_cpu",
                    "peak",
                )
            }
            timelines: list[dict[str, float]] = []
            dump_size = 0
            for i in range(args.repeat):
                before = cpu_busy()
                runs["a"].append(run_a_devnull(db, args.level))
                runs["a_cpu"].append(cpu_busy() - before)
                before = cpu_busy()
                runs["f"].append(run_f(db, args.level))
                runs["f_cpu"].append(cpu_busy() - before)
                s3_before = s3_cpu()
                runs["b"].append(run_b(db, args.level, env, f"naive/{db}-{i}.dump"))
                runs["b_s3_cpu"].append(s3_cpu() - s3_before)
                empty_bucket()
                before, s3_before = cpu_busy(), s3_cpu()
                c = run_c(env)
                runs["c_cpu"].append(cpu_busy() - before)
                runs["c_s3_cpu"].append(s3_cpu() - s3_before)
                runs["c"].append(c["seconds"])
                runs["c_tree_cpu"].append(c["own_and_pg_dump_cpu"])
                runs["peak"].append(c["peak_rss"])
                timelines.append(c["phases"] | {"end": c["seconds"]})
                dump_size = c["size"] or dump_size
                empty_bucket()
                print(
                    f"[{kind}] {db} run {i + 1}: a={runs['a'][-1]:.2f}s f={runs['f'][-1]:.2f}s "
                    f"b={runs['b'][-1]:.2f}s c={c['seconds']:.2f}s "
                    f"peak={c['peak_rss'] / 2**20:.0f} MiB phases={c['phases']}",
                    flush=True,
                )
            d = statistics.median(
                run_d(db, args.level, client, bucket, args.out) for _ in range(args.repeat)
            )
            empty_bucket()
            med = {k: statistics.median(v) for k, v in runs.items()}
            # CPU this program adds beyond dumping: machine busy time of c, minus the S3
            # server's, minus the floor's (pg_dump + its backend + sha256sum's own hashing).
            extra_cpu = med["c_cpu"] - med["c_s3_cpu"] - med["f_cpu"]
            pg_dump_cpu = med["a_cpu"]
            row = {
                "store": kind,
                "database": db,
                "transactions": transactions,
                "database_bytes": db_size,
                "dump_bytes": dump_size,
                "a_pg_dump_devnull_s": round(med["a"], 2),
                "f_pg_dump_sha256sum_s": round(med["f"], 2),
                "b_naive_pipeline_s": round(med["b"], 2),
                "c_blnk_backup_s": round(med["c"], 2),
                "d_store_upload_only_s": round(d, 2),
                "c_over_f": round(med["c"] / med["f"], 3),
                "c_over_b": round(med["c"] / med["b"], 3),
                "c_over_a": round(med["c"] / med["a"], 3),
                "peak_rss_mib": round(max(runs["peak"]) / 2**20, 1),
                "machine_cpu_busy_a_s": round(med["a_cpu"], 2),
                "machine_cpu_busy_f_s": round(med["f_cpu"], 2),
                "machine_cpu_busy_c_s": round(med["c_cpu"], 2),
                "s3_server_cpu_b_s": round(med["b_s3_cpu"], 2),
                "s3_server_cpu_c_s": round(med["c_s3_cpu"], 2),
                "c_extra_cpu_s": round(extra_cpu, 2),
                "c_extra_cpu_over_pg_dump_machine_cpu": round(extra_cpu / pg_dump_cpu, 3),
                "c_process_tree_cpu_s": round(med["c_tree_cpu"], 2),
                "c_timelines": timelines,
                "runs": args.repeat,
            }
            report["sizes"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "c_timelines"}, indent=2))
    finally:
        s3_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--level", type=int, default=1, help="compression level for a/b/c")
    parser.add_argument("--levels", type=int, nargs="*", default=[], help="levels to compare")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--s3", nargs="+", default=["seaweedfs", "moto"])
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}",
        "pg_dump": subprocess.run(
            ["pg_dump", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip(),
        "level": args.level,
        "sizes": [],
        "levels": [],
    }
    for kind in args.s3:
        bench_store(args, kind, report)
    if args.levels:
        db = f"blnk_bench_{args.transactions[0]}"
        for level in args.levels:
            seconds, size = run_a(db, level)
            report["levels"].append(
                {"level": level, "seconds": round(seconds, 2), "dump_bytes": size}
            )
            print(f"-Z{level}: {seconds:.2f}s {size / 2**20:.0f} MiB", flush=True)
    out = args.out / f"backup-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
