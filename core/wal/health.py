"""The health of continuous protection, and what the on-call person does about it.

One reading (``WalHealth.check``) gathers what decides whether the ledger can be recovered to a
recent second: the recoverable window and its lag (from the bucket), the replication slot as the
database sees it (``pg_replication_slots``, readable by any role, over a normal connection to
the replication source), when the receiver last refreshed ``wal/position.json``, the WAL
segments missing from the archive since the newest usable base backup began, and the last base
backup. ``WalStatus.problems`` turns that into problems, each with a concrete next step:

    wal_lag              the recovery point is older than WAL_MAX_LAG_SECONDS
    no_recovery_window   no base backup with its WAL: nothing is recoverable to a time
    slot_retention       the slot keeps WAL_SLOT_ALERT_SHARE of max_slot_wal_keep_size (or, with
                         no cap, WAL_SLOT_ALERT_BYTES): the primary's disk is at stake, or the
                         slot is about to be invalidated
    receiver_down        position.json not refreshed for WAL_RECEIVER_DOWN_MINUTES and the slot
                         not active
    chain_broken         the slot was invalidated (wal_status lost) or segments are missing: no
                         recovery past the break until the slot is recreated and a new base
                         backup is taken

Free space on the database host cannot be read over a connection without superuser (or
pg_monitor and a file-reading function), so an uncapped slot is judged by its size alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from core.database import PgTarget
from core.errors import EngineError, StorageError
from core.redact import first_line, mask, neutralise
from core.wal.archive import WalArchive
from core.wal.basebackup import BaseBackupService
from core.wal.names import SLOT_DROPPED, WAL_DIR, Segment
from core.wal.receiver import POSITION

if TYPE_CHECKING:
    from core.config import Settings
    from core.store.s3 import S3Store
    from core.wal.recovery import RecoverableWindow

ProblemCode = Literal[
    "wal_lag",
    "no_recovery_window",
    "slot_retention",
    "receiver_down",
    "chain_broken",
    "slot_dropped",
    "store_unreadable",
]
PROBLEM_CODES: tuple[ProblemCode, ...] = (
    "chain_broken",
    "slot_dropped",
    "store_unreadable",
    "no_recovery_window",
    "receiver_down",
    "slot_retention",
    "wal_lag",
)  # the order problems are listed in: the most serious first
FIRST_READING_WAIT = 30.0  # seconds a caller waits for the very first reading another makes
SLOT_QUERY_TIMEOUT_MS = 5000

# What the on-call person runs. The slot commands are /blnk-backups wal-slot recreate in Slack
# (behind an approval) and blnk-backup wal-slot recreate on the command line (core/wal/slot.py).
RECREATE = (
    "recreate the slot, which takes a base backup at once: `/blnk-backups wal-slot recreate` "
    "in Slack (or `blnk-backup wal-slot recreate --yes`)"
)
START_RECEIVER = (
    "restart `blnk-backup-bot` (its leader runs the receiver), or run "
    "`blnk-backup -v wal-stream` on the bot's host: it shows why the receiver stops"
)


@dataclass(frozen=True)
class WalLimits:
    """The thresholds the problems are judged by (from the settings)."""

    max_lag_seconds: float = 60.0
    slot_alert_share: float = 0.8
    slot_alert_bytes: int = 8 << 30
    receiver_down_minutes: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WalLimits:
        return cls(
            max_lag_seconds=settings.wal_max_lag_seconds,
            slot_alert_share=settings.wal_slot_alert_share,
            slot_alert_bytes=settings.wal_slot_alert_bytes,
            receiver_down_minutes=settings.wal_receiver_down_minutes,
        )


@dataclass(frozen=True)
class SlotState:
    """The replication slot as the database reports it, or why it could not be read (``error``:
    no password in it; hosts and users are for the terminal only, Slack scrubs them)."""

    name: str
    exists: bool | None  # None: not known (the database could not be asked)
    active: bool | None = None
    wal_status: str | None = None  # reserved, extended, unreserved, lost (None: never reserved)
    retained_bytes: int | None = None  # current WAL position - restart_lsn
    safe_wal_size: int | None = None  # bytes written before the slot is in danger of being lost
    max_keep_bytes: int | None = None  # max_slot_wal_keep_size in bytes; None: uncapped (-1)
    error: str | None = None

    @property
    def retained_share(self) -> float | None:
        """The share of max_slot_wal_keep_size the slot keeps (None: uncapped or unknown)."""
        if self.retained_bytes is None or not self.max_keep_bytes:
            return None
        return self.retained_bytes / self.max_keep_bytes

    @property
    def lost(self) -> bool:
        return self.wal_status == "lost"


@dataclass(frozen=True)
class WalProblem:
    """Something that endangers point-in-time recovery or the primary: its ``code`` (stable:
    health checks and scripts use it), what is wrong and what to do next."""

    code: ProblemCode
    message: str
    next_step: str


@dataclass(frozen=True)
class WalStatus:
    """One reading of continuous protection's health. Ages (the lag, the receiver's) are
    counted to the moment they are asked for, so a cached reading still ages."""

    window: RecoverableWindow
    slot: SlotState
    receiver_last_seen: datetime | None  # wal/position.json's shipped_at
    gaps: tuple[Segment, ...]  # missing since the newest usable base backup's start
    checked_at: datetime
    limits: WalLimits = field(default_factory=WalLimits)
    dropped: str | None = None  # the slot was dropped on purpose: by whom, when, why
    store_error: str | None = None  # the bucket could not be read (the rest is the slot's)

    @property
    def last_base_backup(self) -> datetime | None:
        return self.window.last_base_backup

    @property
    def recovery_point_lag_seconds(self) -> float | None:
        """How far behind now the newest recoverable point is (None: nothing recoverable)."""
        return self.window.lag_seconds()

    def lag_seconds(self, now: datetime | None = None) -> float | None:
        return self.window.lag_seconds(now)

    @property
    def chain_broken(self) -> bool:
        """WAL is missing: the slot was invalidated, or the archive has a gap."""
        return self.slot.lost or bool(self.gaps)

    def receiver_age_seconds(self, now: datetime | None = None) -> float | None:
        if self.receiver_last_seen is None:
            return None
        return max(0.0, ((now or datetime.now(UTC)) - self.receiver_last_seen).total_seconds())

    def problems(self, now: datetime | None = None) -> list[WalProblem]:
        """What needs the on-call person now, the most serious first."""
        now = now or datetime.now(UTC)
        if self.store_error is not None:
            # Only the slot can be judged; the rest would be guesses about the bucket.
            found = [
                WalProblem(
                    "store_unreadable",
                    f"the bucket cannot be read ({self.store_error}): WAL waits in the spool "
                    "while the slot keeps it on the database host",
                    "check the bucket and the credentials (`blnk-backup status` says what the "
                    "store answers); watch the slot's retained WAL meanwhile",
                ),
                *self._retention(),
            ]
        elif self.dropped is not None:
            found = [
                WalProblem(
                    "slot_dropped",
                    f"the slot {self.slot.name} was dropped on purpose ({self.dropped}): no "
                    "WAL is streamed and the primary keeps none for the bot; recovery ends at "
                    "the last WAL in the store",
                    "once the database can keep WAL again: " + RECREATE,
                ),
                *self._window(now),
            ]
        else:
            found = [
                *self._chain(),
                *self._window(now),
                *self._receiver(now),
                *self._retention(),
            ]
        return sorted(found, key=lambda p: PROBLEM_CODES.index(p.code))

    # --- the rules ----------------------------------------------------------------------------
    def _window(self, now: datetime) -> list[WalProblem]:
        lag = self.lag_seconds(now)
        if lag is None:
            return [
                WalProblem(
                    "no_recovery_window",
                    "nothing can be recovered to a point in time: no base backup with its WAL "
                    "in the bucket",
                    "take a base backup while the receiver runs: `blnk-backup base-backup`",
                )
            ]
        if lag > self.limits.max_lag_seconds:
            return [
                WalProblem(
                    "wal_lag",
                    f"the newest recoverable point is {_age(lag)} old "
                    f"(WAL_MAX_LAG_SECONDS={self.limits.max_lag_seconds:g})",
                    "look for the receiver's errors in the bot's log (`blnk_backup.wal`) and "
                    "check the bucket and the database; if the receiver is down, " + START_RECEIVER,
                )
            ]
        return []

    def _receiver(self, now: datetime) -> list[WalProblem]:
        age = self.receiver_age_seconds(now)
        if age is not None and age < self.limits.receiver_down_minutes * 60:
            return []
        if self.slot.active:
            return []  # something streams from the slot: the position file lags, not WAL
        seen = f"was last seen {_age(age)} ago" if age is not None else "has never shipped WAL"
        if self.slot.exists is False:
            slot = f"the slot {self.slot.name} does not exist"
        elif self.slot.exists is None:
            slot = f"the slot {self.slot.name} could not be read"
        else:
            slot = f"the slot {self.slot.name} is not active"
        return [
            WalProblem(
                "receiver_down",
                f"the WAL receiver {seen} (WAL_RECEIVER_DOWN_MINUTES="
                f"{self.limits.receiver_down_minutes:g}) and {slot}",
                START_RECEIVER,
            )
        ]

    def _retention(self) -> list[WalProblem]:
        slot = self.slot
        retained = slot.retained_bytes
        if retained is None or slot.lost:
            return []
        if slot.max_keep_bytes is not None:
            cap = slot.max_keep_bytes
            share = retained / cap if cap else float(retained > 0)  # a cap of 0 keeps nothing
            if share < self.limits.slot_alert_share:
                return []
            return [
                WalProblem(
                    "slot_retention",
                    f"the slot {slot.name} keeps {_size(retained)} of WAL on the database "
                    f"host, {share:.0%} of max_slot_wal_keep_size ({_size(cap)}"
                    f"; WAL_SLOT_ALERT_SHARE={self.limits.slot_alert_share:g}): at 100% "
                    "PostgreSQL invalidates it and the chain breaks",
                    "get the receiver streaming so that the slot lets go of WAL (`blnk-backup "
                    "-v wal-stream` shows why it stops); if it cannot catch up before the "
                    "cap, the slot is lost: then recreate it (`/blnk-backups wal-slot recreate`, "
                    "which takes a base backup)",
                )
            ]
        if retained < self.limits.slot_alert_bytes:
            return []
        return [
            WalProblem(
                "slot_retention",
                f"the slot {slot.name} keeps {_size(retained)} of WAL on the database host "
                f"(WAL_SLOT_ALERT_BYTES={_size(self.limits.slot_alert_bytes)}) and nothing caps "
                "it (max_slot_wal_keep_size = -1): a stalled receiver can fill the database's "
                "disk",
                "get the receiver streaming (`blnk-backup -v wal-stream` shows why it stops), "
                "and cap the slot on the database: `ALTER SYSTEM SET max_slot_wal_keep_size "
                "= '10GB'; SELECT pg_reload_conf();`",
            )
        ]

    def _chain(self) -> list[WalProblem]:
        causes = []
        if self.slot.lost:
            causes.append(
                f"the slot {self.slot.name} was invalidated (wal_status lost: "
                "max_slot_wal_keep_size reached), so the WAL after the last archived segment is "
                "gone"
            )
        if self.gaps:
            causes.append(
                f"{len(self.gaps):,} WAL segment(s) are missing from the bucket since the newest "
                f"base backup began (the first {self.gaps[0].name})"
            )
        if not causes:
            return []
        message = "; and ".join(causes) + ": nothing after the break can be recovered"
        return [WalProblem("chain_broken", message, RECREATE)]


@dataclass(frozen=True)
class _Reading:
    at: float  # time.monotonic()
    status: WalStatus | None
    error: EngineError | None


class WalHealth:
    """Reads continuous protection's health: the bucket's window and WAL, the slot on the
    replication source. Safe to share between threads."""

    def __init__(
        self,
        store: S3Store,
        source: PgTarget,
        *,
        slot: str,
        window: Callable[[float], RecoverableWindow],
        limits: WalLimits,
        secrets: list[str | None] | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self.slot = slot
        self.limits = limits
        self._window = window
        self._secrets = [source.password, *(secrets or [])]
        self._reading: _Reading | None = None
        self._refreshing = False
        self._changed = threading.Condition()

    def check(self, max_age: float = 0.0) -> WalStatus:
        """Read the health now, or return a reading at most ``max_age`` seconds old (for
        callers anyone may trigger often: a health check, /metrics, App Home). One reads at a
        time; others get the last reading meanwhile. A bucket that cannot be read raises
        (EngineError), and that failure is kept as long as a reading; a slot that cannot be
        read is in the status (``slot.error``)."""
        with self._changed:
            reading = self._reading
            if reading is not None and max_age > 0 and time.monotonic() - reading.at <= max_age:
                return _unwrap(reading)
            if self._refreshing and max_age > 0:
                if reading is not None:
                    return _unwrap(reading)  # stale, while someone else reads
                self._changed.wait_for(lambda: self._reading is not None, FIRST_READING_WAIT)
                if self._reading is None:
                    raise StorageError("the WAL archive is being read; ask again in a moment")
                return _unwrap(self._reading)
            self._refreshing = True
        try:
            fresh = _Reading(time.monotonic(), self._read(max_age), None)
        except EngineError as exc:
            fresh = _Reading(time.monotonic(), None, exc)
        except BaseException:
            with self._changed:
                self._refreshing = False
                self._changed.notify_all()
            raise
        with self._changed:
            self._reading, self._refreshing = fresh, False
            self._changed.notify_all()
        return _unwrap(fresh)

    def problems(self, max_age: float = 0.0) -> list[WalProblem]:
        """The problems of ``check(max_age)``, counted to now."""
        return self.check(max_age).problems()

    def _read(self, max_age: float) -> WalStatus:
        slot = self.read_slot()  # from the database: judged even when the bucket is not there
        try:
            return self._read_store(max_age, slot)
        except EngineError as exc:
            from core.wal.recovery import RecoverableWindow

            return WalStatus(
                window=RecoverableWindow(None, None, None, 0, None),
                slot=slot,
                receiver_last_seen=None,
                gaps=(),
                checked_at=datetime.now(UTC),
                limits=self.limits,
                store_error=mask(str(exc), self._secrets),
            )

    def _read_store(self, max_age: float, slot: SlotState) -> WalStatus:
        window = self._window(max_age)
        bases = BaseBackupService.list_in(self.store)
        listing = WalArchive(self.store).listing()
        usable = [b for b in bases if listing.has(Segment.of(b.timeline, b.end - 1))]
        # The chain from the newest base backup: a break before it (mended by recreating the
        # slot, which took it) is history, shown as one of the window's breaks.
        gaps = listing.gaps(Segment.of(usable[-1].timeline, usable[-1].start)) if usable else []
        return WalStatus(
            window=window,
            slot=slot,
            receiver_last_seen=self._receiver_last_seen(),
            gaps=tuple(gaps),
            checked_at=datetime.now(UTC),
            limits=self.limits,
            dropped=self._dropped(),
        )

    def _dropped(self) -> str | None:
        marker = self.store.get_json(f"{self.store.prefix}{WAL_DIR}{SLOT_DROPPED}")
        if not isinstance(marker, dict):
            return None
        said = f"by {marker.get('by', '?')} at {marker.get('dropped_at', '?')}"
        return neutralise(said)[:300]

    def _receiver_last_seen(self) -> datetime | None:
        position = self.store.get_json(f"{self.store.prefix}{WAL_DIR}{POSITION}")
        if not isinstance(position, dict):
            return None
        try:
            seen = datetime.fromisoformat(str(position["shipped_at"]))
        except (KeyError, ValueError):
            return None
        return seen if seen.tzinfo is not None else seen.replace(tzinfo=UTC)

    def read_slot(self) -> SlotState:
        """The slot as ``pg_replication_slots`` shows it (any role may read it), with the WAL
        it keeps: the server's current position (the last received one on a standby) minus
        its restart_lsn, and max_slot_wal_keep_size. Never raises: an error is in the state."""
        try:
            with self.source.connect(
                autocommit=True, application_name="blnk-backup-health"
            ) as conn:
                conn.execute(f"SET statement_timeout = {SLOT_QUERY_TIMEOUT_MS}")
                row = conn.execute(_SLOT_SQL, (self.slot,)).fetchone()
                setting = conn.execute(
                    "SELECT setting, unit FROM pg_settings WHERE name = 'max_slot_wal_keep_size'"
                ).fetchone()
        except EngineError as exc:  # could not connect: PgTarget says why, without a password
            return SlotState(self.slot, None, error=mask(exc.message, self._secrets))
        except psycopg.Error as exc:
            reason = mask(first_line(exc), self._secrets)
            return SlotState(self.slot, None, error=f"reading the slot {self.slot}: {reason}")
        cap = keep_size_bytes(*setting) if setting else None
        if row is None:
            return SlotState(self.slot, False, max_keep_bytes=cap)
        active, wal_status, safe, retained = row
        return SlotState(
            self.slot,
            True,
            active=bool(active),
            wal_status=wal_status,
            retained_bytes=max(0, int(retained)) if retained is not None else None,
            safe_wal_size=int(safe) if safe is not None else None,
            max_keep_bytes=cap,
        )


_SLOT_SQL = """
SELECT s.active, s.wal_status, s.safe_wal_size,
       pg_wal_lsn_diff(w.lsn, s.restart_lsn)::bigint
  FROM pg_replication_slots s,
       (SELECT CASE WHEN pg_is_in_recovery()
                    THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
                    ELSE pg_current_wal_lsn() END AS lsn) w
 WHERE s.slot_name = %s
"""

_UNITS = {"B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def keep_size_bytes(setting: Any, unit: Any) -> int | None:
    """max_slot_wal_keep_size as pg_settings gives it (``'1024'``, ``'MB'``) in bytes; None
    for -1 (no cap). Raise ValueError for a unit PostgreSQL does not use."""
    value = int(setting)
    if value < 0:
        return None
    unit = str(unit or "B")
    digits = unit.rstrip("kMGTB")  # a unit like "8kB" (wal_buffers) counts blocks
    base = unit[len(digits) :]
    if base not in _UNITS:
        raise ValueError(f"unknown unit {unit!r}")
    return value * int(digits or 1) * _UNITS[base]


def _unwrap(reading: _Reading) -> WalStatus:
    if reading.error is not None:
        raise reading.error
    assert reading.status is not None
    return reading.status


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
