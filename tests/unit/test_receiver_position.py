"""What the receiver says the store holds: never more than the bytes it shipped. A write that
lands in the same clock tick as the last one before a shipment leaves the file's size and time
unchanged; the stream then breaks (the primary died) — the position must still be the shipped
bytes', with the new ones shipped first. (Found by review; the store is an in-memory one.)"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from core.store.s3 import ObjectInfo
from core.wal.archive import WalArchive, _trimmed
from core.wal.names import SEGMENT_SIZE, Segment, parse_lsn
from core.wal.receiver import ReceiverState, WalReceiver


class MemoryStore:
    prefix = "blnk/"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.json: dict[str, Any] = {}

    def put_verified(self, key: str, body: bytes) -> ObjectInfo:
        self.objects[key] = body
        return ObjectInfo(len(body), None, None)

    def holds(self, key: str, body: bytes) -> bool:
        return self.objects.get(key) == body

    def put_json(self, key: str, body: Any) -> None:
        self.json[key] = body

    def delete_many(self, keys: list[str]) -> list[str]:
        for key in keys:
            self.objects.pop(key, None)
        return []


def receiver_on(store: MemoryStore, spool: Path) -> WalReceiver:
    receiver = WalReceiver.__new__(WalReceiver)  # no database, no pg_receivewal: shipping only
    receiver.archive = WalArchive(store)  # type: ignore[arg-type]
    receiver.spool = spool
    receiver.slot = "s"
    receiver.ship_partial_every = 10.0
    receiver.clock = time.monotonic
    receiver.state = ReceiverState()
    receiver._partial_shipped = None
    receiver._partial_due = 0.0
    return receiver


def test_the_position_never_claims_wal_the_store_does_not_hold(tmp_path: Path) -> None:
    store = MemoryStore()
    receiver = receiver_on(store, tmp_path)
    segment = Segment(1, 3)
    path = tmp_path / f"{segment.name}.partial"
    with path.open("wb") as f:
        f.write(b"\x01" * 100)
        f.truncate(SEGMENT_SIZE)
    receiver._flushed_position = lambda: (segment.start_lsn + 100,) * 2  # type: ignore[method-assign]
    receiver.ship()  # shipped on its timer
    before = path.stat()
    with path.open("r+b") as f:  # the next commit, within the same tick
        f.seek(100)
        f.write(b"\x02" * 100)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    receiver.ship(final=True, stopped=True)  # the primary died: pg_receivewal stopped

    stored = store.objects[f"blnk/wal/{segment.name}.partial"]
    claimed = parse_lsn(store.json["blnk/wal/position.json"]["lsn"]) - segment.start_lsn
    assert claimed == 200  # every byte it received, as the store now holds them
    assert stored == _trimmed(path.read_bytes())
    assert stored[:claimed] == path.read_bytes()[:claimed]


def test_a_restarted_receiver_ships_again_only_what_the_store_lacks(tmp_path: Path) -> None:
    store = MemoryStore()
    segment = Segment(1, 4)
    path = tmp_path / f"{segment.name}.partial"
    path.write_bytes(b"\x03" * 500 + bytes(SEGMENT_SIZE - 500))
    first = receiver_on(store, tmp_path)
    first._flushed_position = lambda: (segment.start_lsn + 500,) * 2  # type: ignore[method-assign]
    first.ship(final=True)
    key = f"blnk/wal/{segment.name}.partial"
    puts: list[str] = []
    real_put = store.put_verified

    def counting(key: str, body: bytes) -> ObjectInfo:
        puts.append(key)
        return real_put(key, body)

    store.put_verified = counting  # type: ignore[method-assign]
    again = receiver_on(store, tmp_path)
    again._flushed_position = lambda: (segment.start_lsn + 500,) * 2  # type: ignore[method-assign]
    again.ship(final=True)
    assert puts == []  # the same bytes: not shipped again
    with path.open("r+b") as f:
        f.seek(500)
        f.write(b"\x04")
    again.ship(final=True)
    assert puts == [key]


def test_wal_caught_up_from_a_backlog_does_not_move_the_recovery_point_to_now(
    tmp_path: Path,
) -> None:
    """After an outage the receiver ships minutes-old WAL: the store holds more of it, but
    the moment every commit before which is in the store stays where it was, until the
    receiver is caught up with the primary again (found by the pipeline benchmark: a restore
    to a time in that gap returned an older state, the ledger proven)."""
    store = MemoryStore()
    receiver = receiver_on(store, tmp_path)
    first, second = Segment(1, 3), Segment(1, 4)
    partial = tmp_path / f"{first.name}.partial"
    partial.write_bytes(b"\x05" * 300 + bytes(SEGMENT_SIZE - 300))
    receiver._flushed_position = lambda: (first.start_lsn + 300,) * 2  # type: ignore[method-assign]
    receiver.ship(final=True)  # live: caught up
    live = store.json["blnk/wal/position.json"]
    assert parse_lsn(live["lsn"]) == first.start_lsn + 300

    time.sleep(0.05)
    partial.rename(tmp_path / first.name)  # the backlog: a whole segment, then more
    (tmp_path / first.name).write_bytes(b"\x05" * SEGMENT_SIZE)
    (tmp_path / f"{second.name}.partial").write_bytes(b"\x06" * 100 + bytes(SEGMENT_SIZE - 100))
    behind = second.start_lsn + 100
    receiver._flushed_position = lambda: (behind, behind + 50 * SEGMENT_SIZE)  # type: ignore[method-assign]
    receiver.ship(final=True)
    catching_up = store.json["blnk/wal/position.json"]
    assert parse_lsn(catching_up["lsn"]) == behind  # more WAL in the store ...
    assert catching_up["shipped_at"] == live["shipped_at"]  # ... but no later moment

    receiver._flushed_position = lambda: (behind, behind)  # type: ignore[method-assign]
    time.sleep(0.05)
    receiver.ship(final=True)  # caught up again: now the moment moves
    assert store.json["blnk/wal/position.json"]["shipped_at"] > live["shipped_at"]
