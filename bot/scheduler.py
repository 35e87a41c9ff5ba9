"""The scheduler: the daily backup, the weekly retention, the 6-hourly freshness check and the
monthly restore test, each from its ``*_SCHEDULE`` cron expression in ``SCHEDULE_TIMEZONE``
(empty = disabled), run in the bot's process by APScheduler 3.

- Never two runs of a job at once: ``max_instances=1`` and ``coalesce`` in APScheduler, a guard
  per job here (a late catch-up run and an on-time one, or two direct ``fire`` calls), a job
  lock that every replica sees (``core.leadership.JobLock``: leadership can move while a run goes
  on), and a backup also holds its database lock. A run skipped because the previous one
  still runs is recorded (and alerted) as ``schedule_missed``, never dropped silently.
- Every scheduled run is audited with the ``schedule`` trigger: a ``scheduled_run`` event
  around the use case's own audited run, naming the job, the time it was due (the trigger's
  fire time, identical on every replica) and the replica (host:pid) that ran it.
- A run whose process was killed (SIGKILL, OOM, a vanished host) never ends in the log; the
  next run of that job, holding the job lock, closes it as ``abandoned`` (and it is alerted).
- Runs missed while the service was down: when the scheduler starts (or a replica becomes the
  leader) it reads, from the shared audit log, when each job last ran. The newest fire time
  missed since then runs once, now, if it is within ``SCHEDULE_GRACE_MINUTES`` (120 by default)
  — recorded and alerted as ``schedule_missed`` with ``error_code="late"`` saying it runs now and
  how late; older or later-than-grace misses are recorded as ``schedule_missed``
  (``error_code="missed"``) and alerted, at most a few per job. APScheduler's own misfire
  grace (1 s by default, which would silently skip) is set to the same grace. ``stop()`` stops
  the catch-up too: a late run already going finishes, no other starts after it.
- Failures and breaches (stale backups, a failed restore test) land in the audit log and from
  there in ``SLACK_ALERT_CHANNEL``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from core.leadership import JobLock
from core.schedule import cron_trigger, fire_times_between
from core.scheduled import SCHEDULER, ScheduledJobs
from core.services import Services

log = logging.getLogger("blnk_backup.scheduler")

ACTOR = SCHEDULER
DEFAULT_GRACE = timedelta(minutes=120)
ON_TIME = timedelta(seconds=60)  # an APScheduler run later than this says it was late
REPORTED_MISSES = 3  # misses recorded (and alerted) per job at start-up, the newest ones
CATCH_UP_JOIN_SECONDS = 10.0  # how long stop() waits for the catch-up to notice and end
Clock = Callable[[], datetime]


def last_fire_time(trigger: Any, now: datetime, within: timedelta) -> datetime | None:
    """Return the trigger's newest fire time at or before now, looking back at most
    ``within`` (a widening search: cheap for an every-minute trigger and a daily one alike)."""
    window = min(timedelta(minutes=2), within)
    while True:
        times = fire_times_between(trigger, now - window, now)
        if times:
            return times[-1]
        if window >= within:
            return None
        window = min(window * 8, within)


def _join(thread: threading.Thread, timeout: float) -> None:
    """Wait for thread at most timeout seconds (never for itself: a stop from inside a run)."""
    if thread is threading.current_thread():
        return
    thread.join(timeout)
    if thread.is_alive():
        log.warning(
            "the catch-up's late run still goes on after the scheduler stopped; "
            "it starts nothing more"
        )


def _minutes(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds >= 120 else f"{seconds} s"


@dataclass(frozen=True)
class Job:
    name: str
    variable: str  # the *_SCHEDULE setting
    expression: str


def configured_jobs(services: Services) -> list[Job]:
    s = services.settings
    jobs = [
        Job("backup", "BACKUP_SCHEDULE", s.backup_schedule),
        Job("retention", "RETENTION_SCHEDULE", s.retention_schedule),
        Job("freshness_check", "MONITOR_SCHEDULE", s.monitor_schedule),
        Job("restore_test", "RESTORE_TEST_SCHEDULE", s.restore_test_schedule),
    ]
    if s.wal_archive:
        jobs.append(Job("base_backup", "BASE_BACKUP_SCHEDULE", s.base_backup_schedule))
        jobs.append(Job("pitr_test", "PITR_TEST_SCHEDULE", s.pitr_test_schedule))
    return [job for job in jobs if job.expression]


class Scheduler:
    """Runs the configured jobs while this process is the leader (see core/leadership.py)."""

    def __init__(
        self,
        services: Services,
        *,
        grace: timedelta | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.services = services
        self.grace = grace or timedelta(minutes=services.settings.schedule_grace_minutes)
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.timezone = services.settings.schedule_timezone
        self.jobs = configured_jobs(services)
        self.triggers = {job.name: cron_trigger(job.expression, self.timezone) for job in self.jobs}
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self._scheduler: Any = None
        self._catch_up: tuple[threading.Thread, threading.Event] | None = None
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Lock] = {job.name: threading.Lock() for job in self.jobs}
        self.scheduled = ScheduledJobs(services, self.replica)

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start firing jobs (and catch up on runs missed while down). Idempotent."""
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.schedulers.background import BackgroundScheduler

        with self._lock:
            if self._scheduler is not None:
                return
            scheduler = BackgroundScheduler(timezone=self.timezone)
            for job in self.jobs:
                scheduler.add_job(
                    self._fire_scheduled,
                    trigger=self.triggers[job.name],
                    args=[job.name],
                    id=job.name,
                    name=job.name,
                    max_instances=1,
                    coalesce=True,
                    misfire_grace_time=int(self.grace.total_seconds()),
                    replace_existing=True,
                )
            scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
            scheduler.start()
            self._scheduler = scheduler
            # An Event per start: a catch-up left over from an earlier leadership, still
            # finishing its run, must not be revived by a new start.
            stopped = threading.Event()
            thread = threading.Thread(
                target=self._catch_up_in_background,
                args=(stopped,),
                name="scheduler-catch-up",
                daemon=True,
            )
            thread.start()
            self._catch_up = (thread, stopped)

    def stop(self, timeout: float = CATCH_UP_JOIN_SECONDS) -> None:
        """Stop firing jobs, and tell the catch-up to start nothing more: after a shutdown (or a
        lost leadership) no late run may begin, and the console removes the audit file's
        directory right after this. A catch-up already inside a run lets that run finish (it
        cleans up after itself); this waits for it at most ``timeout`` seconds."""
        with self._lock:
            scheduler, self._scheduler = self._scheduler, None
            catch_up, self._catch_up = self._catch_up, None
            if catch_up is not None:
                catch_up[1].set()
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if catch_up is not None:
            _join(catch_up[0], timeout)

    @property
    def running(self) -> bool:
        return self._scheduler is not None

    def next_runs(self) -> dict[str, datetime]:
        """Each job's next run time (computed from its trigger when not leading)."""
        now = self.clock()
        result: dict[str, datetime] = {}
        for job in self.jobs:
            when = self.triggers[job.name].get_next_fire_time(None, now)
            if when is not None:
                result[job.name] = when
        return result

    # --- runs ---------------------------------------------------------------------------------
    def _fire_scheduled(self, name: str) -> None:
        """What APScheduler calls: the run is due at the trigger's newest fire time (the same
        on every replica), not at whatever moment this thread got to run."""
        now = self.clock()
        due = last_fire_time(self.triggers[name], now, self.grace) or now
        self.fire(name, scheduled_for=due, late=now - due > ON_TIME)

    def fire(self, name: str, scheduled_for: datetime | None = None, late: bool = False) -> None:
        """Run one job now, audited as a scheduled run (never raises). If this job is already
        running here, do not start it again: record the run as skipped (``schedule_missed``)."""
        due = scheduled_for or self.clock()
        busy = self._busy.setdefault(name, threading.Lock())
        if not busy.acquire(blocking=False):
            self._record_missed(name, due, code="overlap", cause=self._overlap(name, due, "here"))
            return
        try:
            job_lock = JobLock(self.services.settings.audit_database_url, name)
            try:
                held = job_lock.acquire()
            except Exception as exc:
                log.warning("scheduled %s not run: its job lock: %s", name, type(exc).__name__)
                return
            if not held:
                self._record_missed(
                    name, due, code="overlap", cause=self._overlap(name, due, "on another replica")
                )
                return
            try:
                self._close_dead_runs(name)
                self._run(name, due, late)
            finally:
                job_lock.release()
        finally:
            busy.release()

    def _overlap(self, name: str, due: datetime, where: str) -> str:
        return (
            f"the {name} run due at {self._when(due)} was skipped: "
            f"the previous run of that job was still running {where}"
        )

    def _close_dead_runs(self, name: str) -> None:
        """Close the runs of this job that started and never ended and whose run lock is free
        (their process was killed)."""
        try:
            closed = self.scheduled.close_dead(name)
        except Exception:
            log.exception("closing dead %s runs failed", name)
            return
        for run in closed:
            log.warning("a %s run started at %s never ended; recorded as abandoned", name, run.at)

    def _run(self, name: str, due: datetime, late: bool) -> None:
        late_by = round((self.clock() - due).total_seconds()) if late else 0
        note = f"run late: due {self._when(due)}, {_minutes(late_by)} late" if late else None
        self.scheduled.run(name, due, late_by=late_by, note=note)

    def _catch_up_in_background(self, stopped: threading.Event) -> None:
        """The catch-up thread: a failure is logged, not a traceback on stderr."""
        try:
            self.catch_up(stopped)
        except Exception:
            if stopped.is_set():  # e.g. the audit database closed under it at shutdown
                log.debug("the catch-up ended with an error after stop()", exc_info=True)
            else:
                log.exception("catching up on missed runs failed")

    def catch_up(self, stopped: threading.Event | None = None) -> None:
        """Run (once, late) or report the newest run of each job missed while nobody ran it.
        Once ``stopped`` is set, start nothing more: it is checked between jobs and before a
        late run fires."""
        stopped = stopped or threading.Event()
        now = self.clock()
        for job in self.jobs:
            if stopped.is_set():
                return
            last = self._last_run(job.name)
            if last is None:
                continue  # never ran here: nothing can have been missed yet
            missed = fire_times_between(self.triggers[job.name], last, now - timedelta(seconds=1))
            if not missed:
                continue
            newest = missed[-1]
            if now - newest <= self.grace:
                for skipped in missed[:-1][-REPORTED_MISSES:]:
                    self._missed(job, skipped, coalesced=True)
                if stopped.is_set():
                    return  # not recorded as running late: the next start finds it missed
                self._record_missed(
                    job.name,
                    newest,
                    code="late",
                    cause=f"the {job.name} run due at {self._when(newest)} did not happen on "
                    f"time (nobody was running the scheduler); it runs now, "
                    f"{_minutes(round((now - newest).total_seconds()))} late",
                )
                self.fire(job.name, scheduled_for=newest, late=True)
            else:
                for skipped in missed[-REPORTED_MISSES:]:
                    self._missed(job, skipped, coalesced=False)

    def _last_run(self, name: str) -> datetime | None:
        """When a run of this job was last due (from any replica), or None."""
        return self.scheduled.last_due(name)

    def _missed(self, job: Job, when: datetime, *, coalesced: bool) -> None:
        self._record_missed(
            job.name,
            when,
            code="missed",
            cause=f"the {job.name} run due at {self._when(when)} did not happen "
            + (
                "(a later missed run was run late instead)"
                if coalesced
                else f"and is past the {self.grace} grace period: it was not run"
            ),
        )

    def _skipped(self, event: Any) -> None:
        """APScheduler skipped a run: the previous one was still running (max_instances), or
        it could not start within the grace period (the process was stalled or suspended)."""
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES

        if event.code == EVENT_JOB_MAX_INSTANCES:
            times, code = list(event.scheduled_run_times), "overlap"
            why = "the previous run of that job was still running"
        else:
            times, code = [event.scheduled_run_time], "missed"
            why = f"it could not start within the {self.grace} grace period"
        for when in times:
            self._record_missed(
                event.job_id,
                when,
                code=code,
                cause=f"the {event.job_id} run due at {self._when(when)} was skipped: {why}",
            )

    def _record_missed(self, name: str, when: datetime, *, code: str, cause: str) -> None:
        try:
            self.scheduled.missed(name, when, code=code, cause=cause)
        except Exception:
            log.exception("recording a skipped %s run failed", name)

    def _when(self, when: datetime) -> str:
        return f"{when.astimezone(ZoneInfo(self.timezone)):%Y-%m-%d %H:%M} {self.timezone}"
