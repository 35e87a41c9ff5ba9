"""Retention of point-in-time recovery: which base backups go, and which WAL with them. Pure:
reads nothing, deletes nothing (core/prune.py carries the plan out).

Base backups follow the same GFS policy as the dumps (core/retention.py), with one more floor:
the newest base backup whose WAL is all in the store is always kept, so a broken chain never
costs the last window that still works.

WAL is kept exactly back to the start of the oldest base backup kept: every segment numbered
from that base backup's first segment on, on every timeline, stays. A recovery from a base
backup reads WAL forward from its start, following later timelines, so no kept base backup
can need a segment numbered before the oldest one's start; history files (a few bytes each,
and what tells a recovery which timeline to follow) are never deleted. With no complete base
backup, or a plan paused, no WAL is deleted at all.

A base.tar without its base.json is an interrupted base backup (base.json is written last) or
the remains of an interrupted prune (base.json is deleted first); it is never used, and it is
deleted once it is older than a day — a base backup still running is never that old without
its base.json, since base.json follows the upload at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.retention import RetentionPolicy, keep_reasons
from core.wal.archive import ArchivedWal
from core.wal.basebackup import BaseBackup
from core.wal.names import PARTIAL_SUFFIX, Segment, is_history

ORPHAN_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class BaseDecision:
    base: BaseBackup
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class WalRetentionPlan:
    """What a prune does to the base backups and the WAL of one store."""

    decisions: list[BaseDecision]  # oldest first
    keep_from: Segment | None  # WAL numbered before this one's number goes (None: none goes)
    wal_to_delete: list[str]  # object names under wal/, oldest first
    orphans: list[str]  # base.tar keys without their base.json, older than ORPHAN_AFTER
    paused: str | None = None

    @property
    def to_delete(self) -> list[BaseBackup]:
        return [d.base for d in self.decisions if not d.keep]

    @property
    def to_keep(self) -> list[BaseBackup]:
        return [d.base for d in self.decisions if d.keep]

    @property
    def deletes_anything(self) -> bool:
        return bool(self.to_delete or self.wal_to_delete or self.orphans)


def usable(base: BaseBackup, archived: ArchivedWal) -> bool:
    """True when the store holds every segment from the base backup's start through its end
    (the least a recovery from it needs to become consistent) with no gap after it."""
    first, last = Segment.of(base.timeline, base.start), Segment.of(base.timeline, base.end - 1)
    return archived.has(first) and archived.has(last) and not archived.gaps(first)


def plan_wal(
    bases: list[BaseBackup],
    wal_names: list[str],
    archived: ArchivedWal,
    orphan_tars: list[tuple[str, datetime]],
    policy: RetentionPolicy,
    now: datetime,
    *,
    listing_complete: bool = True,
) -> WalRetentionPlan:
    """Decide, for the complete base backups ``bases`` (oldest first), keep or delete; then
    which of ``wal_names`` (every object name under wal/) go with them."""
    ordered = sorted(bases, key=lambda b: b.stamp)
    started = [datetime.fromisoformat(b.started_at) for b in ordered]
    reasons, paused = keep_reasons(
        started, policy, now, listing_complete=listing_complete, what="base backup"
    )
    working = [i for i, b in enumerate(ordered) if usable(b, archived)]
    if working:
        reasons[working[-1]].append("the newest base backup with all its WAL in the store")
    decisions = []
    for base, why in zip(ordered, reasons, strict=True):
        if why:
            decisions.append(BaseDecision(base, True, tuple(why)))
        elif paused:
            decisions.append(BaseDecision(base, True, (f"paused: {paused}",)))
        else:
            decisions.append(BaseDecision(base, False, ("outside every retention window",)))
    if paused:
        return WalRetentionPlan(decisions, None, [], [], paused)
    return _with_wal(
        decisions,
        wal_names,
        [key for key, written in orphan_tars if now - written > ORPHAN_AFTER],
    )


def _with_wal(
    decisions: list[BaseDecision], wal_names: list[str], orphans: list[str]
) -> WalRetentionPlan:
    kept = [d.base for d in decisions if d.keep]
    if not kept:  # nothing to recover from is kept: WAL is left alone, not guessed at
        return WalRetentionPlan(decisions, None, [], orphans)
    keep_from = min((Segment.of(b.timeline, b.start) for b in kept), key=lambda s: s.number)
    return WalRetentionPlan(decisions, keep_from, wal_before(wal_names, keep_from), orphans)


def restrict(
    current: WalRetentionPlan,
    wal_names: list[str],
    approved_bases: set[str],
    approved_keep_from: str | None,
    approved_orphans: set[str],
) -> WalRetentionPlan:
    """The plan ``current`` cut down to what an approver saw: base backups it deletes but the
    approval does not list are kept, and WAL goes only before both the approved boundary and
    the one the kept base backups need now (whichever is older)."""
    decisions = [
        d
        if d.keep or d.base.stamp in approved_bases
        else BaseDecision(d.base, True, ("not in the approved plan: ask again to delete it",))
        for d in current.decisions
    ]
    orphans = [o for o in current.orphans if o in approved_orphans]
    narrowed = _with_wal(decisions, wal_names, orphans)
    approved = Segment.parse(approved_keep_from or "")
    if narrowed.keep_from is None or approved is None:
        return WalRetentionPlan(decisions, None, [], orphans)
    if approved.number < narrowed.keep_from.number:
        return WalRetentionPlan(decisions, approved, wal_before(wal_names, approved), orphans)
    return narrowed


def wal_before(wal_names: list[str], keep_from: Segment) -> list[str]:
    """The segments and partial segments numbered before ``keep_from`` (on any timeline), in
    order; never a history file, nor anything that is not a WAL file's name."""
    doomed: list[tuple[int, int, str]] = []
    for name in wal_names:
        if is_history(name):
            continue
        segment = Segment.parse(name.removesuffix(PARTIAL_SUFFIX))
        if segment is not None and segment.number < keep_from.number:
            doomed.append((segment.number, segment.timeline, name))
    return [name for _n, _t, name in sorted(doomed)]
