"""Risky operations: each is planned into one ``ApprovalPlan`` (what will happen, exactly, for
the approver to read) and, once a second person approved it, executed as exactly that plan or
not at all.

Front ends (Slack, the console) only choose the operation and its arguments, show the plan and
record the request (core/approvals.py); everything about what an operation may do lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.catalog import refuse_newest, resolve
from core.errors import EngineError, UsageError
from core.keys import BackupKey

if TYPE_CHECKING:
    from core.actor import Actor
    from core.services import Services

# The operations that need a second person's approval: the action an approval records.
DELETE, PRUNE_APPLY, BUCKET_APPLY, RESTORE = "delete", "prune_apply", "bucket_apply", "restore"
RESTORE_AT = "restore_at"  # a point-in-time recovery into a new database
WAL_SLOT_RECREATE, WAL_SLOT_DROP = "wal_slot_recreate", "wal_slot_drop"
RISKY_ACTIONS = (
    DELETE,
    PRUNE_APPLY,
    BUCKET_APPLY,
    RESTORE,
    RESTORE_AT,
    WAL_SLOT_RECREATE,
    WAL_SLOT_DROP,
)


@dataclass(frozen=True)
class ApprovalPlan:
    """What an approval is asked for: the action, the exact parameters its execution is bound
    to, and the lines the approver reads."""

    action: str
    params: dict[str, Any]
    summary: list[str]


class RiskyOperations:
    """Plans and executes the operations in RISKY_ACTIONS on one ``Services``."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._planners: dict[str, Callable[[Actor, str | None, str | None], ApprovalPlan]] = {
            RESTORE_AT: lambda _actor, at, into: self._plan_restore_at(
                _required(at, "a time"), _required(into, "a new database's name")
            ),
            DELETE: lambda _actor, key, _into: self._plan_delete(_required(key, "a key")),
            PRUNE_APPLY: lambda actor, _key, _into: self._plan_prune(actor),
            BUCKET_APPLY: lambda _actor, _key, _into: self._plan_bucket_apply(),
            RESTORE: lambda _actor, key, into: self._plan_restore(
                _required(key, "a key"), _required(into, "a new database's name")
            ),
            WAL_SLOT_RECREATE: lambda _actor, _key, _into: self._plan_slot(WAL_SLOT_RECREATE),
            WAL_SLOT_DROP: lambda _actor, _key, _into: self._plan_slot(WAL_SLOT_DROP),
        }
        self._executors: dict[str, Callable[[Actor, dict[str, Any], str | None], str]] = {
            DELETE: self._delete,
            PRUNE_APPLY: self._prune,
            BUCKET_APPLY: self._bucket_apply,
            RESTORE: self._restore,
            RESTORE_AT: self._restore_at,
            WAL_SLOT_RECREATE: self._slot_recreate,
            WAL_SLOT_DROP: self._slot_drop,
        }

    # --- planning -------------------------------------------------------------------------------
    def plan(
        self,
        action: str,
        actor: Actor,
        *,
        key: str | None = None,
        into: str | None = None,
        at: str | None = None,
    ) -> ApprovalPlan:
        """Work out exactly what ``action`` would do now. Raise UsageError (or another refusal)
        for what it would refuse after the approval anyway: nobody is asked to approve it."""
        planner = self._planners.get(action)
        if planner is None:
            raise UsageError(f"{action} needs no approval")
        return planner(actor, at if action == RESTORE_AT else key, into)

    def _plan_restore_at(self, at: str, into: str) -> ApprovalPlan:
        """Refuse now a time outside the recoverable window and a name the recovery would
        refuse; the approval is for exactly that time."""
        from core.wal.recovery import LATEST, parse_target

        if not self.services.settings.wal_archive:
            raise UsageError("point-in-time recovery needs WAL_ARCHIVE=true")
        target = parse_target(at)
        server = self.services.target
        self.services.restores.check_target(into, server)
        base = self.services.pitr.check_target(target)
        self.services.restores.check_target_free(into, server)
        if target is None:
            at, what = LATEST, "at the newest point in the store (the end of the archived WAL)"
        else:
            at, what = target.isoformat(), f"as it was at {at} (the last commit before it)"
        return ApprovalPlan(
            RESTORE_AT,
            {"at": at, "into": into},
            [
                f"Recover the ledger {what} from base backup `{base.key}` and the WAL after "
                "it, in a scratch cluster",
                f"Prove the ledger there, then create the new database `{into}` beside the "
                f"source database `{server.dbname}` with it; the source is not touched",
            ],
        )

    def _plan_slot(self, action: str) -> ApprovalPlan:
        from core.wal.slot import DROP, RECREATE

        if not self.services.settings.wal_archive:
            raise UsageError("the replication slot is WAL_ARCHIVE's: it is off")
        slots = self.services.wal_slots
        return ApprovalPlan(
            action,
            {"slot": self.services.settings.wal_slot_name},
            slots.plan(RECREATE if action == WAL_SLOT_RECREATE else DROP),
        )

    def _plan_delete(self, which: str) -> ApprovalPlan:
        store = self.services.store
        key = BackupKey.parse_or_raise(which, store.prefix)
        found = store.listing.find(key)
        if found is None:
            raise UsageError(f"{key} does not exist in {store.location}")
        refuse_newest(key, store.listing.backups())
        where = ", ".join(s.location for s in self.services.stores)
        return ApprovalPlan(
            DELETE,
            {"key": key.key},
            [f"Delete backup `{key.key}` ({found.size:,} bytes) from {where}"],
        )

    def _plan_prune(self, actor: Actor) -> ApprovalPlan:
        from core.prune import plan_for_approval

        params, lines = plan_for_approval(self.services.pruner.prune(actor, apply=False))
        return ApprovalPlan(PRUNE_APPLY, params, lines)

    def _plan_bucket_apply(self) -> ApprovalPlan:
        from core.bucket_policy import approval_params

        results = self.services.bucket_policies.check()
        lines = [
            f"{r.location}: set {item.name} to {item.recommended} (now {item.current})"
            for r in results
            for item in r.items
            if not item.ok and not item.unsupported
        ]
        if not lines:
            raise UsageError("every bucket already has the recommended settings")
        lines.append("Exactly these are changed, or nothing if a bucket has changed by then.")
        return ApprovalPlan(BUCKET_APPLY, approval_params(results), lines)

    def _plan_restore(self, which: str, into: str) -> ApprovalPlan:
        """Refuse now what the restore would refuse after the approval (a name in use, the
        source database, ...); pin ``latest`` to a key and the key to its SHA-256, so the
        approver approves one backup's content. The restore checks it all again when it
        runs."""
        server = self.services.target  # restores land beside the source, on its server
        restores = self.services.restores
        restores.check_target(into, server)  # core's naming rules, without asking the server
        backup, _listing = resolve(self.services.store, which)
        restores.check_target_free(into, server)
        assert backup.manifest is not None  # resolve returns complete backups only
        return ApprovalPlan(
            RESTORE,
            {"key": backup.key.key, "into": into, "sha256": backup.manifest.sha256},
            [
                f"Create the new database `{into}` beside the source database "
                f"`{server.dbname}`, on its server",
                f"Restore backup `{backup.key.key}` into it (verified download, pg_restore), "
                "then check it; the source database is not touched",
                f"Exactly this backup's content: SHA-256 `{backup.manifest.sha256}`",
            ],
        )

    # --- execution ------------------------------------------------------------------------------
    def execute(self, action: str, actor: Actor, params: dict[str, Any], reason: str | None) -> str:
        """Do exactly what was approved (``params`` as planned) for ``actor``, who asked for it;
        return one line saying what was done. Raise a EngineError when it failed or when the
        world changed so that the plan is no longer safe (PlanChangedError: nothing done)."""
        executor = self._executors.get(action)
        if executor is None:
            raise EngineError(f"unknown approved action {action!r}")
        return executor(actor, params, reason)

    def _delete(self, actor: Actor, params: dict[str, Any], _reason: str | None) -> str:
        deleted = self.services.pruner.delete_one(actor, params["key"])
        return f"deleted {params['key']} from {len(deleted)} store(s)"

    def _prune(self, actor: Actor, params: dict[str, Any], reason: str | None) -> str:
        reports = self.services.pruner.apply_approved(actor, params, reason)
        errors = [e for r in reports for e in r.errors]
        if errors:
            raise EngineError("; ".join(errors))
        return f"deleted {sum(len(r.deleted) for r in reports)} backup(s)"

    def _bucket_apply(self, actor: Actor, params: dict[str, Any], reason: str | None) -> str:
        results = self.services.bucket_policies.apply(actor, reason, approved=params)
        approved = {
            (location, item.get("name"))
            for location, items in params["stores"].items()
            for item in items
        }
        left = [
            f"{r.location}: {i.name} is still {i.current}"
            for r in results
            for i in r.items
            if (r.location, i.name) in approved and not i.ok and not i.unsupported
        ]
        errors = [e for r in results for e in r.errors] + left
        if errors:
            raise EngineError("; ".join(errors))
        return "bucket policies applied"

    def _restore(self, actor: Actor, params: dict[str, Any], reason: str | None) -> str:
        report = self.services.restores.restore(
            actor,
            params["key"],
            params["into"],
            self.services.target,
            reason=reason,
            expected_sha256=params.get("sha256"),
        )
        verdict = "all checks passed" if report.passed else "some checks FAILED"
        return f"restored {report.key} into {report.database!r}: {verdict}"

    def _restore_at(self, actor: Actor, params: dict[str, Any], reason: str | None) -> str:
        from core.wal.recovery import parse_target

        result = self.services.pitr.recover(
            actor,
            parse_target(params["at"]),
            into=params["into"],
            server=self.services.target,
            reason=reason,
        )
        verdict = "ledger proven" if result.passed else "the ledger proof FAILED"
        when = result.last_transaction_at.isoformat() if result.last_transaction_at else "?"
        return (
            f"recovered to {params['at']} (last transaction at {when}) into "
            f"{params['into']!r} in {result.seconds:,.0f} s: {verdict}"
        )

    def _slot_recreate(self, actor: Actor, params: dict[str, Any], reason: str | None) -> str:
        self._same_slot(params)
        base = self.services.wal_slots.recreate(actor, reason)
        return (
            f"the replication slot {params['slot']} was made again and base backup "
            f"{base.key} taken: point-in-time recovery works from {base.finished.isoformat()}"
        )

    def _slot_drop(self, actor: Actor, params: dict[str, Any], reason: str | None) -> str:
        self._same_slot(params)
        if not self.services.wal_slots.drop(actor, reason):
            return f"there was no replication slot {params['slot']}: nothing to drop"
        return (
            f"the replication slot {params['slot']} was dropped: the primary keeps no WAL for "
            "the bot, and WAL streaming here stays stopped until the slot is recreated"
        )

    def _same_slot(self, params: dict[str, Any]) -> None:
        from core.errors import PlanChangedError

        if params.get("slot") != self.services.settings.wal_slot_name:
            raise PlanChangedError(
                f"the approval was for slot {params.get('slot')!r}, the bot now uses "
                f"{self.services.settings.wal_slot_name!r}: nothing was done; ask again"
            )


def _required(value: str | None, what: str) -> str:
    if not value:
        raise UsageError(f"{what} is needed")
    return value
