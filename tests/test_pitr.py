"""Continuous protection against a real source cluster: a PostgreSQL 15 server of the test's own
(the shared one refuses replication), reached by a role with REPLICATION and nothing else over
scram, WAL received with pg_receivewal into the real S3 server, a base backup streamed there,
and recoveries to a time run in clusters of their own — restored exactly to the commits before
the target, the Blnk ledger proven."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from bot.cli import main as cli_main
from bot.http import HttpApi
from core.actor import Actor
from core.database import PgTarget, database_exists, drop_database
from core.errors import AlreadyRunningError, PlanChangedError, UsageError
from core.localserver import free_port, run_base, server_user
from core.prune import plan_for_approval
from core.scheduled import ScheduledJobs
from core.services import Services
from core.wal.names import Segment, parse_lsn
from core.wal.receiver import ReceiverThread, WalReceiver
from tests.conftest import SettingsFactory
from tests.support.helpers import shell_block_after, wait_until
from tests.support.pgcluster import (
    REPLICATOR,
    REPLICATOR_PASSWORD,
    PasswordCluster,
    start_ledger_source,
)
from tests.support.slack_requests import AppServer

pytestmark = pytest.mark.wal  # source clusters of their own: scripts/test's lane 2

ACTOR = Actor("grace", "cli")


@pytest.fixture(scope="module")
def source() -> Iterator[PasswordCluster]:
    """The database host: wal_level replica, a replication pg_hba line for the bot's address,
    a capped slot, and a Blnk ledger in database ``blnk``."""
    # a slot per test (each is left behind)
    cluster = start_ledger_source(
        2_000, {"max_replication_slots": "20", "max_slot_wal_keep_size": "1GB"}
    )
    yield cluster
    cluster.stop()


def settings_for(make_settings: SettingsFactory, cluster: PasswordCluster, tmp: Path) -> Any:
    return make_settings(
        database_url=cluster.url(dbname="blnk"),
        replication_database_url=cluster.url(REPLICATOR_PASSWORD, user=REPLICATOR),
        wal_archive=True,
        wal_spool_dir=str(tmp / "spool"),
        wal_ship_partial_seconds=1,
        wal_slot_name=f"blnk_{uuid.uuid4().hex[:8]}",
        pg_bin_dir=str(cluster.bin),
    )


class Streaming:
    """The receiver in a thread, as the service runs it."""

    def __init__(self, receiver: WalReceiver) -> None:
        self.receiver = receiver
        self.stop = threading.Event()
        self.thread = threading.Thread(target=receiver.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Streaming:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def caught_up(self, source: PgTarget, timeout: float = 30) -> None:
        """Wait until the store holds the primary's current position."""
        with source.connect(autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        wanted = parse_lsn(row[0])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            position = self.receiver.state.position
            if position is not None and position >= wanted:
                return
            time.sleep(0.2)
        raise AssertionError(f"the store did not reach {row[0]}: {self.receiver.state}")


def transfer(conn: Any, reference: str) -> None:
    """One Blnk-like payment, as Blnk posts it: an APPLIED transaction and the two balances
    it moves (1 minor unit of EUR), in one transaction."""
    with conn.transaction():
        source, destination = (
            r[0]
            for r in conn.execute(
                "SELECT balance_id FROM blnk.balances WHERE currency = 'EUR' ORDER BY id LIMIT 2"
            ).fetchall()
        )
        conn.execute(
            """INSERT INTO blnk.transactions (transaction_id, source, destination, reference,
                   amount, precise_amount, precision, currency, status, hash, created_at)
               VALUES (%s, %s, %s, %s, 0.01, 1, 100, 'EUR', 'APPLIED', repeat('c', 64), now())""",
            (f"txn_{reference}_{uuid.uuid4().hex[:8]}", source, destination, reference),
        )
        conn.execute(
            "UPDATE blnk.balances SET debit_balance = debit_balance + 1, balance = balance - 1 "
            "WHERE balance_id = %s",
            (source,),
        )
        conn.execute(
            "UPDATE blnk.balances SET credit_balance = credit_balance + 1, "
            "balance = balance + 1 WHERE balance_id = %s",
            (destination,),
        )


def commits_around_a_moment(ledger: PgTarget, tag: str, each: int) -> tuple[datetime, int]:
    """``each`` payments, a moment (half a second apart from both sides), ``each`` more;
    return the moment and how many transactions the ledger held at it."""
    with ledger.connect(autocommit=True) as conn:
        for n in range(each):
            transfer(conn, f"{tag}_before_{n}")
        time.sleep(0.5)
        moment = datetime.now(UTC)
        time.sleep(0.5)
        for n in range(each):
            transfer(conn, f"{tag}_after_{n}")
    return moment, count(ledger) - each


def count(target: PgTarget) -> int:
    with target.connect(autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM blnk.transactions").fetchone()
    assert row is not None
    return int(row[0])


def test_a_recovery_to_a_second_between_two_commits_has_exactly_the_commits_before_it(
    make_settings: SettingsFactory, source: PasswordCluster, tmp_path: Path
) -> None:
    services = Services(settings_for(make_settings, source, tmp_path))
    ledger = PgTarget.from_url(source.url(dbname="blnk"))
    admin = PgTarget.from_url(source.url())
    into = f"blnk_pitr_{uuid.uuid4().hex[:6]}"
    try:
        with Streaming(services.wal_receiver()) as streaming:
            base = services.base_backups.run(ACTOR, reason="first base backup")
            dump = services.backups.run(ACTOR).manifest  # its chain anchor must hold there
            target, before = commits_around_a_moment(ledger, "pitr", 30)
            streaming.caught_up(admin)

        window = services.pitr.window()
        assert window.earliest == base.finished and window.latest is not None
        assert window.earliest < target < window.latest

        result = services.pitr.recover(ACTOR, target, into=into, server=admin)

        assert count(admin.with_dbname(into)) == before  # every commit before it, none after
        assert result.proof is not None and result.proof.ran and result.proof.passed
        anchored = [c for c in result.proof.checks if c.name == f"chain anchor of {dump.key}"]
        assert [c.passed for c in anchored] == [True]
        assert result.stopped.startswith("before commit of transaction")
        assert result.last_transaction_at is not None
        assert result.last_transaction_at <= target
        assert result.timeline == base.timeline + 1  # a recovered cluster starts a new one
        with admin.with_dbname(into).connect(autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM blnk.transactions WHERE reference LIKE 'pitr_after_%'"
            ).fetchone()
        assert row is not None and row[0] == 0
        events = services.audit.events(action="pitr_restore")
        assert [e.outcome for e in events] == ["succeeded", "started"]
    finally:
        if database_exists(admin, into):
            drop_database(admin, into)
        services.close()


def test_a_killed_receiver_resumes_from_its_slot_with_no_gap(
    make_settings: SettingsFactory, source: PasswordCluster, tmp_path: Path
) -> None:
    """pg_receivewal killed outright mid-stream (and WAL written while it is down): it is
    started again, resumes from the slot, and the archive has every segment."""
    services = Services(settings_for(make_settings, source, tmp_path))
    ledger = PgTarget.from_url(source.url(dbname="blnk"))
    admin = PgTarget.from_url(source.url())
    try:
        with Streaming(services.wal_receiver()) as streaming:
            base = services.base_backups.run(ACTOR)
            receiver = _receiver_process(streaming.receiver.slot)
            with ledger.connect(autocommit=True) as conn:
                transfer(conn, "kill_before")
                receiver.send_signal(signal.SIGKILL)
                for n in range(20):
                    transfer(conn, f"kill_during_{n}")
                conn.execute("SELECT pg_switch_wal()")
                for n in range(20):
                    transfer(conn, f"kill_after_{n}")
            try:
                streaming.caught_up(admin, timeout=20)
            except AssertionError:
                print((source.dir / "log").read_text()[-3000:])
                raise
            assert streaming.receiver.state.restarts >= 1
        listing = services.pitr.archive.listing()
        assert listing.gaps(Segment.of(base.timeline, base.start)) == []
        assert listing.has(Segment.of(base.timeline, base.start))
    finally:
        services.close()


def test_a_target_outside_the_recoverable_window_is_refused_and_changes_nothing(
    make_settings: SettingsFactory, source: PasswordCluster, tmp_path: Path
) -> None:
    services = Services(settings_for(make_settings, source, tmp_path))
    admin = PgTarget.from_url(source.url())
    try:
        with pytest.raises(UsageError, match="nothing to recover from yet"):
            services.pitr.recover(ACTOR, datetime.now(UTC), into="blnk_never", server=admin)
        # one is running (a Slack test, the scheduler's): refused, not a second beside it
        with services.pitr._recovering, pytest.raises(AlreadyRunningError, match="one at a time"):
            services.pitr.recover(ACTOR, None, into="blnk_never", server=admin)
        with pytest.raises(UsageError, match="not a directory"):
            services.pitr.recover(ACTOR, None, cluster=Path(__file__))
        with Streaming(services.wal_receiver()) as streaming:
            base = services.base_backups.run(ACTOR)
            streaming.caught_up(admin)
        with pytest.raises(UsageError, match="before the recoverable window"):
            services.pitr.recover(
                ACTOR, datetime(2020, 1, 1, tzinfo=UTC), into="blnk_never", server=admin
            )
        with pytest.raises(UsageError, match="after the newest WAL"):
            services.pitr.recover(
                ACTOR, datetime(2100, 1, 1, tzinfo=UTC), into="blnk_never", server=admin
            )
        assert not database_exists(admin, "blnk_never")
        assert base.finished <= datetime.now(UTC)
    finally:
        services.close()


def _receiver_process(slot: str, timeout: float = 10) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if cmdline and Path(cmdline[0]).name == "pg_receivewal" and f"--slot={slot}" in cmdline:
                return proc
        time.sleep(0.1)
    raise AssertionError("pg_receivewal is not running")


def test_status_health_and_metrics_show_the_recoverable_window_and_its_lag(
    make_settings: SettingsFactory,
    source: PasswordCluster,
    tmp_path: Path,
    use_settings: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_for(make_settings, source, tmp_path)
    services = Services(settings)
    admin = PgTarget.from_url(source.url())
    try:
        api = HttpApi(services, health_cache_seconds=0)
        with AppServer(api) as server:
            # Nothing recoverable yet: a breach, named by a code alone.
            status, body = _get(server, "/healthz?check=backups")
            assert status == 503 and "no_recovery_window" in body["breaches"]
            with Streaming(services.wal_receiver()) as streaming:
                services.base_backups.run(ACTOR)
                streaming.caught_up(admin)
                status, body = _get(server, "/healthz?check=backups")
                assert "wal_lag" not in body["breaches"]
                assert "no_recovery_window" not in body["breaches"]
                assert 0 <= body["recovery_point_lag_seconds"] < 60
                metrics = _text(server, "/metrics")
                assert "blnk_wal_recovery_point_lag_seconds" in metrics
                assert "blnk_base_backup_last_timestamp_seconds" in metrics
            # The receiver stopped: the recovery point ages past WAL_MAX_LAG_SECONDS.
            stale = HttpApi(
                Services(settings.model_copy(update={"wal_max_lag_seconds": 1.0})),
                health_cache_seconds=0,
            )
            time.sleep(1.5)
            with AppServer(stale) as other:
                status, body = _get(other, "/healthz?check=backups")
                assert status == 503 and "wal_lag" in body["breaches"]

        use_settings(settings)
        assert cli_main(["status", "--json"]) in (0, 1)  # no dump yet: a breach, exit 1
        shown = json.loads(capsys.readouterr().out)
        window = shown["recoverable_window"]
        assert window["earliest"] is not None and window["latest"] is not None
        assert shown["recovery_point_lag_seconds"] is not None

        # Bad input: a clear usage error, exit 2, and nothing created.
        for argv in (
            ["restore", "latest", "--at", "2026-12-02 14:02:59", "--into", "x", "--yes"],
            ["restore", "latest", "--at", "yesterday", "--into", "x", "--yes"],
            ["restore", "latest", "--at", "2026-12-02 14:02:59Z", "--into", "x"],
            ["restore", "latest", "--at", "2026-12-02 14:02:59Z", "--into", "x", "--cluster", "d"],
        ):
            assert cli_main(argv) == 2, argv
        assert not database_exists(admin, "x")
    finally:
        services.close()


def _get(server: AppServer, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _text(server: AppServer, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def _stock_recipe() -> list[str]:
    return shell_block_after(OPERATIONS, "recovery to a time with stock tools")


def test_the_stock_tools_recipe_recovers_the_same_state_as_the_bot(
    make_settings: SettingsFactory, source: PasswordCluster, tmp_path: Path
) -> None:
    """docs/operations.md's recovery to a time, run as written (the two `aws s3 cp` lines by
    boto3, as they would copy), as the server's OS user: the same rows as the target time."""
    services = Services(settings_for(make_settings, source, tmp_path))
    ledger = PgTarget.from_url(source.url(dbname="blnk"))
    admin = PgTarget.from_url(source.url())
    user = server_user()
    work = Path(tempfile.mkdtemp(prefix="blnk-recipe-", dir=run_base(user)))
    port = free_port()
    try:
        with Streaming(services.wal_receiver()) as streaming:
            base = services.base_backups.run(ACTOR)
            target, before = commits_around_a_moment(ledger, "recipe", 10)
            streaming.caught_up(admin)

        lines = _stock_recipe()
        assert lines[0].startswith("aws s3 cp s3://BUCKET/PREFIXbase/STAMP/base.tar")
        assert lines[1].startswith("aws s3 cp --recursive s3://BUCKET/PREFIXwal/ ./wal/")
        store = services.store
        with (work / "base.tar").open("wb") as out:
            store.download(base.key, out)
        (work / "wal").mkdir()
        for obj in store.list_objects("wal/"):
            with (work / "wal" / obj.key.rsplit("/", 1)[-1]).open("wb") as out:
                store.download(obj.key, out)
        stamp = target.astimezone(UTC).isoformat(sep=" ")
        script = "set -e\n" + "\n".join(
            line.replace("2026-12-02 14:02:59+00", stamp).replace("5433", str(port))
            for line in lines[2:]
            if not line.startswith("psql")
        )
        if user is not None:
            for path in [work, *work.rglob("*")]:
                os.chown(path, user.uid, user.gid)
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=work,
            env={**os.environ, "PATH": f"{source.bin}:{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr + (work / "recovery.log").read_text()
        recovered = PgTarget(
            {"host": "127.0.0.1", "port": str(port), "dbname": "blnk", "user": source.user},
            source.password,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception), recovered.connect(autocommit=True) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    break
            time.sleep(0.2)
        assert count(recovered) == before
    finally:
        subprocess.run(
            [str(source.bin / "pg_ctl"), "-D", str(work / "pgdata"), "-m", "immediate", "stop"],
            capture_output=True,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
            check=False,
        )
        shutil.rmtree(work, ignore_errors=True)
        services.close()


def test_a_recovery_to_a_time_from_slack_is_approved_by_a_second_person_and_proven(
    start_app: Any, fake: Any, source: PasswordCluster, tmp_path: Path, secrets: list[str]
) -> None:
    from tests.support.slack_requests import visible

    secrets += [REPLICATOR_PASSWORD, source.password]  # never in anything sent to Slack
    admin = PgTarget.from_url(source.url())
    ledger = PgTarget.from_url(source.url(dbname="blnk"))
    settings = settings_for(lambda **o: o, source, tmp_path)  # the overrides alone
    app = start_app(**settings)
    into = f"blnk_slack_pitr_{uuid.uuid4().hex[:6]}"
    try:
        # Outside the window (nothing recoverable yet): refused privately, nothing asked.
        refused = app.command("/blnk-restore", f'latest at "2020-01-01 00:00:00Z" into {into}')
        assert "nothing to recover from yet" in visible(refused.wait_response())
        assert app.services.approvals.pending() == []

        with Streaming(app.services.wal_receiver()) as streaming:
            app.services.base_backups.run(ACTOR)
            target, before = commits_around_a_moment(ledger, "slack", 10)
            streaming.caught_up(admin)

        done = approved_by_another(
            app,
            fake,
            ("/blnk-restore", f'latest at "{target.isoformat()}" into {into} bad deploy'),
            [target.isoformat(), into],
        )
        assert "ledger proven" in (done.outcome or "")
        assert count(admin.with_dbname(into)) == before
        [recovered] = [e for e in app.events("pitr_restore") if e.outcome == "succeeded"]
        assert recovered.reason == "bad deploy" and recovered.trigger == "slack"
    finally:
        if database_exists(admin, into):
            drop_database(admin, into)


def test_retention_deletes_old_base_backups_and_exactly_the_wal_only_they_needed(
    make_settings: SettingsFactory, source: PasswordCluster, tmp_path: Path
) -> None:
    """Two base backups, the older outside every window (RETENTION_*_DAYS=0, keep 1): the
    approved prune deletes it and the WAL before the newer one's start — nothing else; a
    plan that changed deletes nothing; the newer base backup still recovers a second exactly,
    and the older window is refused."""
    settings = settings_for(make_settings, source, tmp_path).model_copy(
        update={
            "retention_daily_days": 0,
            "retention_weekly_days": 0,
            "retention_monthly_days": 0,
            "retention_min_keep": 1,
        }
    )
    services = Services(settings)
    ledger = PgTarget.from_url(source.url(dbname="blnk"))
    admin = PgTarget.from_url(source.url())
    try:
        with Streaming(services.wal_receiver()) as streaming:
            old = services.base_backups.run(ACTOR)
            early, _ = commits_around_a_moment(ledger, "ret_early", 3)
            with admin.connect(autocommit=True) as conn:
                for _ in range(2):  # segments only the older base backup needs
                    conn.execute("SELECT pg_switch_wal()")
                    conn.execute("CHECKPOINT")
            new = services.base_backups.run(ACTOR)
            target, before = commits_around_a_moment(ledger, "ret_late", 5)
            streaming.caught_up(admin)
        assert old.stamp != new.stamp
        boundary = Segment.of(new.timeline, new.start)
        names_before = set(services.pitr.archive.listing().names)

        dry = services.pruner.prune(ACTOR)[0]
        assert dry.wal is not None and dry.wal.paused is None
        assert [b.stamp for b in dry.wal.to_delete] == [old.stamp]
        assert dry.wal.keep_from == boundary
        doomed = set(dry.wal.wal_to_delete)
        assert doomed, "the older base backup's own segments should be planned"
        for name in names_before:
            segment = Segment.parse(name.removesuffix(".partial"))
            if segment is not None:
                assert (name in doomed) == (segment.number < boundary.number), name
        assert set(services.pitr.archive.listing().names) == names_before  # a dry run

        params, lines = plan_for_approval([dry])
        assert any(old.stamp in line for line in lines)
        assert any(boundary.name in line for line in lines)

        tampered = json.loads(json.dumps(params))
        tampered["stores"][dry.location]["base"] = [new.stamp]  # the newest: never deleted
        with pytest.raises(PlanChangedError, match=new.stamp):
            services.pruner.apply_approved(ACTOR, tampered)
        assert set(services.pitr.archive.listing().names) == names_before
        assert [b.stamp for b in services.base_backups.list_in(services.store)] == [
            old.stamp,
            new.stamp,
        ]

        applied = services.pruner.apply_approved(ACTOR, params)[0]
        assert applied.errors == [] and applied.bases_deleted == [old.stamp]
        assert applied.wal_deleted == len(doomed)
        left = services.pitr.archive.listing()
        assert set(left.names) == names_before - doomed
        assert [b.stamp for b in services.base_backups.list_in(services.store)] == [new.stamp]
        assert services.store.head(old.key) is None

        window = services.pitr.window()
        assert window.earliest == new.finished, window
        again = services.pitr.window()
        assert again.earliest == new.finished, (again, services.pitr.archive.listing())
        with pytest.raises(UsageError, match="before the recoverable window"):
            services.pitr.check_target(early)
        result = services.pitr.recover(ACTOR, target)
        assert result.base == new.key and result.proof is not None and result.proof.passed
        assert result.proof.ran
        assert result.last_transaction_at is not None and result.last_transaction_at <= target
        assert before > 0

        # The scheduled point-in-time restore test (PITR_TEST_SCHEDULE) recovers to the
        # newest point, proves the ledger and says how far behind the primary that was.
        ScheduledJobs(services, "test:1").run("pitr_test", datetime.now(UTC))
        [run] = [
            e
            for e in services.audit.events(action="scheduled_run", limit=5)
            if e.outcome != "started"
        ]
        assert run.outcome == "succeeded", run.error_cause
        assert "passed" in run.details_dict()["outcome"]
        tested = services.audit.events(action="pitr_restore", limit=1)[0]
        assert tested.outcome == "succeeded" and tested.reason == "point-in-time restore test"
        assert tested.details_dict()["ledger_proof"]["passed"] is True
        # nothing was written after the receiver stopped: the newest point is the primary's
        behind = tested.details_dict()["behind_primary_bytes"]
        assert behind is not None
        assert behind < 16 * 1024 * 1024
    finally:
        services.close()


def approved_by_another(app: Any, fake: Any, command: tuple[str, str], shown: list[str]) -> Any:
    """Ask with ``command`` as the requester; the approval request must show each of
    ``shown``; a second person approves; return the approval once executed."""
    from bot.render.blocks import APPROVE_ACTION
    from tests.support.slack_requests import APPROVER1, buttons, visible, wait_message

    app.command(*command)
    message = wait_message(fake, "Approval needed")
    for text in shown:
        assert text in visible(message), text
    approval_id = buttons(message)[APPROVE_ACTION]
    app.click(message, approve=True, user=APPROVER1)
    done = app.wait_status(approval_id, "executed", "failed", timeout=240)
    assert done.status == "executed", done.outcome
    return done


def _caught_up(thread: ReceiverThread, source: PgTarget, timeout: float = 30) -> None:
    with source.connect(autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    wanted = parse_lsn(row[0])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        receiver = thread.receiver
        if receiver is not None and (receiver.state.position or 0) >= wanted:
            return
        time.sleep(0.2)
    raise AssertionError(f"the store did not reach {row[0]}")


def test_a_slot_lost_to_its_cap_is_recreated_from_slack_and_the_older_window_stays_restorable(
    start_app: Any, fake: Any, source: PasswordCluster, tmp_path: Path, secrets: list[str]
) -> None:
    """The bot down while the primary writes past max_slot_wal_keep_size: the slot is lost and
    the chain broken. `/blnk-backups wal-slot recreate`, approved by a second person, makes
    the slot again (the service's receiver paused around it), takes a base backup, and
    streaming resumes; the time before the break still recovers exactly, a time inside it is
    refused with where the chain broke."""

    secrets += [REPLICATOR_PASSWORD, source.password]
    admin = PgTarget.from_url(source.url())
    ledger = PgTarget.from_url(source.url(dbname="blnk"))
    app = start_app(**settings_for(lambda **o: o, source, tmp_path))
    services = app.services
    thread = ReceiverThread(services.wal_receiver)
    services.receiver_thread = thread  # as the service's leader runs it
    slot = services.settings.wal_slot_name
    try:
        thread.start()
        first = services.base_backups.run(ACTOR)
        before_break, rows_then = commits_around_a_moment(ledger, "lost_before", 5)
        _caught_up(thread, admin)
        thread.stop()  # the bot is down ...
        with ledger.connect(autocommit=True) as conn:  # ... while the primary writes on
            conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '48MB'")
            conn.execute("SELECT pg_reload_conf()")
            for n in range(6):
                transfer(conn, f"lost_during_{n}")
                conn.execute("SELECT pg_switch_wal()")
            during = datetime.now(UTC)
            conn.execute("CHECKPOINT")
        lost = services.wal_health.read_slot()
        assert lost is not None and lost.wal_status == "lost"
        broken = services.wal_health.problems()
        assert "chain_broken" in [p.code for p in broken]
        assert any("wal-slot recreate" in p.next_step for p in broken)
        thread.start()  # pg_receivewal cannot stream from a lost slot

        done = approved_by_another(
            app,
            fake,
            ("/blnk-backups", "wal-slot recreate slot lost overnight"),
            [f"`{slot}`", "base backup"],
        )
        assert "made again" in (done.outcome or "")
        remade = services.wal_health.read_slot()
        assert remade is not None and remade.wal_status != "lost"
        [audited] = [e for e in app.events("wal_slot") if e.outcome == "succeeded"]
        assert audited.reason == "slot lost overnight" and audited.trigger == "slack"

        bases = services.base_backups.list_in(services.store)
        assert len(bases) == 2 and bases[0].stamp == first.stamp
        with ledger.connect(autocommit=True) as conn:
            transfer(conn, "after_recreate")
        _caught_up(thread, admin)  # streaming resumed from the new slot
        assert "chain_broken" not in [p.code for p in services.wal_health.problems()]

        # Dropping it (the way out when the primary's disk fills): approved, the slot gone,
        # the service's receiver held stopped until the slot is recreated.
        done = approved_by_another(
            app, fake, ("/blnk-backups", "wal-slot drop disk filling"), ["Drop the replication"]
        )
        assert "dropped" in (done.outcome or ""), done.outcome
        assert services.wal_health.read_slot().exists is False
        assert thread.held and not thread.running
        thread.start()  # a new leadership does not bring it back while held
        assert not thread.running
        thread.stop()
        # Nor does a bot started afresh (the drop is kept in the bucket, not in a process).
        restarted = ReceiverThread(services.wal_receiver)
        restarted.start()
        try:
            time.sleep(2.0)
            assert services.wal_health.read_slot().exists is False
            codes = [p.code for p in services.wal_health.problems()]
            assert "slot_dropped" in codes and "receiver_down" not in codes
        finally:
            restarted.stop()

        window = services.pitr.window()
        assert window.earliest == first.finished and len(window.breaks) == 1
        wal_until, again_from = window.breaks[0]
        assert again_from == bases[1].finished
        assert wal_until is not None and wal_until < during
        with pytest.raises(UsageError, match="chain broke"):
            services.pitr.check_target(during)
        result = services.pitr.recover(ACTOR, before_break)
        assert result.proof is not None and result.proof.passed
        assert result.last_transaction_at is not None
        assert result.last_transaction_at <= before_break
        assert result.base == first.key and rows_then > 0
    finally:
        thread.stop()
        with admin.connect(autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")


def test_the_receiver_is_never_a_synchronous_standby_unless_that_is_chosen(
    make_settings: SettingsFactory, source: PasswordCluster, tmp_path: Path
) -> None:
    """A primary whose synchronous_standby_names would take the receiver (``*``) gets a loud
    warning naming the way out; WAL_SYNCHRONOUS_STANDBY=true accepts it; a primary that does
    not name it gets none."""
    settings = settings_for(make_settings, source, tmp_path)
    ledger = PgTarget.from_url(source.url(dbname="blnk"))
    plain = Services(settings).wal_receiver()
    chosen = Services(settings.model_copy(update={"wal_synchronous_standby": True})).wal_receiver()
    assert plain.source.params["application_name"] == settings.wal_slot_name
    assert plain.check_synchronous() is None  # the test cluster names no standby
    try:
        with ledger.connect(autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (replica, *)'")
            conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        warning = None
        while warning is None and time.monotonic() < deadline:
            warning = plain.check_synchronous()
            time.sleep(0.1)
        assert warning is not None and "WAL_SYNCHRONOUS_STANDBY=true" in warning
        assert warning in plain.state.errors
        assert chosen.check_synchronous() is None
    finally:
        with ledger.connect(autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
            conn.execute("SELECT pg_reload_conf()")


def test_the_bot_killed_outright_resumes_from_its_slot_with_no_gap(
    make_settings: SettingsFactory, source: PasswordCluster, tmp_path: Path
) -> None:
    """``blnk-backup wal-stream`` SIGKILLed while payments go on (its pg_receivewal is told
    to stop as its parent dies, never left holding the slot), started again: it resumes from
    the slot, the archive has no gap, and the store reaches the primary's position."""
    from tests.support.settings import settings_env

    settings = settings_for(make_settings, source, tmp_path)
    services = Services(settings)
    ledger = PgTarget.from_url(source.url(dbname="blnk"))
    admin = PgTarget.from_url(source.url())
    cli = str(Path(sys.executable).parent / "blnk-backup")
    env = settings_env(settings)
    out = (tmp_path / "wal-stream.log").open("wb")
    first = subprocess.Popen([cli, "wal-stream"], env=env, stdout=out, stderr=subprocess.STDOUT)
    second: subprocess.Popen[bytes] | None = None
    try:
        base = services.base_backups.run(ACTOR)
        with ledger.connect(autocommit=True) as conn:
            for n in range(20):
                transfer(conn, f"botkill_before_{n}")
            _receiver_process(settings.wal_slot_name)  # it streams
            first.send_signal(signal.SIGKILL)
            assert first.wait(10) == -signal.SIGKILL
            for n in range(20):
                transfer(conn, f"botkill_down_{n}")
            conn.execute("SELECT pg_switch_wal()")
        # The slot is let go of (no orphaned pg_receivewal holds it) and keeps the WAL.
        wait_until(
            lambda: services.wal_health.read_slot().active is False, 10, "the slot is let go"
        )
        second = subprocess.Popen(
            [cli, "wal-stream"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        with admin.connect(autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        wanted = parse_lsn(row[0])

        def caught_up() -> bool:
            position = services.store.get_json(f"{services.store.prefix}wal/position.json")
            return isinstance(position, dict) and parse_lsn(position["lsn"]) >= wanted

        wait_until(caught_up, 30, "the restarted bot's store reaches the primary")
        listing = services.pitr.archive.listing()
        first_segment = Segment.of(base.timeline, base.start)
        assert listing.has(first_segment) and listing.gaps(first_segment) == []
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(30)
        out.close()
        services.close()


def test_a_recovery_killed_outright_leaves_a_cluster_the_next_one_sweeps(
    make_settings: SettingsFactory, source: PasswordCluster, tmp_path: Path
) -> None:
    """`blnk-backup restore-test pitr` SIGKILLed while its scratch cluster runs: the cluster
    (a running postmaster, a base backup's worth of disk) is left behind — then the next
    recovery shuts it down and removes it before it starts its own."""
    from tests.support.settings import settings_env

    settings = settings_for(make_settings, source, tmp_path)
    services = Services(settings)
    admin = PgTarget.from_url(source.url())
    cli = str(Path(sys.executable).parent / "blnk-backup")
    out = (tmp_path / "restore-test.log").open("wb")
    killed: subprocess.Popen[bytes] | None = None

    def scratch_server() -> psutil.Process | None:
        for process in psutil.process_iter(["cmdline"]):
            line = process.info["cmdline"] or []
            if any("blnk-pitr-" in part for part in line) and "-D" in line:
                return process
        return None

    try:
        with Streaming(services.wal_receiver()) as streaming:
            services.base_backups.run(ACTOR)
            streaming.caught_up(admin)
        assert scratch_server() is None
        killed = subprocess.Popen(
            [cli, "restore-test", "pitr"], env=settings_env(settings), stdout=out, stderr=out
        )
        wait_until(lambda: scratch_server() is not None, 120, "the scratch cluster runs")
        server = scratch_server()
        assert server is not None
        command = server.cmdline()
        root = Path(command[command.index("-D") + 1]).parent
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        time.sleep(0.5)
        assert server.is_running() and root.exists()  # left behind

        result = services.pitr.recover(ACTOR, None)
        assert result.proof is not None and result.proof.passed
        assert not root.exists()
        psutil.wait_procs([server], timeout=10)
        assert not server.is_running()
        assert scratch_server() is None  # its own was removed at the end too
        outcomes = [e.outcome for e in services.audit.events(action="pitr_restore")]
        assert outcomes.count("abandoned") == 1 and outcomes.count("succeeded") == 1
    finally:
        if killed is not None and killed.poll() is None:
            killed.kill()
        out.close()
        services.close()
