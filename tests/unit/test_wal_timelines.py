"""Gaps on the timelines after a failover count: the chain a recovery from a base backup reads
follows its timeline to where the next one branched off (its history file), then that one.
(Found by review.)"""

from __future__ import annotations

from core.wal.archive import ArchivedWal
from core.wal.basebackup import BaseBackup
from core.wal.names import SEGMENT_SIZE, Segment, format_lsn
from core.wal.retention import usable
from tests.unit.test_wal_health import MemoryBucket, base_json, health


def test_a_gap_on_the_timeline_after_a_failover_breaks_the_chain() -> None:
    """Base backup on timeline 1; a failover to timeline 2 at segment 6; the bucket lost TL2's
    segment 7 (8 and 9 are there). Recovery from this base backup to any time after segment 7
    is impossible, yet health reports no gap and no chain_broken."""
    bucket = MemoryBucket()
    bucket.put(
        "base/20261202_020000/base.json",
        base_json("20261202_020000", 3 * SEGMENT_SIZE, 4 * SEGMENT_SIZE + 100),
    )
    for n in (3, 4, 5):
        bucket.put(f"wal/{Segment(1, n).name}")
    bucket.put(f"wal/{Segment(1, 6).name}.partial")  # TL1's last, left behind at the switch
    bucket.put("wal/00000002.history", b"1\t0/6000100\tno recovery target specified\n")
    for n in (6, 8, 9):  # 7 is missing
        bucket.put(f"wal/{Segment(2, n).name}")
    status = health(bucket).check()
    assert status.gaps, "TL2 is missing segment 7: the chain is broken"
    assert status.chain_broken


def test_retention_calls_a_base_backup_usable_although_its_timeline_2_wal_has_a_gap() -> None:
    base = BaseBackup(
        "20261202_020000",
        "k",
        1,
        "0" * 64,
        1,
        format_lsn(3 * SEGMENT_SIZE),
        format_lsn(4 * SEGMENT_SIZE + 100),
        "2026-12-02T02:00:00+00:00",
        "2026-12-02T02:05:00+00:00",
        15,
        "t",
    )
    archived = ArchivedWal(
        [Segment(1, 3), Segment(1, 4), Segment(1, 5), Segment(2, 6), Segment(2, 8)],
        None,
        ["00000002.history"],
        None,
    )
    assert not usable(base, archived), "TL2 lacks segment 7"
