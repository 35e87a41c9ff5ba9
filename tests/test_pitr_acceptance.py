"""Continuous protection's promise, tested the way it is made: the database host killed at a
random moment under a Blnk-like load.

Two bots stream the same primary, each on its own slot into its own prefix. One keeps its host
(the service's receiver in this process: after the kill it ships what it had flushed); the
other's host is lost with the database (``blnk-backup wal-stream`` killed outright at the same
moment: nothing in its spool ever reaches the bucket). Then, from the bucket alone:

- the first recovers every payment whose commit the primary had seen the receiver flush;
- the second loses at most the payments of the last WAL_SHIP_PARTIAL_SECONDS (and never more
  than WAL_MAX_LAG_SECONDS);
- both recovered ledgers pass the ledger proof, and hold a prefix of the payments in commit
  order: nothing later without everything earlier.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from core.actor import Actor
from core.database import PgTarget, database_exists, drop_database
from core.services import Services
from core.wal.names import parse_lsn
from tests.conftest import SettingsFactory
from tests.support.helpers import wait_until
from tests.support.pgcluster import (
    REPLICATOR,
    REPLICATOR_PASSWORD,
    PasswordCluster,
    start_ledger_source,
)
from tests.support.settings import settings_env
from tests.test_pitr import Streaming, transfer

pytestmark = pytest.mark.wal  # source clusters of their own: scripts/test's lane 2

ACTOR = Actor("grace", "cli")
CLI = str(Path(sys.executable).parent / "blnk-backup")
SHIP_EVERY = 2.0  # the lost bot's WAL_SHIP_PARTIAL_SECONDS


@dataclass(frozen=True)
class Payment:
    reference: str
    committed_at: float  # time.time() when COMMIT returned
    lsn_after: int  # pg_current_wal_lsn() right after: at or past its commit record


@pytest.fixture
def source() -> Iterator[PasswordCluster]:
    cluster = start_ledger_source(500)
    yield cluster
    cluster.stop()


def _settings(
    make_settings: SettingsFactory, cluster: PasswordCluster, tmp: Path, name: str, ship: float
) -> Any:
    return make_settings(
        database_url=cluster.url(dbname="blnk"),
        replication_database_url=cluster.url(REPLICATOR_PASSWORD, user=REPLICATOR),
        wal_archive=True,
        wal_spool_dir=str(tmp / f"spool-{name}"),
        wal_ship_partial_seconds=ship,
        wal_slot_name=f"bot_{name}_{uuid.uuid4().hex[:6]}",
        s3_prefix=f"{name}/",
        audit_database_url=f"sqlite:///{tmp / f'audit-{name}.sqlite3'}",
        pg_bin_dir=str(cluster.bin),
    )


class Load:
    """Payments one after another on one connection, each recorded when its COMMIT returned,
    and the flush position each receiver last reported to the primary."""

    def __init__(self, ledger: PgTarget, admin: PgTarget, slots: list[str]) -> None:
        self.ledger, self.admin, self.slots = ledger, admin, slots
        self.payments: list[Payment] = []
        self.failed: Exception | None = None
        self.flushed: dict[str, int] = {}
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._pay, daemon=True),
            threading.Thread(target=self._watch, daemon=True),
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)

    def _pay(self) -> None:
        try:
            with self.ledger.connect(autocommit=True) as conn:
                n = 0
                while not self.stop.is_set():
                    reference = f"load_{n}"
                    transfer(conn, reference)
                    done = time.time()
                    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
                    assert row is not None
                    self.payments.append(Payment(reference, done, parse_lsn(row[0])))
                    n += 1
        except Exception as exc:  # the database was killed under it: that is the test
            self.failed = exc

    def _watch(self) -> None:
        try:
            with self.admin.connect(autocommit=True) as conn:
                while not self.stop.is_set():
                    for name, flushed in conn.execute(
                        "SELECT application_name, flush_lsn::text FROM pg_stat_replication"
                    ).fetchall():
                        if name in self.slots and flushed:
                            self.flushed[name] = parse_lsn(flushed)
                    time.sleep(0.01)
        except Exception:
            return


def _kill_cluster(cluster: PasswordCluster) -> None:
    """The database host gone at once: every process of the cluster SIGKILLed together."""
    pid = int((cluster.dir / "data" / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    everyone = [postmaster, *postmaster.children(recursive=True)]
    for process in everyone:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(everyone, timeout=10)


def _prefix(count: int) -> set[str]:
    return {f"load_{n}" for n in range(count)}


def _references(server: PgTarget, database: str) -> set[str]:
    with server.with_dbname(database).connect(autocommit=True) as conn:
        rows = conn.execute(
            "SELECT reference FROM blnk.transactions WHERE reference LIKE 'load_%'"
        ).fetchall()
    return {r[0] for r in rows}


def test_the_database_host_killed_at_a_random_moment_loses_nothing_flushed_and_at_most_the_lag(
    make_settings: SettingsFactory,
    source: PasswordCluster,
    tmp_path: Path,
    pg_server: PgTarget,
) -> None:
    kept_settings = _settings(make_settings, source, tmp_path, "kept", 10.0)
    lost_settings = _settings(make_settings, source, tmp_path, "lost", SHIP_EVERY)
    kept, lost = Services(kept_settings), Services(lost_settings)
    ledger = PgTarget.from_url(source.url(dbname="blnk"))
    admin = PgTarget.from_url(source.url())
    names = {"kept": f"blnk_accept_kept_{uuid.uuid4().hex[:6]}"}
    names["lost"] = names["kept"].replace("kept", "lost")
    # The recovered ledger lands on the test server: its owner must exist there, as the
    # source's roles do on a real target server.
    with pg_server.connect(autocommit=True) as conn:
        made_owner = (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (source.user,)).fetchone()
            is None
        )
        if made_owner:
            conn.execute(f"CREATE ROLE {source.user}")
    env = settings_env(lost_settings)
    log = (tmp_path / "wal-stream.log").open("wb")
    streamer = subprocess.Popen([CLI, "wal-stream"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with Streaming(kept.wal_receiver()):
            kept.base_backups.run(ACTOR)
            lost.base_backups.run(ACTOR)
            wait_until(
                lambda: lost.pitr.window().earliest is not None,
                30,
                "the lost bot's window opens",
            )
            slots = [kept_settings.wal_slot_name, lost_settings.wal_slot_name]
            with Load(ledger, admin, slots) as load:
                time.sleep(random.uniform(6.0, 9.0))  # a random moment under load
                streamer.send_signal(signal.SIGKILL)  # the lost bot's host ...
                _kill_cluster(source)  # ... and the database host, together
                killed_at = time.time()
            assert streamer.wait(10) == -signal.SIGKILL
            time.sleep(1.5)  # the kept receiver notices, its pg_receivewal exits and it ships
            flushed = load.flushed.get(kept_settings.wal_slot_name)
        payments = load.payments
        assert len(payments) > 500 and flushed is not None, (len(payments), load.flushed)

        # The bot that kept its host: everything the primary saw it flush is recovered.
        # The store says it holds WAL up to about the last flushed commit (the spool file's
        # last write, the database being gone), not the last time it could ask.
        last_flushed = max(p.committed_at for p in payments if p.lsn_after <= flushed)
        window = kept.pitr.window()
        assert window.latest is not None
        assert window.latest.timestamp() >= last_flushed - 0.5, (window.latest, last_flushed)
        result = kept.pitr.recover(ACTOR, None, into=names["kept"], server=pg_server)
        assert result.proof is not None and result.proof.passed
        have = _references(pg_server, names["kept"])
        must = [p.reference for p in payments if p.lsn_after <= flushed]
        assert must and set(must) <= have, f"{len(set(must) - have)} flushed payments lost"
        # A prefix, in commit order: nothing later without everything earlier (the payment in
        # flight at the kill may be there: committed, its reply lost with the database).
        assert have == _prefix(len(have)) and len(have) <= len(payments) + 1

        # The bot whose host was lost too: the bucket alone, at most the ship interval behind.
        result = lost.pitr.recover(ACTOR, None, into=names["lost"], server=pg_server)
        assert result.proof is not None and result.proof.passed
        have_lost = _references(pg_server, names["lost"])
        assert have_lost == _prefix(len(have_lost))
        newest = max(
            (p for p in payments if p.reference in have_lost), key=lambda p: p.committed_at
        )
        lost_seconds = killed_at - newest.committed_at
        print(
            f"\nkilled after {len(payments)} payments; flushed-but-kept bot recovered "
            f"{len(have)} ({len(payments) - len(have)} acknowledged and not flushed); the bot "
            f"lost with the host recovered {len(have_lost)}, losing {lost_seconds:.2f} s"
        )
        assert lost_seconds <= SHIP_EVERY + 3.0  # one ship interval, plus the upload
        assert lost_seconds <= lost_settings.wal_max_lag_seconds
        committed_before = [p.reference for p in payments if p.committed_at < newest.committed_at]
        assert set(committed_before) <= have_lost
    finally:
        if streamer.poll() is None:
            streamer.kill()
        log.close()
        for name in names.values():
            if database_exists(pg_server, name):
                drop_database(pg_server, name)
        kept.close()
        lost.close()
        if made_owner:
            with pg_server.connect(autocommit=True) as conn:
                conn.execute(f"DROP ROLE {source.user}")
