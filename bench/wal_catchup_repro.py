"""Reproduction (not part of the test suite; found by bench/wal_pipeline_bench.py): while the
product's receiver catches up a backlog — the bot was down and the slot kept the WAL — what does
wal/position.json claim, and what does a recovery to a time inside that claim give?

The bot streams, then stops; 30 s of payments (and bulk WAL, so the backlog takes a few seconds
to ship) are made while it is down; it starts again and is killed (as a crash) as soon as
position.json says a time after the outage while the WAL it holds is still behind the outage's
end. Then recover(time the outage's payments were all committed). Prints JSON; ~1.5 min.

    .venv/bin/python bench/wal_catchup_repro.py
"""

import json
import shutil
import signal
import sys
import tempfile
import time
from argparse import Namespace
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wal_pipeline_bench as B

from core.wal.names import parse_lsn

args = Namespace(warmup=5, window=60)
work = B.owned_dir(Path(tempfile.mkdtemp(prefix="catchup-", dir=B.run_base(B.OWNER))), 0o755)
s3 = B.SeaweedS3ServerProcess()
source = B.Source(Path("/usr/lib/postgresql/15/bin"))
out = {}
receiver = None
try:
    s3.start()
    client = B.raw_s3(s3.endpoint)
    client.create_bucket(Bucket=B.BUCKET)
    out["source"] = source.start(20_000)
    sampler = B.DbSampler(source)
    sampler.start()
    ctx = B.Ctx(args, work, source, s3, client, sampler)
    out["slot"] = B.make_slot_as_product(ctx, "pitr")
    B.bb_product(ctx, "pitr/")
    events = work / "events.jsonl"
    receiver = ctx.start_product_receiver("pitr/", "pitr", 10, events)
    poller = B.StorePoller(B.raw_s3(s3.endpoint), "pitr/", interval=0.05)
    poller.start()
    B.wait_for("position.json", lambda: poller.position() is not None, 60)
    time.sleep(3)
    B.stop_process(receiver)  # the bot goes down; the slot keeps the WAL
    receiver = None
    stored_before = poller.position()
    # the outage: payments at 500/s, and bulk WAL (a big insert) so the backlog is large
    load = B.start_load(work, source, 500, 8, 30, "outage", log=True)
    source.execute("CREATE TABLE filler (x int, pad text)")
    for _ in range(3):
        source.execute(
            "INSERT INTO filler SELECT g, repeat('x', 200) FROM generate_series(1, 1000000) g"
        )
    load.proc.wait()
    outage_end = time.time()
    rows_at_end = source.count()
    end_lsn = source.current_lsn()
    out |= {
        "rows_at_end_of_outage": rows_at_end,
        "end_lsn": end_lsn,
        "outage_end": datetime.fromtimestamp(outage_end, UTC).isoformat(),
        "backlog_bytes": end_lsn - (stored_before or 0),
    }
    time.sleep(1)
    # the bot comes back; kill it (as a crash) once position.json says a time after the
    # outage while the WAL it holds is still behind the outage's end
    receiver = ctx.start_product_receiver("pitr/", "pitr", 10, events)

    def claims_past_outage() -> bool:
        if not poller.polls or poller.polls[-1][1] is None:
            return False
        _, lsn, shipped = poller.polls[-1]
        return shipped is not None and shipped > outage_end + 0.5 and lsn < end_lsn

    try:
        B.wait_for("a claim past the outage with WAL behind it", claims_past_outage, 60, 0.02)
        receiver.send_signal(signal.SIGKILL)
        receiver.wait()
        out["caught"] = True
    except RuntimeError:
        out["caught"] = False
    receiver = None
    time.sleep(0.5)
    poller.stop()
    body = json.loads(
        client.get_object(Bucket=B.BUCKET, Key="pitr/wal/position.json")["Body"].read()
    )
    out["position_json"] = body
    out["store_behind_bytes"] = end_lsn - parse_lsn(body["lsn"])
    out["store_lsn_reached_by_primary_at"] = datetime.fromtimestamp(
        sampler.reached(parse_lsn(body["lsn"])), UTC
    ).isoformat()
    services = ctx.services("pitr/")
    window = services.pitr.window()
    out["window"] = window.as_dict()
    out["reported_lag_s"] = window.lag_seconds()
    target = datetime.fromtimestamp(outage_end, UTC)  # every outage payment committed by then
    out["target"] = target.isoformat()
    try:
        result = services.pitr.recover(B.ACTOR, target, cluster=work / "handed", reason="repro")
        out["recover"] = {
            "stopped": result.stopped,
            "notes": result.notes,
            "passed": result.passed,
            "lsn": result.lsn,
            "rows": B.count_in_cluster(ctx, work / "handed"),
        }
    except Exception as exc:
        out["recover"] = {"error": f"{type(exc).__name__}: {exc}"}
    services.close()
    sampler.stop()
finally:
    if receiver is not None:
        B.stop_process(receiver)
    source.stop()
    s3.stop()
    print(json.dumps(out, indent=2, default=str))
    shutil.rmtree(work, ignore_errors=True)
