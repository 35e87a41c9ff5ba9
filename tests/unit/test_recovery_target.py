"""A recovery target as a person types it: a time with its zone, or ``latest``; anything else
is a usage error that says how to write one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from core.errors import UsageError
from core.wal.recovery import parse_target


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("2026-12-02 14:02:59Z", datetime(2026, 12, 2, 14, 2, 59, tzinfo=UTC)),
        ("2026-12-02T14:02:59z", datetime(2026, 12, 2, 14, 2, 59, tzinfo=UTC)),
        (
            "2026-12-02T15:02:59+01:00",
            datetime(2026, 12, 2, 15, 2, 59, tzinfo=timezone(timedelta(hours=1))),
        ),
        ("2026-12-02 14:02:59.250Z", datetime(2026, 12, 2, 14, 2, 59, 250000, tzinfo=UTC)),
        ("latest", None),
        (" LATEST ", None),
    ],
)
def test_times_with_a_zone_and_latest_are_targets(typed: str, meant: datetime | None) -> None:
    assert parse_target(typed) == meant


@pytest.mark.parametrize(
    "typed", ["2026-12-02 14:02:59", "yesterday", "", "now", "latest please", "14:02"]
)
def test_anything_else_says_how_to_write_a_target(typed: str) -> None:
    with pytest.raises(UsageError, match=r"2026-12-02 14:02:59Z"):
        parse_target(typed)
