"""Ledger-proof benchmark (not part of the test suite).

On a Blnk 0.15 ledger of --transactions transactions (generated as blnk_proof_bench_<n>,
dropped at the end unless --keep), against one S3 server process:
  (a) the ledger proof alone (core.restore.ledger_proof.prove_ledger), per part: I1+I2, I3,
      the chain
  (b) a backup without and with BACKUP_CONTENT_DIGEST (alternating, --repeat times each): the
      wall time, and the time the snapshot statistics took, which run alongside pg_dump
  (c) a restore test of the digest backup: total, and the checks stage (comparisons, content
      digests, ledger proof and amcheck, run side by side)
and prints one JSON object.

    .venv/bin/python bench/ledger_proof_bench.py --transactions 1000000 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import ledger_proof as lp  # noqa: E402
from core.audit import Actor  # noqa: E402
from core.blnkgen import generate  # noqa: E402
from core.config import load_settings  # noqa: E402
from core.database import PgTarget, SnapshotSession, drop_database  # noqa: E402
from core.services import Services  # noqa: E402
from tests.support.s3server import S3ServerProcess  # noqa: E402
from tests.support.stores import ACCESS_KEY, SECRET_KEY, raw_s3  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
ACTOR = Actor("bench", "cli")


def timed(action: Any) -> tuple[float, Any]:
    began = time.monotonic()
    result = action()
    return round(time.monotonic() - began, 3), result


def proof_parts(target: PgTarget) -> dict[str, float]:
    with target.connect(autocommit=True) as conn:
        shape = lp.read_shape(conn)
        assert shape is not None
        parts = {
            "I1 + I2": timed(lambda: lp._check_balances(conn, shape))[0],
            "I3": timed(lambda: lp._check_flows(conn, shape))[0],
            "chain": timed(lambda: lp._verify_chain(conn, shape))[0],
        }
        total, proof = timed(lambda: lp.prove_ledger(conn))
        assert proof.passed, proof.failed_checks
    return parts | {"prove_ledger": total}


def snapshot_stats(target: PgTarget, digests: bool) -> float:
    session = SnapshotSession(target)
    try:
        return timed(lambda: session.stats(digests))[0]
    finally:
        session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    parser.add_argument(
        "--database",
        help="measure this existing Blnk 0.15 database (e.g. backup_bench.py's blnk_bench_N) "
        "instead of generating one; it is never dropped",
    )
    args = parser.parse_args()

    server = PgTarget.from_url(SERVER)
    if args.database:
        name, generated = args.database, 0.0
        with server.with_dbname(name).connect() as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        size = int(row[0]) if row else 0
    else:
        name = f"blnk_proof_bench_{args.transactions}_{uuid.uuid4().hex[:6]}"
        generated, made = timed(lambda: generate(server, name, args.transactions))
        size = made.size_bytes
    target = server.with_dbname(name)
    s3_server = S3ServerProcess()
    s3_server.start()
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {os.cpu_count()} CPUs {platform.machine()}",
        "transactions": args.transactions,
        "database": name,
        "database_bytes": size,
        "generate_seconds": generated,
    }
    try:
        result["proof"] = proof_parts(target)
        result["snapshot_stats"] = {
            "without_digests": snapshot_stats(target, False),
            "with_digests": snapshot_stats(target, True),
        }
        bucket = f"proof-bench-{uuid.uuid4().hex[:8]}"
        raw_s3(s3_server.endpoint).create_bucket(Bucket=bucket)
        runs: dict[str, list[float]] = {"off": [], "on": []}
        with tempfile.TemporaryDirectory() as tmp:
            common = {
                "database_url": target.conninfo,
                "restore_test_database_url": server.conninfo,
                "s3_bucket": bucket,
                "s3_endpoint_url": s3_server.endpoint,
                "aws_access_key_id": ACCESS_KEY,
                "aws_secret_access_key": SECRET_KEY,
                "audit_database_url": f"sqlite:///{Path(tmp) / 'audit.sqlite3'}",
            }
            last_key = ""
            for _ in range(args.repeat):
                for mode in ("off", "on"):
                    settings = load_settings(**common, backup_content_digest=mode == "on")
                    services = Services(settings)
                    try:
                        seconds, backup = timed(lambda s=services: s.backups.run(ACTOR))
                    finally:
                        services.close()
                    runs[mode].append(seconds)
                    last_key = backup.manifest.key
            result["backup_seconds"] = {
                mode: {"runs": values, "median": statistics.median(values)}
                for mode, values in runs.items()
            }
            services = Services(load_settings(**common))
            try:
                report = services.restores.test(ACTOR, last_key)
            finally:
                services.close()
            assert report.passed, report.failed_checks
            result["restore_test"] = {
                "durations": report.durations,
                "checks": len(report.checks),
                "headline": (report.ledger_proof or {}).get("headline"),
            }
    finally:
        s3_server.stop()
        if not args.keep and not args.database:
            drop_database(server, name)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
