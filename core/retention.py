"""Retention: a pure planning function and an executor that follows the plan.

``plan()`` decides, for every complete backup, keep or delete, with reasons. Policy (GFS):
every backup younger than the daily window; the newest backup of each ISO week inside the
weekly window; the newest backup of each calendar month inside the monthly window.

Why "newest in the period" and not "the Sunday backup" / "the backup of the 1st": with a
fixed-day rule, the one week whose Sunday backup failed keeps nothing at all; the newest
backup of the period always exists when any backup of the period does.

Safety floors (invariant 4) — never deleted:
- the newest ``RETENTION_MIN_KEEP`` complete backups;
- anything not matching the naming pattern (it never reaches the planner) and dumps without a
  manifest (not complete, so not ours to judge);
- anything dated in the future (a clock problem, not an old backup);
- anything at all when the listing failed or was incomplete;
- anything at all while the newest complete backup is older than ``STALE_AFTER_HOURS``: pruning
  must not race a broken backup job.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from core.keys import BackupKey

# A backup up to this far in the future is clock skew, not "dated in the future".
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class RetentionPolicy:
    daily_days: int = 7
    weekly_days: int = 30
    monthly_days: int = 365
    min_keep: int = 3
    stale_after_hours: float = 24


@dataclass(frozen=True)
class Decision:
    key: BackupKey
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RetentionPlan:
    decisions: list[Decision]
    paused: str | None = None  # why nothing may be deleted, if so

    @property
    def to_delete(self) -> list[BackupKey]:
        return [d.key for d in self.decisions if not d.keep]

    @property
    def to_keep(self) -> list[BackupKey]:
        return [d.key for d in self.decisions if d.keep]


def keep_reasons(
    started: Sequence[datetime],
    policy: RetentionPolicy,
    now: datetime,
    *,
    listing_complete: bool = True,
    what: str = "backup",
) -> tuple[list[list[str]], str | None]:
    """The GFS rules over start times (ascending): for each, why it is kept (empty: it may
    go), and why nothing may be deleted at all, if so. Shared by the dumps and the base
    backups of point-in-time recovery."""
    reasons: list[list[str]] = [[] for _ in started]
    past = [i for i, when in enumerate(started) if when <= now + CLOCK_SKEW]
    for i, when in enumerate(started):
        if when > now + CLOCK_SKEW:
            reasons[i].append("dated in the future: kept until the clock catches up")
    for i in past[-policy.min_keep :] if policy.min_keep else []:
        reasons[i].append(f"one of the newest {policy.min_keep} (RETENTION_MIN_KEEP)")

    newest_of_week: dict[tuple[int, int], int] = {}
    newest_of_month: dict[tuple[int, int], int] = {}
    for i in past:  # ascending, so the last one written per period is the newest
        iso = started[i].isocalendar()
        newest_of_week[(iso.year, iso.week)] = i
        newest_of_month[(started[i].year, started[i].month)] = i
    for i in past:
        when = started[i]
        age = now - when
        if age <= timedelta(days=policy.daily_days):
            reasons[i].append(f"daily: younger than {policy.daily_days} days")
        iso = when.isocalendar()
        if newest_of_week[(iso.year, iso.week)] == i and age <= timedelta(days=policy.weekly_days):
            reasons[i].append(f"weekly: newest of {iso.year}-W{iso.week:02d}")
        if newest_of_month[(when.year, when.month)] == i and age <= timedelta(
            days=policy.monthly_days
        ):
            reasons[i].append(f"monthly: newest of {when:%Y-%m}")

    paused = None
    if not listing_complete:
        paused = "the listing failed or was incomplete: nothing is deleted"
    elif not past:
        paused = f"there is no complete {what}: nothing is deleted"
    elif now - started[past[-1]] > timedelta(hours=policy.stale_after_hours):
        paused = (
            f"the newest {what} ({started[past[-1]]:%Y-%m-%d %H:%M:%S}Z) is older than "
            f"STALE_AFTER_HOURS={policy.stale_after_hours:g}: pruning waits until "
            f"{what}s work again"
        )
    return reasons, paused


def plan(
    complete: Iterable[BackupKey],
    policy: RetentionPolicy,
    now: datetime,
    *,
    listing_complete: bool = True,
) -> RetentionPlan:
    """Given the complete backups, the policy and the time, return keep/delete decisions,
    each with reasons. Pure: reads nothing, deletes nothing."""
    keys = sorted(set(complete))
    reasons, paused = keep_reasons(
        [k.started_at for k in keys], policy, now, listing_complete=listing_complete
    )
    decisions = []
    for key, why in zip(keys, reasons, strict=True):
        if why:
            decisions.append(Decision(key, True, tuple(why)))
        elif paused:
            decisions.append(Decision(key, True, (f"paused: {paused}",)))
        else:
            decisions.append(Decision(key, False, ("outside every retention window",)))
    return RetentionPlan(decisions, paused)
