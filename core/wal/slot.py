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
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.actor import Actor
from core.errors import UsageError
from core.wal.names import SLOT_DROPPED, WAL_DIR

if TYPE_CHECKING:
    from core.audit import AuditLog
    from core.wal.basebackup import BaseBackup, BaseBackupService
    from core.wal.health import SlotState
    from core.wal.receiver import ReceiverThread, WalReceiver

log = logging.getLogger("blnk_backup.wal")

RECREATE, DROP = "recreate", "drop"


def describe(slot: SlotState) -> str:
    """The slot as an approver reads it."""
    if slot.error:
        return f"not readable: {slot.error}"
    if not slot.exists:
        return "there is no such slot"
    state = f"wal_status {slot.wal_status or 'unknown'}"
    if slot.retained_bytes is not None:
        state += f", keeping {slot.retained_bytes / 2**20:,.0f} MiB of WAL"
    if slot.active:
        state += ", in use by a receiver"
    return state


class SlotOperations:
    """Drop or make again the slot of the WAL receiver, audited as ``wal_slot`` runs."""

    def __init__(
        self,
        audit: AuditLog,
        receiver: Callable[[], WalReceiver],
        base_backups: Callable[[], BaseBackupService],
        running_here: Callable[[], ReceiverThread | None],
        slot_state: Callable[[], SlotState],
    ) -> None:
        self.audit = audit
        self.slot_state = slot_state
        self.receiver = receiver
        self.base_backups = base_backups
        self.running_here = running_here

    def plan(self, what: str) -> list[str]:
        """The lines an approver reads for ``what`` (RECREATE or DROP), from the slot as it is
        now. Raise UsageError for anything else."""
        receiver = self.receiver()
        # No host or user: the lines are posted to a channel.
        where = f"slot `{receiver.slot}` on the database"
        now = f"now: {describe(self.slot_state())}"
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
                store = receiver.archive.store
                store.delete_many([f"{store.prefix}{WAL_DIR}{SLOT_DROPPED}"])
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
                # Kept in the bucket, not in this process: no receiver anywhere, after any
                # restart, makes the slot again until `wal-slot recreate`.
                store = receiver.archive.store
                store.put_json(
                    f"{store.prefix}{WAL_DIR}{SLOT_DROPPED}",
                    {
                        "slot": receiver.slot,
                        "by": f"{actor.trigger}:{actor.name}",
                        "dropped_at": datetime.now(UTC).isoformat(),
                        "reason": reason,
                    },
                )
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
