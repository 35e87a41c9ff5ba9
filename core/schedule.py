"""Cron expressions as operators write them (crontab, node-cron, Blnk's documentation), turned
into APScheduler 3 triggers — which number the days of the week from Monday=0, where crontab has
Sunday=0 (or 7). Without translating, ``RETENTION_SCHEDULE="0 4 * * 0"`` ("Sundays") would run
on Mondays. Days of the week are therefore rewritten as names before APScheduler sees them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NAMES = {name: i for i, name in enumerate(_DAYS)}


def _day(token: str) -> int:
    token = token.strip().lower()
    if token in _NAMES:
        return _NAMES[token]
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token) % 7
    raise ValueError(f"{token!r} is not a day of the week (0-7 or sun-sat)")


def crontab_days(field: str) -> str:
    """Given a crontab day-of-week field (Sunday = 0 or 7), return the same days as names."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"{part!r}: the step must be at least 1")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            low, high = span.split("-", 1)
            first, last = _day(low), _day(high)
            if high.strip() == "7":
                last = 7  # "5-7" runs Friday to Sunday
        else:
            first = last = _day(span)
        if first > last:
            raise ValueError(f"{part!r}: the range runs backwards")
        days.update(d % 7 for d in range(first, last + 1, step))
    return ",".join(_DAYS[d] for d in sorted(days))


def cron_trigger(expression: str, timezone: str) -> Any:
    """Return an APScheduler CronTrigger for a 5-field crontab expression (or a 6-field one
    with seconds first, as node-cron — used in Blnk's documentation — accepts). Raise
    ValueError."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError(
            "a cron expression has 5 fields (minute hour day month day-of-week), or 6 with "
            "seconds first as in node-cron"
        )
    second = fields.pop(0) if len(fields) == 6 else "0"
    minute, hour, day, month, day_of_week = fields
    return CronTrigger(
        second=second,
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=crontab_days(day_of_week),
        timezone=timezone,
    )


def fire_times_between(
    trigger: Any, after: datetime, until: datetime, limit: int = 1000
) -> list[datetime]:
    """Return the trigger's fire times in (after, until], at most ``limit`` (the newest kept)."""
    times: list[datetime] = []
    previous = None
    when = trigger.get_next_fire_time(None, after)
    while when is not None and when <= until:
        if when > after:
            times.append(when)
            if len(times) > limit:
                times.pop(0)
        previous = when
        when = trigger.get_next_fire_time(previous, previous)
        if when is not None and when <= previous:
            break
    return times
