"""Client CPU of a backup against the naive script (not part of the test suite).

Measured in the same run, against the same S3 server process and database, the candidates
taking turns (the order rotates every round so none always runs first):

  floor   pg_dump -Fc -Z{level} | sha256sum                     — reading the pipe, in C
  naive   pg_dump -Fc -Z{level} | python upload_fileobj(stdin)  — boto3 defaults as installed
  program blnk-backup backup                                    — this program, whole

For each run it records the CPU-seconds (user + system) of the *client* — the process that
reads pg_dump's output (sha256sum; the naive Python script; the blnk-backup process with all
its threads, start-up imports included) — separately from pg_dump's own, which is the same work
in every candidate, and from the S3 server's. The program's own CPU is taken as its wait4()
total minus its children's (pg_dump and its --version probes, reported by the process itself
at exit), so interpreter start-up and shutdown count for both Python candidates alike. The
PostgreSQL backends' CPU (the dump's queries, the program's statistics) is server-side and not
counted for any candidate.

It prints client CPU-seconds per GB of dump for each candidate, their ratios, the range over
the runs, wall times, the machine and the date, and writes JSON to bench/results/.

    .venv/bin/python bench/backup_cpu_bench.py --database blnk_bench_700000 --repeat 5
    .venv/bin/python bench/backup_cpu_bench.py --transactions 700000 --repeat 3 \
        --variant sha256:S3_CHECKSUM=sha256

``--variant NAME:VAR=VALUE[,VAR=VALUE]`` adds the program with other settings as one more
candidate (e.g. the per-part checksum); ``--variant NAME@PATH`` adds the program as another
source tree has it (a checkout of an earlier commit: ``git worktree add /tmp/before main``), run
with this environment's interpreter and packages. ``--s3 moto`` measures against moto instead
(moto is Python and shares the cores; SeaweedFS is the figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.backup_bench import bench_env, ensure_database, s3_cpu_of  # noqa: E402
from tests.support.s3server import S3ServerProcess  # noqa: E402
from tests.support.s3server_alt import SeaweedS3ServerProcess  # noqa: E402
from tests.support.stores import raw_s3  # noqa: E402

GB = 1e9

# Runs `blnk-backup` exactly as its console script does (bot.cli.run), and at exit writes the CPU
# its children (pg_dump, the --version probes) used, so the parent can subtract it from wait4's.
_PROGRAM = """
import atexit, json, os, resource, sys
def _report():
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.environ["BENCH_RUSAGE_OUT"], "w") as out:
        json.dump({"children_cpu": c.ru_utime + c.ru_stime}, out)
atexit.register(_report)
try:
    from bot.cli import run
except ImportError:  # a tree from before bot.cli.run (--variant NAME@PATH)
    from bot.cli import main as run
sys.exit(run())
"""


def pg_dump_argv(db: str, level: int) -> list[str]:
    return ["pg_dump", "-Fc", f"-Z{level}", "-h", "127.0.0.1", "-U", "postgres", "-d", db]


def _wait(proc: subprocess.Popen[Any]) -> tuple[int, float]:
    """Wait for a child; return its exit code and the CPU-seconds it (and its own waited-for
    children) used."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def run_piped(db: str, level: int, reader: list[str], env: dict[str, str]) -> dict[str, float]:
    """pg_dump piped into ``reader``; the client is the reader."""
    began = time.monotonic()
    dump = subprocess.Popen(pg_dump_argv(db, level), stdout=subprocess.PIPE)
    client = subprocess.Popen(reader, stdin=dump.stdout, stdout=subprocess.DEVNULL, env=env)
    assert dump.stdout is not None
    dump.stdout.close()
    client_status, client_cpu = _wait(client)
    dump_status, dump_cpu = _wait(dump)
    assert client_status == 0 and dump_status == 0, (client_status, dump_status)
    return {"wall": time.monotonic() - began, "client_cpu": client_cpu, "pg_dump_cpu": dump_cpu}


def run_program(env: dict[str, str], workdir: Path, source: Path = ROOT) -> dict[str, float]:
    out = workdir / "rusage.json"
    out.unlink(missing_ok=True)
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _PROGRAM, "backup", "--reason", "cpu benchmark"],
        env={**env, "BENCH_RUSAGE_OUT": str(out), "PYTHONPATH": str(source)},
        cwd=source,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    printed = proc.stdout.read()
    status, total = _wait(proc)
    wall = time.monotonic() - began
    assert status == 0, printed
    children = json.loads(out.read_text())["children_cpu"]
    size = int(printed.split("(")[1].split(" bytes")[0].replace(",", ""))
    return {"wall": wall, "client_cpu": total - children, "pg_dump_cpu": children, "size": size}


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def parse_variant(text: str) -> tuple[str, dict[str, str], Path]:
    """NAME:VAR=VALUE,... (other settings) or NAME@PATH (another source tree)."""
    if "@" in text and ":" not in text.split("@", 1)[0]:
        name, _, path = text.partition("@")
        return name, {}, Path(path).resolve()
    name, _, settings = text.partition(":")
    pairs = dict(item.split("=", 1) for item in settings.split(",") if item)
    return name, pairs, ROOT


def summarise(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", help="an existing database to dump")
    parser.add_argument("--transactions", type=int, default=700_000, help="else generate one")
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--s3", choices=["seaweedfs", "moto"], default="seaweedfs")
    parser.add_argument("--variant", action="append", default=[], help="NAME:VAR=VALUE,...")
    parser.add_argument("--no-floor", action="store_true", help="skip pg_dump | sha256sum")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    db = args.database or ensure_database(args.transactions, fresh=False)[0]

    server = SeaweedS3ServerProcess() if args.s3 == "seaweedfs" else S3ServerProcess()
    server.start()
    bucket = "blnk-cpu-bench"
    client = raw_s3(server.endpoint)
    client.create_bucket(Bucket=bucket)
    workdir = Path(tempfile.mkdtemp(prefix="blnk-cpu-bench-"))
    env = bench_env(
        server.endpoint,
        bucket,
        workdir / "audit.sqlite3",
        BACKUP_COMPRESSION_LEVEL=str(args.level),
        BLNK_DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{db}",
    )
    naive = [sys.executable, str(ROOT / "bench" / "naive_upload.py")]
    candidates: list[tuple[str, Any]] = []
    if not args.no_floor:
        candidates.append(("floor", lambda i: run_piped(db, args.level, ["sha256sum"], env)))
    candidates.append(
        ("naive", lambda i: run_piped(db, args.level, [*naive, f"naive/{db}-{i}.dump"], env))
    )
    candidates.append(("program", lambda i: run_program(env, workdir)))
    for text in args.variant:
        name, extra, source = parse_variant(text)
        candidates.append(
            (
                name,
                lambda i, extra=extra, source=source: run_program(
                    {**env, **extra}, workdir, source
                ),
            )
        )

    def empty_bucket() -> None:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])

    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in candidates}
    try:
        for i in range(args.repeat):
            order = candidates[i % len(candidates) :] + candidates[: i % len(candidates)]
            for name, run in order:
                s3_before = s3_cpu_of(server.pid)
                result = run(i)
                result["s3_cpu"] = s3_cpu_of(server.pid) - s3_before
                if name == "naive":
                    key = f"naive/{db}-{i}.dump"
                    result["size"] = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
                runs[name].append(result)
                empty_bucket()
                print(
                    f"run {i + 1} {name:>8}: wall {result['wall']:6.2f} s, client "
                    f"{result['client_cpu']:5.2f} CPU-s, pg_dump {result['pg_dump_cpu']:5.2f}, "
                    f"S3 server {result['s3_cpu']:5.2f}",
                    flush=True,
                )
    finally:
        server.stop()

    sizes = [r["size"] for rs in runs.values() for r in rs if "size" in r]
    dump_bytes = statistics.median(sizes)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "s3": args.s3,
        "database": db,
        "level": args.level,
        "dump_bytes": int(dump_bytes),
        "runs": args.repeat,
        "candidates": {},
    }
    for name, results in runs.items():
        per_gb = [r["client_cpu"] / ((r.get("size") or dump_bytes) / GB) for r in results]
        report["candidates"][name] = {
            "client_cpu_s": summarise([r["client_cpu"] for r in results]),
            "client_cpu_s_per_gb": summarise(per_gb),
            "pg_dump_cpu_s": summarise([r["pg_dump_cpu"] for r in results]),
            "client_plus_pg_dump_cpu_s": summarise(
                [r["client_cpu"] + r["pg_dump_cpu"] for r in results]
            ),
            "s3_server_cpu_s": summarise([r["s3_cpu"] for r in results]),
            "wall_s": summarise([r["wall"] for r in results]),
            "per_run": results,
        }
    cands = report["candidates"]
    print(f"\n{report['date']}  {report['machine']}")
    print(f"database {db}, dump {dump_bytes / 1e6:.0f} MB at -Z{args.level}, S3: {args.s3}, ")
    print(f"{args.repeat} alternating runs each; medians [min-max]\n")
    print(
        f"{'':>8}  {'client CPU-s/GB':>22}  {'client CPU-s':>20}  {'pg_dump CPU-s':>20}  "
        f"{'wall s':>20}"
    )
    for name, c in cands.items():
        cells = [c[k] for k in ("client_cpu_s_per_gb", "client_cpu_s", "pg_dump_cpu_s", "wall_s")]
        print(
            f"{name:>8}  "
            + "  ".join(f"{s['median']:6.2f} [{s['min']:5.2f}-{s['max']:5.2f}]" for s in cells)
        )
    if "naive" in cands:
        base = cands["naive"]
        print()
        for name, c in cands.items():
            if name == "naive":
                continue
            ratio = c["client_cpu_s"]["median"] / base["client_cpu_s"]["median"]
            wall = c["wall_s"]["median"] / base["wall_s"]["median"]
            pairs = [
                a["client_cpu"] / b["client_cpu"]
                for a, b in zip(runs[name], runs["naive"], strict=True)
            ]
            report["candidates"][name]["client_cpu_over_naive"] = summarise(pairs)
            report["candidates"][name]["wall_over_naive"] = round(wall, 3)
            print(
                f"{name}/naive: client CPU {ratio:.2f} (per round {min(pairs):.2f}-"
                f"{max(pairs):.2f}), wall {wall:.2f}"
            )
    out = args.out / f"backup-cpu-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
