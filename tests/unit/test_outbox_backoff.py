"""The outbox's back-off between delivery attempts, as the pure function it is: 30 seconds
after the first attempt, doubling, never more than 30 minutes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.outbox import MAX_ATTEMPTS, _backoff


def test_back_off_doubles_from_30_seconds_to_a_30_minute_ceiling() -> None:
    assert [_backoff(n).total_seconds() for n in (1, 2, 3, 7, 20)] == [30, 60, 120, 1800, 1800]


def test_the_whole_schedule_up_to_giving_up() -> None:
    waits = [int(_backoff(n).total_seconds()) for n in range(1, MAX_ATTEMPTS + 1)]
    assert waits[:7] == [30, 60, 120, 240, 480, 960, 1800]
    assert set(waits[6:]) == {1800}  # the ceiling, reached at the 7th attempt and kept
    # A message is given up after MAX_ATTEMPTS: about 7 hours of trying, not minutes or days.
    assert timedelta(hours=6) < timedelta(seconds=sum(waits[:-1])) < timedelta(hours=8)


@pytest.mark.parametrize("attempts", range(1, 40))
def test_each_wait_is_twice_the_last_until_the_ceiling(attempts: int) -> None:
    before, after = _backoff(attempts), _backoff(attempts + 1)
    assert after == min(2 * before, timedelta(minutes=30))
    assert timedelta(seconds=30) <= after <= timedelta(minutes=30)
