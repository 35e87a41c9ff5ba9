"""Restore-test benchmark (not part of the test suite).

On a Blnk-shaped database, in one run against the same S3 server process:
  (a) bare `pg_restore -j N` of the backup file into an empty database (file already local)
  (b) `blnk-backup restore-test KEY` — download + SHA-256 check + pg_restore -j N + every check
      (row counts, ledger totals, object counts, amcheck) + dropping the scratch database
and prints the ratio b/a. Target: ≤ 1.25 with all checks on.

    .venv/bin/python bench/restore_bench.py --transactions 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.backup_bench import bench_env, ensure_database  # noqa: E402
from core.database import PgTarget, create_database, drop_database  # noqa: E402
from tests.support.s3server import S3ServerProcess  # noqa: E402
from tests.support.stores import raw_s3  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
BIN = Path(sys.executable).parent


def cli(env: dict[str, str], *args: str) -> tuple[float, dict[str, Any]]:
    began = time.monotonic()
    done = subprocess.run(
        [str(BIN / "blnk-backup"), *args, "--json"], env=env, capture_output=True, text=True
    )
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    return elapsed, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    db, db_size = ensure_database(args.transactions, fresh=False)
    server = PgTarget.from_url(SERVER)
    s3_server = S3ServerProcess()
    s3_server.start()
    bucket = "blnk-restore-bench"
    env = bench_env(
        s3_server.endpoint,
        bucket,
        args.out / "restore-bench-audit.sqlite3",
        BLNK_DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{db}",
        RESTORE_TEST_DATABASE_URL=SERVER,
        RESTORE_JOBS=str(args.jobs),
    )
    client = raw_s3(s3_server.endpoint)
    client.create_bucket(Bucket=bucket)
    try:
        _, backup = cli(env, "backup")
        local = args.out / "restore-bench.dump"
        client.download_file(bucket, backup["key"], str(local))
        bare, full, checks = [], [], 0
        for i in range(args.repeat):
            target = f"blnk_restore_bench_{i}"
            drop_database(server, target)
            create_database(server, target)
            began = time.monotonic()
            subprocess.run(
                [
                    "pg_restore",
                    f"--jobs={args.jobs}",
                    "--exit-on-error",
                    "--no-owner",
                    "--no-privileges",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    target,
                    str(local),
                ],
                check=True,
            )
            bare.append(time.monotonic() - began)
            drop_database(server, target)
            elapsed, report = cli(env, "restore-test", backup["key"])
            assert report["passed"], report
            full.append(elapsed)
            checks = len(report["checks"])
            print(
                f"run {i + 1}: bare pg_restore -j{args.jobs} {bare[-1]:.2f}s, restore-test "
                f"{elapsed:.2f}s ({report['durations']})",
                flush=True,
            )
        a, b = statistics.median(bare), statistics.median(full)
        result = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
            "database": db,
            "database_bytes": db_size,
            "dump_bytes": backup["size"],
            "jobs": args.jobs,
            "a_bare_pg_restore_s": round(a, 2),
            "b_restore_test_s": round(b, 2),
            "b_over_a": round(b / a, 3),
            "checks": checks,
            "last_durations": report["durations"],
            "runs": args.repeat,
        }
        print(json.dumps(result, indent=2))
        out = args.out / f"restore-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
        out.write_text(json.dumps(result, indent=2))
        local.unlink()
    finally:
        s3_server.stop()


if __name__ == "__main__":
    main()
