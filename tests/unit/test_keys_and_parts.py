"""Pure logic: backup keys, the multipart part-size schedule and the upload's checksums."""

from __future__ import annotations

import base64
import hashlib
import zlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import UsageError
from core.keys import BackupKey
from core.store.multipart import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MiB,
    crc32_b64,
    crc32_combine,
    max_stream_size,
    part_size,
    summarise,
)

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


@given(st.lists(st.binary(max_size=3000), max_size=8))
def test_a_streams_crc32_is_combined_from_its_parts_crc32s_exactly(
    parts: list[bytes],
) -> None:
    crc = 0
    for part in parts:
        crc = crc32_combine(crc, zlib.crc32(part), len(part))
    assert crc == zlib.crc32(b"".join(parts))


@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=0, max_value=2**45))
def test_crc32_combine_of_an_empty_or_huge_tail_stays_a_crc32(crc: int, length: int) -> None:
    assert crc32_combine(crc, 0, 0) == crc
    assert 0 <= crc32_combine(crc, 0x12345678, length) < 2**32


def _parts(mode: str, bodies: list[bytes]) -> list[dict[str, object]]:
    key = {"crc32": "_crc32", "sha256": "_sha256"}[mode]
    digest = {"crc32": zlib.crc32, "sha256": lambda b: hashlib.sha256(b).digest()}[mode]
    return [{key: digest(b), "_size": len(b), "PartNumber": i} for i, b in enumerate(bodies, 1)]


def test_a_crc32_upload_knows_its_full_object_and_composite_checksums() -> None:
    bodies = [b"a" * 5000, b"b" * 300, b"c"]
    done = summarise(_parts("crc32", bodies), 5301)
    full = crc32_b64(zlib.crc32(b"".join(bodies)))
    joined = b"".join(zlib.crc32(b).to_bytes(4, "big") for b in bodies)
    composite = f"{crc32_b64(zlib.crc32(joined))}-3"
    assert (done.checksum_crc32, done.checksum_crc32_composite) == (full, composite)
    assert done.checksum_sha256 is None and done.store_checksum == full
    # Full object, or composite with or without its -N: each proves the store got our bytes.
    for reported in (full, composite, composite.partition("-")[0]):
        assert done.checksum_problem(None, reported) is None
    assert done.verified_checksum(full) == full
    assert done.verification(full) == "size+crc32-full-object"
    assert done.verified_checksum(composite.partition("-")[0]) == composite
    assert done.verification(composite) == "size+crc32-composite"
    wrong = crc32_b64(zlib.crc32(b"".join(bodies) + b"!"))
    assert "checksum mismatch" in (done.checksum_problem(None, wrong) or "")
    assert "no CRC32" in (done.checksum_problem("x", None) or "")


def test_a_sha256_upload_is_checked_by_its_composite_only() -> None:
    bodies = [b"a" * 5000, b"b"]
    done = summarise(_parts("sha256", bodies), 5001)
    joined = b"".join(hashlib.sha256(b).digest() for b in bodies)
    composite = base64.b64encode(hashlib.sha256(joined).digest()).decode() + "-2"
    assert done.checksum_sha256 == composite and done.checksum_crc32 is None
    assert done.checksum_problem(composite, None) is None
    assert done.checksum_problem(composite.partition("-")[0], None) is None
    assert "mismatch" in (done.checksum_problem(composite.replace("-2", "-3"), None) or "")
    assert "no SHA-256" in (done.checksum_problem(None, crc32_b64(1)) or "")
    assert done.verification(done.verified_checksum(None)) == "size+sha256-composite"


def test_an_md5_upload_has_no_object_checksum_to_check() -> None:
    done = summarise([{"_size": 3, "PartNumber": 1}], 3)
    assert done.store_checksum is None and done.checksum_problem(None, None) is None
    assert done.verification(None) == "size+content-md5-parts"
