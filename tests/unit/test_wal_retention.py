"""Retention of base backups and WAL: a pure planner, checked over random histories — a kept
base backup never loses a segment it needs, history files are never deleted, and a paused or
empty plan deletes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from core.retention import RetentionPolicy
from core.wal.archive import ArchivedWal
from core.wal.basebackup import BaseBackup
from core.wal.names import SEGMENT_SIZE, Segment, format_lsn
from core.wal.retention import ORPHAN_AFTER, plan_wal, restrict

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
POLICY = RetentionPolicy(daily_days=2, weekly_days=14, monthly_days=0, min_keep=2)


def base(hours_ago: float, first: int, segments: int = 1, timeline: int = 1) -> BaseBackup:
    started = NOW - timedelta(hours=hours_ago)
    stamp = started.strftime("%Y%m%d_%H%M%S")
    return BaseBackup(
        stamp=stamp,
        key=f"base/{stamp}/base.tar",
        size=1,
        sha256="0" * 64,
        timeline=timeline,
        start_lsn=format_lsn(first * SEGMENT_SIZE + 40),
        end_lsn=format_lsn((first + segments - 1) * SEGMENT_SIZE + 400),
        started_at=started.isoformat(),
        finished_at=(started + timedelta(minutes=1)).isoformat(),
        server_major=15,
        tool_version="test",
    )


def archive_of(names: list[str]) -> ArchivedWal:
    segments = sorted(s for n in names if (s := Segment.parse(n)) is not None)
    partials = [s for n in names if n.endswith(".partial") and (s := Segment.parse(n[:-8]))]
    histories = [n for n in names if n.endswith(".history")]
    return ArchivedWal(segments, max(partials) if partials else None, histories, NOW, tuple(names))


def names_for(timeline: int, numbers: range | list[int]) -> list[str]:
    return [Segment(timeline, n).name for n in numbers]


def test_the_wal_before_the_oldest_base_backup_kept_goes_and_nothing_after_it():
    bases = [base(24 * 40, 2), base(24 * 20, 6), base(24 * 1, 10), base(2, 14)]
    names = [*names_for(1, range(0, 20)), "00000002.history", *names_for(2, [18, 19])]
    names.append(Segment(2, 20).name + ".partial")
    result = plan_wal(bases, names, archive_of(names), [], POLICY, NOW)
    assert [b.stamp for b in result.to_delete] == [bases[0].stamp, bases[1].stamp]
    assert result.keep_from == Segment(1, 10)
    assert result.wal_to_delete == names_for(1, range(0, 10))
    assert "00000002.history" not in result.wal_to_delete


def test_the_newest_base_backup_with_all_its_wal_is_kept_when_the_newer_ones_are_broken():
    bases = [base(24 * 40, 2), base(2, 14), base(1, 16)]
    names = names_for(1, range(0, 12))  # the two newest lost their WAL (a broken chain)
    result = plan_wal(
        bases, names, archive_of(names), [], RetentionPolicy(0, 0, 0, min_keep=1), NOW
    )
    kept = {d.base.stamp: d.reasons for d in result.decisions if d.keep}
    assert bases[0].stamp in kept and "all its WAL" in " ".join(kept[bases[0].stamp])
    assert result.wal_to_delete == names_for(1, [0, 1])


def test_a_paused_plan_and_a_store_without_base_backups_delete_no_wal():
    names = names_for(1, range(0, 8))
    assert plan_wal([], names, archive_of(names), [], POLICY, NOW).wal_to_delete == []
    stale = [base(24 * 40, 2), base(24 * 30, 4), base(24 * 10, 6)]
    paused = plan_wal(stale, names, archive_of(names), [], POLICY, NOW)
    assert paused.paused and "STALE_AFTER_HOURS" in paused.paused
    assert paused.to_delete == [] and paused.wal_to_delete == []
    failed = plan_wal(stale, names, archive_of(names), [], POLICY, NOW, listing_complete=False)
    assert failed.paused and failed.wal_to_delete == [] and failed.to_delete == []


def test_a_base_tar_without_base_json_goes_only_once_it_is_a_day_old():
    bases = [base(2, 4)]
    names = names_for(1, range(0, 6))
    orphans = [("base/a/base.tar", NOW - ORPHAN_AFTER * 2), ("base/b/base.tar", NOW)]
    result = plan_wal(bases, names, archive_of(names), orphans, POLICY, NOW)
    assert result.orphans == ["base/a/base.tar"]


def test_an_approval_narrows_the_plan_to_what_the_approver_saw():
    bases = [base(24 * 40, 2), base(24 * 20, 6), base(24 * 1, 10), base(2, 14)]
    names = names_for(1, range(0, 20))
    current = plan_wal(bases, names, archive_of(names), [], POLICY, NOW)
    # The approver saw only the oldest base backup go, and WAL before segment 6.
    narrowed = restrict(current, names, {bases[0].stamp}, Segment(1, 6).name, set())
    assert [b.stamp for b in narrowed.to_delete] == [bases[0].stamp]
    assert narrowed.wal_to_delete == names_for(1, range(0, 6))
    # An approval that saw a later boundary than the kept base backups allow: the earlier wins.
    wider = restrict(current, names, {bases[0].stamp}, Segment(1, 12).name, set())
    assert wider.wal_to_delete == names_for(1, range(0, 6))
    # No boundary approved: no WAL goes.
    assert restrict(current, names, {bases[0].stamp}, None, set()).wal_to_delete == []


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[BaseBackup], list[str]]:
    count = draw(st.integers(0, 8))
    hours = sorted(draw(st.lists(st.floats(0.5, 24 * 90), min_size=count, max_size=count)))
    hours = sorted(set(round(h, 3) for h in hours), reverse=True)
    bases, segment = [], draw(st.integers(1, 5))
    for h in hours:
        timeline = 2 if draw(st.booleans()) and segment > 10 else 1
        bases.append(base(h, segment, draw(st.integers(1, 3)), timeline))
        segment += draw(st.integers(1, 6))
    top = segment + 3
    names = [
        Segment(tl, n).name
        for tl in (1, 2)
        for n in range(0, top)
        if draw(st.integers(0, 9)) > 0  # some gaps
    ]
    names += ["00000002.history", Segment(1, top).name + ".partial"]
    return bases, names


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(0, 10), st.integers(1, 4))
def test_no_kept_base_backup_ever_loses_a_segment_it_needs(
    history: tuple[list[BaseBackup], list[str]], daily: int, keep: int
) -> None:
    bases, names = history
    policy = RetentionPolicy(daily, daily * 2, daily * 4, keep, stale_after_hours=24 * 365)
    result = plan_wal(bases, names, archive_of(names), [], policy, NOW)
    doomed = set(result.wal_to_delete)
    assert doomed <= set(names)
    assert not any(n.endswith(".history") for n in doomed)
    for kept in result.to_keep:
        first = Segment.of(kept.timeline, kept.start)
        for name in doomed:
            segment = Segment.parse(name.removesuffix(".partial"))
            assert segment is not None and segment.number < first.number
    if not result.to_keep or result.paused:
        assert doomed == set() and result.to_delete == []
    assert len(result.to_keep) >= min(keep, len(bases))
