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
    receiver._flushed_position = lambda: segment.start_lsn + 100  # type: ignore[method-assign]
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
    first._flushed_position = lambda: segment.start_lsn + 500  # type: ignore[method-assign]
    first.ship(final=True)
    key = f"blnk/wal/{segment.name}.partial"
    puts: list[str] = []
    real_put = store.put_verified

    def counting(key: str, body: bytes) -> ObjectInfo:
        puts.append(key)
        return real_put(key, body)

    store.put_verified = counting  # type: ignore[method-assign]
    again = receiver_on(store, tmp_path)
    again._flushed_position = lambda: segment.start_lsn + 500  # type: ignore[method-assign]
    again.ship(final=True)
    assert puts == []  # the same bytes: not shipped again
    with path.open("r+b") as f:
        f.seek(500)
        f.write(b"\x04")
    again.ship(final=True)
    assert puts == [key]
