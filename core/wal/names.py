"""Names and positions of write-ahead log: LSNs, segment file names, timelines, and where each
lives in the bucket. Pure functions, no I/O.

PostgreSQL names a WAL segment ``TTTTTTTTXXXXXXXXYYYYYYYY``: the timeline, then the segment
number split in two (the high 32 bits of the LSN, and the segment within them). With 16 MiB
segments (PostgreSQL's default, the only size supported here) there are 256 segments per
"log". A timeline's history file is ``TTTTTTTT.history``; the segment being written is
``NAME.partial`` on the receiver's side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEGMENT_SIZE = 16 * 1024 * 1024
SEGMENTS_PER_LOG = 0x1_0000_0000 // SEGMENT_SIZE  # 256
WAL_DIR = "wal/"  # under the bucket's prefix, beside the dumps
BASE_DIR = "base/"  # base backups: base/<stamp>/base.tar and base/<stamp>/base.json
PARTIAL_SUFFIX = ".partial"
# wal/slot-dropped.json: the slot was dropped on purpose (wal-slot drop); no receiver makes it
# again until wal-slot recreate removes this
SLOT_DROPPED = "slot-dropped.json"

_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
_HISTORY = re.compile(r"^[0-9A-F]{8}\.history$")
_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def parse_lsn(text: str) -> int:
    """``'0/16B3748'`` → 23803720. Raise ValueError for anything else."""
    match = _LSN.match(text.strip())
    if match is None:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(match[1], 16) << 32) | int(match[2], 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(frozen=True, order=True)
class Segment:
    """One WAL segment: its timeline and its number (LSN // SEGMENT_SIZE)."""

    timeline: int
    number: int

    @property
    def name(self) -> str:
        log, seg = divmod(self.number, SEGMENTS_PER_LOG)
        return f"{self.timeline:08X}{log:08X}{seg:08X}"

    @property
    def start_lsn(self) -> int:
        return self.number * SEGMENT_SIZE

    @property
    def end_lsn(self) -> int:
        return (self.number + 1) * SEGMENT_SIZE

    def next(self) -> Segment:
        return Segment(self.timeline, self.number + 1)

    @classmethod
    def parse(cls, name: str) -> Segment | None:
        """A segment's file name (without ``.partial``) → Segment, or None if it is not one."""
        if not _SEGMENT.match(name):
            return None
        timeline, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
        if seg >= SEGMENTS_PER_LOG or timeline == 0:
            return None
        return cls(timeline, log * SEGMENTS_PER_LOG + seg)

    @classmethod
    def of(cls, timeline: int, lsn: int) -> Segment:
        """The segment holding ``lsn`` on ``timeline``."""
        return cls(timeline, lsn // SEGMENT_SIZE)


def is_history(name: str) -> bool:
    """True for a timeline history file's name (``00000002.history``)."""
    return bool(_HISTORY.match(name))


def wal_key(prefix: str, name: str) -> str:
    """Where a WAL file (segment, ``.partial`` or ``.history``) lives in the bucket."""
    return f"{prefix}{WAL_DIR}{name}"


def base_key(prefix: str, stamp: str, name: str = "base.tar") -> str:
    """Where a base backup's files live: ``base/<stamp>/base.tar`` and its ``base.json``."""
    return f"{prefix}{BASE_DIR}{stamp}/{name}"
