"""The scheduler: jobs fire from their crontab expressions (driven here by a controllable clock,
direct ``fire`` calls, and APScheduler itself on a per-second trigger), every run is audited as
a ``scheduled_run`` of the ``schedule`` trigger naming the job and when it was due, a run
missed while nobody ran the scheduler runs once late within the grace (and says so) or is
recorded and alerted as missed, and no job ever runs twice at once."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apscheduler.triggers.cron import CronTrigger
from prometheus_client.parser import text_string_to_metric_families

from bot.metrics import EngineCollector, metrics_text
from bot.scheduler import Scheduler, configured_jobs
from bot.slack.alerts import alert_for
from core.actor import Actor
from core.audit import AuditEvent
from core.backup import BackupProgress
from core.schedule import fire_times_between
from core.services import Services
from tests.support.helpers import wait_until
from tests.support.stores import bucket_keys

NO_SCHEDULES = {
    "backup_schedule": "",
    "retention_schedule": "",
    "monitor_schedule": "",
    "restore_test_schedule": "",
}
SettingsFactory = Callable[..., Any]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def build(make_settings: SettingsFactory) -> Iterator[Callable[..., Services]]:
    """Services with only the schedules given switched on."""
    built: list[Services] = []

    def factory(**overrides: Any) -> Services:
        services = Services(make_settings(**(NO_SCHEDULES | overrides)))
        built.append(services)
        return services

    yield factory
    for services in built:
        services.close()


def events(services: Services, action: str, outcome: str | None = None) -> list[AuditEvent]:
    """Events of one action, oldest first."""
    found = services.audit.events(limit=1000, action=action)
    return [e for e in reversed(found) if outcome is None or e.outcome == outcome]


# --- firing and auditing -----------------------------------------------------------------------


def test_a_fired_job_runs_and_is_audited_as_a_scheduled_run_naming_the_job_and_its_due_time(
    build: Callable[..., Services],
) -> None:
    services = build(monitor_schedule="0 */6 * * *")
    due = at("2025-06-02T06:00:00")
    scheduler = Scheduler(services, clock=Clock(due + timedelta(seconds=1)))
    scheduler.fire("freshness_check", scheduled_for=due)

    started, ended = events(services, "scheduled_run")
    assert (started.outcome, ended.outcome) == ("started", "succeeded")
    assert {e.trigger for e in (started, ended)} == {"schedule"}
    assert started.actor == "scheduler" and started.run_id == ended.run_id
    details = started.details_dict()
    assert details["job"] == "freshness_check"
    assert details["scheduled_for"] == "2025-06-02T06:00:00+00:00"
    assert details["late_by_seconds"] == 0 and started.reason is None
    assert details["replica"] == f"{socket.gethostname()}:{os.getpid()}"
    # The job's own run is audited too, by the scheduler; an empty bucket is a breach, alerted.
    [check] = events(services, "freshness_check", "failed")
    assert check.trigger == "schedule" and check.error_code == "breach"
    assert "no backups" in (check.error_cause or "")
    found = alert_for(check)
    assert found is not None and found[0] == "Backups need attention"


def test_the_running_scheduler_fires_a_job_when_its_trigger_comes_due_recording_the_due_time(
    build: Callable[..., Services],
) -> None:
    services = build(monitor_schedule="0 */6 * * *")
    scheduler = Scheduler(services)
    # The configured trigger stays a crontab one; a per-second trigger drives the same wiring
    # (APScheduler job, misfire grace, fire) without waiting for a minute.
    scheduler.triggers["freshness_check"] = CronTrigger(second="*", timezone="UTC")
    began = datetime.now(UTC)
    scheduler.start()
    try:
        wait_until(lambda: len(events(services, "scheduled_run", "succeeded")) >= 1)
    finally:
        scheduler.stop()
    assert not scheduler.running
    first = events(services, "scheduled_run", "started")[0].details_dict()
    due = datetime.fromisoformat(first["scheduled_for"])
    # The time it was due, as the trigger says (the same on every replica), not "now".
    assert due.microsecond == 0 and began - timedelta(seconds=1) <= due <= datetime.now(UTC)
    assert first["late_by_seconds"] == 0


def test_a_late_scheduled_backup_that_fails_is_alerted_saying_it_was_late(
    build: Callable[..., Services],
) -> None:
    services = build(database="no_such_database_here", backup_schedule="0 3 * * *")
    due = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=57)
    scheduler = Scheduler(services)
    scheduler.fire("backup", scheduled_for=due, late=True)

    [failed] = events(services, "backup", "failed")
    assert failed.trigger == "schedule" and failed.error_code == "preflight_failed"
    found = alert_for(failed)
    assert found is not None
    title, lines, _severity = found
    assert title == "Backup failed"
    assert any("run late" in line and "57 min late" in line for line in lines), lines
    [run] = events(services, "scheduled_run", "failed")
    assert run.details_dict()["late_by_seconds"] >= 57 * 60
    assert "late" in (run.reason or "")


# --- missed runs ---------------------------------------------------------------------------


def test_a_run_missed_while_the_service_was_down_runs_once_at_start_up_and_says_it_was_late(
    build: Callable[..., Services],
) -> None:
    services = build(monitor_schedule="0 */6 * * *")
    clock = Clock(at("2025-06-02T00:00:01"))
    Scheduler(services, clock=clock).fire("freshness_check", scheduled_for=at("2025-06-02T00:00"))
    # Down from 00:01 to 06:45: the 06:00 run was missed, 45 minutes ago (grace: 120).
    clock.now = at("2025-06-02T06:45:00")
    restarted = Scheduler(services, clock=clock)
    restarted.catch_up()

    runs = events(services, "scheduled_run", "started")
    assert [r.details_dict()["scheduled_for"] for r in runs] == [
        "2025-06-02T00:00:00+00:00",
        "2025-06-02T06:00:00+00:00",
    ]
    late = runs[1]
    assert late.details_dict()["late_by_seconds"] == 45 * 60
    assert late.reason == "run late: due 2025-06-02 06:00 UTC, 45 min late"
    assert len(events(services, "scheduled_run", "succeeded")) == 2
    [notice] = events(services, "schedule_missed")
    assert notice.error_code == "late" and notice.trigger == "schedule"
    found = alert_for(notice)
    assert found is not None
    assert any("runs now, 45 min late" in line for line in found[1]), found

    restarted.catch_up()  # a second start-up (or a new leader) finds nothing left to do
    assert len(events(services, "scheduled_run", "started")) == 2


def test_of_several_missed_runs_only_the_newest_runs_late_and_the_earlier_are_reported(
    build: Callable[..., Services],
) -> None:
    services = build(monitor_schedule="0 * * * *")
    clock = Clock(at("2025-06-02T00:00:02"))
    scheduler = Scheduler(services, clock=clock)
    scheduler.fire("freshness_check", scheduled_for=at("2025-06-02T00:00"))
    clock.now = at("2025-06-02T02:30:00")
    scheduler.catch_up()

    due = [r.details_dict()["scheduled_for"] for r in events(services, "scheduled_run", "started")]
    assert due == ["2025-06-02T00:00:00+00:00", "2025-06-02T02:00:00+00:00"]
    missed = events(services, "schedule_missed")
    assert [(m.error_code, m.details_dict()["scheduled_for"]) for m in missed] == [
        ("missed", "2025-06-02T01:00:00+00:00"),
        ("late", "2025-06-02T02:00:00+00:00"),
    ]
    assert "run late instead" in (missed[0].error_cause or "")


def test_a_run_missed_beyond_the_grace_is_recorded_and_alerted_as_missed_and_not_run(
    build: Callable[..., Services],
) -> None:
    services = build(monitor_schedule="0 */6 * * *")
    clock = Clock(at("2025-06-02T00:00:01"))
    scheduler = Scheduler(services, clock=clock)
    scheduler.fire("freshness_check", scheduled_for=at("2025-06-02T00:00"))
    clock.now = at("2025-06-02T08:30:00")  # the 06:00 run is 2 h 30 min overdue
    scheduler.catch_up()

    assert len(events(services, "scheduled_run", "started")) == 1
    [missed] = events(services, "schedule_missed")
    assert missed.error_code == "missed"
    assert missed.details_dict() | {"replica": None} == {
        "job": "freshness_check",
        "scheduled_for": "2025-06-02T06:00:00+00:00",
        "replica": None,
    }
    assert "past the 2:00:00 grace period: it was not run" in (missed.error_cause or "")
    found = alert_for(missed)
    assert found is not None and found[0] == "A scheduled run was missed"
    assert any("2025-06-02 06:00 UTC" in line for line in found[1])


def test_a_monthly_jobs_last_run_is_found_behind_hundreds_of_frequent_runs(
    build: Callable[..., Services],
) -> None:
    services = build(monitor_schedule="* * * * *", restore_test_schedule="0 5 1 * *")
    actor = Actor("scheduler", "schedule")
    services.audit.record(
        action="scheduled_run",
        outcome="started",
        actor=actor,
        details={"job": "restore_test", "scheduled_for": "2025-06-01T05:00:00+00:00"},
    )
    for _ in range(210):  # a month of frequent runs after it (compressed)
        services.audit.record(
            action="scheduled_run",
            outcome="started",
            actor=actor,
            details={"job": "freshness_check", "scheduled_for": "2025-07-01T05:29:00+00:00"},
        )
    scheduler = Scheduler(services, clock=Clock(at("2025-07-01T05:30:00")))
    ran: list[str | None] = []

    def restore_test(note: str | None) -> str:
        ran.append(note)
        return "ok"

    scheduler.scheduled.jobs["restore_test"] = restore_test
    scheduler.catch_up()  # down over the 1st at 05:00: the monthly restore test runs late
    assert ran == ["run late: due 2025-07-01 05:00 UTC, 30 min late"]


class GatedClock(Clock):
    """A clock that holds the catch-up thread at its first reading until the test opens the
    gate: the moment between start() and the catch-up's first look at the audit log."""

    def __init__(self, now: datetime) -> None:
        super().__init__(now)
        self.reached, self.gate = threading.Event(), threading.Event()

    def __call__(self) -> datetime:
        if threading.current_thread().name == "scheduler-catch-up":
            self.reached.set()
            self.gate.wait(30)
        return self.now


def _stop_while(scheduler: Scheduler, release: threading.Event) -> None:
    """Call stop() as the service or the console does, and open release once stop() has told
    the catch-up to stop (it waits for the catch-up, so it runs on a thread of its own)."""
    stopping = threading.Thread(target=scheduler.stop)
    stopping.start()
    wait_until(lambda: not scheduler.running)
    release.set()
    stopping.join(30)
    assert not stopping.is_alive()
    for thread in threading.enumerate():  # nothing left over that could still start a run
        if thread.name == "scheduler-catch-up":
            thread.join(30)


def test_a_catch_up_stopped_before_it_fires_never_runs_the_missed_job(
    build: Callable[..., Services],
) -> None:
    services = build(monitor_schedule="0 */6 * * *")
    clock = GatedClock(at("2025-06-02T00:00:01"))
    scheduler = Scheduler(services, clock=clock)
    ran: list[str | None] = []

    def check(note: str | None) -> str:
        ran.append(note)
        return "ran"

    scheduler.scheduled.jobs["freshness_check"] = check
    scheduler.fire("freshness_check", scheduled_for=at("2025-06-02T00:00"))
    clock.now = at("2025-06-02T06:45:00")  # the 06:00 run was missed: a catch-up would run it
    scheduler.start()
    assert clock.reached.wait(10)
    _stop_while(scheduler, clock.gate)

    assert ran == [None]  # only the on-time run before the stop
    assert len(events(services, "scheduled_run", "started")) == 1
    assert events(services, "schedule_missed") == []  # left for the next start to find


def test_a_catch_up_stopped_during_a_late_run_lets_it_finish_and_starts_no_other(
    build: Callable[..., Services],
) -> None:
    services = build(retention_schedule="0 */6 * * *", monitor_schedule="0 */6 * * *")
    for job in ("retention", "freshness_check"):  # both last ran at 00:00; 06:00 was missed
        services.audit.record(
            action="scheduled_run",
            outcome="started",
            actor=Actor("scheduler", "schedule"),
            details={"job": job, "scheduled_for": "2025-06-02T00:00:00+00:00"},
        )
    scheduler = Scheduler(services, clock=Clock(at("2025-06-02T06:45:00")))
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def slow_retention(_note: str | None) -> str:
        started.set()
        release.wait(30)
        ran.append("retention")
        return "slow"

    def check(_note: str | None) -> str:
        ran.append("freshness_check")
        return "ran"

    scheduler.scheduled.jobs |= {"retention": slow_retention, "freshness_check": check}
    scheduler.start()
    assert started.wait(10)  # the catch-up is inside the late retention run
    _stop_while(scheduler, release)

    assert ran == ["retention"]  # finished, and stop() waited for it; the check never began
    [finished] = events(services, "scheduled_run", "succeeded")
    assert finished.details_dict()["job"] == "retention"
    assert [m.details_dict()["job"] for m in events(services, "schedule_missed")] == ["retention"]


# --- never twice at once -------------------------------------------------------------------


def test_two_backups_fired_at_once_make_one_backup_and_the_other_is_recorded_as_skipped(
    build: Callable[..., Services], s3: Any, bucket: str
) -> None:
    services = build(backup_schedule="0 3 * * *")
    scheduler = Scheduler(services)
    due = datetime.now(UTC).replace(second=0, microsecond=0)
    barrier = threading.Barrier(2)

    def fire() -> None:
        barrier.wait()
        scheduler.fire("backup", scheduled_for=due)

    threads = [threading.Thread(target=fire) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    [dump, manifest] = sorted(bucket_keys(s3, bucket))
    assert manifest == dump + ".manifest.json"
    assert len(events(services, "backup", "started")) == 1
    assert [e.outcome for e in events(services, "scheduled_run")] == ["started", "succeeded"]
    [skipped] = events(services, "schedule_missed")
    assert skipped.error_code == "overlap"
    assert "still running" in (skipped.error_cause or "")
    assert skipped.details_dict()["scheduled_for"] == due.isoformat()
    assert alert_for(skipped) is not None


def test_a_scheduled_backup_while_another_backup_runs_is_refused_by_its_lock_and_alerted(
    build: Callable[..., Services], s3: Any, bucket: str
) -> None:
    services = build(backup_schedule="0 3 * * *")
    running, release = threading.Event(), threading.Event()

    def hold(_progress: BackupProgress) -> None:
        running.set()
        release.wait(60)

    manual = threading.Thread(
        target=services.backups.run, args=(Actor("ops", "api"),), kwargs={"on_progress": hold}
    )
    manual.start()
    try:
        assert running.wait(60)
        Scheduler(services).fire("backup")
    finally:
        release.set()
        manual.join(120)

    assert len([k for k in bucket_keys(s3, bucket) if k.endswith(".dump")]) == 1
    [refused] = [e for e in events(services, "backup", "failed") if e.trigger == "schedule"]
    assert refused.error_code == "already_running" and "api:ops" in (refused.error_cause or "")
    assert alert_for(refused) is not None  # a person would not see this refusal otherwise
    [run] = events(services, "scheduled_run", "failed")
    assert run.error_code == "already_running"


def test_the_running_scheduler_skips_a_run_while_the_previous_one_still_runs_and_records_it(
    build: Callable[..., Services],
) -> None:
    services = build(monitor_schedule="0 */6 * * *")
    scheduler = Scheduler(services)
    scheduler.triggers["freshness_check"] = CronTrigger(second="*", timezone="UTC")
    started, release = threading.Event(), threading.Event()

    def slow(_note: str | None) -> str:
        started.set()
        release.wait(30)
        return "slow"

    scheduler.scheduled.jobs["freshness_check"] = slow
    scheduler.start()
    try:
        assert started.wait(10)
        wait_until(lambda: len(events(services, "schedule_missed")) >= 2)
        assert len(events(services, "scheduled_run", "started")) == 1
    finally:
        release.set()
        scheduler.stop()
    skipped = events(services, "schedule_missed")
    assert {s.error_code for s in skipped} == {"overlap"}
    assert all("still running" in (s.error_cause or "") for s in skipped)


# --- configuration -------------------------------------------------------------------------


def test_an_empty_schedule_disables_its_job(build: Callable[..., Services]) -> None:
    services = build(
        backup_schedule="",
        retention_schedule="0 4 * * 0",
        monitor_schedule="0 */6 * * *",
        restore_test_schedule="0 5 1 * *",
    )
    assert [j.name for j in configured_jobs(services)] == [
        "retention",
        "freshness_check",
        "restore_test",
    ]
    scheduler = Scheduler(services)
    assert "backup" not in scheduler.next_runs()
    scheduler.start()
    try:
        ids = sorted(job.id for job in scheduler._scheduler.get_jobs())
    finally:
        scheduler.stop()
    assert ids == ["freshness_check", "restore_test", "retention"]


@pytest.mark.parametrize("expression", ["0 4 * * 0", "0 4 * * 7", "0 4 * * sun"])
def test_a_sunday_schedule_fires_on_sundays_as_crontab_means_it(
    build: Callable[..., Services], expression: str
) -> None:
    services = build(retention_schedule=expression)
    wednesday = at("2025-06-04T12:00:00")
    scheduler = Scheduler(services, clock=Clock(wednesday))
    assert scheduler.next_runs() == {"retention": at("2025-06-08T04:00:00")}
    assert at("2025-06-08T04:00:00").strftime("%A") == "Sunday"
    month = fire_times_between(scheduler.triggers["retention"], wednesday, at("2025-07-04T00:00"))
    assert len(month) == 4 and {d.strftime("%A") for d in month} == {"Sunday"}


def test_a_six_field_schedule_counts_seconds_first_as_node_cron_does(
    build: Callable[..., Services],
) -> None:
    services = build(monitor_schedule="*/15 * * * * *")
    scheduler = Scheduler(services, clock=Clock(at("2025-06-06T02:00:01")))
    assert scheduler.next_runs()["freshness_check"] == at("2025-06-06T02:00:15")
    five = build(monitor_schedule="15 * * * *")  # five fields: minute first, second 0
    assert Scheduler(five, clock=Clock(at("2025-06-06T02:00:01"))).next_runs()[
        "freshness_check"
    ] == at("2025-06-06T02:15:00")


def test_weekday_ranges_follow_crontab_numbering(build: Callable[..., Services]) -> None:
    services = build(backup_schedule="30 1 * * 1-5")  # Monday to Friday
    scheduler = Scheduler(services, clock=Clock(at("2025-06-06T02:00:00")))  # a Friday
    assert scheduler.next_runs()["backup"] == at("2025-06-09T01:30:00")  # Monday, not Saturday


def test_schedules_are_read_in_the_schedule_time_zone(build: Callable[..., Services]) -> None:
    services = build(backup_schedule="0 3 * * *", schedule_timezone="Europe/Berlin")
    scheduler = Scheduler(services, clock=Clock(at("2025-06-02T12:00:00")))
    assert scheduler.next_runs()["backup"] == at("2025-06-03T01:00:00")  # 03:00 CEST


def test_next_run_times_are_reported_and_appear_in_the_metrics(
    build: Callable[..., Services],
) -> None:
    services = build(
        backup_schedule="0 3 * * *",
        retention_schedule="0 4 * * 0",
        monitor_schedule="0 */6 * * *",
        restore_test_schedule="0 5 1 * *",
    )
    scheduler = Scheduler(services, clock=Clock(at("2025-06-04T12:30:00")))
    expected = {
        "backup": at("2025-06-05T03:00:00"),
        "retention": at("2025-06-08T04:00:00"),
        "freshness_check": at("2025-06-04T18:00:00"),
        "restore_test": at("2025-07-01T05:00:00"),
    }
    assert scheduler.next_runs() == expected
    text = metrics_text(EngineCollector(services, scheduler.next_runs)).decode()
    [family] = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "blnk_scheduler_next_run_timestamp_seconds"
    ]
    assert {s.labels["job"]: s.value for s in family.samples} == {
        job: when.timestamp() for job, when in expected.items()
    }
