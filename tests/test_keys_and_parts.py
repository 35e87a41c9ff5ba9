"""Pure logic: backup keys and the multipart part-size schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import UsageError
from core.keys import BackupKey
from core.multipart import MAX_PART_SIZE, MAX_PARTS, MiB, max_stream_size, part_size

TiB = 1 << 40
# hypothesis takes naive bounds and attaches the zone itself
_FIRST, _LAST = datetime(2000, 1, 1), datetime(2999, 12, 31)  # noqa: DTZ001
times = st.datetimes(min_value=_FIRST, max_value=_LAST, timezones=st.just(UTC))


@given(times, st.sampled_from(["", "prod/", "ledger/eu/"]))
def test_keys_round_trip_and_sort_by_time(when: datetime, prefix: str) -> None:
    key = BackupKey.at(when, prefix)
    assert BackupKey.parse(key.key, prefix) == key
    assert key.key == f"{prefix}blnk_backup_{when:%Y%m%d_%H%M%S}.dump"
    later = BackupKey.at(when + timedelta(seconds=1), prefix)
    assert key < later and key.key < later.key  # S3's ascending listing is time order


def test_keys_are_in_utc_whatever_the_local_zone() -> None:
    lagos = timezone(timedelta(hours=1))
    key = BackupKey.at(datetime(2024, 3, 4, 4, 0, 0, tzinfo=lagos))
    assert key.key == "blnk_backup_20240304_030000.dump"
    with pytest.raises(ValueError, match="timezone-aware"):
        BackupKey.at(datetime(2024, 3, 4))  # noqa: DTZ001


@pytest.mark.parametrize(
    "key",
    [
        "blnk_backup_latest.dump",
        "blnk_backup_20240304_030000.dump.manifest.json",
        "blnk_backup_20241399_250000.dump",
        "other/blnk_backup_20240304_030000.dump",
        "blnk_backup_20240304_030000.dump.bak",
        "xblnk_backup_20240304_030000.dump",
    ],
)
def test_anything_not_matching_the_pattern_is_not_a_backup(key: str) -> None:
    assert BackupKey.parse(key, "") is None
    with pytest.raises(UsageError, match="not a backup key"):
        BackupKey.parse_or_raise(key, "")


@given(st.integers(min_value=5, max_value=5 * 1024))
def test_part_schedule_reaches_5_tib_within_10000_parts_from_any_first_size(mib: int) -> None:
    base = mib * MiB
    assert max_stream_size(base) >= 5 * TiB
    sizes = [part_size(n, base) for n in (1, 499, 500, 501, 5000, MAX_PARTS)]
    assert all(5 * MiB <= s <= MAX_PART_SIZE for s in sizes)
    assert sizes == sorted(sizes)  # parts never shrink


def test_small_backups_keep_small_parts() -> None:
    assert {part_size(n, 8 * MiB) for n in range(1, 501)} == {8 * MiB}
    assert part_size(501, 8 * MiB) == 16 * MiB
