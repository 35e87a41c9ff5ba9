"""The replication slot as something a person acts on: drop it (the primary stops keeping WAL
for the bot: the way out when the slot endangers the primary's disk) or make it again (after it
was lost to ``max_slot_wal_keep_size``, or dropped), each behind an approval.

A slot made again starts at the server's position now: the WAL between the last one the store
holds and that position is gone, so the chain is broken there. Recreating therefore takes a base
backup at once: recovery works again from its end on; the older window stays restorable up to
the last WAL the store holds.

The receiver of this process (the service's leader) is paused around the change; a receiver
elsewhere (``blnk-backup wal-stream``) keeps the slot active, and dropping an active slot is
refused with who holds it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.actor import Actor
from core.errors import UsageError

if TYPE_CHECKING:
    from core.audit import AuditLog
    from core.database import PgTarget
    from core.wal.basebackup import BaseBackup, BaseBackupService
    from core.wal.receiver import ReceiverThread, WalReceiver

log = logging.getLogger("blnk_backup.wal")

RECREATE, DROP = "recreate", "drop"


@dataclass(frozen=True)
class SlotInfo:
    """The slot as pg_replication_slots shows it (readable by any role)."""

    name: str
    active: bool
    active_pid: int | None
    wal_status: str | None  # reserved, extended, unreserved, lost
    retained_bytes: int | None

    def describe(self) -> str:
        state = f"wal_status {self.wal_status or 'unknown'}"
        if self.retained_bytes is not None:
            state += f", keeping {self.retained_bytes / 2**20:,.0f} MiB of WAL"
        if self.active:
            state += f", in use by PID {self.active_pid}"
        return state


def read_slot(source: PgTarget, name: str) -> SlotInfo | None:
    """The slot ``name`` on ``source``, or None when there is none."""
    with source.connect(autocommit=True) as conn:
        row = conn.execute(
            "SELECT active, active_pid, wal_status, "
            "CASE WHEN restart_lsn IS NULL THEN NULL ELSE pg_wal_lsn_diff("
            "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() "
            "ELSE pg_current_wal_lsn() END, restart_lsn)::bigint END "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (name,),
        ).fetchone()
    if row is None:
        return None
    return SlotInfo(name, bool(row[0]), row[1], row[2], int(row[3]) if row[3] is not None else None)


class SlotOperations:
    """Drop or make again the slot of the WAL receiver, audited as ``wal_slot`` runs."""

    def __init__(
        self,
        audit: AuditLog,
        receiver: Callable[[], WalReceiver],
        base_backups: Callable[[], BaseBackupService],
        running_here: Callable[[], ReceiverThread | None],
    ) -> None:
        self.audit = audit
        self.receiver = receiver
        self.base_backups = base_backups
        self.running_here = running_here

    def plan(self, what: str) -> list[str]:
        """The lines an approver reads for ``what`` (RECREATE or DROP), from the slot as it is
        now. Raise UsageError for anything else."""
        receiver = self.receiver()
        slot = read_slot(receiver.source, receiver.slot)
        where = f"slot `{receiver.slot}` on {receiver.source.display}"
        now = f"now: {slot.describe()}" if slot else "now: there is no such slot"
        if what == DROP:
            return [
                f"Drop the replication {where} ({now})",
                "The primary stops keeping WAL for the bot at once. WAL streaming stops here "
                "until the slot is made again (`wal-slot recreate`); the recovery window ends at "
                "the last WAL the store holds",
            ]
        if what == RECREATE:
            return [
                f"Drop the replication {where} if it exists ({now}) and make it again at the "
                "server's position now",
                "Then take a base backup at once: point-in-time recovery works again from its "
                "end; the WAL between the last one in the store and now is not in the store, "
                "so no recovery can reach a time in between",
            ]
        raise UsageError(f"the slot can be dropped or recreated, not {what!r}")

    def recreate(self, actor: Actor, reason: str | None = None) -> BaseBackup:
        """Drop the slot if it exists, make it again, resume streaming, take a base backup."""
        receiver = self.receiver()
        with self.audit.run(
            "wal_slot", actor, reason=reason, details={"do": RECREATE, "slot": receiver.slot}
        ) as run:
            with self._paused(None):
                dropped = receiver.drop_slot()
                receiver.ensure_slot()
                receiver.discard_partials()
            run.note(details={"do": RECREATE, "slot": receiver.slot, "dropped": dropped})
        log.info("replication slot %s made again; taking a base backup", receiver.slot)
        return self.base_backups().run(actor, reason=f"the slot {receiver.slot} was made again")

    def drop(self, actor: Actor, reason: str | None = None) -> bool:
        """Drop the slot and keep this process's receiver stopped until it is recreated.
        Return False if there was no slot."""
        receiver = self.receiver()
        with self.audit.run(
            "wal_slot", actor, reason=reason, details={"do": DROP, "slot": receiver.slot}
        ) as run:
            with self._paused(f"the slot {receiver.slot} was dropped by {actor.name}"):
                dropped = receiver.drop_slot()
            run.note(details={"do": DROP, "slot": receiver.slot, "dropped": dropped})
        return dropped

    @contextlib.contextmanager
    def _paused(self, hold: str | None) -> Iterator[Any]:
        thread = self.running_here()
        if thread is None:
            yield None
            return
        with thread.paused(hold):
            yield thread
