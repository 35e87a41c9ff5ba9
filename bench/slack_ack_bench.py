"""Slash-command acknowledgement latency (not part of the test suite).

Signed `/blnk-backups help` requests (a light job, so the measurement disturbs the backup
little) are POSTed to the bot's real HTTP server (waitress + Bolt, HTTP mode, Web API on a fake
Slack server on loopback), paced at --rate per second:
  (a) while nothing else runs — the baseline, same run;
  (b) while a backup of the benchmark database runs (started through /blnk-backup).
Prints p50/p90/p99/max of the time until the HTTP response (Slack's 3 s acknowledgement
window) for each, and the ratio b/a. Target: p99 < 100 ms while a backup runs.

    .venv/bin/python bench/slack_ack_bench.py --requests 300 --transactions 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import statistics
import sys
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.backup_bench import ensure_database  # noqa: E402
from bot.embedded import free_port  # noqa: E402
from bot.http import HttpApi, serve  # noqa: E402
from bot.slack.app import build_slack  # noqa: E402
from core.config import load_settings  # noqa: E402
from core.services import Services  # noqa: E402
from tests.support.fake_slack import FAKE_TOKEN, FakeSlack  # noqa: E402
from tests.support.s3server_alt import SeaweedS3ServerProcess  # noqa: E402
from tests.support.stores import ACCESS_KEY, SECRET_KEY, raw_s3  # noqa: E402

SIGNING_SECRET = "bench-signing-secret"  # noqa: S105 - a local benchmark's own secret


def signed_post(url: str, form: dict[str, str]) -> float:
    body = urllib.parse.urlencode(form).encode()
    stamp = str(int(time.time()))
    digest = hmac.new(
        SIGNING_SECRET.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256
    ).hexdigest()
    request = urllib.request.Request(  # noqa: S310 - loopback only
        url,
        data=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": f"v0={digest}",
        },
    )
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        response.read()
        assert response.status == 200
    return time.perf_counter() - began


def command(fake: FakeSlack, name: str, text: str, user: str = "U_BENCH") -> dict[str, str]:
    return {
        "command": name,
        "text": text,
        "user_id": user,
        "channel_id": "C_BENCH",
        "team_id": "T_BENCH",
        "trigger_id": "1.2.3",
        "response_url": fake.response_url(f"r{time.monotonic_ns()}"),
    }


def burst(url: str, fake: FakeSlack, count: int, rate: float) -> list[float]:
    """POST count signed slash commands at rate per second; return each one's latency."""
    latencies = []
    start = time.perf_counter()
    for i in range(count):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        latencies.append(signed_post(url, command(fake, "/blnk-backups", "help")))
    return latencies


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return {
        "n": len(ordered),
        "p50_ms": round(pct(0.50), 1),
        "p90_ms": round(pct(0.90), 1),
        "p99_ms": round(pct(0.99), 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    db, _size = ensure_database(args.transactions, fresh=False)
    s3_server = SeaweedS3ServerProcess()
    s3_server.start()
    raw_s3(s3_server.endpoint).create_bucket(Bucket="blnk-ack-bench")
    fake = FakeSlack()
    fake.start()
    settings = load_settings(
        database_url=f"postgresql://postgres@127.0.0.1:5432/{db}",
        s3_bucket="blnk-ack-bench",
        s3_endpoint_url=s3_server.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        audit_database_url=f"sqlite:///{args.out / 'ack-bench-audit.sqlite3'}",
        slack_bot_token=FAKE_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_base_url=fake.base_url,
        slack_operators="U_BENCH",
        slack_approvers="U_BENCH_APPROVER",
    )
    services = Services(settings)
    bot = build_slack(settings, services)
    port = free_port()
    server = serve(HttpApi(services, slack_app=bot.app), "127.0.0.1", port, threads=8)
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}/slack/events"
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "database": db,
        "rate_per_s": args.rate,
    }
    try:
        signed_post(url, command(fake, "/blnk-backups", "help"))  # warm up
        idle = burst(url, fake, args.requests, args.rate)
        report["idle"] = summary(idle)
        print("idle:", report["idle"], flush=True)

        signed_post(url, command(fake, "/blnk-backup", "ack benchmark"))
        deadline = time.monotonic() + 30
        while not services.backups.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert services.backups.running, "the backup did not start"
        busy: list[float] = []
        while len(busy) < args.requests:
            busy += burst(url, fake, min(25, args.requests - len(busy)), args.rate)
            if not services.backups.running:
                print(f"the backup ended after {len(busy)} requests", flush=True)
                break
        report["during_backup"] = summary(busy)
        report["during_backup_requests_while_running"] = len(busy)
        ratio = report["during_backup"]["p99_ms"] / report["idle"]["p99_ms"]
        report["p99_ratio"] = round(ratio, 2)
        print("during a backup:", report["during_backup"], flush=True)
        while services.backups.running:
            time.sleep(0.2)
    finally:
        server.close()
        bot.close()
        services.close()
        fake.stop()
        s3_server.stop()
    out = args.out / f"slack-ack-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
