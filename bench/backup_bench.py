"""Backup throughput and memory benchmark (not part of the test suite).

For each database size, measured in the same run against the same S3 server process:
  (a) pg_dump -Fc -Z{level} to /dev/null            — the floor: dumping alone
  (b) pg_dump -Fc -Z{level} | boto3 upload_fileobj   — the naive pipeline
  (c) blnk-backup backup                            — this program, with verification
  (d) upload of the same dump file, already on disk  — the store's own floor (no pg_dump)
and prints the wall-time ratios c/a and c/b and this program's peak RSS. With --levels it also
compares compression levels (time and size of pg_dump alone).

    .venv/bin/python bench/backup_bench.py --transactions 1000000 2000000 --levels 0 1 3 6 9

Databases are generated once as blnk_bench_<transactions> and reused (--fresh to rebuild).
"""

from __future__ import annotations

import argparse
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

import boto3
import psutil
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.blnkgen import generate  # noqa: E402
from core.database import PgTarget  # noqa: E402
from tests.support.s3server import S3ServerProcess  # noqa: E402

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


ACCESS_KEY, SECRET_KEY = "bench", "bench-secret"  # moto accepts any


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


def bench_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


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


def run_c(env: dict[str, str]) -> tuple[float, int, int, dict[str, Any], float]:
    began = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "blnk-backup"), "backup", "--json", "--reason", "benchmark"],
        env=env,
        stdout=subprocess.PIPE,
    )
    sampler = RssSampler(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - began
    peak = sampler.stop()
    assert proc.stdout is not None
    out = proc.stdout.read()
    assert os.waitstatus_to_exitcode(status) == 0, out
    own_cpu = usage.ru_utime + usage.ru_stime  # this program and its pg_dump child
    return elapsed, peak, usage.ru_maxrss * 1024, json.loads(out), own_cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--level", type=int, default=1, help="compression level for a/b/c")
    parser.add_argument("--levels", type=int, nargs="*", default=[], help="levels to compare")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    s3_server = S3ServerProcess()
    s3_server.start()
    bucket = "blnk-bench"
    args.out.mkdir(parents=True, exist_ok=True)
    env = bench_env(
        s3_server.endpoint,
        bucket,
        args.out / "bench-audit.sqlite3",
        BACKUP_COMPRESSION_LEVEL=str(args.level),
    )
    client = bench_client(s3_server.endpoint)
    client.create_bucket(Bucket=bucket)
    s3_process = psutil.Process(s3_server.pid)

    def s3_cpu() -> float:
        times = s3_process.cpu_times()
        return times.user + times.system

    def empty_bucket() -> None:  # moto keeps objects in memory: free them between runs
        for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])

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
    try:
        for transactions in args.transactions:
            db, db_size = ensure_database(transactions, args.fresh)
            env["BLNK_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{db}"
            a_times, b_times, c_times, peaks, maxrss = [], [], [], [], []
            a_cpu, c_cpu, c_own_cpu, b_s3_cpu, c_s3_cpu = [], [], [], [], []
            dump_size = 0
            for i in range(args.repeat):
                before = cpu_busy()
                a_times.append(run_a_devnull(db, args.level))
                a_cpu.append(cpu_busy() - before)
                s3_before = s3_cpu()
                b_times.append(run_b(db, args.level, env, f"naive/{db}-{i}.dump"))
                b_s3_cpu.append(s3_cpu() - s3_before)
                empty_bucket()
                before, s3_before = cpu_busy(), s3_cpu()
                c, peak, rss, body, own = run_c(env)
                c_cpu.append(cpu_busy() - before)
                c_s3_cpu.append(s3_cpu() - s3_before)
                c_own_cpu.append(own)
                c_times.append(c)
                peaks.append(peak)
                maxrss.append(rss)
                dump_size = body["size"]
                empty_bucket()
                print(
                    f"{db} run {i + 1}: a={a_times[-1]:.2f}s b={b_times[-1]:.2f}s "
                    f"c={c:.2f}s peak={peak / 2**20:.0f} MiB",
                    flush=True,
                )
            d_times = [run_d(db, args.level, client, bucket, args.out) for _ in range(args.repeat)]
            empty_bucket()
            a, b, c = (statistics.median(x) for x in (a_times, b_times, c_times))
            d = statistics.median(d_times)
            row = {
                "database": db,
                "transactions": transactions,
                "database_bytes": db_size,
                "dump_bytes": dump_size,
                "a_pg_dump_devnull_s": round(a, 2),
                "b_naive_pipeline_s": round(b, 2),
                "c_blnk_backup_s": round(c, 2),
                "c_over_a": round(c / a, 3),
                "c_over_b": round(c / b, 3),
                "d_store_upload_only_s": round(d, 2),
                "c_over_max_a_d": round(c / max(a, d), 3),
                "peak_rss_mib": round(max(peaks) / 2**20, 1),
                "wait4_maxrss_mib": round(max(maxrss) / 2**20, 1),
                "machine_cpu_busy_a_s": round(statistics.median(a_cpu), 2),
                "machine_cpu_busy_c_s": round(statistics.median(c_cpu), 2),
                "c_process_and_pg_dump_cpu_s": round(statistics.median(c_own_cpu), 2),
                "s3_server_cpu_b_s": round(statistics.median(b_s3_cpu), 2),
                "s3_server_cpu_c_s": round(statistics.median(c_s3_cpu), 2),
                "cores": os.cpu_count(),
                "runs": args.repeat,
            }
            report["sizes"].append(row)
            print(json.dumps(row, indent=2), flush=True)
        if args.levels:
            db = f"blnk_bench_{args.transactions[0]}"
            for level in args.levels:
                seconds, size = run_a(db, level)
                report["levels"].append(
                    {"level": level, "seconds": round(seconds, 2), "dump_bytes": size}
                )
                print(f"-Z{level}: {seconds:.2f}s {size / 2**20:.0f} MiB", flush=True)
    finally:
        s3_server.stop()
    out = args.out / f"backup-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
