"""Continuous protection's health judged without a database or a bucket: the rules that turn a
reading (the window, the slot, the receiver, the archive) into problems with next steps, the
settings that tune them, and the reading's cache, against an in-memory bucket."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.config import load_settings
from core.database import PgTarget
from core.errors import ConfigError, StorageError
from core.store.s3 import ListedObject
from core.wal.health import (
    SlotState,
    WalHealth,
    WalLimits,
    WalProblem,
    WalStatus,
    keep_size_bytes,
)
from core.wal.names import SEGMENT_SIZE, Segment, format_lsn
from core.wal.recovery import RecoverableWindow

NOW = datetime(2026, 12, 2, 14, 3, 0, tzinfo=UTC)
GiB = 1 << 30
LIMITS = WalLimits(
    max_lag_seconds=60, slot_alert_share=0.8, slot_alert_bytes=8 * GiB, receiver_down_minutes=5
)
WINDOW = RecoverableWindow(
    earliest=NOW - timedelta(hours=12),
    latest=NOW - timedelta(seconds=4),
    latest_lsn="0/5000000",
    base_backups=1,
    last_base_backup=NOW - timedelta(hours=12),
)
SLOT = SlotState(
    "blnk_backup",
    True,
    active=True,
    wal_status="reserved",
    retained_bytes=2 << 20,
    safe_wal_size=10 * GiB,
    max_keep_bytes=10 * GiB,
)
HEALTHY = WalStatus(
    window=WINDOW,
    slot=SLOT,
    receiver_last_seen=NOW - timedelta(seconds=3),
    gaps=(),
    checked_at=NOW,
    limits=LIMITS,
)


def codes(status: WalStatus) -> list[str]:
    return [p.code for p in status.problems(NOW)]


def with_slot(**changes: Any) -> WalStatus:
    return replace(HEALTHY, slot=replace(SLOT, **changes))


def test_a_streaming_receiver_with_a_fresh_recovery_point_has_no_problems() -> None:
    assert HEALTHY.problems(NOW) == []
    assert not HEALTHY.chain_broken


def test_a_recovery_point_older_than_the_limit_is_wal_lag_and_at_the_limit_is_not() -> None:
    at_limit = replace(HEALTHY, window=replace(WINDOW, latest=NOW - timedelta(seconds=60)))
    assert codes(at_limit) == []
    late = replace(HEALTHY, window=replace(WINDOW, latest=NOW - timedelta(seconds=61)))
    [problem] = late.problems(NOW)
    assert problem.code == "wal_lag"
    assert "61 s old" in problem.message and "WAL_MAX_LAG_SECONDS=60" in problem.message
    assert "`blnk-backup -v wal-stream`" in problem.next_step


def test_nothing_recoverable_is_no_recovery_window_with_a_base_backup_as_the_next_step() -> None:
    empty = RecoverableWindow(None, None, None, 0, None)
    [problem] = replace(HEALTHY, window=empty).problems(NOW)
    assert problem.code == "no_recovery_window"
    assert "`blnk-backup base-backup`" in problem.next_step


def test_slot_retention_from_the_configured_share_of_the_cap() -> None:
    cap = 10 * GiB
    assert codes(with_slot(retained_bytes=int(cap * 0.8) - 1)) == []
    [problem] = with_slot(retained_bytes=int(cap * 0.8)).problems(NOW)
    assert problem.code == "slot_retention"
    assert "80% of max_slot_wal_keep_size (10.0 GiB" in problem.message
    assert "`/blnk-backups wal-slot recreate`" in problem.next_step
    stricter = replace(
        with_slot(retained_bytes=int(cap * 0.5)), limits=replace(LIMITS, slot_alert_share=0.5)
    )
    assert codes(stricter) == ["slot_retention"]


def test_an_uncapped_slot_is_judged_by_its_size_and_the_next_step_caps_it() -> None:
    assert codes(with_slot(max_keep_bytes=None, retained_bytes=8 * GiB - 1)) == []
    [problem] = with_slot(max_keep_bytes=None, retained_bytes=8 * GiB).problems(NOW)
    assert problem.code == "slot_retention"
    assert "max_slot_wal_keep_size = -1" in problem.message
    assert "ALTER SYSTEM SET max_slot_wal_keep_size" in problem.next_step
    assert with_slot(max_keep_bytes=None).slot.retained_share is None


def test_the_receiver_is_down_when_its_position_is_stale_and_the_slot_not_active() -> None:
    stale = replace(
        with_slot(active=False), receiver_last_seen=NOW - timedelta(minutes=5, seconds=1)
    )
    [problem] = stale.problems(NOW)
    assert problem.code == "receiver_down"
    assert "last seen 5 min ago" in problem.message and "is not active" in problem.message
    assert "`blnk-backup-bot`" in problem.next_step
    # Either sign of life is enough: a fresh position, or something streaming from the slot.
    assert codes(replace(stale, receiver_last_seen=NOW - timedelta(minutes=4))) == []
    assert codes(replace(stale, slot=SLOT)) == []


def test_a_receiver_never_seen_on_a_slot_that_does_not_exist_is_down() -> None:
    never = replace(HEALTHY, slot=SlotState("blnk_backup", False), receiver_last_seen=None)
    [problem] = never.problems(NOW)
    assert problem.code == "receiver_down"
    assert "has never shipped WAL" in problem.message and "does not exist" in problem.message


def test_a_lost_slot_breaks_the_chain_and_is_not_judged_by_retention() -> None:
    lost = with_slot(active=False, wal_status="lost", retained_bytes=None, safe_wal_size=None)
    assert lost.chain_broken
    [problem] = lost.problems(NOW)
    assert problem.code == "chain_broken"
    assert "wal_status lost" in problem.message
    for command in (
        "`/blnk-backups wal-slot recreate`",
        "`blnk-backup wal-slot recreate --yes`",
        "takes a base backup",
    ):
        assert command in problem.next_step


def test_a_gap_in_the_archive_breaks_the_chain_once_whatever_else_is_missing() -> None:
    gaps = (Segment(1, 7), Segment(1, 8))
    gapped = replace(HEALTHY, gaps=gaps)
    assert gapped.chain_broken
    [problem] = gapped.problems(NOW)
    assert problem.code == "chain_broken"
    assert "2 WAL segment(s)" in problem.message and Segment(1, 7).name in problem.message
    both = replace(with_slot(wal_status="lost", retained_bytes=None), gaps=gaps)
    assert codes(both) == ["chain_broken"]
    assert "wal_status lost" in both.problems(NOW)[0].message


def test_problems_come_most_serious_first_each_with_a_command_to_run() -> None:
    everything = replace(
        with_slot(active=False, wal_status="unreserved", retained_bytes=11 * GiB),
        window=replace(WINDOW, latest=NOW - timedelta(hours=1)),
        receiver_last_seen=NOW - timedelta(hours=1),
        gaps=(Segment(1, 9),),
    )
    problems = everything.problems(NOW)
    assert [p.code for p in problems] == [
        "chain_broken",
        "receiver_down",
        "slot_retention",
        "wal_lag",
    ]
    for problem in problems:
        assert isinstance(problem, WalProblem)
        assert problem.next_step.count("`") >= 2, problem  # a command, marked as code


def test_ages_are_counted_to_when_they_are_asked_for() -> None:
    assert HEALTHY.lag_seconds(NOW) == 4
    assert HEALTHY.lag_seconds(NOW + timedelta(minutes=1)) == 64
    assert [p.code for p in HEALTHY.problems()] == ["wal_lag"]  # NOW is past: late by now


@pytest.mark.parametrize(
    ("setting", "unit", "expected"),
    [
        ("1024", "MB", GiB),
        ("-1", "MB", None),
        ("0", "MB", 0),
        ("16", "8kB", 16 * 8 * 1024),
        ("5", None, 5),
    ],
)
def test_max_slot_wal_keep_size_in_bytes(
    setting: str, unit: str | None, expected: int | None
) -> None:
    assert keep_size_bytes(setting, unit) == expected


def test_an_unknown_unit_of_max_slot_wal_keep_size_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown unit"):
        keep_size_bytes("1", "parsecs")


# --- settings -------------------------------------------------------------------------------------
@pytest.fixture
def wal_env(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> Iterator[pytest.MonkeyPatch]:
    for name in (
        "WAL_SLOT_ALERT_SHARE",
        "WAL_SLOT_ALERT_BYTES",
        "WAL_RECEIVER_DOWN_MINUTES",
        "WAL_SHIP_PARTIAL_SECONDS",
    ):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


def test_the_thresholds_default_to_80_percent_8_gib_and_5_minutes(
    wal_env: pytest.MonkeyPatch,
) -> None:
    limits = WalLimits.from_settings(load_settings())
    assert limits == WalLimits(60.0, 0.8, 8 * GiB, 5.0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("17179869184", 16 * GiB), ("8GB", 8 * GiB), ("512MiB", 512 << 20), ("2 TB", 2 << 40)],
)
def test_the_uncapped_alert_size_takes_bytes_or_units(
    wal_env: pytest.MonkeyPatch, raw: str, expected: int
) -> None:
    wal_env.setenv("WAL_SLOT_ALERT_BYTES", raw)
    assert load_settings().wal_slot_alert_bytes == expected


def test_bad_thresholds_are_named_at_once(wal_env: pytest.MonkeyPatch) -> None:
    wal_env.setenv("WAL_SLOT_ALERT_BYTES", "lots")
    wal_env.setenv("WAL_SLOT_ALERT_SHARE", "1.5")
    wal_env.setenv("WAL_SHIP_PARTIAL_SECONDS", "120")
    wal_env.setenv("WAL_RECEIVER_DOWN_MINUTES", "3")  # 180 s: less than twice 120 s
    with pytest.raises(ConfigError) as raised:
        load_settings()
    problems = raised.value.problems
    assert len(problems) == 3, problems
    for name in ("WAL_SLOT_ALERT_BYTES", "WAL_SLOT_ALERT_SHARE", "WAL_RECEIVER_DOWN_MINUTES"):
        assert any(p.startswith(name) for p in problems), (name, problems)
    assert "lots" not in str(raised.value)
    wal_env.setenv("WAL_SLOT_ALERT_BYTES", "1MB")  # below a segment: a typo, surely
    wal_env.setenv("WAL_SLOT_ALERT_SHARE", "0.9")
    wal_env.setenv("WAL_RECEIVER_DOWN_MINUTES", "4")
    with pytest.raises(ConfigError, match="WAL_SLOT_ALERT_BYTES"):
        load_settings()


# --- one reading, against an in-memory bucket ---------------------------------------------------
class MemoryBucket:
    """The few reads WalHealth makes of a store: listings and small JSON objects."""

    prefix = "blnk/"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.listings = 0
        self.fail: StorageError | None = None

    def put(self, key: str, body: Any = b"") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.objects[self.prefix + key] = data

    def list_objects(self, start: str) -> Iterator[ListedObject]:
        if self.fail is not None:
            raise self.fail
        self.listings += 1
        for key in sorted(self.objects):
            if key.startswith(self.prefix + start):
                yield ListedObject(key, len(self.objects[key]), NOW, "")

    def get_json(self, key: str) -> Any:
        body = self.objects.get(key)
        return json.loads(body) if body is not None else None

    def read_small(self, key: str) -> bytes | None:
        return self.objects.get(key)


def base_json(stamp: str, start: int, end: int) -> dict[str, Any]:
    return {
        "stamp": stamp,
        "key": f"blnk/base/{stamp}/base.tar",
        "size": 1,
        "sha256": "0" * 64,
        "timeline": 1,
        "start_lsn": format_lsn(start),
        "end_lsn": format_lsn(end),
        "started_at": NOW.isoformat(),
        "finished_at": NOW.isoformat(),
        "server_major": 15,
        "tool_version": "test",
    }


class FixedSlot(WalHealth):
    """The slot as the database would report it, without a database."""

    def read_slot(self) -> SlotState:
        return SLOT


def health(bucket: MemoryBucket) -> FixedSlot:
    return FixedSlot(
        bucket,  # type: ignore[arg-type]
        PgTarget({"host": "127.0.0.1", "port": "1"}, None),
        slot="blnk_backup",
        window=lambda _max_age: WINDOW,
        limits=LIMITS,
    )


def test_gaps_are_counted_from_the_newest_usable_base_backup_and_the_receiver_from_position() -> (
    None
):
    bucket = MemoryBucket()
    # A base backup whose WAL is gone (not usable), then one from segment 3 to 4; the bucket
    # holds 3, 4, 5 and 7 (6 is missing) and 8 being written.
    bucket.put(
        "base/20261201_020000/base.json",
        base_json("20261201_020000", 1 * SEGMENT_SIZE, 1 * SEGMENT_SIZE + 100),
    )
    bucket.put(
        "base/20261202_020000/base.json",
        base_json("20261202_020000", 3 * SEGMENT_SIZE, 4 * SEGMENT_SIZE + 100),
    )
    for number in (3, 4, 5, 7):
        bucket.put(f"wal/{Segment(1, number).name}")
    bucket.put(f"wal/{Segment(1, 8).name}.partial")
    seen = NOW - timedelta(seconds=2)
    bucket.put(
        "wal/position.json", {"timeline": 1, "lsn": "0/8000010", "shipped_at": seen.isoformat()}
    )

    status = health(bucket).check()

    assert status.gaps == (Segment(1, 6),)
    assert status.receiver_last_seen == seen
    assert status.window is WINDOW and status.slot is SLOT
    assert [p.code for p in status.problems(NOW)] == ["chain_broken"]

    # A base backup taken after the gap (the slot was recreated): the chain from it is whole,
    # and the break before it is history (the window's breaks), not a problem now.
    bucket.put(
        "base/20261203_020000/base.json",
        base_json("20261203_020000", 7 * SEGMENT_SIZE, 7 * SEGMENT_SIZE + 100),
    )
    mended = health(bucket).check()
    assert mended.gaps == ()
    assert [p.code for p in mended.problems(NOW)] == []


def test_no_gap_before_any_usable_base_backup_and_no_position_is_never_seen() -> None:
    bucket = MemoryBucket()
    for number in (3, 5):  # a gap, but no base backup to recover from yet
        bucket.put(f"wal/{Segment(1, number).name}")
    status = health(bucket).check()
    assert status.gaps == () and status.receiver_last_seen is None


def test_a_reading_is_reused_within_max_age_and_a_failed_one_too() -> None:
    bucket = MemoryBucket()
    reader = health(bucket)
    first = reader.check(max_age=60)
    listed = bucket.listings
    assert reader.check(max_age=60) is first and bucket.listings == listed
    assert reader.check() is not first and bucket.listings > listed  # max_age 0: read now

    failing = health(bucket)
    bucket.fail = StorageError("the bucket is down")
    broken = failing.check(max_age=60)  # a reading still: the slot is the database's
    assert broken.store_error is not None and "the bucket is down" in broken.store_error
    assert broken.slot is SLOT
    assert [p.code for p in broken.problems(NOW)] == ["store_unreadable"]
    bucket.fail = None
    assert failing.check(max_age=60) is broken  # not asked again within the period
    assert failing.check().store_error is None  # asked now: read again


def test_with_the_bucket_down_the_slot_filling_up_is_still_a_problem() -> None:
    bucket = MemoryBucket()
    full = replace(SLOT, retained_bytes=9 * GiB, max_keep_bytes=10 * GiB)

    class Filling(FixedSlot):
        def read_slot(self) -> SlotState:
            return full

    reader = Filling(
        bucket,  # type: ignore[arg-type]
        PgTarget({"host": "127.0.0.1", "port": "1"}, None),
        slot="blnk_backup",
        window=lambda _max_age: WINDOW,
        limits=LIMITS,
    )
    bucket.fail = StorageError("the bucket is down")
    codes = [p.code for p in reader.check().problems(NOW)]
    assert codes == ["store_unreadable", "slot_retention"]


def test_a_slot_dropped_on_purpose_is_said_so_not_a_dead_receiver() -> None:
    bucket = MemoryBucket()
    bucket.put(
        "wal/slot-dropped.json",
        {"slot": "blnk_backup", "by": "slack:U1", "dropped_at": "2026-12-03T05:00:00+00:00"},
    )
    status = replace(
        health(bucket).check(),
        slot=replace(SLOT, exists=False, active=None, wal_status=None, retained_bytes=None),
        receiver_last_seen=NOW - timedelta(hours=1),
    )
    [problem] = [p for p in status.problems(NOW) if p.code != "wal_lag"]
    assert problem.code == "slot_dropped" and "slack:U1" in problem.message
    assert "`/blnk-backups wal-slot recreate`" in problem.next_step


def test_callers_meanwhile_get_the_last_reading_instead_of_waiting_on_a_slow_one() -> None:
    bucket = MemoryBucket()
    release, entered = threading.Event(), threading.Event()

    class Slow(FixedSlot):
        def read_slot(self) -> SlotState:
            entered.set()
            release.wait(10)
            return SLOT

    reader = Slow(
        bucket,  # type: ignore[arg-type]
        PgTarget({"host": "127.0.0.1", "port": "1"}, None),
        slot="blnk_backup",
        window=lambda _max_age: WINDOW,
        limits=LIMITS,
    )
    release.set()
    old = reader.check()
    release.clear()
    entered.clear()
    slow = threading.Thread(target=reader.check)
    slow.start()
    assert entered.wait(10)
    assert reader.check(max_age=0.001) is old  # answered at once with the last reading
    release.set()
    slow.join(10)
    assert reader.check(max_age=60) is not old


def test_a_slot_that_cannot_be_read_says_why_without_the_password() -> None:
    password = "pw-s3cr3t-0123456789"
    source = PgTarget(
        {
            "host": "127.0.0.1",
            "port": "1",
            "user": password,
            "dbname": "blnk",
            "connect_timeout": "2",
        },
        password,
    )
    reader = WalHealth(
        MemoryBucket(),  # type: ignore[arg-type]
        source,
        slot="blnk_backup",
        window=lambda _max_age: WINDOW,
        limits=LIMITS,
    )
    slot = reader.read_slot()
    assert slot.exists is None and slot.error is not None
    assert "cannot connect" in slot.error
    assert password not in slot.error
