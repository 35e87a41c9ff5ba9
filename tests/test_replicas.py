"""The service as operators run it: ``blnk-backup-bot`` processes in Slack's HTTP mode against
the fake Slack Web API. Two replicas sharing a PostgreSQL audit database run each scheduled job
once, not twice; when the leader is killed outright the other takes over and fires the next
run. The process itself: a configuration error or a refused token exits 2 naming the cause,
SIGTERM stops it cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.scheduler import Scheduler
from bot.slack.alerts import alert_for
from core.approvals import ApprovalBook
from core.audit import AuditEvent, AuditLog
from core.config import Settings
from core.database import PgTarget
from core.leadership import JobLock, Leadership
from core.outbox import Outbox
from core.services import Services
from tests.support.bot_process import BOT, Replica
from tests.support.databases import audit_database
from tests.support.fake_slack import FAKE_TOKEN, FakeSlack
from tests.support.faultproxy import FaultProxy
from tests.support.helpers import wait_until
from tests.support.s3server import free_port
from tests.support.settings import settings_env
from tests.support.stores import bucket_keys, incomplete_uploads

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack() as slack:
        yield slack


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """Start ``blnk-backup-bot`` with exactly the environment given; kill whatever is left."""
    started: list[Replica] = []

    def start(env: dict[str, str], port: int | None = None) -> Replica:
        port = port or free_port()
        log = tmp_path / f"bot-{len(started)}.log"
        full = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HTTP_HOST": "127.0.0.1"}
        full |= {"HTTP_PORT": str(port)} | env
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [BOT], env=full, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
            )
        replica = Replica(proc, port, log)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        if replica.proc.poll() is None:
            replica.proc.kill()
        replica.proc.wait(10)


def slack_env(slack: FakeSlack, **extra: str) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": FAKE_TOKEN,
        "SLACK_SIGNING_SECRET": "signing-secret-for-tests",
        "SLACK_API_BASE_URL": slack.base_url,
        "BACKUP_SCHEDULE": "",
        "RETENTION_SCHEDULE": "",
        "MONITOR_SCHEDULE": "",
        "RESTORE_TEST_SCHEDULE": "",
    } | extra


# --- the process -------------------------------------------------------------------------------


def test_a_signing_secret_without_a_bot_token_exits_2_naming_the_variable(
    launch: Callable[..., Replica], fake_slack: FakeSlack
) -> None:
    env = slack_env(fake_slack)
    del env["SLACK_BOT_TOKEN"]
    bot = launch(env)
    assert bot.proc.wait(60) == 2
    assert re.search(r"^error: .*SLACK_BOT_TOKEN is not set", bot.output(), re.M), bot.output()
    assert fake_slack.calls() == []


def test_an_invalid_schedule_exits_2_naming_the_variable(
    launch: Callable[..., Replica], fake_slack: FakeSlack
) -> None:
    bot = launch(slack_env(fake_slack, BACKUP_SCHEDULE="0 3 * * 8"))
    assert bot.proc.wait(60) == 2
    assert re.search(r"^error: .*BACKUP_SCHEDULE: ", bot.output(), re.M), bot.output()
    assert "Traceback" not in bot.output()


def test_a_refused_bot_token_exits_2_saying_slack_refused_it(
    launch: Callable[..., Replica], fake_slack: FakeSlack
) -> None:
    bot = launch(slack_env(fake_slack, SLACK_BOT_TOKEN="xoxb-not-the-right-one"))
    assert bot.proc.wait(60) == 2
    output = bot.output()
    assert "SLACK_BOT_TOKEN was refused by Slack (invalid_auth)" in output, output
    assert "xoxb-not-the-right-one" not in output and "Traceback" not in output
    assert [c.method for c in fake_slack.calls()] == ["auth.test"]


def test_sigterm_stops_the_service_cleanly_and_says_so(
    launch: Callable[..., Replica], fake_slack: FakeSlack, make_settings: SettingsFactory
) -> None:
    env = settings_env(make_settings()) | slack_env(
        fake_slack, MONITOR_SCHEDULE="0 */6 * * *", BLNK_API_KEY="k3y-for-cron-0123456789"
    )
    bot = launch(env)
    bot.wait_serving()
    with contextlib.suppress(urllib.error.HTTPError):
        urllib.request.urlopen(bot.url("/backup-s3?reason=secret-ish"), timeout=10)  # noqa: S310
    bot.proc.send_signal(signal.SIGTERM)
    assert bot.proc.wait(30) == 0, bot.output()
    output = bot.output()
    assert "Traceback" not in output
    assert not bot.healthy()
    # Every request's outcome, one line each (never its query); a shutdown reads as one.
    assert re.search(r"GET /backup-s3 -> 401 unauthorized in [0-9.]+ s from 127\.0\.0\.1", output)
    assert "secret-ish" not in output
    assert "shutting down (SIGTERM)" in output and output.rstrip().endswith("stopped")
    assert "no longer leads" not in output


def test_sigterm_during_a_backup_request_lets_it_finish_and_answer_then_exits_0(
    launch: Callable[..., Replica],
    fake_slack: FakeSlack,
    make_settings: SettingsFactory,
    proxy: FaultProxy,
    s3: Any,
    bucket: str,
) -> None:
    proxy.faults.delay = lambda r: 3.0 if "partNumber=" in r.path else 0.0  # a slow store
    settings = make_settings(s3_endpoint_url=proxy.endpoint)
    env = settings_env(settings) | slack_env(fake_slack, BLNK_API_KEY="k3y-for-cron-0123456789")
    bot = launch(env)
    bot.wait_serving()
    curl = subprocess.Popen(
        [
            "curl",
            "-sf",
            "-H",
            "Authorization: Bearer k3y-for-cron-0123456789",
            bot.url("/backup-s3"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: any("partNumber=" in r.path for r in proxy.faults.log), 60, "an upload")
        bot.proc.send_signal(signal.SIGTERM)  # a rolling update, mid-backup
        out, _ = curl.communicate(timeout=60)
    finally:
        if curl.poll() is None:
            curl.kill()
    assert curl.returncode == 0, bot.output()
    assert json.loads(out)["key"] in bucket_keys(s3, bucket)
    assert bot.proc.wait(30) == 0, bot.output()
    assert "Traceback" not in bot.output()


def test_sigterm_during_a_backup_longer_than_the_drain_stops_it_cleanly_and_answers(
    launch: Callable[..., Replica],
    fake_slack: FakeSlack,
    make_settings: SettingsFactory,
    blnk_db: PgTarget,
    s3: Any,
    bucket: str,
) -> None:
    settings = make_settings()
    env = settings_env(settings) | slack_env(fake_slack, BLNK_API_KEY="k3y-for-cron-0123456789")
    bot = launch(env)
    bot.wait_serving()
    # A migration holding a table makes pg_dump wait: a backup far longer than the drain.
    with blnk_db.connect() as holder:
        holder.execute("LOCK TABLE blnk.transactions IN ACCESS EXCLUSIVE MODE")
        bearer = "Authorization: Bearer k3y-for-cron-0123456789"
        curl = subprocess.Popen(
            ["curl", "-s", "-w", "\n%{http_code}", "-H", bearer, bot.url("/backup-s3")],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(lambda: _pg_dump_waits(blnk_db), 60, "pg_dump waiting on the lock")
            stopped = time.monotonic()
            bot.proc.send_signal(signal.SIGTERM)  # a rolling update, mid-backup
            out, _ = curl.communicate(timeout=60)
            assert bot.proc.wait(30) == 0, bot.output()
            took = time.monotonic() - stopped
        finally:
            if curl.poll() is None:
                curl.kill()
    body, status = out.rsplit("\n", 1)
    assert status == "500", out
    error = json.loads(body)["error"]
    assert error["code"] == "interrupted" and "shutting down" in error["message"], error
    assert took < 30, took  # inside Kubernetes' grace period
    assert incomplete_uploads(s3, bucket) == [] and bucket_keys(s3, bucket) == []
    audit = AuditLog(settings.audit_database_url)
    try:
        [failed] = [e for e in audit.events(action="backup") if e.outcome != "started"]
    finally:
        audit.close()
    assert (failed.outcome, failed.error_code) == ("failed", "interrupted")
    assert "Traceback" not in bot.output()
    assert re.search(r"WARNING .*GET /backup-s3 -> 500 interrupted in ", bot.output())


def _pg_dump_waits(target: PgTarget) -> bool:
    with target.connect(autocommit=True) as conn:
        row = conn.execute(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = 'pg_dump'
                 AND wait_event_type = 'Lock'"""
        ).fetchone()
    return bool(row and row[0])


def test_without_slack_an_api_key_serves_the_http_api_and_scheduler_alone_for_cron(
    launch: Callable[..., Replica], make_settings: SettingsFactory, s3: Any, bucket: str
) -> None:
    """An operator who only replaces Blnk's /backup-s3: BLNK_API_KEY, no Slack tokens, no
    terminal (a container). The service runs; a cron line with curl gets a verified backup."""
    env = settings_env(make_settings()) | {
        "BLNK_API_KEY": "k3y-for-cron-0123456789",
        "BACKUP_SCHEDULE": "",
    }
    bot = launch(env)
    bot.wait_serving()
    assert "Slack not configured (HTTP API and scheduler only" in bot.output()
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "-f",
            "-H",
            "Authorization: Bearer k3y-for-cron-0123456789",
            bot.url("/backup-s3"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + bot.output()
    key = json.loads(done.stdout)["key"]
    assert {key, key + ".manifest.json"} <= set(bucket_keys(s3, bucket))
    wrong = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", bot.url("/backup-s3")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert wrong.stdout == "401"
    # No Slack: nothing listens for Slack events.
    events = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            bot.url("/slack/events"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert events.stdout == "404"
    with urllib.request.urlopen(bot.url("/metrics"), timeout=10) as reply:  # noqa: S310
        assert "blnk_backup_last_success_timestamp_seconds" in reply.read().decode()
    bot.proc.send_signal(signal.SIGTERM)
    assert bot.proc.wait(30) == 0, bot.output()
    assert "Traceback" not in bot.output()


# --- two replicas --------------------------------------------------------------------------


@pytest.fixture
def shared_audit(pg_server: PgTarget) -> Iterator[str]:
    """A fresh audit database on the test server, dropped afterwards."""
    with audit_database(pg_server) as url:
        yield url


SLOT = 10  # seconds: the replicas' schedule is "*/10 * * * * *" (seconds first, as node-cron)


def next_slot(after: float) -> datetime:
    """The first scheduled time after ``after``."""
    return datetime.fromtimestamp((int(after) // SLOT + 1) * SLOT, UTC)


def started_runs(audit: AuditLog, due: datetime) -> list[AuditEvent]:
    return [
        e
        for e in audit.events(limit=500, action="scheduled_run")
        if e.outcome == "started" and e.details_dict().get("scheduled_for") == due.isoformat()
    ]


def replica_pid(event: AuditEvent) -> int:
    return int(str(event.details_dict()["replica"]).rsplit(":", 1)[1])


def test_two_replicas_run_each_scheduled_slot_once_and_the_survivor_takes_over(
    launch: Callable[..., Replica],
    fake_slack: FakeSlack,
    make_settings: SettingsFactory,
    shared_audit: str,
) -> None:
    settings = make_settings(audit_database_url=shared_audit)
    env = settings_env(settings) | slack_env(fake_slack, MONITOR_SCHEDULE=f"*/{SLOT} * * * * *")
    replicas = [launch(env), launch(env)]
    try:
        _two_replicas_one_run_then_takeover(replicas, shared_audit)
    except (AssertionError, subprocess.TimeoutExpired) as exc:  # say what each replica said
        logs = "\n".join(f"--- replica {r.pid} ---\n{r.output()[-3000:]}" for r in replicas)
        raise AssertionError(f"{exc}\n{logs}") from exc


def _two_replicas_one_run_then_takeover(replicas: list[Replica], shared_audit: str) -> None:
    for replica in replicas:
        replica.wait_serving()
    wait_until(lambda: any(r.leads() for r in replicas), 30, "a replica leads")
    ready = time.time()
    leaders = [r for r in replicas if r.leads()]
    assert len(leaders) == 1, "exactly one replica leads"
    leader = leaders[0]
    [other] = [r for r in replicas if r is not leader]

    audit = AuditLog(shared_audit)
    try:
        # 1. Both replicas up: the next scheduled slot runs exactly once, on the leader.
        first = next_slot(ready + 2)
        wait_until(lambda: len(started_runs(audit, first)) >= 1, 40, f"the {first} run")
        time.sleep(3)  # give a second runner, if there were one, time to show up
        runs = started_runs(audit, first)
        assert [replica_pid(r) for r in runs] == [leader.pid], "one run, on the leader"
        run = runs[0]
        assert run.trigger == "schedule"
        assert run.details_dict()["job"] == "freshness_check"

        # 2. The leader dies outright; the other takes over and fires the next slot.
        leader.proc.kill()
        leader.proc.wait(10)
        killed = time.time()
        wait_until(other.leads, 30, "the surviving replica takes over")
        took_over = time.time() - killed
        second = next_slot(max(time.time() + 1, first.timestamp() + 1))
        wait_until(lambda: len(started_runs(audit, second)) >= 1, 40, f"the {second} run")
        runs = started_runs(audit, second)
        assert [replica_pid(r) for r in runs] == [other.pid], "one run, on the new leader"
        run = runs[0]
        assert run.details_dict()["late_by_seconds"] == 0  # on time, not a catch-up
        everyone = {replica_pid(e) for e in audit.events(limit=500, action="scheduled_run")}
        assert everyone == {leader.pid, other.pid}
    finally:
        audit.close()
    assert took_over < 20  # the election retries every 15 s
    assert other.healthy()
    other.proc.send_signal(signal.SIGTERM)
    assert other.proc.wait(30) == 0


# --- the election, in process ----------------------------------------------------------------


def test_one_candidate_leads_and_another_takes_over_when_it_steps_down(shared_audit: str) -> None:
    seen: list[str] = []
    first = Leadership(shared_audit, lambda: seen.append("first leads"), lambda: None, 0.2)
    second = Leadership(shared_audit, lambda: seen.append("second leads"), lambda: None, 0.2)
    try:
        first.start()
        wait_until(lambda: first.leading, 10, "the first candidate leads")
        second.start()
        time.sleep(1)  # five tries
        assert not second.leading and seen == ["first leads"]
        first.stop()
        wait_until(lambda: second.leading, 5, "the second candidate takes over")
        assert seen == ["first leads", "second leads"]
    finally:
        first.stop()
        second.stop()


def test_a_leader_whose_connection_is_cut_steps_down_and_another_takes_over(
    shared_audit: str, pg_server: PgTarget
) -> None:
    lost = threading.Event()
    first = Leadership(shared_audit, lambda: None, lost.set, 0.2)
    second = Leadership(shared_audit, lambda: None, lambda: None, 0.2)
    try:
        first.start()
        wait_until(lambda: first.leading, 10, "the first candidate leads")
        # The server is asked to notice a vanished leader host in seconds, not hours.
        settings = first._conn.execute(
            "SELECT current_setting('tcp_keepalives_idle'), "
            "current_setting('tcp_keepalives_interval'), current_setting('tcp_keepalives_count')"
        ).fetchone()
        assert settings == ("10", "5", "3")
        second.start()
        backend = first._conn.info.backend_pid
        with pg_server.connect(autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        assert lost.wait(5), "the leader did not notice it lost its connection"
        assert not first.leading
        wait_until(lambda: second.leading, 5, "the second candidate takes over")
        time.sleep(1)  # the first keeps trying, and fails while the second holds the lock
        assert not first.leading
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("existing", [False, True], ids=["fresh database", "existing database"])
def test_replicas_starting_at_once_set_up_the_shared_audit_database_in_turn(
    shared_audit: str, existing: bool
) -> None:
    # What every process does at start-up (the bot, the CLI, the console). Without core's
    # set-up lock, PostgreSQL's CREATE TABLE IF NOT EXISTS and CREATE OR REPLACE TRIGGER fail
    # under a concurrent twin (a unique violation on pg_class; "tuple concurrently updated"
    # even when the tables exist, as in a restart of every replica at once), and that process
    # exits with a configuration error.
    if existing:
        AuditLog(shared_audit).close()
    barrier = threading.Barrier(6)
    failures: list[str] = []

    def start_up() -> None:
        barrier.wait()
        try:
            audit = AuditLog(shared_audit)
            ApprovalBook(audit, timedelta(minutes=5))
            Outbox(audit)
            audit.close()
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=start_up) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []


def test_with_a_sqlite_audit_log_the_only_process_leads_at_once(tmp_path: Path) -> None:
    gained = threading.Event()
    alone = Leadership(f"sqlite:///{tmp_path / 'audit.sqlite3'}", gained.set, lambda: None)
    alone.start()
    assert gained.is_set() and alone.leading
    alone.stop()
    assert not alone.leading


# --- a scheduled run killed outright ------------------------------------------------------------

_A_RUN_THAT_HANGS = """
import time
from bot.scheduler import Scheduler
from core.config import load_settings
from core.services import Services

scheduler = Scheduler(Services(load_settings()))

def hangs(_note):
    print("running", flush=True)
    time.sleep(600)
    return "never"

scheduler.scheduled.jobs["freshness_check"] = hangs
scheduler.fire("freshness_check")
"""


@contextlib.contextmanager
def _hanging_run(settings: Settings) -> Iterator[tuple[subprocess.Popen[str], Services]]:
    """A process whose scheduled freshness check hangs (yielded once the run has started),
    and this process's Services on the same audit log; both ended afterwards."""
    child = subprocess.Popen(
        [sys.executable, "-c", _A_RUN_THAT_HANGS],
        env=os.environ | settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    services = Services(settings)
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        assert line == "running", f"the hanging run did not start: {line}"
        yield child, services
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        services.close()


def _killed_run_is_closed_by_the_next(services: Services, child: subprocess.Popen[str]) -> None:
    [alive] = [e for e in services.audit.events(action="scheduled_run") if e.outcome == "started"]
    child.kill()
    child.wait(10)
    Scheduler(services).fire("freshness_check")
    runs = services.audit.events(action="scheduled_run")
    [dead] = [e for e in runs if e.outcome == "abandoned"]
    assert dead.run_id == alive.run_id and dead.details_dict()["job"] == "freshness_check"
    assert "never ended" in (dead.error_cause or "")
    found = alert_for(dead)
    assert found is not None and found[0] == "A scheduled run was killed before it ended"
    assert "*Job:* freshness_check" in found[1]
    ended = [e for e in runs if e.outcome == "succeeded"]
    assert len(ended) == 1 and ended[0].run_id != alive.run_id


def test_a_scheduled_run_killed_outright_is_closed_as_abandoned_by_the_next_run_of_its_job(
    make_settings: SettingsFactory, shared_audit: str
) -> None:
    with _hanging_run(make_settings(audit_database_url=shared_audit)) as (child, services):
        [alive] = services.audit.events(action="scheduled_run")
        # 1. The run is alive in another process (a replica): the next one is skipped and
        #    recorded, and the live run is not declared dead.
        Scheduler(services).fire("freshness_check")
        [skipped] = services.audit.events(action="schedule_missed")
        assert skipped.error_code == "overlap"
        assert "still running on another replica" in (skipped.error_cause or "")
        assert [e.run_id for e in services.audit.events(action="scheduled_run")] == [alive.run_id]
        # 2. Its process is killed outright: the next run of the job closes it as abandoned,
        #    alerted with the job's name, and then runs.
        _killed_run_is_closed_by_the_next(services, child)


def test_with_a_sqlite_audit_log_a_killed_scheduled_run_is_closed_by_the_next_process(
    make_settings: SettingsFactory,
) -> None:
    with _hanging_run(make_settings()) as (child, services):  # the default: one process, SQLite
        _killed_run_is_closed_by_the_next(services, child)


def test_a_job_lock_is_held_by_one_holder_at_a_time_and_freed_when_released(
    shared_audit: str,
) -> None:
    first, second = JobLock(shared_audit, "backup"), JobLock(shared_audit, "backup")
    other_job = JobLock(shared_audit, "retention")
    try:
        assert first.acquire()
        assert not second.acquire()
        assert other_job.acquire()  # one job's run never holds up another job
        first.release()
        assert second.acquire()
    finally:
        for lock in (first, second, other_job):
            lock.release()
