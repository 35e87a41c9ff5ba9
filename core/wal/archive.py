"""The WAL archive in the bucket: ``wal/`` beside the dumps, one object per segment (verified
like a dump: size and checksum read back), the segment being written as ``NAME.partial``
(replaced as it grows), and each timeline's ``.history`` file. Stock tools recover from it: an
``aws s3 cp`` of ``wal/NAME`` is what ``restore_command`` needs (docs/operations.md)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from core.store.s3 import S3Store
from core.wal.names import (
    PARTIAL_SUFFIX,
    SEGMENT_SIZE,
    WAL_DIR,
    Segment,
    is_history,
    parse_lsn,
    wal_key,
)

log = logging.getLogger("blnk_backup.wal")

WAL_PAGE = 8192  # XLOG_BLCKSZ: a partial segment is cut after its last written page


@dataclass(frozen=True)
class ArchivedWal:
    """What the bucket holds of WAL: complete segments (oldest first), the newest partial
    segment, history files, and when the newest object was written."""

    segments: list[Segment]
    partial: Segment | None
    histories: list[str]
    newest_written: datetime | None
    names: tuple[str, ...] = ()  # every object under wal/, by name (for retention)
    # every partial segment with no finished one of its name: the newest is being written;
    # an older one is where a chain broke (the slot was lost with it)
    partials: tuple[Segment, ...] = ()
    written: dict[Segment, datetime] = field(default_factory=dict)  # when each was shipped
    # timeline → (its parent, the LSN it branched off at), from its .history file
    switches: dict[int, tuple[int, int]] = field(default_factory=dict)

    def has(self, segment: Segment) -> bool:
        """True if the store holds ``segment``, finished or as a partial segment."""
        return segment in set(self.segments) or segment in self.partials

    def expected(self, start: Segment) -> list[Segment]:
        """The finished segments a recovery from ``start`` reads, in order: along its
        timeline up to where the next one branched off, then along that one, and so on up to
        the newest finished segment of the last (included). A timeline's branch point is its
        history file's; without one, its oldest segment in the store."""
        present: dict[int, list[int]] = {}
        for s in self.segments:
            present.setdefault(s.timeline, []).append(s.number)
        path: list[Segment] = []
        timeline, number = start.timeline, start.number
        while True:
            children = []
            for child, numbers in present.items():
                parent, at = self.switches.get(child, (child - 1, min(numbers) * SEGMENT_SIZE))
                if child > timeline and parent == timeline and at // SEGMENT_SIZE >= number:
                    children.append((child, at // SEGMENT_SIZE))
            if not children:
                mine = [n for n in present.get(timeline, []) if n >= number]
                path += [Segment(timeline, n) for n in range(number, max(mine, default=-1) + 1)]
                return path
            child, branch = min(children)
            path += [Segment(timeline, n) for n in range(number, branch)]
            timeline, number = child, branch

    def chain_from(self, start: Segment) -> tuple[list[Segment], Segment | None]:
        """The finished segments from ``start`` on (following later timelines) with no gap,
        and the first one missing after them (None when none is missing up to the newest)."""
        have = set(self.segments)
        chain: list[Segment] = []
        for segment in self.expected(start):
            if segment not in have:
                return chain, segment
            chain.append(segment)
        return chain, None

    def gaps(self, start: Segment) -> list[Segment]:
        """The segments missing from ``start`` on, along its timeline and those after it."""
        have = set(self.segments)
        return [s for s in self.expected(start) if s not in have]


class WalArchive:
    """The WAL objects of one store."""

    def __init__(self, store: S3Store) -> None:
        self.store = store

    def ship(self, path: Path) -> int:
        """Put one finished WAL file (a segment or a ``.history``) into the bucket, verified;
        return its size. The local file is the caller's."""
        body = path.read_bytes()
        self.store.put_verified(wal_key(self.store.prefix, path.name), body)
        return len(body)

    def ship_partial(self, name: str, body: bytes, written: int | None = None) -> int:
        """Put the segment being written (``NAME.partial``, its bytes ``body``) into the
        bucket, verified, without the zeros after its written part (pg_receivewal fills a
        segment file with zeros before it writes into it), cut at a WAL page boundary: it is
        shipped every few seconds while WAL flows, and a full 16 MiB each time would make the
        upload follow the timer instead of the WAL. ``fetch`` (and the stock-tools recipe,
        ``truncate -s 16M``) gives it back its full size. Return the bytes sent."""
        trimmed = _trimmed(body, written)
        self.store.put_verified(wal_key(self.store.prefix, name), trimmed)
        return len(trimmed)

    def holds_partial(self, name: str, body: bytes, written: int | None = None) -> bool:
        """True when the bucket's ``NAME.partial`` is exactly ``body`` as shipped (the same
        size and checksum): shipping it again would add nothing."""
        return self.store.holds(wal_key(self.store.prefix, name), _trimmed(body, written))

    def forget_partial(self, name: str) -> None:
        """Delete ``NAME.partial`` once ``NAME`` itself is in the store (best effort: a
        leftover is only storage, and retention deletes it with its segment)."""
        failed = self.store.delete_many([wal_key(self.store.prefix, name + PARTIAL_SUFFIX)])
        if failed:
            log.info("the partial copy of %s stays: %s", name, failed[0])

    def listing(self) -> ArchivedWal:
        segments: list[Segment] = []
        partials: list[Segment] = []
        histories: list[str] = []
        names: list[str] = []
        written: dict[Segment, datetime] = {}
        newest: datetime | None = None
        for obj in self.store.list_objects(WAL_DIR):
            name = obj.key.removeprefix(self.store.prefix + WAL_DIR)
            names.append(name)
            if (shipped := Segment.parse(name.removesuffix(PARTIAL_SUFFIX))) is not None:
                written[shipped] = max(obj.last_modified, written.get(shipped, obj.last_modified))
            newest = obj.last_modified if newest is None else max(newest, obj.last_modified)
            if is_history(name):
                histories.append(name)
            elif name.endswith(PARTIAL_SUFFIX):
                segment = Segment.parse(name.removesuffix(PARTIAL_SUFFIX))
                if segment is not None:
                    partials.append(segment)
            elif (segment := Segment.parse(name)) is not None:
                segments.append(segment)
        complete = set(segments)
        live = [p for p in partials if p not in complete]
        return ArchivedWal(
            sorted(segments),
            max(live) if live else None,
            histories,
            newest,
            tuple(names),
            tuple(sorted(live)),
            written,
            self._switches(histories),
        )

    def _switches(self, histories: list[str]) -> dict[int, tuple[int, int]]:
        """Each timeline's parent and branch point, from its history file's last line
        (``parent<TAB>LSN<TAB>reason``); a file that does not read so is left out."""
        found: dict[int, tuple[int, int]] = {}
        for name in histories:
            raw = self.store.read_small(wal_key(self.store.prefix, name)) or b""
            lines = [
                line.split()
                for line in raw.decode("ascii", "replace").splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
            try:
                found[int(name[:8], 16)] = (int(lines[-1][0]), parse_lsn(lines[-1][1]))
            except (IndexError, ValueError):
                log.warning(
                    "%s does not read as a timeline history: its segments are judged "
                    "by what the store holds",
                    name,
                )
        return found

    def fetch(self, name: str, destination: Path) -> bool:
        """Download one WAL file by name into ``destination``; False if the bucket has none."""
        key = wal_key(self.store.prefix, name)
        if self.store.head(key) is None:
            return False
        with destination.open("wb") as out:
            self.store.download(key, out)
        if name.endswith(PARTIAL_SUFFIX) and destination.stat().st_size < SEGMENT_SIZE:
            os.truncate(destination, SEGMENT_SIZE)  # the zeros it was shipped without
        return True


def _trimmed(body: bytes, written: int | None = None) -> bytes:
    """A partial segment without the zeros after its last written WAL page (``written``: its
    written length, when the caller knows it already)."""
    if written is None:
        written = len(body.rstrip(b"\0"))
    return body[: min(len(body), -(-written // WAL_PAGE) * WAL_PAGE)]
