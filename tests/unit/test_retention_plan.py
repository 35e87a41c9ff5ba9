"""The retention planner: a pure function, checked over random backup histories."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.keys import BackupKey
from core.retention import RetentionPlan, RetentionPolicy, plan

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
VALID_REASONS = (
    "daily:",
    "weekly:",
    "monthly:",
    "one of the newest",
    "dated in the future",
    "paused:",
)


def keys_at(*hours_ago: float) -> list[BackupKey]:
    return [BackupKey.at(NOW - timedelta(hours=h)) for h in hours_ago]


histories = st.lists(
    st.integers(min_value=-72, max_value=24 * 800).map(lambda h: NOW - timedelta(hours=h)),
    max_size=120,
    unique=True,
).map(lambda times: sorted({BackupKey.at(t) for t in times}))
policies = st.builds(
    RetentionPolicy,
    daily_days=st.integers(0, 14),
    weekly_days=st.integers(0, 60),
    monthly_days=st.integers(0, 400),
    min_keep=st.integers(1, 6),
    stale_after_hours=st.sampled_from([24.0, 48.0, 24.0 * 400]),
)


@settings(max_examples=300, deadline=None)
@given(histories, policies)
def test_floors_always_hold(keys: list[BackupKey], policy: RetentionPolicy) -> None:
    result = plan(keys, policy, NOW)
    deleted = set(result.to_delete)
    past = [k for k in keys if k.started_at <= NOW + timedelta(minutes=5)]
    assert not deleted & set(past[-policy.min_keep :])
    assert not any(k.started_at > NOW + timedelta(minutes=5) for k in deleted)
    if past and NOW - past[-1].started_at > timedelta(hours=policy.stale_after_hours):
        assert deleted == set()
        assert result.paused is not None
    assert {d.key for d in result.decisions} == set(keys)
    assert plan(keys, policy, NOW, listing_complete=False).to_delete == []


@settings(max_examples=300, deadline=None)
@given(histories, policies)
def test_applying_the_plan_and_planning_again_deletes_nothing(
    keys: list[BackupKey], policy: RetentionPolicy
) -> None:
    first = plan(keys, policy, NOW)
    remaining = [k for k in keys if k not in set(first.to_delete)]
    assert plan(remaining, policy, NOW).to_delete == []


@settings(max_examples=300, deadline=None)
@given(histories, policies)
def test_every_decision_carries_a_valid_reason(
    keys: list[BackupKey], policy: RetentionPolicy
) -> None:
    for decision in plan(keys, policy, NOW).decisions:
        assert decision.reasons
        if decision.keep:
            assert all(r.startswith(VALID_REASONS) for r in decision.reasons), decision
        else:
            assert decision.reasons == ("outside every retention window",)


def test_a_failed_sunday_backup_does_not_lose_the_week() -> None:
    # Daily backups at 03:00 for 40 days, except the Sunday of one old week.
    days = [NOW.replace(hour=3) - timedelta(days=d) for d in range(40)]
    missing = next(d for d in days if d.isoweekday() == 7 and (NOW - d).days > 10)
    keys = [BackupKey.at(d) for d in days if d != missing]
    result = plan(keys, RetentionPolicy(), NOW)
    week = missing.isocalendar()
    kept_that_week = [k for k in result.to_keep if k.started_at.isocalendar()[:2] == week[:2]]
    assert len(kept_that_week) == 1
    assert kept_that_week[0].started_at == missing - timedelta(days=1)  # the Saturday


def _expected_keep(keys: list[BackupKey], policy: RetentionPolicy) -> dict[str, set[BackupKey]]:
    """An oracle for the GFS policy, written from the README, not from the planner: a backup is
    the newest of its period when no later backup falls in the same period."""

    def newest_of(key: BackupKey, period: Callable[[BackupKey], tuple[int, int]]) -> bool:
        return not any(o > key and period(o) == period(key) for o in keys)

    def age(key: BackupKey) -> timedelta:
        return NOW - key.started_at

    def week(k: BackupKey) -> tuple[int, int]:
        return k.started_at.isocalendar()[:2]

    def month(k: BackupKey) -> tuple[int, int]:
        return (k.started_at.year, k.started_at.month)

    return {
        "daily": {k for k in keys if age(k) <= timedelta(days=policy.daily_days)},
        "weekly": {
            k for k in keys if newest_of(k, week) and age(k) <= timedelta(days=policy.weekly_days)
        },
        "monthly": {
            k for k in keys if newest_of(k, month) and age(k) <= timedelta(days=policy.monthly_days)
        },
        "min_keep": set(sorted(keys)[-policy.min_keep :]),
    }


def _kept_by_reason(result: RetentionPlan) -> dict[str, set[BackupKey]]:
    prefixes = {
        "daily": "daily:",
        "weekly": "weekly:",
        "monthly": "monthly:",
        "min_keep": "one of the newest",
    }
    return {
        name: {d.key for d in result.decisions if any(r.startswith(p) for r in d.reasons)}
        for name, p in prefixes.items()
    }


@pytest.mark.parametrize(
    ("skipped", "dailies"),
    [
        pytest.param(lambda _day: False, 7, id="every-day"),
        # Gaps: every Sunday and every last day of a month fail, and so do two whole weeks.
        pytest.param(
            lambda day: (
                day.isoweekday() == 7
                or (day + timedelta(days=1)).month != day.month
                or 40 <= (NOW - day).days < 54
                or 300 <= (NOW - day).days < 314
            ),
            6,  # this week's Sunday is missing
            id="with-gaps",
        ),
    ],
)
def test_the_gfs_shape_of_a_year_of_daily_backups_is_exactly_the_policy(
    skipped: Callable[[datetime], bool], dailies: int
) -> None:
    days = [NOW.replace(hour=3) - timedelta(days=d) for d in range(400)]
    keys = [BackupKey.at(d) for d in days if not skipped(d)]
    policy = RetentionPolicy()
    result = plan(keys, policy, NOW)
    expected = _expected_keep(keys, policy)
    assert result.paused is None
    assert _kept_by_reason(result) == expected
    assert set(result.to_keep) == set().union(*expected.values())
    assert set(result.to_delete) == set(keys) - set(result.to_keep)
    # The shape in numbers: the dailies, the newest of each of the last 5 ISO weeks, the newest
    # of each of the 13 calendar months the last 365 days touch (overlapping where they coincide).
    assert len(expected["daily"]) == dailies
    assert len(expected["weekly"]) == 5
    assert len(expected["monthly"]) == 13


def test_nothing_is_deleted_while_the_newest_backup_is_stale() -> None:
    keys = keys_at(30, 24 * 100, 24 * 200, 24 * 300)
    result = plan(keys, RetentionPolicy(min_keep=1), NOW)
    assert result.to_delete == []
    assert result.paused is not None and "STALE_AFTER_HOURS" in result.paused


def test_future_backups_are_kept_and_do_not_count_for_min_keep() -> None:
    keys = keys_at(-48, 1, 24 * 100, 24 * 200)
    result = plan(keys, RetentionPolicy(min_keep=2, monthly_days=30), NOW)
    assert set(result.to_keep) == set(keys_at(-48, 1, 24 * 100))
    assert result.to_delete == keys_at(24 * 200)
