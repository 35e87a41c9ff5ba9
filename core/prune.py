"""Pruning: list, plan (core/retention.py), show the plan, and — only with apply — delete.

Deletes dumps first and their side files last (restore-test records, then manifests), so an
interrupted prune leaves manifests without dumps, which the next prune finishes. Each store
(the primary and, if configured, the replica) is listed and planned on its own with the same
policy and the same clock.

With WAL_ARCHIVE, the same prune plans the base backups and WAL of each store
(core/wal/retention.py) and deletes them after the dumps: each doomed base backup's base.json
first (from then on it is never used), then its base.tar; WAL only once every doomed base
backup is gone, and only before the start of the oldest one kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.audit import Actor, AuditLog, AuditRun
from core.catalog import refuse_newest
from core.config import Settings
from core.errors import PlanChangedError, StorageError, UsageError
from core.keys import BackupKey
from core.redact import MAX_REASON_LENGTH, check_plain_text
from core.retention import Decision, RetentionPlan, RetentionPolicy, plan
from core.store.s3 import S3Store
from core.wal.archive import ArchivedWal, WalArchive
from core.wal.basebackup import base_inventory
from core.wal.names import WAL_DIR, base_key
from core.wal.retention import WalRetentionPlan, plan_wal, restrict

log = logging.getLogger("blnk_backup.prune")


def policy_from(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy(
        daily_days=settings.retention_daily_days,
        weekly_days=settings.retention_weekly_days,
        monthly_days=settings.retention_monthly_days,
        min_keep=settings.retention_min_keep,
        stale_after_hours=settings.stale_after_hours,
    )


@dataclass
class PruneReport:
    location: str
    plan: RetentionPlan
    applied: bool
    # dumps that are not complete backups (no manifest, an unreadable or mismatched one), with
    # the reason: never planned, never deleted
    incomplete: dict[str, str] = field(default_factory=dict)
    orphan_side_files: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # point-in-time recovery's base backups and WAL (WAL_ARCHIVE), None when off
    wal: WalRetentionPlan | None = None
    bases_deleted: list[str] = field(default_factory=list)  # stamps
    wal_deleted: int = 0
    wal_names: tuple[str, ...] = ()  # what wal/ held when planned


_NO_WAL = ArchivedWal([], None, [], None)

# At most this many dumps (and side files) per approval request: every one of them is listed
# on the request an approver reads; a bigger plan is approved in turns, oldest first.
MAX_APPROVED_DELETIONS = 100


def plan_for_approval(reports: list[PruneReport]) -> tuple[dict[str, Any], list[str]]:
    """Given dry-run reports, return what an approval records — per store, the exact dumps to
    delete and the side files of dumps already gone, at most MAX_APPROVED_DELETIONS, oldest
    first — and the lines the approver reads: every store's counts first, then every item the
    approval covers, each one shown. Raise UsageError if there is nothing to delete."""
    if not any(
        r.plan.to_delete or r.orphan_side_files or (r.wal and r.wal.deletes_anything)
        for r in reports
    ):
        raise UsageError("the retention plan deletes nothing: there is nothing to approve")
    room = MAX_APPROVED_DELETIONS
    stores: dict[str, dict[str, Any]] = {}
    for report in reports:
        doomed = [k.key for k in report.plan.to_delete][:room]
        room -= len(doomed)
        side_files = list(report.orphan_side_files)[:room]
        room -= len(side_files)
        stores[report.location] = {"delete": doomed, "side_files": side_files}
        if report.wal is not None:
            stores[report.location] |= _wal_for_approval(report.wal)
    lines = []
    for report in reports:
        chosen = stores[report.location]
        planned = len(report.plan.to_delete)
        count = f"{report.location}: delete {len(chosen['delete']):,}"
        if len(chosen["delete"]) < planned:
            count += f" of the {planned:,} the plan deletes (the oldest; ask again for the rest)"
        lines.append(f"{count}, keep {len(report.plan.to_keep):,}")
        if report.plan.paused:
            lines.append(f"{report.location}: paused ({report.plan.paused})")
        if report.wal is not None:
            lines.append(f"{report.location}: {wal_summary(report.wal)}")
    for report in reports:
        chosen = stores[report.location]
        lines += [f"• {report.location}: delete `{k}`" for k in chosen["delete"]]
        lines += [
            f"• {report.location}: remove `{f}` (its dump is gone)" for f in chosen["side_files"]
        ]
        lines += [
            f"• {report.location}: delete base backup `{stamp}`" for stamp in chosen.get("base", [])
        ]
        lines += [
            f"• {report.location}: remove `{o}` (no base.json: never usable)"
            for o in chosen.get("orphan_bases", [])
        ]
        if chosen.get("wal_before"):
            lines.append(
                f"• {report.location}: delete the WAL before segment `{chosen['wal_before']}`"
            )
    lines.append("Exactly these are deleted, or nothing if the plan has changed by then.")
    return {"stores": stores}, lines


def _wal_for_approval(wal: WalRetentionPlan) -> dict[str, Any]:
    """What an approval records of a store's base backups and WAL: the base backups by stamp,
    the orphaned base.tar keys, and the WAL boundary (segments numbered before it go)."""
    return {
        "base": [b.stamp for b in wal.to_delete][:MAX_APPROVED_DELETIONS],
        "orphan_bases": wal.orphans[:MAX_APPROVED_DELETIONS],
        "wal_before": wal.keep_from.name if wal.keep_from and wal.wal_to_delete else None,
    }


def wal_summary(wal: WalRetentionPlan) -> str:
    """One line: what the plan does to the base backups and WAL of a store."""
    if wal.paused:
        return f"base backups and WAL: paused ({wal.paused})"
    text = f"base backups: delete {len(wal.to_delete):,}, keep {len(wal.to_keep):,}"
    if wal.orphans:
        text += f", remove {len(wal.orphans):,} without base.json"
    if wal.wal_to_delete and wal.keep_from is not None:
        text += (
            f"; WAL: delete {len(wal.wal_to_delete):,} files before "
            f"{wal.keep_from.name} (the start of the oldest base backup kept)"
        )
    elif wal.keep_from is not None:
        text += f"; WAL: all kept (from {wal.keep_from.name})"
    else:
        text += "; WAL: all kept"
    return text


class PruneService:
    def __init__(
        self,
        settings: Settings,
        stores: list[S3Store],
        audit: AuditLog,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.audit = audit
        self.clock = clock

    def prune(
        self, actor: Actor, *, apply: bool = False, reason: str | None = None
    ) -> list[PruneReport]:
        """Plan retention for every store; delete only with apply. Return one report per store.

        A store whose listing fails gets a paused plan (nothing deleted) and an error. Audited
        as one ``prune`` run: ``planned`` for a dry run, ``failed`` if anything could not be
        listed or deleted."""
        reason = check_plain_text("reason", reason, MAX_REASON_LENGTH)
        now = self.clock()
        policy = policy_from(self.settings)
        with self.audit.run("prune", actor, reason=reason, details={"apply": apply}) as run:
            reports = [self._prune_store(store, policy, now, apply) for store in self.stores]
            self._close(run, reports, dry_run=not apply)
        return reports

    def apply_approved(
        self, actor: Actor, approved: dict[str, Any], reason: str | None = None
    ) -> list[PruneReport]:
        """Delete exactly what an approved plan (``plan_for_approval``) lists, or nothing.

        Every store is listed and planned again first: if any approved backup is no longer
        one the retention plan deletes (it is now among the newest, the plan is paused, it
        is gone or incomplete, the stores changed), nothing is deleted and PlanChangedError
        says why. Backups the plan would delete now but the approver never saw are kept.
        Audited as one ``prune`` run."""
        reason = check_plain_text("reason", reason, MAX_REASON_LENGTH)
        wanted = approved.get("stores")
        now = self.clock()
        policy = policy_from(self.settings)
        with self.audit.run(
            "prune", actor, reason=reason, details={"apply": True, "approved_plan": wanted}
        ) as run:
            if not isinstance(wanted, dict) or not all(
                isinstance(v, dict) for v in wanted.values()
            ):
                raise PlanChangedError(
                    "this request does not record an exact plan (it was made by an older "
                    "version): nothing was deleted; ask again"
                )
            stores = {store.location: store for store in self.stores}
            if set(wanted) - set(stores):
                raise PlanChangedError(
                    "the configured stores changed since the request (now "
                    f"{', '.join(stores)}): nothing was deleted; ask again"
                )
            checked = [
                self._check_still_planned(store, wanted.get(location, {}), policy, now)
                for location, store in stores.items()
            ]
            problems = [p for _s, _p, _k, found in checked for p in found]
            if problems:
                raise PlanChangedError(
                    "the retention plan changed since it was approved, so nothing was "
                    "deleted: " + "; ".join(problems) + ". Ask again to see the new plan."
                )
            reports = []
            for store, current, keys, _found in checked:
                approved_here = wanted.get(store.location, {})
                side_files = [str(f) for f in approved_here.get("side_files", [])]
                reports.append(self._delete_approved(store, current, keys, side_files))
                if current.wal is not None and not current.errors:
                    current.wal = restrict(
                        current.wal,
                        list(current.wal_names),
                        {str(b) for b in approved_here.get("base", [])},
                        approved_here.get("wal_before"),
                        {str(o) for o in approved_here.get("orphan_bases", [])},
                    )
                    self._delete_wal(store, current, current.wal)
            self._close(run, reports, dry_run=False)
        return reports

    def _check_still_planned(
        self, store: S3Store, approved: dict[str, Any], policy: RetentionPolicy, now: datetime
    ) -> tuple[S3Store, PruneReport, list[BackupKey], list[str]]:
        """List and plan ``store`` now; return its report, the approved keys, and why each
        approved key (or base backup) is no longer one the plan deletes (empty when all
        still are)."""
        keys = [str(k) for k in approved.get("delete", [])]
        try:
            inventory = store.listing.inventory()
        except StorageError as exc:
            raise PlanChangedError(
                f"{store.location} could not be listed ({exc}): nothing was deleted"
            ) from None
        complete = [b.key for b in inventory.backups if b.complete]
        current = plan(complete, policy, now)
        report = PruneReport(
            store.location,
            current,
            True,
            orphan_side_files=list(inventory.orphan_side_files),
        )
        decisions = {d.key.key: d for d in current.decisions}
        present = {b.key.key: b for b in inventory.backups}
        problems = []
        parsed = []
        for raw in keys:
            decision = decisions.get(raw)
            if decision is not None and not decision.keep:
                parsed.append(decision.key)
                continue
            if decision is not None:
                why = f"is kept now ({'; '.join(decision.reasons)})"
            elif raw in present:
                why = f"is not a complete backup now ({present[raw].problem})"
            else:
                why = "no longer exists"
            problems.append(f"{store.location}{raw.removeprefix(store.prefix)} {why}")
        report.wal = self._plan_wal(store, report, policy, now)
        if report.errors:
            problems += [f"{store.location}: {e}" for e in report.errors]
        elif report.wal is not None:
            doomed = {b.stamp for b in report.wal.to_delete}
            kept = {d.base.stamp: d for d in report.wal.decisions if d.keep}
            for stamp in [str(b) for b in approved.get("base", [])]:
                if stamp in doomed:
                    continue
                why = (
                    f"is kept now ({'; '.join(kept[stamp].reasons)})"
                    if stamp in kept
                    else "no longer exists"
                )
                problems.append(f"{store.location}: base backup {stamp} {why}")
        return store, report, parsed, problems

    def _delete_approved(
        self, store: S3Store, report: PruneReport, keys: list[BackupKey], side_files: list[str]
    ) -> PruneReport:
        """Delete exactly ``keys`` (all still planned for deletion) and the approved side
        files whose dump is still gone; the plan shown keeps everything else."""
        approved = set(keys)
        decisions = [
            d
            if d.keep or d.key in approved
            else Decision(d.key, True, ("not in the approved plan: ask again to delete it",))
            for d in report.plan.decisions
        ]
        report.plan = RetentionPlan(decisions, report.plan.paused)
        orphans = [f for f in side_files if f in set(report.orphan_side_files)]
        report.orphan_side_files = orphans
        self._delete(store, report, keys, orphans)
        return report

    def _close(self, run: AuditRun, reports: list[PruneReport], *, dry_run: bool) -> None:
        errors = [e for r in reports for e in r.errors]
        run.note(
            details=[
                {
                    "store": r.location,
                    "paused": r.plan.paused,
                    "keep": len(r.plan.to_keep),
                    "delete": [k.key for k in r.plan.to_delete][:500],
                    "deleted": r.deleted[:500],
                    "incomplete": {k: v[:300] for k, v in list(r.incomplete.items())[:100]},
                }
                | (
                    {
                        "base_backups": wal_summary(r.wal),
                        "bases_deleted": r.bases_deleted,
                        "wal_deleted": r.wal_deleted,
                    }
                    if r.wal is not None
                    else {}
                )
                for r in reports
            ]
        )
        if errors:
            run.end("failed", error_code="prune_incomplete", error_cause="; ".join(errors))
        elif dry_run:
            run.end("planned")

    def _prune_store(
        self, store: S3Store, policy: RetentionPolicy, now: datetime, apply: bool
    ) -> PruneReport:
        try:
            inventory = store.listing.inventory()
        except StorageError as exc:
            paused = plan([], policy, now, listing_complete=False)
            return PruneReport(store.location, paused, apply, errors=[f"listing failed: {exc}"])
        complete = [b.key for b in inventory.backups if b.complete]
        decided = plan(complete, policy, now)
        report = PruneReport(
            store.location,
            decided,
            apply,
            incomplete={b.key.key: b.problem or "" for b in inventory.backups if not b.complete},
            orphan_side_files=list(inventory.orphan_side_files),
        )
        report.wal = self._plan_wal(store, report, policy, now)
        if not apply:
            return report
        if not decided.paused:
            self._delete(store, report, decided.to_delete, report.orphan_side_files)
        if report.wal is not None:
            self._delete_wal(store, report, report.wal)
        return report

    def _plan_wal(
        self, store: S3Store, report: PruneReport, policy: RetentionPolicy, now: datetime
    ) -> WalRetentionPlan | None:
        """The base backups and WAL plan of ``store`` (None unless WAL_ARCHIVE); a listing
        that fails pauses it and is reported."""
        if not self.settings.wal_archive:
            return None
        try:
            bases, orphans = base_inventory(store)
            archived = WalArchive(store).listing()
        except StorageError as exc:
            report.errors.append(f"listing base backups and WAL failed: {exc}")
            return plan_wal([], [], _NO_WAL, [], policy, now, listing_complete=False)
        report.wal_names = archived.names
        return plan_wal(bases, list(archived.names), archived, orphans, policy, now)

    @staticmethod
    def _delete_wal(store: S3Store, report: PruneReport, wal: WalRetentionPlan) -> None:
        """Delete the doomed base backups (base.json first: from then on it is never used),
        the orphaned base.tar files, then — only if every doomed base backup is gone — the
        WAL before the oldest one kept."""
        failed_any = False
        for base in wal.to_delete:
            failed = store.delete_many([base_key(store.prefix, base.stamp, "base.json")])
            failed = failed or store.delete_many([base.key])
            if failed:
                failed_any = True
                report.errors += failed
                continue
            report.bases_deleted.append(base.stamp)
            log.info("pruned base backup %s from %s", base.stamp, store.location)
        report.errors += store.delete_many(wal.orphans)
        if failed_any or not wal.wal_to_delete:
            return
        keys = [f"{store.prefix}{WAL_DIR}{name}" for name in wal.wal_to_delete]
        failed = store.delete_many(keys)
        report.errors += failed
        report.wal_deleted = len(keys) - len(failed)
        log.info("pruned %s WAL files from %s", report.wal_deleted, store.location)

    @staticmethod
    def _delete(
        store: S3Store, report: PruneReport, doomed: list[BackupKey], side_files: list[str]
    ) -> None:
        """Delete the dumps ``doomed``, then their side files and ``side_files`` (those of
        dumps already gone), manifests last: a prune cut short is finished next time."""
        failed_dumps = store.delete_many([k.key for k in doomed])
        report.errors += failed_dumps
        failed = {e.split(":")[0] for e in failed_dumps}
        gone = [k for k in doomed if k.key not in failed]
        report.deleted = [k.key for k in gone]
        records = [k.restore_test_key for k in gone] + [
            f for f in side_files if not f.endswith(".manifest.json")
        ]
        manifests = [k.manifest_key for k in gone] + [
            f for f in side_files if f.endswith(".manifest.json")
        ]
        report.errors += store.delete_many(records)
        report.errors += store.delete_many(manifests)
        for key in report.deleted:
            log.info("pruned %s from %s", key, store.location)

    def delete_one(self, actor: Actor, which: str) -> list[str]:
        """Delete one backup from every store: the dump first, then its restore-test record,
        the manifest last (a delete cut short is finished by the next prune). Return the keys
        deleted. Raise UsageError for a key that is not a backup here, or for the newest
        complete backup (never deleted by hand). Audited as one ``delete`` run."""
        with self.audit.run("delete", actor, key=which) as run:
            primary = self.stores[0]
            key = BackupKey.parse_or_raise(which, primary.prefix)
            run.note(key=key.key)
            refuse_newest(key, primary.listing.backups())
            deleted: list[str] = []
            found = False
            for store in self.stores:
                if store.head(key.key) is None and store.head(key.manifest_key) is None:
                    continue
                found = True
                for batch in ([key.key], [key.restore_test_key], [key.manifest_key]):
                    failed = store.delete_many(batch)
                    if failed:
                        raise StorageError(f"deleting from {store.location}: {failed[0]}")
                deleted.append(f"{store.location}{key.name}")
            if not found:
                raise UsageError(f"{key} does not exist in {primary.location}")
            run.note(details={"deleted": deleted})
        return deleted
